"""Authentication to a site's Keystone, from the first source that works.

Authentication sources, tried in order (:func:`authenticate`):
1. Chameleon JupyterHub's environment: an OIDC access token, asked from the JupyterHub API
   whenever it is missing or about to expire (the hub's ``OS_ACCESS_TOKEN`` is set once, at
   server start, and goes stale), valid at every site;
2. an application credential in the environment (``OS_APPLICATION_CREDENTIAL_ID`` /
   ``_SECRET``) whose ``OS_AUTH_URL`` is the site's Keystone;
3. a ``clouds.yaml`` entry (``cloud=``, ``OS_CLOUD``, or any entry for the site's Keystone).

Before them, when python-chi's ``chi.context`` is in use in the kernel and points at this
site's Keystone, its own session; its project (``chi.context.use_project``) scopes all of
them (see ``replab.cloud.python_chi``).
"""


from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import hubtoken
from .errors import CloudError


@dataclass
class Auth:
    """An authenticated Keystone session at one site."""

    session: Any  # keystoneauth1.session.Session
    auth_url: str
    source: str  # "python-chi", "jupyterhub", "environment", "clouds.yaml"
    description: str
    user_id: str
    project_id: str
    roles: list[str] = field(default_factory=list)
    is_application_credential: bool = False

    def url(self, path: str) -> str:
        return self.auth_url.rstrip("/") + path


def same_keystone(a: str | None, b: str | None) -> bool:
    """Whether two Keystone URLs name the same service (a trailing ``/`` or ``/v3`` aside)."""
    norm = lambda u: (u or "").rstrip("/").removesuffix("/v3").rstrip("/")  # noqa: E731
    return bool(a) and norm(a) == norm(b)


def _jupyterhub_plugin(auth_url: str, env: Mapping[str, str],
                       clock: Callable[[], float] | None = None):
    from keystoneauth1.identity import v3

    token = env.get("OS_ACCESS_TOKEN")
    if not (token or hubtoken.in_hub(env)):
        return None, "no OS_ACCESS_TOKEN (not in Chameleon's JupyterHub)"
    project = env.get("OS_PROJECT_NAME")
    project_id = env.get("OS_PROJECT_ID")
    if not (project or project_id):
        return None, "OS_ACCESS_TOKEN is set but no OS_PROJECT_NAME / OS_PROJECT_ID"
    args = dict(auth_url=auth_url,
                identity_provider=env.get("OS_IDENTITY_PROVIDER", "chameleon"),
                protocol=env.get("OS_PROTOCOL", "openid"), access_token=token,
                project_id=project_id, project_name=None if project_id else project,
                project_domain_name=None if project_id else env.get("OS_PROJECT_DOMAIN_NAME",
                                                                    "chameleon"))
    if hubtoken.in_hub(env):
        plugin = hubtoken.plugin_class()(hub_env=env, clock=clock, **args)
        what = "JupyterHub OIDC token (refreshed through the hub)"
    else:
        plugin = v3.OidcAccessToken(**args)
        what = "JupyterHub OIDC token from OS_ACCESS_TOKEN"
    return plugin, f"{what} for project {project_id or project}"


def _env_app_cred_plugin(auth_url: str, env: Mapping[str, str]):
    from keystoneauth1.identity import v3

    cid, secret = env.get("OS_APPLICATION_CREDENTIAL_ID"), env.get(
        "OS_APPLICATION_CREDENTIAL_SECRET")
    if not (cid and secret):
        return None, "no OS_APPLICATION_CREDENTIAL_ID / _SECRET"
    if env.get("OS_AUTH_URL") and not same_keystone(env["OS_AUTH_URL"], auth_url):
        return None, (f"the application credential is for {env['OS_AUTH_URL']}, not "
                      f"{auth_url} (application credentials belong to one site)")
    plugin = v3.ApplicationCredential(auth_url=auth_url, application_credential_id=cid,
                                      application_credential_secret=secret)
    return plugin, f"application credential {cid} from the environment"


