"""The lab's long-lived, least-privilege credentials at the storage site's Keystone, by its
REST API: an **application credential** (Swift, rclone) and an **EC2 credential** (the object
store's S3 API, used by MLflow and boto3). On Chameleon a JupyterHub session holds a
short-lived token; the lab on the GPU server needs credentials that outlive it. They are kept
in the :class:`~replab.secretsstore.SecretsStore` and never printed or logged: outcomes show
ids and masked values.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import CloudError
from .keystonelogin import Auth, same_keystone, short_error
from .redact import mask
from .secretsstore import SecretsStore

log = logging.getLogger(__name__)

EXPIRY_MARGIN = _dt.timedelta(days=1)  # time to back up and tear down after the lease
LEAST_ROLES = ("member",)


def keystone_request(auth: Auth, method: str, path: str, json_body=None, ok=(200, 201, 204)):
    """One Keystone request; raises CloudError naming the request (never its body)."""
    from keystoneauth1 import exceptions as ks_exc

    url = auth.url(path)
    try:
        resp = auth.session.request(url, method, json=json_body, raise_exc=False)
    except ks_exc.ClientException as exc:
        raise CloudError(f"Keystone at {auth.auth_url} unreachable: {short_error(exc)}",
                         f"{method} {path}") from exc
    if resp.status_code not in ok:
        try:
            detail = resp.json().get("error", {}).get("message", "")
        except ValueError:
            detail = resp.text[:200]
        raise CloudError(f"Keystone refused ({resp.status_code}): {detail}",
                         f"{method} {path}")
    return resp.json() if resp.content else {}


@dataclass
class Outcome:
    """What one step did: ``action`` is "created", "reused", "replaced", "deleted" or "none"."""

    what: str
    action: str
    detail: str = ""


def lease_end(cfg, state: Mapping[str, Any] | None = None,
              now: _dt.datetime | None = None) -> _dt.datetime:
    """When the lease ends: from state.json's lease when known, else from the config."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    lease = (state or {}).get("lease") or {}
    if lease.get("end"):
        return _parse_time(lease["end"])
    start = now if cfg.lease_start in (None, "now") else _parse_time(cfg.lease_start)
    return start + _dt.timedelta(hours=cfg.lease_hours or 24)


def _parse_time(text: str) -> _dt.datetime:
    t = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=_dt.timezone.utc)


def _iso(t: _dt.datetime) -> str:
    return t.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000000")


def app_credential_works(auth_url: str, cred_id: str, secret: str) -> bool:
    """Whether the application credential authenticates at ``auth_url``."""
    from keystoneauth1 import session as ks_session
    from keystoneauth1.identity import v3

    plugin = v3.ApplicationCredential(auth_url=auth_url, application_credential_id=cred_id,
                                      application_credential_secret=secret)
    try:
        plugin.get_access(ks_session.Session(auth=plugin, timeout=30))
        return True
    except Exception as exc:
        log.info("stored application credential %s does not authenticate: %s", cred_id,
                 short_error(exc))
        return False


@contextlib.contextmanager
def _explain_restricted(auth: Auth, what: str):
    """Keystone's bare 403 for a restricted application credential, explained."""
    try:
        yield
    except CloudError as exc:
        if auth.is_application_credential and "403" in str(exc):
            raise CloudError(
                f"{exc}. Keystone creates {what} from an application credential only when "
                "it is unrestricted; authenticate through JupyterHub or a clouds.yaml "
                "password entry, or use an unrestricted one", exc.request) from exc
        raise


