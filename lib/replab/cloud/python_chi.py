"""python-chi interoperation: a Chameleon user's ``chi.context``, session and leases.

What interoperates (python-chi 1.2.10, read from ``chi/context.py``, ``chi/clients.py``,
``chi/lease.py``):

- **The context.** A kernel that ran ``chi.context.use_site("CHI@UC")`` and
  ``chi.context.use_project("CHI-123456")`` (or ``chi.set("region_name", ...)``,
  ``chi.set("project_name", ...)``, ``chi.context.use_lease_id(...)``): :func:`current`
  reads the site (``region_name``), Keystone (``auth_url``), project and lease id from it,
  with no network call. :meth:`ChiContext.defaults` are config fields for 0_configure
  (``{"site": "CHI@UC"}``); ``replab.credentials.authenticate`` scopes to the context's
  project at every site and, at the context's own Keystone, uses its session.
- **The session.** ``chi.context.session()`` returns a keystoneauth ``Adapter`` around a
  ``Session`` (python-chi's ``SessionLoader``); :meth:`ChiContext.session` unwraps it as
  ``chi.clients.connection`` does, so ``replab.cloud.clients(session, region=...)`` builds
  the Blazar client and openstacksdk Connection on the very session python-chi uses.
- **Leases.** Where replab takes a lease (``get_lease``, ``wait_for_lease``,
  ``delete_lease``, ``extend_lease``), a ``chi.lease.Lease`` is accepted: only its ``id``
  attribute is read (its ``status`` property calls Blazar). :func:`to_chi_lease` turns a
  replab lease (Blazar's dict) into a ``chi.lease.Lease``. The ids in ``state.json`` are
  Blazar's and Nova's: ``chi.lease.get_lease(id)``, ``chi.server.get_server(id)`` take them.

replab never imports python-chi itself: importing ``chi.context`` reads every ``OS_*``
variable into oslo.config's global ``CONF`` and imports ipywidgets. The context is read only
when the user's kernel has imported it (``sys.modules``), or when passed explicitly. Not used
from library code: python-chi's waits (``Lease.wait`` returns quietly when the lease goes to
ERROR), ``show=`` widgets, ``use_site`` (prints, fetches the site list and returns quietly
when that fails) and ``get_lease_id`` (prints).
"""

from __future__ import annotations

import datetime as _dt
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import sites
from ..errors import CloudError, ConfigError

log = logging.getLogger(__name__)

MODULE = "chi.context"


def _same_keystone(a: str | None, b: str | None) -> bool:
    norm = lambda u: (u or "").rstrip("/").removesuffix("/v3").rstrip("/")  # noqa: E731
    return bool(a) and bool(b) and norm(a) == norm(b)


@dataclass(frozen=True)
class ChiContext:
    """What a python-chi context says; every field None when not set there."""

    region: str | None  # chi.context.get("region_name"), e.g. "CHI@UC"
    auth_url: str | None
    project_name: str | None
    project_id: str | None
    project_domain_name: str | None
    auth_type: str | None
    lease_id: str | None  # chi.context.use_lease_id(...)
    module: Any = field(default=None, repr=False, compare=False)

    @property
    def site(self) -> str | None:
        """The replab site: the context's region when it is a catalog site, else the site
        whose Keystone is the context's ``auth_url``; None when neither."""
        if self.region in sites.SITES and self.region != "local":
            return self.region
        return next((s.name for s in sites.SITES.values()
                     if _same_keystone(s.auth_url, self.auth_url)), None)

    def is_for(self, auth_url: str | None) -> bool:
        """Whether the context authenticates at the Keystone ``auth_url``."""
        return _same_keystone(self.auth_url, auth_url)

    def defaults(self) -> dict[str, str]:
        """Config fields the context implies (``{"site": ...}``), for 0_configure's defaults."""
        return {"site": self.site} if self.site else {}

    def project_env(self, env: Mapping[str, str]) -> dict[str, str]:
        """``env`` with the context's project where the kernel set another one than ``env``
        names (``chi.context.use_project``): that project, by name, wins."""
        out = dict(env)
        if self.project_id and self.project_id != env.get("OS_PROJECT_ID"):
            out["OS_PROJECT_ID"] = self.project_id
        elif self.project_name and self.project_name != env.get("OS_PROJECT_NAME"):
            out["OS_PROJECT_NAME"] = self.project_name
            out.pop("OS_PROJECT_ID", None)  # an id would win over the name
        if self.project_domain_name and "OS_PROJECT_NAME" in out:
            out.setdefault("OS_PROJECT_DOMAIN_NAME", self.project_domain_name)
        return out

    def session(self):
        """The keystoneauth ``Session`` of ``chi.context.session()`` (its Adapter unwrapped).

        Raises CloudError when python-chi cannot make one (e.g. no credentials set)."""
        try:
            made = self.module.session()
        except Exception as exc:
            raise CloudError(f"python-chi's context makes no session ({type(exc).__name__}: "
                             f"{str(exc).strip()[:300]}); set its credentials (chi.set(...)) "
                             "or let replab authenticate itself") from exc
        return getattr(made, "session", made)  # an Adapter holds the Session


