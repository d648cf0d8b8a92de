"""pytest plugin: a real local OpenStack control plane with Blazar (tests/services/cloud.py).

Enable it with ``pytest_plugins = [..., "tests.fixtures_cloud"]`` in tests/conftest.py (or
``-p tests.fixtures_cloud``). It registers the marker ``openstack``.

The session fixture ``local_cloud`` runs ``tests/services/cloud.py up`` once (which reuses a
running, healthy control plane, or restores its snapshot, or starts from scratch), removes
what earlier test sessions may have left (servers, leases, keypairs, security groups of the
demo project), and stops the control plane at the end only if this session started it (set
REPLAB_CLOUD_KEEP=1 to keep it running for the next session). It installs nothing: without
what tests/services/cloud-install.sh installs it fails, saying so, unless
REPLAB_SKIP_SERVICES=1, when it skips.

The session fixture ``fip_sshd`` is "the provisioned server" as SSH sees it: OpenSSH's sshd
listening on port 22 of every reservable floating IP of the local cloud (127.10.0.10-.14;
Linux routes all of 127/8 to lo, so no interface is configured), accepting one generated key
for root. Whichever IP Blazar gives the lease, SSH to it reaches this machine. Its sessions
get the environment a server's docker commands need here (sshd ``SetEnv``, as a server's own
configuration would give it): ``DOCKER_HOST`` of the tests' Docker engine
(tests/docker_support.py ``engine_host``; the engine itself is started by the test that
needs it) and a ``PATH`` with Debian's directories first, so ``docker`` is Debian's client,
the one that talks to that engine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.docker_support import engine_host

SERVICES = Path(__file__).resolve().parent / "services"
SCRIPT = SERVICES / "cloud.py"
DEFAULT_STATE_DIR = SERVICES / ".state" / "cloud"
INSTALL_HINT = ("run `bash tests/services/cloud-install.sh` (or set REPLAB_SKIP_SERVICES=1 "
                "to skip)")

# the PATH of the floating IPs' SSH sessions: Debian's docker client before /usr/local's
SERVER_PATH = "/usr/sbin:/usr/bin:/sbin:/bin:/usr/local/sbin:/usr/local/bin"

_summary: list[str] = []


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "openstack: tests against the local OpenStack control "
                                       "plane with Blazar (tests/services/cloud.py)")


def pytest_terminal_summary(terminalreporter) -> None:
    for line in _summary:
        terminalreporter.write_line(f"local cloud: {line.removeprefix('cloud.py: ')}")


@dataclass(frozen=True)
class LocalCloud:
    """What a test needs to reach the control plane; ``state`` is cloud.json."""

    auth_url: str
    region: str
    state: dict[str, Any] = field(repr=False)

    def user(self, who: str) -> dict[str, str]:
        return self.state["users"][who]

    def session(self, who: str = "demo"):
        """A keystoneauth session, password auth, as ``demo`` (member) or ``admin``."""
        from keystoneauth1 import session
        from keystoneauth1.identity import v3

        u = self.user(who)
        auth = v3.Password(auth_url=self.auth_url, username=u["username"],
                           password=u["password"], project_name=u["project"],
                           user_domain_name="Default", project_domain_name="Default")
        return session.Session(auth=auth)

    def clients(self, who: str = "demo"):
        """replab.cloud's clients (Blazar, openstacksdk) on one session, as a notebook has."""
        from replab import cloud

        return cloud.clients(self.session(who), region=self.region)

    @property
    def public_network_id(self) -> str:
        return self.state["networks"]["public"]

    @property
    def hosts(self) -> dict[str, str]:
        """compute host -> node_type"""
        return self.state["compute_hosts"]

    def endpoint(self, kind: str) -> str:
        return self.state["endpoints"][kind]


def state_dir() -> Path:
    return Path(os.environ.get("REPLAB_CLOUD_STATE_DIR") or DEFAULT_STATE_DIR).absolute()


def run_script(verb: str, directory: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), verb, str(directory)],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout)


