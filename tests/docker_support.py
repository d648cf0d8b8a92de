"""Docker for the lab tests (tests/test_lab_docker.py, tests/test_lab_server.py).

A Docker engine of the tests' own (tests/services/docker.sh: its own data root and socket
under tests/services/.state/docker, so the images built there persist between sessions), the
Debian 12 base image made with debootstrap (no registry is reachable here), the lab's images
built FROM it under the tags compose.yaml names, a TCP forwarder through which containers
reach the local Swift (it listens on loopback only), and small helpers. The engine is started
with a do-nothing stand-in for the NVIDIA toolkit's hook on its PATH (:data:`NVIDIA_HOOK`), so
the GPU request of a GPU node type's lab is accepted on this machine without a GPU.

Fixtures (import them into a test module): ``docker_host`` (module scope; the engine's
``DOCKER_HOST``) and ``shared_dir``.

Environment: REPLAB_SKIP_SERVICES=1 skips; REPLAB_DOCKER_HOST uses that engine instead of
starting one (it must have the base image: ``tests/services/docker.sh base``);
REPLAB_DOCKER_STATE_DIR moves the state directory; REPLAB_DOCKER_CLI names the docker client
(default /usr/bin/docker, Debian's, where it exists, else ``docker`` on PATH).
"""

from __future__ import annotations

import dataclasses
import fcntl
import ipaddress
import json
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from replab.lab import compose

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "services" / "docker.sh"
STATE = Path(os.environ.get("REPLAB_DOCKER_STATE_DIR")
             or ROOT / "tests" / "services" / ".state" / "docker").absolute()
BASE_IMAGE = "replab-test/bookworm:1"
# The Debian client talks to the Debian engine (a newer docker CLI elsewhere on PATH may not).
DOCKER = (os.environ.get("REPLAB_DOCKER_CLI")
          or ("/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"))
TIMINGS: dict[str, float] = {}


# dockerd registers its "nvidia" device driver (GPU requests: compose's
# deploy.resources.reservations.devices, `docker run --gpus`) when the NVIDIA Container
# Toolkit's hook is on its PATH; the hook then runs as each such container's prestart hook.
# This machine has no GPU: a hook that does nothing stands in for the toolkit, so the lab of
# a GPU node type starts here with the compose file Chameleon's servers get.
NVIDIA_HOOK = "nvidia-container-runtime-hook"
HOOK_DIR = STATE / "nvidia-hook-stub"


def engine_host() -> str:
    """The ``DOCKER_HOST`` the tests' engine has (or will have once started):
    REPLAB_DOCKER_HOST, else the socket docker.sh puts in the state directory."""
    return os.environ.get("REPLAB_DOCKER_HOST") or f"unix://{STATE}/docker.sock"


def _hook_stub() -> Path:
    hook = HOOK_DIR / NVIDIA_HOOK
    if not hook.exists():
        HOOK_DIR.mkdir(parents=True, exist_ok=True)
        hook.write_text("#!/bin/sh\n# replab tests: no GPU here; the NVIDIA hook's stand-in\n"
                        "cat >/dev/null\nexit 0\n")
        hook.chmod(0o755)
    return hook


