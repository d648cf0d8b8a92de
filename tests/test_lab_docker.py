"""The lab's compose stack brought up for real with Docker.

A Docker engine of the tests' own (tests/services/docker.sh) builds the MLflow and the CPU
Jupyter images from docker/ FROM a Debian 12 base made with debootstrap (no registry is
reachable here), renders the compose file of a sklearn / no-GPU config whose S3 endpoint is
the local Swift (tests/services/openstack.py), and brings the stack up: MLflow healthy, a run
logged from inside the Jupyter container by replab.tracking lands in the Swift bucket through
MLflow's artifact proxy (Jupyter holds no S3 key), the data bucket's rclone FUSE mount shows up
inside the container and follows an unmount and a new mount made while the container runs,
Jupyter answers 200 with its token and 302 without, and every published
port is on 127.0.0.1. Then down.

Debian's docker-compose is v1.29, whose schema rejects the compose spec's top-level ``name:``;
the test removes ``name`` and passes the same name with ``-p``. That is the only change made
to the rendered file besides free host ports (5000 and 8888 may be taken on a test machine).

Environment: REPLAB_SKIP_SERVICES=1 skips; REPLAB_DOCKER_HOST uses that engine instead of
starting one (it must have the base image: ``tests/services/docker.sh base``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from replab import config, rclone, storage
from replab.lab import compose

pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.docker]

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "services" / "docker.sh"
STATE = Path(os.environ.get("REPLAB_DOCKER_STATE_DIR")
             or ROOT / "tests" / "services" / ".state" / "docker").absolute()
BASE_IMAGE = "replab-test/bookworm:1"
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"
TIMINGS: dict[str, float] = {}


def script(verb: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), verb, str(STATE)], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


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


class Forward:
    """A TCP forwarder from ``listen`` to ``target`` (host, port) in threads: containers reach
    the local Swift, which listens on loopback only, through the Docker bridge's address."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]):
        self.target = target
        self.server = socket.create_server(listen)
        self.port = self.server.getsockname()[1]
        self.stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target, timeout=30)
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


def run(argv: list[str], env: dict, timeout: float = 600, check: bool = True
        ) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(argv[:4])} ... exit {proc.returncode}:\n"
                    f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}", pytrace=False)
    return proc


def build(image: compose.Image, env: dict) -> None:
    image = dataclasses.replace(image, build_args={**image.build_args, "BASE": BASE_IMAGE})
    t = time.monotonic()
    run([DOCKER, *image.build_argv(str(ROOT))], env, timeout=900)
    TIMINGS[f"build {image.name}"] = time.monotonic() - t


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


IN_JUPYTER = """
import json, os
import mlflow, replab.tracking
assert not [k for k in os.environ if k.startswith("AWS_")], "jupyter holds S3 keys"
with open("/tmp/result.txt", "w") as f:
    f.write("artifact through the proxy")
with replab.tracking.start_run(params={"lr": 0.1}, seed=0) as run:
    run.log_metrics({"loss": 0.5}, step=0)
    mlflow.log_artifact("/tmp/result.txt")
    run_id = mlflow.active_run().info.run_id
print(json.dumps({"run_id": run_id, "uri": os.environ["MLFLOW_TRACKING_URI"],
                  "data": sorted(os.listdir("/home/jovyan/data"))}))
"""


