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
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

SERVICES = Path(__file__).resolve().parent / "services"
SCRIPT = SERVICES / "cloud.py"
DEFAULT_STATE_DIR = SERVICES / ".state" / "cloud"
INSTALL_HINT = ("run `bash tests/services/cloud-install.sh` (or set REPLAB_SKIP_SERVICES=1 "
                "to skip)")

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