def missing_services() -> list[str]:
    spec = importlib.util.spec_from_file_location("replab_services_cloud", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.missing_binaries()


def clean(cloud: LocalCloud, timeout: float = 120) -> list[str]:
    """Delete every server, lease, keypair and security group (but `default`) of the demo
    project, and wait until Blazar has released the hosts; returns what it deleted."""
    blazar, conn = cloud.clients("demo")
    gone = []
    for server in conn.compute.servers():
        conn.compute.delete_server(server)
        gone.append(f"server {server.name}")
    for server in conn.compute.servers():
        conn.compute.wait_for_delete(server, wait=timeout)
    for lease in blazar.lease.list():
        blazar.lease.delete(lease["id"])
        gone.append(f"lease {lease['name']}")
    for kp in conn.compute.keypairs():
        conn.compute.delete_keypair(kp)
        gone.append(f"keypair {kp.name}")
    for sg in conn.network.security_groups(project_id=cloud.user("demo")["project_id"]):
        if sg.name != "default":
            conn.network.delete_security_group(sg)
            gone.append(f"security group {sg.name}")
    deadline = time.monotonic() + timeout
    while blazar.lease.list():
        if time.monotonic() > deadline:
            raise RuntimeError(f"leases still there after {timeout:.0f} s: "
                               f"{blazar.lease.list()}")
        time.sleep(1)
    return gone


@pytest.fixture(scope="session")
def local_cloud() -> Iterator[LocalCloud]:
    if os.environ.get("REPLAB_SKIP_SERVICES") == "1":
        pytest.skip("REPLAB_SKIP_SERVICES=1: the local OpenStack control plane is not started")
    missing = missing_services()
    if missing:
        pytest.fail(f"the local control plane cannot start, missing: {', '.join(missing)}; "
                    f"{INSTALL_HINT}", pytrace=False)
    directory = state_dir()
    already_running = run_script("status", directory, timeout=60).returncode == 0
    up = run_script("up", directory, timeout=900)
    if up.returncode != 0:
        pytest.fail(f"tests/services/cloud.py up failed (logs in {directory / 'logs'}):\n"
                    f"{up.stdout}{up.stderr}", pytrace=False)
    said = [line for line in up.stdout.splitlines() if line.startswith("cloud.py: ")]
    _summary.append(said[-1] if said else "cloud.py: up")
    print(f"\n{_summary[-1]}", flush=True)
    state = json.loads((directory / "cloud.json").read_text())
    cloud = LocalCloud(auth_url=state["auth_url"], region=state["region"], state=state)
    left = clean(cloud)
    if left:
        _summary.append(f"removed what an earlier session left: {', '.join(left)}")
    try:
        yield cloud
    finally:
        if not already_running and os.environ.get("REPLAB_CLOUD_KEEP") != "1":
            down = run_script("down", directory, timeout=180)
            if down.returncode != 0:
                raise RuntimeError(f"cloud.py down failed:\n{down.stdout}{down.stderr}")


@dataclass(frozen=True)
class FipSshd:
    """sshd on port 22 of the cloud's reservable floating IPs; log in as ``user`` with
    ``key`` (``key`` + ".pub" is the public key). ``log`` is sshd's log file."""

    addresses: tuple[str, ...]
    user: str
    key: str
    log: Path

    @property
    def public_key(self) -> str:
        return self.key + ".pub"

    def connections(self) -> list[str]:
        """The local addresses (floating IPs) clients connected to, in order, from sshd's
        log ("Connection from 127.0.0.1 port N on 127.10.0.12 port 22")."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [m.group(1) for m in re.finditer(r"Connection from \S+ port \d+ on (\S+) "
                                                 r"port 22", text)]

    def accepted(self) -> int:
        """How many logins sshd accepted (with the key)."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text.count("Accepted publickey for ")


def _answers_ssh(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1) as s:
            s.settimeout(2)
            return s.recv(4).startswith(b"SSH-")
    except OSError:
        return False


@pytest.fixture(scope="session")
def fip_sshd(local_cloud, tmp_path_factory) -> Iterator[FipSshd]:
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(sshd):
        pytest.fail("sshd is missing: run `bash tests/services/install.sh`", pytrace=False)
    if os.geteuid() != 0:
        pytest.skip("sshd on port 22 of the floating IPs needs root")
    addresses = tuple(local_cloud.state["reservable_floating_ips"])
    taken = [a for a in addresses if _answers_ssh(a, 22)]
    if taken:
        pytest.fail(f"port 22 of {', '.join(taken)} is taken (another test's sshd?)",
                    pytrace=False)
    d = tmp_path_factory.mktemp("fip-sshd")
    os.chmod(d, 0o755)
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"replab-{name}",
                        "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    listen = "".join(f"ListenAddress {a}:22\n" for a in addresses)
    (d / "sshd_config").write_text(
        f"{listen}HostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\n"
        f"Subsystem sftp internal-sftp\nPidFile {d}/sshd.pid\nAllowAgentForwarding yes\n"
        f"SetEnv DOCKER_HOST={engine_host()} PATH={SERVER_PATH}\n"
        "LogLevel VERBOSE\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    log_path = d / "sshd.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(d / "sshd_config")], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while not all(_answers_ssh(a, 22) for a in addresses):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"sshd on the floating IPs did not answer: "
                            f"{log_path.read_text()}", pytrace=False)
            time.sleep(0.1)
        yield FipSshd(addresses, "root", str(d / "client_key"), log_path)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
        log.close()
