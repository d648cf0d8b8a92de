"""2_provision and 5_teardown, as library calls the notebooks stay thin around.

``provision_all``: plan -> lease -> keypair/security group -> server -> floating IP -> SSH ->
host setup, every resource recorded in ``<workdir>/state.json`` as soon as it exists, so a
re-run resumes and a failure midway leaves an inventory that teardown can clean up.
``teardown``: back up MLflow -> stop the lab -> delete the server, release floating IPs the
lease does not own, delete the lease, security group, keypair and credentials; buckets are
kept unless asked. On ``site=local`` the "host" is this machine: its prerequisites are
checked, nothing is reserved.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, ReplabError
from .lab.localpg import pg_binary

log = logging.getLogger(__name__)
Say = Callable[[str], None]


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = True


def local_prerequisites(cfg) -> list[Check]:
    """What the local lab needs on this machine, each checked and explained."""
    def module(name: str) -> bool:
        return importlib.util.find_spec(name) is not None

    checks = [
        Check("python", sys.version_info >= (3, 10), sys.version.split()[0] + " (>= 3.10)"),
        Check("mlflow", module("mlflow"), "pip install -r requirements.txt"),
        Check("jupyterlab", module("jupyterlab"), "pip install -r requirements.txt"),
        Check("papermill", module("papermill"), "pip install -r requirements.txt"),
        Check("git", shutil.which("git") is not None, "apt-get install git (replays clone)"),
    ]
    if cfg.lab.mlflow_backend == "postgresql":
        try:  # where the launcher looks: $REPLAB_PG_BIN, /usr/lib/postgresql/*/bin, PATH
            found, detail = True, f"{pg_binary('initdb')} (the lab starts its own cluster)"
        except ConfigError as exc:
            found, detail = False, str(exc)
        checks.append(Check("postgresql", found, detail))
    free = shutil.disk_usage(cfg.workdir_path.parent if cfg.workdir_path.parent.exists()
                             else Path.cwd()).free
    checks.append(Check("disk", free > 2 * 1024**3, f"{free / 1024**3:.1f} GiB free (>= 2)"))
    checks.append(Check("rclone", shutil.which("rclone") is not None,
                        "optional: mounts of object-store buckets", required=False))
    return checks


def plan_markdown(cfg, state=None, *, availability: bool = False, clients=None,
                  cloud_name: str | None = None, clouds_file: str | None = None,
                  now=None) -> str:
    """The calls 2_provision would make (nothing for ``local``).

    ``availability=True`` (or ``clients`` given) adds what Blazar says about the machine:
    free now and the next free slot for the lease (:func:`availability_markdown`); it
    authenticates (``cloud_name``/``clouds_file``) unless ``clients`` are given, and reads
    only. A python-chi context at another site than the config's is noted."""
    from . import cloud, hostsetup

    if cfg.is_local:
        return ("**site=local**: no lease, no server; this machine is the host. "
                "Its prerequisites are checked below.\n")
    calls = cloud.plan(cfg, state=state)
    lines = [f"**Plan for {cfg.site}** ({len(calls)} calls; nothing is created in a dry run)"]
    note = cloud.python_chi.check_site(cfg)
    if note:
        lines += ["", f"Note: {note}."]
    lines += ["", "| # | call | what |", "|---|---|---|"]
    lines += [f"| {i} | `{c.method} {c.service} {c.path}` | {c.summary} |"
              for i, c in enumerate(calls, 1)]
    lines += ["", "Then over SSH, each step checked before it acts (`setup_host=False` skips "
              "them): " + ", ".join(f"`{name}`" for name in hostsetup.step_names(cfg))
              + "."]
    if availability or clients is not None:
        lines += ["", availability_markdown(cfg, clients=clients, cloud_name=cloud_name,
                                            clouds_file=clouds_file, now=now).rstrip("\n")]
    return "\n".join(lines) + "\n"


