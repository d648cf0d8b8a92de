"""pytest plugin: a real local OpenStack (Keystone + Swift with S3) for the tests.

Enable it from tests/conftest.py with ``pytest_plugins = ["tests.fixtures_openstack"]``.

The session fixture ``local_openstack`` runs ``tests/services/openstack.py up`` (which reuses a
stack that is already running and healthy) and stops the stack at the end of the session only
if this session started it. It installs nothing: without what ``tests/services/install.sh``
installs it fails, saying so, unless REPLAB_SKIP_SERVICES=1, when it skips.

Environment: REPLAB_OPENSTACK_STATE_DIR (default tests/services/.state/openstack) and the
port variables that tests/services/openstack.py documents.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import openstack.connection

SERVICES = Path(__file__).resolve().parent / "services"
SCRIPT = SERVICES / "openstack.py"
DEFAULT_STATE_DIR = SERVICES / ".state" / "openstack"
INSTALL_HINT = "run `bash tests/services/install.sh` (or set REPLAB_SKIP_SERVICES=1 to skip)"

_summary: list[str] = []  # what `up` said, for the end-of-session summary


@dataclass(frozen=True)
class User:
    username: str
    password: str
    project: str
    user_id: str
    project_id: str
    domain: str = "Default"

    def auth(self, auth_url: str) -> dict[str, str]:
        """The ``auth`` dict of a password login (openstacksdk, keystoneauth)."""
        return {
            "auth_url": auth_url,
            "username": self.username,
            "password": self.password,
            "project_name": self.project,
            "user_domain_name": self.domain,
            "project_domain_name": self.domain,
        }


@dataclass(frozen=True)
class LocalOpenStack:
    """What a test needs to reach the local stack; ``state`` is openstack.json as it stands."""

    auth_url: str  # http://127.0.0.1:PORT/v3
    region: str  # RegionOne
    swift_url: str  # Keystone-authenticated proxy (Swift API under /v1, S3 API at /)
    s3_endpoint: str  # same proxy: S3 API, EC2 credentials validated by Keystone (s3token)
    s3_region: str  # us-east-1 (what boto3 must sign for)
    storage_url_template: str  # .../v1/AUTH_%(project_id)s, as in the catalog
    demo: User  # regular user, role member in project demo
    admin: User  # cloud admin, role admin in project admin
    tempauth_url: str  # second proxy, tempauth (no Keystone)
    tempauth_user: str
    tempauth_key: str
    state_file: Path
    state: dict[str, Any] = field(repr=False)

    @property
    def demo_storage_url(self) -> str:
        return self.storage_url_template.replace("%(project_id)s", self.demo.project_id)

    def connection(self, user: str = "demo") -> openstack.connection.Connection:
        """An openstacksdk Connection, password auth, for ``demo`` or ``admin``.

        Built from arguments only: no clouds.yaml and no OS_* variables are read.
        """
        import openstack.connection

        who = {"demo": self.demo, "admin": self.admin}[user]
        return openstack.connection.Connection(
            auth_type="password",
            auth=who.auth(self.auth_url),
            region_name=self.region,
            identity_interface="public",
        )

    @classmethod
    def from_state(cls, path: Path) -> LocalOpenStack:
        state = json.loads(path.read_text())

        def user(key: str) -> User:
            u = state["users"][key]
            return User(
                username=u["username"],
                password=u["password"],
                project=u["project"],
                user_id=u["user_id"],
                project_id=u["project_id"],
                domain=u["domain"],
            )

        swift = state["swift"]
        return cls(
            auth_url=state["keystone"]["auth_url"],
            region=state["region"],
            swift_url=swift["url"],
            s3_endpoint=swift["s3_endpoint"],
            s3_region=swift["s3_region"],
            storage_url_template=swift["storage_url_template"],
            demo=user("demo"),
            admin=user("admin"),
            tempauth_url=swift["tempauth"]["url"],
            tempauth_user=swift["tempauth"]["user"],
            tempauth_key=swift["tempauth"]["key"],
            state_file=path,
            state=state,
        )


def demo_connection(stack: LocalOpenStack) -> openstack.connection.Connection:
    """An openstacksdk Connection as the demo user (password auth)."""
    return stack.connection("demo")


def state_dir() -> Path:
    return Path(os.environ.get("REPLAB_OPENSTACK_STATE_DIR") or DEFAULT_STATE_DIR).absolute()


def run_script(verb: str, directory: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """tests/services/openstack.py VERB DIR, with this interpreter (it needs only the stdlib)."""
    return subprocess.run(
        [sys.executable, str(SCRIPT), verb, str(directory)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def missing_services() -> list[str]:
    """What install.sh provides and this machine lacks."""
    # Loaded by path under another name: `import openstack` must stay openstacksdk.
    spec = importlib.util.spec_from_file_location("replab_services_openstack", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.missing_binaries()


@pytest.fixture(scope="session")
def local_openstack() -> Iterator[LocalOpenStack]:
    if os.environ.get("REPLAB_SKIP_SERVICES") == "1":
        pytest.skip("REPLAB_SKIP_SERVICES=1: local OpenStack not started")
    missing = missing_services()
    if missing:
        pytest.fail(
            f"the local OpenStack cannot start, missing: {', '.join(missing)}; {INSTALL_HINT}",
            pytrace=False,
        )
    directory = state_dir()
    already_running = run_script("status", directory, timeout=60).returncode == 0
    up = run_script("up", directory)
    if up.returncode != 0:
        pytest.fail(
            "tests/services/openstack.py up failed (logs in "
            f"{directory / 'logs'}):\n{up.stdout}{up.stderr}",
            pytrace=False,
        )
    stack = LocalOpenStack.from_state(directory / "openstack.json")
    said = [line for line in up.stdout.splitlines() if line.startswith("openstack.py: ")]
    _summary.append(said[-1] if said else "openstack.py: up")
    try:
        yield stack
    finally:
        if not already_running:
            down = run_script("down", directory, timeout=120)
            if down.returncode != 0:
                raise RuntimeError(f"openstack.py down failed:\n{down.stdout}{down.stderr}")


def pytest_terminal_summary(terminalreporter) -> None:
    for line in _summary:
        terminalreporter.write_line(f"local OpenStack: {line.removeprefix('openstack.py: ')}")


def clouds_yaml(stack: LocalOpenStack, path: Path, name: str = "demo") -> str:
    """Write a clouds.yaml holding the demo user's password entry ``name`` (what a
    researcher has on a laptop) and return its path."""
    import yaml

    d = stack.demo
    path.write_text(yaml.safe_dump({"clouds": {name: {
        "auth": {"auth_url": stack.auth_url, "username": d.username, "password": d.password,
                 "project_name": d.project, "user_domain_name": "Default",
                 "project_domain_name": "Default"},
        "region_name": stack.region}}}))
    return str(path)


@contextlib.contextmanager
def ec2_credential(stack: LocalOpenStack) -> Iterator[dict[str, Any]]:
    """An EC2 credential of the demo user, made with an unrestricted application credential
    (Keystone 29 creates EC2 credentials from those); both deleted afterwards."""
    import uuid

    import openstack.connection

    conn = demo_connection(stack)
    uid = conn.current_user_id
    app = conn.identity.create_application_credential(
        user=uid, name=f"replab-test-{uuid.uuid4().hex[:8]}", unrestricted=True)
    ac = openstack.connection.Connection(
        auth_type="v3applicationcredential",
        auth={"auth_url": stack.auth_url, "application_credential_id": app.id,
              "application_credential_secret": app.secret},
        region_name=stack.region)
    cred = None
    try:
        r = ac.identity.post(f"/users/{uid}/credentials/OS-EC2",
                             json={"tenant_id": stack.demo.project_id})
        assert r.status_code == 201, r.text
        cred = r.json()["credential"]
        yield {"access": cred["access"], "secret": cred["secret"], "ac_id": app.id,
               "ac_secret": app.secret, "stack": stack}
    finally:
        if cred is not None:
            r = ac.identity.delete(f"/users/{uid}/credentials/OS-EC2/{cred['access']}")
            assert r.status_code == 204, r.text
        ac.close()
        conn.identity.delete_application_credential(uid, app.id)
        conn.close()


@pytest.fixture
def ec2(local_openstack) -> Iterator[dict[str, Any]]:
    """An EC2 credential of the demo user for this test (see :func:`ec2_credential`)."""
    with ec2_credential(local_openstack) as cred:
        yield cred


def unique_name(stem: str) -> str:
    """``stem``-8 hex: a name that no earlier (interrupted) or concurrent test run holds, so
    a test creating Keystone or Swift state by that name starts from a clean state."""
    import uuid

    return f"{stem}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def removed_afterwards(stack: LocalOpenStack, *, app_credentials: tuple[str, ...] = (),
                       stores: tuple[Any, ...] = (), containers: tuple[str, ...] = ()
                       ) -> Iterator[None]:
    """Whatever the test leaves, delete on the way out (passed or not), as the demo user:
    the application credentials named ``app_credentials``, the application and EC2
    credentials the secrets ``stores`` (replab.credentials.SecretsStore) hold at the end, and
    the Swift containers (S3 buckets) ``containers`` with their objects. Only what is named
    goes: tests running concurrently against the same stack keep theirs."""
    try:
        yield
    finally:
        conn = demo_connection(stack)
        try:
            uid = conn.current_user_id
            apps, ec2s = set(), set()
            for name in app_credentials:
                r = conn.identity.get(f"/users/{uid}/application_credentials?name={name}")
                apps |= {c["id"] for c in r.json()["application_credentials"]}
            for store in stores:
                data = store.credentials() if store.dir.exists() else {}
                apps |= {(data.get("application_credential") or {}).get("id")} - {None}
                ec2s |= {(data.get("ec2") or {}).get("access")} - {None}
            for app in apps:
                r = conn.identity.delete(f"/users/{uid}/application_credentials/{app}")
                assert r.status_code in (204, 404), r.text
            for access in ec2s:
                r = conn.identity.delete(f"/users/{uid}/credentials/OS-EC2/{access}")
                assert r.status_code in (204, 404), r.text
            present = {c.name for c in conn.object_store.containers()}
            for name in set(containers) & present:
                for obj in conn.object_store.objects(name):
                    conn.object_store.delete_object(obj, container=name, ignore_missing=True)
                conn.object_store.delete_container(name, ignore_missing=True)
        finally:
            conn.close()