def ensure_application_credential(auth: Auth, name: str, expires_at: _dt.datetime,
                                  store: SecretsStore,
                                  roles: tuple[str, ...] = LEAST_ROLES,
                                  min_expires_at: _dt.datetime | None = None) -> Outcome:
    """Create the application credential ``name`` (expiring at ``expires_at``) unless the
    stored one still works and lasts until ``min_expires_at`` (default ``expires_at``); a
    stale one of that name is replaced.

    Roles: ``roles`` where the user holds them (least privilege), else the token's roles,
    with a warning in the outcome (and the log) naming them and the role to ask for.
    Raises CloudError when Keystone refuses (e.g. a restricted application credential in
    the environment may not create another one).
    """
    expires_at = expires_at.replace(microsecond=0)  # Keystone keeps whole seconds
    needed = (min_expires_at or expires_at).replace(microsecond=0)
    saved = store.credentials().get("application_credential") or {}
    if (saved.get("name") == name and same_keystone(saved.get("auth_url"), auth.auth_url)
            and saved.get("user_id") == auth.user_id
            and _parse_time(saved["expires_at"]) >= needed
            and app_credential_works(auth.auth_url, saved["id"], saved["secret"])):
        return Outcome("application credential", "reused",
                       f"{name} ({saved['id']}), expires {saved['expires_at']}")
    listed = keystone_request(auth, "GET",
                              f"/users/{auth.user_id}/application_credentials?name={name}")
    replaced = []
    for old in listed.get("application_credentials", []):
        keystone_request(auth, "DELETE",
                         f"/users/{auth.user_id}/application_credentials/{old['id']}",
                         ok=(204, 404))
        replaced.append(old["id"])
    wanted = [r for r in roles if r in auth.roles]
    warning = ""
    if not wanted:  # least privilege is not available: say what the credential can do
        wanted = list(auth.roles)
        warning = (f"; WARNING: you hold none of the roles {', '.join(roles)} in this project, "
                   f"so it carries every role of your login ({', '.join(wanted) or 'none'}): "
                   f"its secret can do all you can here. Ask the project's manager for the "
                   f"{roles[0]!r} role, then run this again to replace it")
        log.warning("application credential %s%s", name, warning)
    body = {"application_credential": {
        "name": name, "description": "replab: the lab's object-store access (rclone, Swift)",
        "expires_at": _iso(expires_at), "roles": [{"name": r} for r in wanted],
        "unrestricted": False,
    }}
    with _explain_restricted(auth, "an application credential"):
        created = keystone_request(auth, "POST",
                                   f"/users/{auth.user_id}/application_credentials",
                                   body)["application_credential"]
    data = store.credentials()
    data["application_credential"] = {
        "id": created["id"], "secret": created["secret"], "name": name,
        "auth_url": auth.auth_url, "user_id": auth.user_id, "project_id": auth.project_id,
        "expires_at": _iso(expires_at), "roles": wanted, "unrestricted": False,
    }
    store.save_credentials(data)
    action = "replaced" if replaced else "created"
    return Outcome("application credential", action,
                   f"{name} ({created['id']}), roles {', '.join(wanted)}, restricted, expires "
                   f"{_iso(expires_at)}{warning}")


def ensure_ec2_credential(auth: Auth, store: SecretsStore) -> Outcome:
    """Create an EC2 credential at ``auth``'s Keystone (the storage site) unless the stored
    one still exists there. Created with the user's own session: the application
    credential can stay restricted."""
    saved = store.credentials().get("ec2") or {}
    listed = keystone_request(auth, "GET", f"/users/{auth.user_id}/credentials/OS-EC2")
    have = {c["access"] for c in listed.get("credentials", [])}
    if (saved.get("access") in have and same_keystone(saved.get("auth_url"), auth.auth_url)
            and saved.get("project_id") == auth.project_id):
        return Outcome("EC2 credential", "reused", f"access key {mask(saved['access'])}")
    with _explain_restricted(auth, "EC2 credentials"):
        created = keystone_request(auth, "POST", f"/users/{auth.user_id}/credentials/OS-EC2",
                                   {"tenant_id": auth.project_id})["credential"]
    data = store.credentials()
    data["ec2"] = {"access": created["access"], "secret": created["secret"],
                   "auth_url": auth.auth_url, "user_id": auth.user_id,
                   "project_id": auth.project_id}
    store.save_credentials(data)
    return Outcome("EC2 credential", "created", f"access key {mask(created['access'])}")


def delete_credentials(auth: Auth, store: SecretsStore) -> list[Outcome]:
    """Delete the stored application and EC2 credentials at Keystone (idempotent) and drop
    them from the store."""
    data = store.credentials()
    out = []
    app = data.pop("application_credential", None)
    if app:
        keystone_request(auth, "DELETE",
                         f"/users/{auth.user_id}/application_credentials/{app['id']}",
                         ok=(204, 404))
        out.append(Outcome("application credential", "deleted", f"{app['name']} ({app['id']})"))
    ec2 = data.pop("ec2", None)
    if ec2:
        keystone_request(auth, "DELETE",
                         f"/users/{auth.user_id}/credentials/OS-EC2/{ec2['access']}",
                         ok=(204, 404))
        out.append(Outcome("EC2 credential", "deleted", f"access key {mask(ec2['access'])}"))
    store.save_credentials(data)
    return out or [Outcome("credentials", "none", "nothing stored")]


__all__ = ["EXPIRY_MARGIN", "LEAST_ROLES", "Outcome", "app_credential_works",
           "delete_credentials", "ensure_application_credential", "ensure_ec2_credential",
           "keystone_request", "lease_end"]