def test_lab_stack_comes_up_logs_to_swift_and_guards_jupyter(
        docker_host, local_openstack, ec2, shared_dir, tmp_path, capsys):
    started = time.monotonic()
    env = dict(os.environ, DOCKER_HOST=docker_host)
    env.pop("AWS_CA_BUNDLE", None)
    stack = local_openstack
    name = f"labdock-{uuid.uuid4().hex[:6]}"

    # The local Swift, reachable from containers at the default bridge's gateway address.
    bridge = json.loads(run([DOCKER, "network", "inspect", "bridge"], env).stdout)
    gateway = bridge[0]["IPAM"]["Config"][0]["Gateway"]
    s3_url = stack.s3_endpoint.rstrip("/")
    host_port = s3_url.rsplit("//", 1)[1].split("/")[0]
    target = (host_port.rsplit(":", 1)[0], int(host_port.rsplit(":", 1)[1]))
    forward = Forward((gateway, 0), target)
    endpoint = f"http://{gateway}:{forward.port}"

    cfg = config.build({"experiment": name, "repository": "https://github.com/acme/p.git",
                        "frameworks": ["sklearn"], "site": "CHI@UC",
                        "node_type": "compute_skylake", "endpoints": {"s3_endpoint": endpoint}})
    s3 = storage.s3_client(stack.s3_endpoint, ec2["access"], ec2["secret"])
    storage.ensure_buckets(s3, [cfg.buckets.artifacts, cfg.buckets.data])
    s3.put_object(Bucket=cfg.buckets.data, Key="train.csv", Body=b"x,y\n1,2\n")

    # The node's directories; the data bucket mounted with rclone as on the server.
    # (the images' build context, "source", is this checkout)
    paths = dataclasses.replace(compose.HostPaths.under(str(shared_dir)), source=str(ROOT))
    for d in paths.directories():
        Path(d).mkdir(parents=True, exist_ok=True)
    Path(paths.repo, "train.py").write_text("print('hello')\n")
    for d in (paths.repo, paths.lab, paths.mlflow_dir, paths.cache, paths.hf_home):
        os.chown(d, 1000, 1000)
    conf = rclone.write_rclone_conf(tmp_path / "rclone.conf", {
        "s3": rclone.s3_remote(stack.s3_endpoint, ec2["access"], ec2["secret"],
                               provider="Other")})
    rclone.mount("s3", cfg.buckets.data, paths.data, config=conf,
                 log_file=tmp_path / "rclone.log", cache_dir=tmp_path / "rclone-cache")

    token = uuid.uuid4().hex
    lab_env = {"JUPYTER_TOKEN": token, "MLFLOW_TRACKING_PASSWORD": uuid.uuid4().hex,
               "AWS_ACCESS_KEY_ID": ec2["access"], "AWS_SECRET_ACCESS_KEY": ec2["secret"],
               "AWS_DEFAULT_REGION": stack.s3_region, "MLFLOW_S3_ENDPOINT_URL": endpoint}
    compose_path, env_path = compose.write_compose(cfg, paths.lab, env=lab_env,
                                                   host_paths=paths)
    assert ec2["secret"] not in compose_path.read_text()

    # docker-compose v1.29 rejects the top-level `name:`: pass it with -p instead.
    spec = yaml.safe_load(compose_path.read_text())
    project = spec.pop("name")
    ports = {"mlflow": free_port(), "jupyter": free_port()}
    inner = {"mlflow": compose.MLFLOW_PORT, "jupyter": compose.JUPYTER_PORT}
    for svc, port in ports.items():
        spec["services"][svc]["ports"] = [f"127.0.0.1:{port}:{inner[svc]}"]
    v1_file = Path(paths.lab) / "compose.v1.yaml"
    v1_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    dc = ["docker-compose", "--project-directory", paths.lab, "-p", project, "-f", str(v1_file)]

    t = time.monotonic()
    build(compose.mlflow_image(), env)
    build(compose.image_for(cfg), env)
    TIMINGS["builds"] = time.monotonic() - t
    try:
        t = time.monotonic()
        run([*dc, "up", "-d", "--no-build"], env, timeout=600)
        ids = {svc: run([*dc, "ps", "-q", svc], env).stdout.strip() for svc in ports}
        wait_healthy(ids["mlflow"], env)
        TIMINGS["up, mlflow healthy"] = time.monotonic() - t
        s = http()
        assert s.get(f"http://127.0.0.1:{ports['mlflow']}/health", timeout=10).text == "OK"

        # Nothing published beyond loopback.
        for svc, cid in ids.items():
            bindings = json.loads(run([DOCKER, "inspect", "--format",
                                       "{{json .NetworkSettings.Ports}}", cid], env).stdout)
            hosts = {b["HostIp"] for v in bindings.values() if v for b in v}
            assert hosts == {"127.0.0.1"}, (svc, bindings)

        # A run from inside the Jupyter container, artifacts through MLflow's proxy.
        t = time.monotonic()
        wait_healthy(ids["jupyter"], env)
        out = run([*dc, "exec", "-T", "jupyter", "python3", "-c", IN_JUPYTER], env,
                  timeout=300)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        TIMINGS["run logged from jupyter"] = time.monotonic() - t
        assert result["uri"] == "http://mlflow:5000"
        assert result["data"] == ["train.csv"]  # the FUSE mount, seen through rslave
        keys = storage.list_objects(s3, cfg.buckets.artifacts)
        mine = [k for k in keys if f"/{result['run_id']}/artifacts/" in k]
        assert any(k.endswith("/artifacts/result.txt") for k in mine), sorted(keys)
        assert any(k.endswith("replab/manifest.json") for k in mine), sorted(keys)
        manifest = [k for k in mine if k.endswith("replab/manifest.json")][0]
        body = json.loads(s3.get_object(Bucket=cfg.buckets.artifacts, Key=manifest)["Body"]
                          .read())
        container = json.dumps(body)
        assert compose.image_for(cfg).name in container  # REPLAB_IMAGE reached the capture
        assert token not in container and ec2["secret"] not in container

        # rclone restarts on the node (systemd does on failure): the container follows.
        ls = [*dc, "exec", "-T", "jupyter", "ls", "/home/jovyan/data/"]
        rclone.unmount(paths.data, flush_timeout=5)
        assert run(ls, env).stdout.split() == []
        s3.put_object(Bucket=cfg.buckets.data, Key="more.csv", Body=b"x\n")
        rclone.mount("s3", cfg.buckets.data, paths.data, config=conf,
                     log_file=tmp_path / "rclone.log", cache_dir=tmp_path / "rclone-cache")
        assert run(ls, env).stdout.split() == ["more.csv", "train.csv"]

        # Jupyter requires its token.
        lab = f"http://127.0.0.1:{ports['jupyter']}/lab"
        # (a fresh session each time: a request with the token sets a login cookie)
        assert http().get(f"{lab}?token={token}", timeout=10).status_code == 200
        no_token = http().get(lab, timeout=10, allow_redirects=False)
        assert no_token.status_code == 302 and "/login" in no_token.headers["Location"]
        wrong = http().get(f"{lab}?token=wrong", timeout=10, allow_redirects=False)
        assert wrong.status_code == 302
    finally:
        t = time.monotonic()
        down = run([*dc, "down", "--volumes", "--remove-orphans"], env, timeout=300,
                   check=False)
        TIMINGS["down"] = time.monotonic() - t
        rclone.unmount(paths.data, flush_timeout=5)
        forward.close()
        for bucket in (cfg.buckets.artifacts, cfg.buckets.data):
            storage.delete_bucket(s3, bucket, force=True)
        TIMINGS["total (test)"] = time.monotonic() - started
        with capsys.disabled():
            print("\nlab docker timings: " + ", ".join(f"{k} {v:.0f}s"
                                                     for k, v in TIMINGS.items()))
    assert down.returncode == 0, down.stdout + down.stderr