def availability_markdown(cfg, *, clients=None, cloud_name: str | None = None,
                          clouds_file: str | None = None, now=None) -> str:
    """``replab.cloud.availability.summary`` of ``cfg``'s machine as markdown (read-only
    Blazar calls; KVM also ``GET /flavors``). When authenticating or Blazar fails, the text
    says so and why (the plan is still shown; provisioning would fail the same way)."""
    from . import cloud, sites

    try:
        clients = clients or cloud_connect(cfg, cloud_name, clouds_file)
        flavor = (cloud.flavor_id(clients.conn, cfg.flavor)
                  if cfg.site_info.kind == sites.KVM else None)
        found = cloud.availability.summary(clients.blazar, cfg, flavor_id=flavor, now=now)
    except ReplabError as exc:
        log.warning("availability of %s at %s not checked: %s", cfg.machine, cfg.site, exc)
        return f"**Availability of `{cfg.machine}` at {cfg.site}**: not checked: {exc}\n"
    return found.markdown()


def _public_key(path: str) -> str:
    p = Path(os.path.expanduser(path))
    if not p.exists():
        raise ConfigError([("public_key", f"{p} does not exist: give the path of the SSH "
                                          "public key the server should accept "
                                          "(ssh-keygen -t ed25519 makes one)")])
    return p.read_text().strip()


@dataclass
class Provisioning:
    address: str | None = None
    steps: list[Any] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    pending_until: Any = None


def _agent_forwarding(cfg, forward_agent: bool | None, setup: bool) -> bool:
    """Whether host setup forwards the SSH agent: asked for, or (None) when the repository
    URL is an ssh one. Raises ConfigError, before anything is created, for an ssh URL
    without forwarding or without an agent to forward."""
    from .hostsetup import is_ssh_url
    from .redact import strip_url_credentials

    ssh_url = bool(cfg.repository) and is_ssh_url(cfg.repository)
    forward = ssh_url if forward_agent is None else forward_agent
    if not setup or not ssh_url:
        return forward
    shown = strip_url_credentials(cfg.repository)
    if not forward:
        raise ConfigError([("repository", f"{shown} is an ssh URL and forward_agent=False: "
                                          "the server could not clone it; use the https URL "
                                          "or forward your agent")])
    if not os.environ.get("SSH_AUTH_SOCK"):
        raise ConfigError([("repository", f"{shown} is an ssh URL: the server clones it with "
                                          "your SSH agent, and no agent runs here "
                                          "(SSH_AUTH_SOCK is unset). Start one with "
                                          "`eval $(ssh-agent) && ssh-add`, or use the https "
                                          "URL")])
    return True


SETUP_OPTIONS = ("skip", "root", "home")


