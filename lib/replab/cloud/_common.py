"""What every part of ``replab.cloud`` shares: the one wait helper, error translation, times.

Errors from blazarclient, keystoneauth and openstacksdk become :class:`~replab.errors.CloudError`
naming the request (``"POST /leases"``); a wait that sees a failure state raises CloudError
with the service's own reason, and one that runs out of time raises
:class:`~replab.errors.ResourceTimeout`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import CloudError, ResourceTimeout

log = logging.getLogger(__name__)

T = TypeVar("T")
Progress = Callable[[str], None]

# what Blazar's API takes (blazarclient utils.API_DATE_FORMAT; chi.lease.BLAZAR_TIME_FORMAT)
BLAZAR_TIME_FORMAT = "%Y-%m-%d %H:%M"
_UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?"
                   r"[0-9a-fA-F]{12}$")


class NotFound(Exception):
    """Internal: the service answered 404 (callers turn it into ``False`` or ``None``)."""


def is_uuid(value: str) -> bool:
    return bool(_UUID.match(value or ""))


# -- the one wait ----------------------------------------------------------------------------
def wait_for(fetch: Callable[[], T], *, ready: Callable[[T], bool],
             failed: Callable[[T], str | None] = lambda _obj: None,
             describe: Callable[[T], str] = str, what: str, timeout: float,
             interval: float, clock: Callable[[], float] = time.monotonic,
             sleep: Callable[[float], None] = time.sleep,
             progress: Progress | None = None) -> T:
    """Call ``fetch`` until ``ready(obj)``; return that object.

    ``failed(obj)`` returns a reason when ``obj`` is in a failure state: then CloudError is
    raised with it (never a quiet return). After ``timeout`` seconds of ``clock`` (injectable,
    as is ``sleep``) ResourceTimeout is raised with the last state seen. ``progress`` receives
    one line per poll. Errors raised by ``fetch`` propagate.
    """
    start = clock()
    polls = 0
    while True:
        obj = fetch()
        polls += 1
        reason = failed(obj)
        if reason:
            raise CloudError(f"{what} failed: {reason}")
        if ready(obj):
            log.debug("%s ready after %d poll(s)", what, polls)
            return obj
        elapsed = clock() - start
        if elapsed >= timeout:
            raise ResourceTimeout(f"{what} not ready after {timeout:.0f} s ({polls} checks); "
                                  f"last seen: {describe(obj)}")
        line = f"{what}: {describe(obj)} ({elapsed:.0f} s)"
        log.info(line)
        if progress:
            progress(line)
        sleep(max(0.0, min(interval, timeout - elapsed)))


# -- errors ----------------------------------------------------------------------------------
def _short(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:400]


def _blazar_code(exc: Exception) -> int | None:
    # blazarclient keeps the HTTP status in ``code`` (set from its ``code=`` keyword)
    return getattr(exc, "code", None) or getattr(exc, "kwargs", {}).get("code")


@contextlib.contextmanager
def blazar_errors(request: str, *, not_found: bool = False) -> Iterator[None]:
    """Translate blazarclient / keystoneauth errors around one Blazar request.

    With ``not_found=True`` a 404 raises :class:`NotFound` for the caller to handle.
    """
    from blazarclient import exception as bexc
    from keystoneauth1 import exceptions as ks_exc

    try:
        yield
    except bexc.BlazarClientException as exc:
        code = _blazar_code(exc)
        if not_found and code == 404:
            raise NotFound(request) from exc
        text = _short(exc).removeprefix("ERROR: ")
        raise CloudError(f"Blazar refused ({code}): {text}", request) from exc
    except ks_exc.ClientException as exc:
        raise CloudError(f"Blazar request failed: {_short(exc)}", request) from exc


@contextlib.contextmanager
def sdk_errors(service: str, request: str, *, not_found: bool = False) -> Iterator[None]:
    """Translate openstacksdk / keystoneauth errors around one request to ``service``."""
    from keystoneauth1 import exceptions as ks_exc
    from openstack import exceptions as os_exc

    try:
        yield
    except os_exc.NotFoundException as exc:
        if not_found:
            raise NotFound(request) from exc
        raise CloudError(f"{service}: not found: {_details(exc)}", request) from exc
    except os_exc.HttpException as exc:
        raise CloudError(f"{service} refused ({exc.status_code}): {_details(exc)}",
                         request) from exc
    except os_exc.SDKException as exc:
        raise CloudError(f"{service}: {_short(exc)}", request) from exc
    except ks_exc.ClientException as exc:
        raise CloudError(f"{service} request failed: {_short(exc)}", request) from exc


def missing(what: str, request: str, ignore_missing: bool) -> bool:
    """A resource to delete is already gone: False, or CloudError when that is an error."""
    if not ignore_missing:
        raise CloudError(f"{what} not found", request)
    log.info("%s is already gone", what)
    return False


def delete_call(what: str, request: str, errors: contextlib.AbstractContextManager,
                call: Callable[[], Any], ignore_missing: bool, *,
                done: str = "deleted") -> bool:
    """Make one DELETE ``call`` inside ``errors`` (``sdk_errors`` / ``blazar_errors`` with
    ``not_found=True``): True when it deleted ``what``, :func:`missing` when it was gone."""
    try:
        with errors:
            call()
    except NotFound:
        return missing(what, request, ignore_missing)
    log.info("%s %s", done, what)
    return True


def _details(exc: Any) -> str:
    return str(getattr(exc, "details", None) or _short(exc))[:400]


# -- times -----------------------------------------------------------------------------------
def utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def as_utc(t: _dt.datetime) -> _dt.datetime:
    """``t`` as an aware UTC datetime; a naive one is taken as UTC (Blazar's convention)."""
    return t.replace(tzinfo=_dt.timezone.utc) if t.tzinfo is None else t.astimezone(
        _dt.timezone.utc)


def parse_time(text: str) -> _dt.datetime:
    """Blazar's ``2026-05-01T12:00:00.000000``, ``2026-05-01 12:00`` or ISO 8601 -> UTC."""
    return as_utc(_dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00")))


def blazar_time(t: _dt.datetime) -> str:
    return as_utc(t).strftime(BLAZAR_TIME_FORMAT)


def iso(t: _dt.datetime) -> str:
    return as_utc(t).isoformat(timespec="seconds")


# -- who is calling ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Whoami:
    """The caller, from the Keystone token of the clients' session (no extra call).

    ``restricted``: the token comes from an application credential that is restricted
    (Keystone's token says ``application_credential.restricted``); such a credential
    cannot create the trust Blazar makes for every new lease.
    """

    user_id: str | None
    project_id: str | None = None
    application_credential: str | None = None  # "name (id)" when the token is one
    restricted: bool = False


def whoami(session) -> Whoami:
    """The :class:`Whoami` of a keystoneauth ``session`` (authenticates if not yet done)."""
    from keystoneauth1 import exceptions as ks_exc

    try:
        access = session.auth.get_access(session)
    except ks_exc.ClientException as exc:
        raise CloudError(f"authentication failed: {_short(exc)}") from exc
    data = getattr(access, "_data", {}) or {}
    app = (data.get("token") or {}).get("application_credential") or {}
    label = f"{app.get('name')} ({app.get('id')})" if app else None
    return Whoami(user_id=access.user_id, project_id=access.project_id,
                  application_credential=label,
                  restricted=bool(app) and app.get("restricted", True) is not False)


def not_mine(what: str, owner: str | None, me: Whoami | None) -> str | None:
    """Why ``what`` (owned by user ``owner``) must not be adopted or deleted, or None.

    Resource names are per project: a teammate in the same project can have the same
    ``<experiment>-lease``. Unknown on either side (an old record) is not a refusal."""
    if me is None or not me.user_id or not owner or owner == me.user_id:
        return None
    return (f"{what} belongs to user {owner}, not to you ({me.user_id}): names are per "
            "project, so a teammate uses this experiment name too. replab never adopts or "
            "deletes another user's resources; choose another experiment name")