def script(verb: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = None
    if verb == "up":  # dockerd finds the hook on the PATH it starts with
        env = dict(os.environ, PATH=f"{_hook_stub().parent}:{os.environ.get('PATH', '')}")
    return subprocess.run(["bash", str(SCRIPT), verb, str(STATE)], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout, env=env)


def require_gpu_requests(env: dict) -> None:
    """Fail, saying why, when the engine refuses GPU requests (a dockerd started without
    :data:`NVIDIA_HOOK` on its PATH, e.g. by hand: stop it, the fixture starts it again)."""
    probe = run([DOCKER, "run", "--rm", "--gpus", "all", "--network", "none", BASE_IMAGE,
                 "true"], env, timeout=120, check=False)
    if probe.returncode != 0:
        pytest.fail(f"the Docker engine at {env.get('DOCKER_HOST')} refuses GPU requests "
                    f"({probe.stderr.strip()[-300:]}): it was started without the NVIDIA hook "
                    f"stand-in on its PATH ({HOOK_DIR}); `bash {SCRIPT} down` and run again",
                    pytrace=False)


def http() -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # loopback only: no proxies from the environment
    return s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def docker_host() -> Iterator[str]:
    """``DOCKER_HOST`` of the tests' dockerd (started here unless it already runs, then
    stopped at the end of the module), with the base image built."""
    if os.environ.get("REPLAB_SKIP_SERVICES") == "1":
        pytest.skip("REPLAB_SKIP_SERVICES=1: Docker not started")
    if os.environ.get("REPLAB_DOCKER_HOST"):
        yield os.environ["REPLAB_DOCKER_HOST"]
        return
    missing = [c for c in ("dockerd", "docker-compose", "debootstrap") if not shutil.which(c)]
    if missing:
        pytest.fail(f"Docker for the lab test is missing {', '.join(missing)}: run "
                    "`bash tests/services/docker.sh install` (or REPLAB_SKIP_SERVICES=1)",
                    pytrace=False)
    already = script("status", 60).returncode == 0
    t = time.monotonic()
    up = script("up", 120)
    if up.returncode != 0:
        pytest.fail(f"docker.sh up failed:\n{up.stdout}{up.stderr}", pytrace=False)
    TIMINGS["dockerd up"] = time.monotonic() - t
    host = next(line.split("=", 1)[1] for line in up.stdout.splitlines()
                if line.startswith("DOCKER_HOST="))
    try:
        t = time.monotonic()
        base = script("base", 600)
        if base.returncode != 0:
            pytest.fail(f"docker.sh base failed:\n{base.stdout}{base.stderr}", pytrace=False)
        TIMINGS["base image"] = time.monotonic() - t
        yield host
    finally:
        if not already:
            down = script("down", 120)
            assert down.returncode == 0, down.stdout + down.stderr


def docker_env(docker_host: str) -> dict[str, str]:
    """This process's environment for docker / docker-compose against ``docker_host``
    (without AWS_CA_BUNDLE, which breaks S3 clients talking plain HTTP)."""
    env = dict(os.environ, DOCKER_HOST=docker_host)
    env.pop("AWS_CA_BUNDLE", None)
    return env


class Forward:
    """A TCP forwarder from ``listen`` to ``target`` (host, port) in threads: containers reach
    the local Swift, which listens on loopback only, through the Docker bridge's address."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]):
        self.target = target
        self.server = socket.create_server(listen)
        self.host = listen[0]
        self.port = self.server.getsockname()[1]
        self.stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _accept(self) -> None:
        while not self.stop:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=30)
            except OSError:
                client.close()  # the target is gone (its stack stopped): fail the client fast
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.stop = True
        self.server.close()


def interface_ipv4(name: str) -> str | None:
    """The IPv4 address of this machine's network interface ``name``; None when it has none
    (SIOCGIFADDR: no dependency on iproute2's ``ip``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])


def bridge_gateway(env: dict) -> str:
    """The default bridge's gateway address, whatever docker CLI and engine: IPAM's
    ``Gateway`` where the engine reports it (dockerd started with ``--bip``, or a network
    store that recorded it), else the IPv4 address of the bridge's interface (``docker0``),
    which is the gateway dockerd gives the bridge's containers (Docker 20.10 on a fresh
    data root reports only the subnet, to every CLI)."""
    bridge = json.loads(run([DOCKER, "network", "inspect", "bridge"], env).stdout)[0]
    configs = (bridge.get("IPAM") or {}).get("Config") or []
    for c in configs:
        if c.get("Gateway"):
            return c["Gateway"].split("/")[0]
    name = (bridge.get("Options") or {}).get("com.docker.network.bridge.name", "docker0")
    address = interface_ipv4(name)
    subnets = [ipaddress.ip_network(c["Subnet"]) for c in configs if c.get("Subnet")]
    if address is None or not any(ipaddress.ip_address(address) in n for n in subnets):
        pytest.fail(f"the Docker engine at {env.get('DOCKER_HOST')} reports no gateway for "
                    f"its default bridge and this machine's interface {name!r} has "
                    f"{address or 'no IPv4 address'} (subnets {', '.join(map(str, subnets))}): "
                    "the engine must run on this machine (tests/services/docker.sh up)",
                    pytrace=False)
    return address


def forward_to_bridge(url: str, env: dict) -> Forward:
    """A :class:`Forward` from the default bridge's gateway address (reachable from
    containers and from this machine) to ``url``'s host and port; ``.endpoint`` is its URL."""
    gateway = bridge_gateway(env)
    host_port = url.rstrip("/").rsplit("//", 1)[1].split("/")[0]
    target = (host_port.rsplit(":", 1)[0], int(host_port.rsplit(":", 1)[1]))
    return Forward((gateway, 0), target)


def run(argv: list[str], env: dict, timeout: float = 600, check: bool = True
        ) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(argv[:4])} ... exit {proc.returncode}:\n"
                    f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}", pytrace=False)
    return proc


def build(image: compose.Image, env: dict) -> None:
    """Build ``image`` from this checkout FROM the test base image, under its own tag (the
    engine's layer cache makes a rebuild of unchanged sources take seconds)."""
    image = dataclasses.replace(image, build_args={**image.build_args, "BASE": BASE_IMAGE})
    t = time.monotonic()
    run([DOCKER, *image.build_argv(str(ROOT))], env, timeout=900)
    TIMINGS[f"build {image.name}"] = time.monotonic() - t


def build_lab_images(cfg, env: dict) -> None:
    """The MLflow image and ``cfg``'s Jupyter image, tagged as compose.yaml names them."""
    t = time.monotonic()
    build(compose.mlflow_image(), env)
    build(compose.image_for(cfg), env)
    TIMINGS["builds"] = time.monotonic() - t


@pytest.fixture
def shared_dir(tmp_path) -> Iterator[Path]:
    """A directory that is a mount point with shared propagation, as / is on a systemd host
    (here / is private): the rclone mount made under it can be bound ``rslave``."""
    node = tmp_path / "node"
    node.mkdir()
    subprocess.run(["mount", "--bind", str(node), str(node)], check=True)
    try:
        subprocess.run(["mount", "--make-rshared", str(node)], check=True)
        yield node
    finally:
        subprocess.run(["umount", "-l", str(node)], check=False)


def wait_healthy(container: str, env: dict, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        status = run([DOCKER, "inspect", "--format", "{{.State.Health.Status}}", container],
                     env).stdout.strip()
        if status == "healthy":
            return
        time.sleep(1)
    logs = run([DOCKER, "logs", "--tail", "40", container], env, check=False)
    pytest.fail(f"{container} is {status!r} after {timeout} s:\n{logs.stdout}{logs.stderr}",
                pytrace=False)


def print_timings(title: str, capsys) -> None:
    """Show :data:`TIMINGS` past pytest's capture, then clear them for the next test."""
    with capsys.disabled():
        print(f"\n{title}: " + ", ".join(f"{k} {v:.0f}s" for k, v in TIMINGS.items()))
    TIMINGS.clear()