def _setup_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``setup_options`` checked before anything is created: only :data:`SETUP_OPTIONS`,
    ``skip`` naming host-setup steps (a list, or one comma-separated string)."""
    from . import hostsetup

    out = dict(options or {})
    unknown = sorted(set(out) - set(SETUP_OPTIONS))
    if unknown:
        raise ConfigError([("setup_options", f"unknown option(s) {', '.join(unknown)}; "
                                             f"known: {', '.join(SETUP_OPTIONS)}")])
    skip = out.get("skip") or []
    skip = [s.strip() for s in skip.split(",")] if isinstance(skip, str) else list(skip)
    steps = hostsetup.STEP_NAMES
    bad = [s for s in skip if s and s not in steps]
    if bad:
        raise ConfigError([("setup_options", f"skip: no host-setup step {', '.join(bad)}; "
                                             f"the steps: {', '.join(steps)}")])
    if "skip" in out:
        out["skip"] = [s for s in skip if s]
    return out


def provision_all(cfg, *, public_key: str = "~/.ssh/id_rsa.pub", private_key: str | None = None,
                  cloud_name: str | None = None, clouds_file: str | None = None,
                  clients=None, setup: bool = True, forward_agent: bool | None = None,
                  ssh_user: str | None = None, setup_options: Mapping[str, Any] | None = None,
                  progress: Say | None = None, **waits: Any) -> Provisioning:
    """Everything 2_provision does (see the module doc). ``clients``: a ``cloud.Clients``
    to use instead of authenticating (``cloud_name``/``clouds_file`` pick the clouds.yaml
    entry otherwise). ``forward_agent`` (default: when the repository URL is an ssh one)
    forwards this machine's SSH agent to the server for the clone. ``ssh_user``: the
    image's login user (default ``cc``, Chameleon's; ``ubuntu`` on a stock Ubuntu cloud
    image), recorded in state.json for 3_launch_lab and 5_teardown. ``setup_options`` go
    to ``hostsetup.setup_host``: ``skip`` (step names), ``root`` and ``home`` (see there).
    ``waits`` go to ``cloud.provision`` (``now``, ``clock``, ``sleep``, timeouts). Raises
    ConfigError for bad input, CloudError (with the service's reason) and ResourceTimeout;
    state.json keeps what exists.
    """
    from . import cloud

    say = progress or (lambda _m: None)
    options = _setup_options(setup_options)
    if cfg.is_local:
        checks = local_prerequisites(cfg)
        for c in checks:
            say(f"{'ok ' if c.ok else 'MISSING'} {c.name}: {c.detail}")
        missing = [c for c in checks if c.required and not c.ok]
        if missing:
            raise ConfigError([(c.name, f"missing: {c.detail}") for c in missing])
        return Provisioning(checks=checks)
    state = cloud.State.load(cfg.workdir)
    key = _public_key(public_key)
    forward = _agent_forwarding(cfg, forward_agent, setup)
    blazar, conn = clients or cloud.connect(cfg, cloud=cloud_name, clouds_file=clouds_file)
    result = cloud.provision(cfg, blazar, conn, state=state, public_key=key, progress=say,
                             **waits)
    if result.pending_until:
        say(f"the lease starts at {result.pending_until}: re-run 2_provision then")
        return Provisioning(pending_until=result.pending_until)
    out = Provisioning(address=result.address)
    login = _record_login(state, private_key, ssh_user, options.get("home"))
    if setup and result.address:
        from . import credentials, hostsetup, remote

        host = remote.Host(result.address, forward_agent=forward, **login)
        remote.wait_for_ssh(host, progress=say)
        conn_ssh = remote.connect(host)
        try:
            out.steps = hostsetup.setup_host(conn_ssh, cfg,
                                             credentials.SecretsStore(cfg.workdir),
                                             forward_agent=forward, progress=say, **options)
        finally:
            conn_ssh.close()
    return out


def _record_login(state, private_key: str | None, ssh_user: str | None,
                  home: str | None = None) -> dict[str, Any]:
    """How to log in to the server (``remote.Host`` keywords), recorded on state.json's
    server entry (``key_filename``, ``user``), where ``lab.server_host`` reads it; and the
    login user's home given to host setup (``home``; without one the entry has none), where
    ``lab.server_home`` reads it, so 3_launch_lab, 5_teardown and ``replab lab`` find the
    lab where host setup put its files."""
    login: dict[str, Any] = {}
    if private_key:
        login["key_filename"] = os.path.expanduser(private_key)
    if ssh_user:
        login["user"] = ssh_user
    entry = state.get("server")
    if entry and (login or home or entry.get("home")):
        kept = {k: v for k, v in entry.items() if k not in ("key_filename", "user", "home")}
        # None: a home recorded before no longer holds (record keeps unnamed fields)
        state.record("server", **kept, **login, home=str(home) if home else None)
    return login


@dataclass
class Teardown:
    deleted: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def check(self) -> Teardown:
        """Raise ReplabError listing the problems, if any (a headless run must fail)."""
        if self.problems:
            raise ReplabError("the teardown is incomplete:\n" + "\n".join(
                f"- {p}" for p in self.problems))
        return self

    def markdown(self) -> str:
        lines = ["| | |", "|---|---|"]
        lines += [f"| deleted | {d} |" for d in self.deleted]
        lines += [f"| kept | {k} |" for k in self.kept]
        lines += [f"| **problem** | {p} |" for p in self.problems]
        return "\n".join(lines) + "\n"


def teardown(cfg, *, delete_buckets: bool = False, keep_credentials: bool = False,
             cloud_name: str | None = None, clouds_file: str | None = None, clients=None,
             keep_lab: bool = False, without_backup: bool = False,
             progress: Say | None = None) -> Teardown:
    """Give everything back (see the module doc); idempotent. A step that fails is reported
    in ``problems`` and the others still run, so one failure leaks nothing else - except
    the MLflow backup: when it fails, nothing is stopped or deleted (the database would be
    lost with the server), unless ``without_backup``, which skips it.
    ``keep_lab``: back the lab up but leave it running (and everything else in place).
    ``clients``: a ``cloud.Clients`` for the compute site instead of authenticating;
    ``cloud_name``/``clouds_file``: the clouds.yaml entry to authenticate with."""
    from . import lab

    say = progress or (lambda _m: None)
    out = Teardown()

    def step(what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except ReplabError as exc:
            out.problems.append(f"{what}: {exc}")
            say(f"{what} failed: {exc}")
        except Exception as exc:  # a teardown must go on
            out.problems.append(f"{what}: {type(exc).__name__}: {exc}")
            say(f"{what} failed: {type(exc).__name__}: {exc}")
        return None

    lab_there = (cfg.workdir_path / "lab.json").exists()
    if lab_there and not cfg.is_local and not _server_live(cfg):
        say("the lab's server is already gone (state.json): nothing to back up or stop")
        lab_there = False
    if lab_there:
        if without_backup:
            say("no MLflow backup (without_backup=True): the lab's history since the last "
                "backup goes with it")
        else:
            info = step("MLflow backup", lambda: _backup_lab(cfg, say))
            if info is None:
                out.problems.append(
                    "nothing was stopped or deleted: the lab's MLflow database could not be "
                    "backed up (above). Fix that and run again, or pass without_backup=True "
                    "to give everything back without a last backup")
                return out
            out.kept.append(f"MLflow backup {info.location} ({info.runs} runs)")
        if keep_lab:
            out.kept.append("the lab, running (keep_lab=True)")
            return out
        stopped = step("stop the lab", lambda: lab.stop(cfg))
        if stopped is not None:
            out.deleted.append("the lab's services" + (f" ({', '.join(stopped)})"
                                                       if stopped else ""))
    if not cfg.is_local:
        connect = (lambda: clients) if clients else (
            lambda: cloud_connect(cfg, cloud_name, clouds_file))
        _teardown_cloud(cfg, out, step, connect, say)
    buckets = [cfg.buckets.data, cfg.buckets.artifacts, cfg.buckets.backups]
    if delete_buckets:  # before the credentials: deleting buckets needs the EC2 keys
        step("delete buckets", lambda: _delete_buckets(cfg, buckets, out))
    else:
        out.kept.append(f"buckets {', '.join(buckets)} (delete_buckets=True removes them)")
    if not cfg.is_local:
        _delete_credentials(cfg, out, step, cloud_name, clouds_file, keep_credentials)
    return out


def _server_live(cfg) -> bool:
    """Whether state.json records a running server with an address (``lab.server_host``)."""
    from . import lab

    try:
        lab.server_host(cfg)
    except ConfigError:
        return False
    return True


def cloud_connect(cfg, cloud_name: str | None, clouds_file: str | None):
    from . import cloud

    return cloud.connect(cfg, cloud=cloud_name, clouds_file=clouds_file)


def _backup_lab(cfg, say: Say):
    """The teardown's last MLflow backup: here (site ``local``), or on the GPU server over
    SSH with the replab host setup installed there."""
    from . import lab, remote
    from .lab import backup, schedule, server

    if cfg.is_local:
        return backup.backup(cfg, reason="teardown", progress=say)
    conn = remote.connect(lab.server_host(cfg))
    try:
        paths = server.host_paths(cfg, conn, home=lab.server_home(cfg))
        return schedule.backup_on_server(cfg, conn, paths, reason="teardown", progress=say)
    finally:
        conn.close()


def _teardown_cloud(cfg, out: Teardown, step, connect: Callable[[], Any], say) -> None:
    from . import cloud

    state = cloud.State.load(cfg.workdir)
    live = state.live()
    if live:
        clients = step("connect", connect)
        me = clients and step("identify the user", lambda: cloud.whoami(clients[1].session))
        if clients and me:
            blazar, conn = clients
            for kind, fn in (
                ("server", lambda e: cloud.delete_server(conn, e["id"], wait=True)),
                ("floating_ip", lambda e: None if e.get("owned_by_lease") else
                 cloud.release_floating_ip(conn, e["id"])),
                ("lease", lambda e: cloud.delete_lease(blazar, e["id"])),
                ("security_group", lambda e: cloud.delete_security_group(conn, e["id"])),
                ("keypair", lambda e: cloud.delete_keypair(conn, e["id"])),
            ):
                entry = state.get(kind)
                if not entry:
                    continue
                theirs = cloud.not_mine(f"{kind} {entry['name']} ({entry['id']})",
                                        entry.get("user_id"), me)
                if theirs:  # recorded as another user's: never deleted
                    out.problems.append(theirs)
                    continue
                if kind == "floating_ip" and entry.get("owned_by_lease"):
                    state.mark_deleted(kind)
                    out.kept.append(f"floating IP {entry['name']} (the lease returns it)")
                    continue
                done = step(f"delete {kind} {entry['name']}", lambda e=entry, f=fn: f(e))
                if done is not None:  # None: it failed (in problems), still live
                    state.mark_deleted(kind)
                    out.deleted.append(f"{kind} {entry['name']} ({entry['id']})")
                    say(f"deleted {kind} {entry['name']}")


def _delete_credentials(cfg, out: Teardown, step, cloud_name, clouds_file,
                        keep_credentials) -> None:
    if keep_credentials:
        out.kept.append("application and EC2 credentials (keep_credentials=True)")
        return
    from . import credentials

    store = credentials.SecretsStore(cfg.workdir)
    if store.credentials().get("application_credential") or store.credentials().get("ec2"):
        auth = step("authenticate at the storage site",
                    lambda: credentials.authenticate(cfg.storage_auth_url, cloud=cloud_name,
                                                     clouds_file=clouds_file))
        if auth:
            for o in step("delete credentials",
                          lambda: credentials.delete_credentials(auth, store)) or []:
                out.deleted.append(f"{o.what} {o.detail}")


def _delete_buckets(cfg, names: list[str], out: Teardown) -> None:
    from . import credentials, storage

    if cfg.is_local:
        for name in names:
            path = cfg.workdir_path / "buckets" / name
            if path.exists():
                shutil.rmtree(path)
                out.deleted.append(f"bucket directory {path}")
        return
    ec2 = credentials.SecretsStore(cfg.workdir).credentials().get("ec2")
    if not ec2:
        raise ConfigError("no EC2 credential left to delete the buckets with: delete them "
                          "before the credentials (keep_credentials=True), or in Horizon")
    s3 = storage.s3_client(cfg.s3_endpoint, ec2["access"], ec2["secret"])
    for name in names:
        if storage.delete_bucket(s3, name, force=True):
            out.deleted.append(f"bucket {name}")


def inventory_markdown(cfg) -> str:
    """What exists for this experiment (state.json, the lab, credentials, buckets)."""
    from . import cloud, credentials

    rows = [(kind, f"{e['name']} ({e['id']})") for kind, e in
            cloud.State.load(cfg.workdir).live().items()]
    if (cfg.workdir_path / "lab.json").exists():
        rows.append(("lab", str(cfg.workdir_path / "lab.json")))
    data = credentials.SecretsStore(cfg.workdir).credentials()
    if data.get("application_credential"):
        rows.append(("application credential", data["application_credential"]["name"]))
    if data.get("ec2"):
        rows.append(("EC2 credential", "yes"))
    rows.append(("buckets", ", ".join([cfg.buckets.data, cfg.buckets.artifacts,
                                       cfg.buckets.backups])))
    return "**What exists now**\n\n| | |\n|---|---|\n" + "\n".join(
        f"| {k} | {v} |" for k, v in rows) + "\n"
