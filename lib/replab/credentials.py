"""1_create_credentials as one idempotent step (:func:`setup`): the lab's own secrets, the
application and EC2 credentials at the storage site, the buckets and the client files; then a
check that they work, and a report that shows ids and masked values only.

The parts: :mod:`replab.keystonelogin` (authentication sources), :mod:`replab.keystonecredentials`
(application and EC2 credentials by Keystone's REST API), :mod:`replab.clientfiles`
(clouds.yaml, rclone.conf, lab.env), :mod:`replab.secretsstore` (``<workdir>/secrets/``).
"""

from __future__ import annotations

import os
import secrets as _secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import storage
from .clientfiles import write_client_files
from .errors import CloudError, ConfigError
from .keystonecredentials import (
    EXPIRY_MARGIN,
    Outcome,
    app_credential_works,
    delete_credentials,  # noqa: F401  (provisioning.py calls credentials.delete_credentials)
    ensure_application_credential,
    ensure_ec2_credential,
    lease_end,
)
from .keystonelogin import authenticate  # cloud/__init__.py and provisioning.py import it here
from .redact import mask
from .s3client import s3_client
from .secretsstore import SecretsStore  # lab/__init__, provisioning, 1_create_credentials too


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


__all__ = ["Report", "SecretsStore", "authenticate", "delete_credentials", "describe",
           "ensure_lab_secrets", "report_markdown", "setup", "verify"]