def _clouds_plugin(auth_url: str, env: Mapping[str, str], cloud: str | None,
                   clouds_file: str | None):
    import openstack.config
    from openstack.config.loader import OpenStackConfig

    files = [clouds_file] if clouds_file else None
    try:
        loader = OpenStackConfig(config_files=files) if files else OpenStackConfig()
        names = [cloud or env.get("OS_CLOUD")] if (cloud or env.get("OS_CLOUD")) else [
            c.name for c in loader.get_all()]
    except Exception as exc:
        return None, f"clouds.yaml unreadable: {exc}"
    names = [n for n in names if n]
    if not names:
        return None, "no clouds.yaml entry"
    for name in names:
        try:
            region = loader.get_one(cloud=name)
        except Exception as exc:
            if cloud or env.get("OS_CLOUD"):
                return None, f"clouds.yaml entry {name!r}: {exc}"
            continue
        entry_url = (region.config.get("auth") or {}).get("auth_url")
        if not same_keystone(entry_url, auth_url):
            if cloud or env.get("OS_CLOUD"):
                return None, f"clouds.yaml entry {name!r} is for {entry_url}, not {auth_url}"
            continue
        return region.get_auth(), f"clouds.yaml entry {name!r}"
    _ = openstack.config
    return None, f"no clouds.yaml entry for {auth_url} (have: {', '.join(names)})"


def _chi_session(auth_url: str, chi):
    """python-chi's session (``chi.context.session()``) when its context is for this
    Keystone: ``(session, description)``, or ``(None, why not)``."""
    if chi is None:
        return None, "python-chi's chi.context is not imported in this kernel"
    if not chi.is_for(auth_url):
        return None, (f"python-chi's context is for {chi.auth_url or 'no Keystone'} "
                      f"({chi.region or 'no site'}), not {auth_url}")
    try:
        sess = chi.session()
    except CloudError as exc:
        return None, str(exc)
    project = chi.project_name or chi.project_id or "its default project"
    return sess, f"python-chi's context (chi.context.session(), {chi.auth_type}) for {project}"


def sources(auth_url: str, *, env: Mapping[str, str] | None = None, cloud: str | None = None,
            clouds_file: str | None = None, chi: Any = None) -> list[tuple[str, Callable]]:
    """The authentication sources :func:`authenticate` tries, in order: ``(name, make)``
    where ``make()`` returns ``(plugin or session, description)`` or ``(None, why not)``
    and makes no network call. ``chi``: a ``replab.cloud.python_chi.ChiContext`` (None:
    none; see :func:`authenticate`)."""
    env = os.environ if env is None else env
    if chi is not None:
        env = chi.project_env(env)
    return [
        ("python-chi", lambda: _chi_session(auth_url, chi)),
        ("jupyterhub", lambda: _jupyterhub_plugin(auth_url, env)),
        ("environment", lambda: _env_app_cred_plugin(auth_url, env)),
        ("clouds.yaml", lambda: _clouds_plugin(auth_url, env, cloud, clouds_file)),
    ]


def authenticate(auth_url: str, *, env: Mapping[str, str] | None = None,
                 cloud: str | None = None, clouds_file: str | None = None,
                 timeout: float = 30, chi: Any = None) -> Auth:
    """Authenticate to the Keystone at ``auth_url`` with the first source that works.

    ``chi``: a python-chi context (``replab.cloud.python_chi.ChiContext``); by default the
    one of this kernel when ``chi.context`` is imported and ``env`` is not given (``False``:
    never). Its project (``chi.context.use_project``) scopes every source, and at its own
    Keystone its session (``chi.context.session()``) is tried first.

    Raises CloudError listing every source and why it did not work.
    """
    from keystoneauth1 import session as ks_session

    if chi is None and env is None:
        # replab.cloud's package loads its compute modules: only when the kernel may use it
        from .cloud import python_chi

        chi = python_chi.current()
    tried = []
    for name, make in sources(auth_url, env=env, cloud=cloud, clouds_file=clouds_file,
                              chi=chi or None):
        plugin, description = make()
        if plugin is None:
            tried.append(f"{name}: {description}")
            continue
        if isinstance(plugin, ks_session.Session):
            sess, plugin = plugin, plugin.auth
        else:
            sess = ks_session.Session(auth=plugin, timeout=timeout)
        try:
            access = plugin.get_access(sess)
        except Exception as exc:
            tried.append(f"{name}: {description} did not authenticate: {short_error(exc)}")
            continue
        return Auth(session=sess, auth_url=auth_url, source=name, description=description,
                    user_id=access.user_id, project_id=access.project_id,
                    roles=list(access.role_names or []),
                    is_application_credential=bool(getattr(access,
                                                           "_data", {}).get("token", {}).get(
                                                               "application_credential")))
    raise CloudError(
        f"cannot authenticate to {auth_url}; tried, in order:\n  - " + "\n  - ".join(tried)
        + "\nIn Chameleon's JupyterHub this works by itself; elsewhere set OS_CLOUD to a "
          "clouds.yaml entry for this site (or pass cloud=...).")


def short_error(exc: Exception) -> str:
    """The first line of ``exc``'s message (at most 300 characters), for an error message."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


__all__ = ["Auth", "authenticate", "same_keystone", "short_error", "sources"]
