"""Long-lived, least-privilege credentials for the lab, and the secrets store.

On Chameleon a JupyterHub session holds a short-lived OpenStack token; the lab on the GPU
server needs credentials that outlive it: an **application credential** (Swift, rclone) and
an **EC2 credential** (the object store's S3 API, used by MLflow and boto3), both at the
*storage* site's Keystone. They live in ``<workdir>/secrets/`` (directory 0700, files 0600)
and are never printed or logged: displays show ids and masked values.

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

import contextlib
import datetime as _dt
import json
import logging
import os
import secrets as _secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import hubtoken, rclone, storage
from ._files import write_private
from .errors import CloudError, ConfigError
from .redact import mask
from .s3client import s3_client

log = logging.getLogger(__name__)

EXPIRY_MARGIN = _dt.timedelta(days=1)  # time to back up and tear down after the lease
LEAST_ROLES = ("member",)
S3_REGION = "us-east-1"  # the signature region Swift's s3api and Ceph RGW accept


# -- the secrets store -------------------------------------------------------------------------
class SecretsStore:
    """``<workdir>/secrets/``: 0700 directory, 0600 files, written atomically."""

    CREDENTIALS = "credentials.json"  # the source of truth: ids, secrets, expiry
    CLOUDS = "clouds.yaml"  # an entry for openstacksdk / the openstack CLI
    RCLONE = "rclone.conf"  # remotes for the object store (S3 and Swift)
    LAB_ENV = "lab.env"  # the lab's environment (compose .env, local launcher)

    def __init__(self, workdir: str | os.PathLike):
        self.dir = Path(workdir).expanduser() / "secrets"

    def ensure(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        return self.dir

    def path(self, name: str) -> Path:
        return self.dir / name

    def write(self, name: str, text: str) -> Path:
        """Write ``name`` with mode 0600 (created so, never world-readable in between)."""
        self.ensure()
        return write_private(self.path(name), text)

    def read(self, name: str) -> str | None:
        p = self.path(name)
        return p.read_text() if p.exists() else None

    def credentials(self) -> dict[str, Any]:
        """The stored credentials; {} when none. Raises ConfigError when the file is corrupt."""
        text = self.read(self.CREDENTIALS)
        if not text:
            return {}
        try:
            data = json.loads(text)
        except ValueError:
            raise ConfigError(f"{self.path(self.CREDENTIALS)} is corrupt (not JSON); delete "
                              "it and re-run 1_create_credentials") from None
        return data if isinstance(data, dict) else {}

    def save_credentials(self, data: Mapping[str, Any]) -> Path:
        return self.write(self.CREDENTIALS, json.dumps(data, indent=1, sort_keys=True) + "\n")

    def lab_env(self) -> dict[str, str]:
        """The lab environment as a mapping (from ``lab.env``)."""
        out = {}
        for line in (self.read(self.LAB_ENV) or "").splitlines():
            if "=" in line and not line.lstrip().startswith("#"):
                k, _, v = line.partition("=")
                out[k.strip()] = v.strip()
        return out


def _env_file(values: Mapping[str, str]) -> str:
    lines = ["# replab lab environment: secrets. Mode 0600; never commit or share."]
    for k, v in values.items():
        if "\n" in str(v):
            raise ConfigError([(k, "a lab environment value cannot span lines")])
        lines.append(f"{k}={v}")
    return "\n".join(lines) + "\n"


# -- authentication ----------------------------------------------------------------------------
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


def _same_keystone(a: str | None, b: str | None) -> bool:
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
    if env.get("OS_AUTH_URL") and not _same_keystone(env["OS_AUTH_URL"], auth_url):
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
        if not _same_keystone(entry_url, auth_url):
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
            tried.append(f"{name}: {description} did not authenticate: {_short(exc)}")
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


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _call(auth: Auth, method: str, path: str, json_body=None, ok=(200, 201, 204)):
    """One Keystone request; raises CloudError naming the request (never its body)."""
    from keystoneauth1 import exceptions as ks_exc

    url = auth.url(path)
    try:
        resp = auth.session.request(url, method, json=json_body, raise_exc=False)
    except ks_exc.ClientException as exc:
        raise CloudError(f"Keystone at {auth.auth_url} unreachable: {_short(exc)}",
                         f"{method} {path}") from exc
    if resp.status_code not in ok:
        try:
            detail = resp.json().get("error", {}).get("message", "")
        except ValueError:
            detail = resp.text[:200]
        raise CloudError(f"Keystone refused ({resp.status_code}): {detail}",
                         f"{method} {path}")
    return resp.json() if resp.content else {}


# -- application credentials -------------------------------------------------------------------
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
                 _short(exc))
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
    if (saved.get("name") == name and _same_keystone(saved.get("auth_url"), auth.auth_url)
            and saved.get("user_id") == auth.user_id
            and _parse_time(saved["expires_at"]) >= needed
            and app_credential_works(auth.auth_url, saved["id"], saved["secret"])):
        return Outcome("application credential", "reused",
                       f"{name} ({saved['id']}), expires {saved['expires_at']}")
    listed = _call(auth, "GET", f"/users/{auth.user_id}/application_credentials?name={name}")
    replaced = []
    for old in listed.get("application_credentials", []):
        _call(auth, "DELETE", f"/users/{auth.user_id}/application_credentials/{old['id']}",
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
        created = _call(auth, "POST", f"/users/{auth.user_id}/application_credentials",
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
    listed = _call(auth, "GET", f"/users/{auth.user_id}/credentials/OS-EC2")
    have = {c["access"] for c in listed.get("credentials", [])}
    if (saved.get("access") in have and _same_keystone(saved.get("auth_url"), auth.auth_url)
            and saved.get("project_id") == auth.project_id):
        return Outcome("EC2 credential", "reused", f"access key {mask(saved['access'])}")
    with _explain_restricted(auth, "EC2 credentials"):
        created = _call(auth, "POST", f"/users/{auth.user_id}/credentials/OS-EC2",
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
        _call(auth, "DELETE", f"/users/{auth.user_id}/application_credentials/{app['id']}",
              ok=(204, 404))
        out.append(Outcome("application credential", "deleted", f"{app['name']} ({app['id']})"))
    ec2 = data.pop("ec2", None)
    if ec2:
        _call(auth, "DELETE", f"/users/{auth.user_id}/credentials/OS-EC2/{ec2['access']}",
              ok=(204, 404))
        out.append(Outcome("EC2 credential", "deleted", f"access key {mask(ec2['access'])}"))
    store.save_credentials(data)
    return out or [Outcome("credentials", "none", "nothing stored")]


# -- the files the lab reads -------------------------------------------------------------------
def write_client_files(cfg, store: SecretsStore) -> list[Path]:
    """clouds.yaml, rclone.conf and lab.env from the stored credentials and lab secrets."""
    import yaml

    data = store.credentials()
    app, ec2, lab = data.get("application_credential"), data.get("ec2"), data.get("lab", {})
    written = []
    if app:
        entry = {"clouds": {cfg.names["application_credential"]: {
            "auth_type": "v3applicationcredential",
            "auth": {"auth_url": app["auth_url"], "application_credential_id": app["id"],
                     "application_credential_secret": app["secret"]},
            "region_name": cfg.storage_region, "interface": "public",
            "identity_api_version": 3}}}
        written.append(store.write(store.CLOUDS, yaml.safe_dump(entry, sort_keys=False)))
    remotes = {}
    if ec2 and cfg.s3_endpoint:
        remotes[f"{cfg.experiment}-s3"] = rclone.s3_remote(cfg.s3_endpoint, ec2["access"],
                                                            ec2["secret"])
    if app:
        remotes[f"{cfg.experiment}-swift"] = rclone.swift_remote(
            app["auth_url"], app["id"], app["secret"], cfg.storage_region)
    if remotes:
        written.append(store.write(store.RCLONE, rclone.render_rclone_conf(remotes)))
    env = {"JUPYTER_TOKEN": lab.get("jupyter_token", ""),
           "MLFLOW_TRACKING_USERNAME": lab.get("mlflow_user", ""),
           "MLFLOW_TRACKING_PASSWORD": lab.get("mlflow_password", "")}
    if ec2:
        env.update({"AWS_ACCESS_KEY_ID": ec2["access"], "AWS_SECRET_ACCESS_KEY": ec2["secret"],
                    "AWS_DEFAULT_REGION": S3_REGION})
        if cfg.s3_endpoint:
            env["MLFLOW_S3_ENDPOINT_URL"] = cfg.s3_endpoint
    for key, flag in (("HF_TOKEN", cfg.lab.huggingface), ("GH_TOKEN", cfg.lab.github_cli)):
        if flag and lab.get(key.lower()):
            env[key] = lab[key.lower()]
    written.append(store.write(store.LAB_ENV, _env_file(env)))
    return written


def ensure_lab_secrets(store: SecretsStore, env: Mapping[str, str] | None = None) -> Outcome:
    """The lab's own secrets (Jupyter token, MLflow user and password), generated once and
    kept across re-runs; Hugging Face / GitHub tokens taken from the environment."""
    env = os.environ if env is None else env
    data = store.credentials()
    lab = dict(data.get("lab") or {})
    made = []
    if not lab.get("jupyter_token"):
        lab["jupyter_token"] = _secrets.token_urlsafe(32)
        made.append("Jupyter token")
    if not lab.get("mlflow_password"):
        lab["mlflow_user"] = "replab"
        lab["mlflow_password"] = _secrets.token_urlsafe(24)
        made.append("MLflow password")
    # GitHub's own tools read GH_TOKEN first, then GITHUB_TOKEN (what Actions sets).
    found = {"HF_TOKEN": env.get("HF_TOKEN"),
             "GH_TOKEN": env.get("GH_TOKEN") or env.get("GITHUB_TOKEN")}
    for key, value in found.items():
        if value and lab.get(key.lower()) != value:
            lab[key.lower()] = value
            made.append(key)
    data["lab"] = lab
    store.save_credentials(data)
    return Outcome("lab secrets", "created" if made else "reused",
                   ", ".join(made) if made else "Jupyter token, MLflow password")


# -- verify ------------------------------------------------------------------------------------
def verify(cfg, store: SecretsStore) -> list[Outcome]:
    """Authenticate with the application credential and list buckets with the EC2 keys.

    Raises CloudError naming the credential that does not work and what to do.
    """
    data = store.credentials()
    out = []
    app = data.get("application_credential")
    if app:
        if not app_credential_works(app["auth_url"], app["id"], app["secret"]):
            raise CloudError(f"application credential {app['name']} ({app['id']}) does not "
                             "authenticate (deleted or expired?): re-run 1_create_credentials")
        out.append(Outcome("application credential", "verified", "token issued"))
    ec2 = data.get("ec2")
    if ec2 and cfg.s3_endpoint:
        s3 = s3_client(cfg.s3_endpoint, ec2["access"], ec2["secret"])
        names = storage.list_buckets(s3)
        out.append(Outcome("EC2 credential", "verified", f"{len(names)} bucket(s) visible"))
    return out


# -- the whole step, as 1_create_credentials runs it -------------------------------------------
@dataclass
class Report:
    outcomes: list[Outcome] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def add(self, outcome: Outcome, say: Callable[[str], None] | None) -> None:
        self.outcomes.append(outcome)
        if say:
            say(f"{outcome.what}: {outcome.action}" + (f" - {outcome.detail}"
                                                       if outcome.detail else ""))

    def rows(self) -> list[tuple[str, str, str]]:
        return [(o.what, o.action, o.detail) for o in self.outcomes]


def setup(cfg, *, cloud: str | None = None, clouds_file: str | None = None,
          env: Mapping[str, str] | None = None, state: Mapping[str, Any] | None = None,
          do_verify: bool = True, progress: Callable[[str], None] | None = None) -> Report:
    """Everything 1_create_credentials does, idempotently: lab secrets; for a Chameleon site
    the application and EC2 credentials at the storage site, the buckets, and the client
    files; for ``local``, the local bucket directories. Returns what was done.

    Raises CloudError (authentication, Keystone, the object store) or ConfigError.
    """
    report = Report()
    store = SecretsStore(cfg.workdir)
    store.ensure()
    report.add(ensure_lab_secrets(store, env), progress)
    if cfg.is_local:
        dirs = storage.local_buckets(cfg.workdir_path / "buckets",
                                     [cfg.buckets.data, cfg.buckets.artifacts,
                                      cfg.buckets.backups])
        report.add(Outcome("buckets", "ready", ", ".join(str(p) for p in dirs.values())),
                   progress)
    else:
        if not cfg.storage_auth_url:
            raise ConfigError([("storage_auth_url", f"{cfg.storage_site} has no Keystone URL; "
                                                    "set endpoints.storage_auth_url")])
        if not cfg.s3_endpoint:  # before any credential is made: the buckets need it
            raise ConfigError([("s3_endpoint", f"{cfg.storage_site} has no S3 endpoint; set "
                                               "endpoints.s3_endpoint")])
        auth = authenticate(cfg.storage_auth_url, env=env, cloud=cloud,
                            clouds_file=clouds_file)
        if progress:
            progress(f"authenticated at {cfg.storage_site} ({cfg.storage_auth_url}) with "
                     f"{auth.description}")
        end = lease_end(cfg, state)
        # A re-run reuses the credential while it still covers the lease with half the
        # margin (with lease_start "now" the wanted expiry moves on every call).
        report.add(ensure_application_credential(auth, cfg.names["application_credential"],
                                                 end + EXPIRY_MARGIN, store,
                                                 min_expires_at=end + EXPIRY_MARGIN / 2),
                   progress)
        report.add(ensure_ec2_credential(auth, store), progress)
        ec2 = store.credentials()["ec2"]
        s3 = s3_client(cfg.s3_endpoint, ec2["access"], ec2["secret"])
        names = [cfg.buckets.data, cfg.buckets.artifacts, cfg.buckets.backups]
        made = storage.ensure_buckets(s3, names)
        report.add(Outcome("buckets", "created" if any(made.values()) else "reused",
                           ", ".join(f"{n}{' (new)' if c else ''}" for n, c in made.items())),
                   progress)
    report.files = [str(p) for p in write_client_files(cfg, store)]
    if do_verify and not cfg.is_local:
        for outcome in verify(cfg, store):
            report.add(outcome, progress)
    return report


def describe(store: SecretsStore) -> list[tuple[str, str]]:
    """What the store holds, for display: ids, expiry and masked values only."""
    data = store.credentials()
    rows = []
    app = data.get("application_credential")
    if app:
        rows += [("application credential", f"{app['name']} ({app['id']})"),
                 ("  secret", mask(app["secret"])), ("  expires", app["expires_at"]),
                 ("  roles", ", ".join(app.get("roles", []))),
                 ("  unrestricted", "no (not needed: EC2 was created with your session)")]
    ec2 = data.get("ec2")
    if ec2:
        rows += [("EC2 access key", mask(ec2["access"])), ("EC2 secret", mask(ec2["secret"]))]
    lab = data.get("lab")
    if lab:
        rows += [("Jupyter token", mask(lab.get("jupyter_token", ""))),
                 ("MLflow password", mask(lab.get("mlflow_password", "")))]
    rows.append(("secrets store", f"{store.dir} (0700; files 0600)"))
    return rows


def report_markdown(report: Report, store: SecretsStore) -> str:
    """What was done and what the store holds, as markdown (masked values only)."""
    lines = ["### What this step did", "", "| | action | detail |", "|---|---|---|"]
    lines += [f"| {w} | {a} | {d} |" for w, a, d in report.rows()]
    lines += ["", "### Credentials held", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in describe(store)]
    if report.files:
        lines += ["", "Files written (mode 0600): " + ", ".join(
            f"`{Path(f).name}`" for f in report.files)]
    return "\n".join(lines) + "\n"