def _get(module, key: str) -> str | None:
    try:
        value = module.get(key)
    except Exception:  # an option the current auth plugin does not have
        return None
    return str(value) if value not in (None, "") else None


def read(module) -> ChiContext:
    """The :class:`ChiContext` of the python-chi context module ``module`` (no network)."""
    return ChiContext(region=_get(module, "region_name"), auth_url=_get(module, "auth_url"),
                      project_name=_get(module, "project_name"),
                      project_id=_get(module, "project_id"),
                      project_domain_name=_get(module, "project_domain_name"),
                      auth_type=_get(module, "auth_type"),
                      lease_id=getattr(module, "_lease_id", None), module=module)


def current() -> ChiContext | None:
    """The python-chi context of this kernel, or None when ``chi.context`` is not imported
    (replab does not import it; see the module doc)."""
    module = sys.modules.get(MODULE)
    return read(module) if module is not None else None


def site_default(site: str | None = None) -> str | None:
    """``site`` when given, else the site of the python-chi context, else None."""
    if site:
        return site
    ctx = current()
    return ctx.site if ctx else None


def check_site(cfg, ctx: ChiContext | None = None) -> str | None:
    """A note when the python-chi context names another site than ``cfg`` (the config
    wins: replab's calls go to ``cfg.site``), else None."""
    ctx = ctx if ctx is not None else current()
    if ctx is None or not ctx.site or cfg.is_local or ctx.site == cfg.site:
        return None
    return (f"python-chi's context is at {ctx.site} (chi.context.use_site); this experiment's "
            f"site is {cfg.site} (config.yaml), which replab uses")


# -- leases ------------------------------------------------------------------------------------
def lease_id(ref: Any) -> str:
    """The Blazar id of a lease given as an id, a Blazar lease dict or a ``chi.lease.Lease``
    (its ``id`` attribute, without touching ``status``, which calls Blazar)."""
    if isinstance(ref, str):
        if ref:
            return ref
    elif isinstance(ref, Mapping):
        if ref.get("id"):
            return str(ref["id"])
    elif getattr(ref, "id", None):
        return str(ref.id)
    raise ConfigError([("lease", f"{_show(ref)} is no lease: give its id, the dict Blazar "
                                 "returns, or a submitted chi.lease.Lease (one with an id)")])


def _show(ref: Any) -> str:
    name = getattr(ref, "name", None)
    return f"{type(ref).__name__} {name!r}" if name else repr(ref)[:80]


def to_chi_lease(lease: Mapping[str, Any]):
    """A ``chi.lease.Lease`` of the Blazar lease dict ``lease`` (imports python-chi).

    python-chi 1.2.10 parses ``created_at`` as ``%Y-%m-%d %H:%M:%S``; Blazar 18 writes
    microseconds (``2026-12-02 05:35:32.250623``), so they are dropped first."""
    from chi.lease import Lease

    body = dict(lease)
    created = str(body.get("created_at") or "")
    if created:
        body["created_at"] = _dt.datetime.fromisoformat(created).strftime("%Y-%m-%d %H:%M:%S")
    return Lease(lease_json=body)


__all__ = ["ChiContext", "check_site", "current", "lease_id", "read", "site_default",
           "to_chi_lease"]
