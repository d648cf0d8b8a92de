"""replab.lab.server: the lab launched on "the GPU server" over real SSH, with real Docker.

The pure parts (compose command per Compose version, the spec as uploaded, health parsing,
the tunnel command) are unit tests. The end-to-end test logs in over SSH (tests/fixtures_ssh:
sshd on 127.0.0.1, as this machine's user) to this machine, where the tests' own dockerd runs
(tests/docker_support.py), and calls :func:`launch_remote` as 3_launch_lab does, with the
options a test machine needs: ``paths`` under a temporary directory, ``docker_env`` pointing
the remote commands at the tests' dockerd and Debian's docker client, ``build=False`` (the
images are built FROM the debootstrap base beforehand: no registry here; the same tags as
tests/test_lab_docker.py, so they are reused) and free ``ports``. Debian's Compose is v1.29,
so this runs the v1 branch; Chameleon servers run the v2 branch (same calls, other argv).

What a user relies on: lab.json (URLs, tunnel command, no secret), MLflow answering on the
published 127.0.0.1 port, a second launch that uploads nothing and leaves the running
containers alone, the stop, and the history surviving a new server: the database is backed
up to the backups bucket (local Swift), removed as a new lease would have it, and the next
launch restores it, so the run logged before is in MLflow again, artifacts included.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from replab import (
    clientfiles,
    config,
    credentials,
    hostsetup,
    remote,
    s3client,
    secretsstore,
    storage,
)
from replab.errors import ConfigError
from replab.lab import backup, compose, server
from tests import docker_support
from tests.docker_support import (
    DOCKER,
    ROOT,
    TIMINGS,
    build_lab_images,
    docker_env,
    forward_to_bridge,
    free_port,
    http,
    print_timings,
    run,
)
from tests.lab_support import assert_runs_present, log_example_runs

docker_host = docker_support.docker_host  # fixtures
shared_dir = docker_support.shared_dir


def cfg_of(**extra):
    raw = {"experiment": "exp1", "repository": "https://github.com/acme/p.git",
           "frameworks": ["sklearn"], "site": "CHI@UC", "node_type": "compute_skylake"}
    raw.update(extra)
    return config.build(raw)


# -- pure parts --------------------------------------------------------------------------------
def test_compose_argv_per_version():
    paths = compose.HostPaths.under("/home/cc/exp1")
    where = ["--project-directory", "/home/cc/exp1/lab", "-f", "/home/cc/exp1/lab/compose.yaml"]
    assert server.compose_argv(paths, "up", "-d") == ["docker", "compose", *where, "up", "-d"]
    assert server.compose_argv(paths, "ps", "-q", flavor="v1", project="replab-exp1") == [
        "docker-compose", "-p", "replab-exp1", *where, "ps", "-q"]
    with pytest.raises(ValueError):
        server.compose_argv(paths, "ps", flavor="v1")
    with pytest.raises(ValueError):
        server.compose_argv(paths, "ps", flavor="v3", project="p")


def test_server_spec_v2_is_the_rendered_file_v1_drops_the_name(tmp_path):
    cfg = cfg_of()
    spec = compose.build_compose(cfg)
    before = json.dumps(spec)
    v2 = server.server_spec(spec)
    assert v2 == spec
    env = {"JUPYTER_TOKEN": "t", "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "s",
           "MLFLOW_S3_ENDPOINT_URL": "http://s3"}
    written, _ = compose.write_compose(cfg, tmp_path, env=env)
    assert compose.render_compose(v2) == written.read_text()  # v2: exactly as rendered

    v1 = server.server_spec(spec, flavor="v1")
    assert "name" not in v1 and spec["name"] == "replab-exp1"  # the name goes to -p
    assert v1 == {k: v for k, v in spec.items() if k != "name"}
    assert json.dumps(spec) == before  # the input is left alone

    moved = server.server_spec(spec, flavor="v1", ports={"mlflow": 15000, "jupyter": 18888})
    assert moved["services"]["mlflow"]["ports"] == ["127.0.0.1:15000:5000"]
    assert moved["services"]["jupyter"]["ports"] == ["127.0.0.1:18888:8888"]
    assert spec["services"]["mlflow"]["ports"] == ["127.0.0.1:5000:5000"]
    with pytest.raises(ConfigError, match="postgres"):
        server.server_spec(spec, ports={"postgres": 5432})


def test_services_health_reads_compose_v2_ps_and_docker_inspect():
    lines = ('{"Service":"mlflow","State":"running","Health":"healthy"}\n'
             '{"Service":"jupyter","State":"running","Health":"starting"}\n')
    assert server.services_health(lines) == {"mlflow": "healthy", "jupyter": "starting"}
    array = json.dumps([{"Service": "postgres", "State": "running", "Health": ""},
                        {"Service": "mlflow", "State": "exited", "Health": ""}])
    assert server.services_health(array) == {"postgres": "running", "mlflow": "exited"}
    # docker inspect of the containers `docker-compose ps -q` lists (Compose v1)
    inspect = json.dumps([
        {"Name": "/replab-exp1_mlflow_1", "State": {"Status": "running", "Health": {
            "Status": "healthy", "FailingStreak": 0}},
         "Config": {"Labels": {"com.docker.compose.service": "mlflow"}}},
        {"Name": "/replab-exp1_jupyter_1", "State": {"Status": "restarting"},
         "Config": {"Labels": {"com.docker.compose.service": "jupyter"}}}])
    assert server.services_health(inspect) == {"mlflow": "healthy", "jupyter": "restarting"}
    assert server.services_health("") == {} and server.services_health("[]\n") == {}


def test_all_healthy_and_tunnel_command():
    assert server.all_healthy({"mlflow": "healthy", "jupyter": "healthy"})
    assert server.all_healthy({"postgres": "running", "mlflow": "healthy"})
    assert not server.all_healthy({"mlflow": "healthy", "jupyter": "starting"})
    assert not server.all_healthy({"mlflow": "running"}) and not server.all_healthy({})
    host = remote.Host("192.5.87.10")
    assert server.tunnel_command(host) == (
        "ssh -N -L 8888:127.0.0.1:8888 -L 5000:127.0.0.1:5000 cc@192.5.87.10")
    host = remote.Host("10.0.0.2", user="ubuntu", port=2222, key_filename="/k")
    assert server.tunnel_command(host, {"mlflow": 5001}) == (
        "ssh -N -i /k -p 2222 -L 8888:127.0.0.1:8888 -L 5001:127.0.0.1:5001 ubuntu@10.0.0.2")


# -- the real thing ----------------------------------------------------------------------------
def containers(project: str, env: dict) -> list[str]:
    """Ids of every container (running or not) of the compose project."""
    return run([DOCKER, "ps", "-a", "-q", "--filter",
                f"label=com.docker.compose.project={project}"], env).stdout.split()


def project_label(cfg) -> str:
    """The project label compose puts on containers (v1 strips what is not [-_a-z0-9])."""
    return cfg.names["lab"].lower()


@pytest.mark.services
@pytest.mark.slow
@pytest.mark.docker
def test_launch_remote_over_ssh_with_docker(docker_host, ssh_server, local_openstack, ec2,
                                            shared_dir, tmp_path, capsys):
    started = time.monotonic()
    env = docker_env(docker_host)
    stack = local_openstack
    forward = forward_to_bridge(stack.s3_endpoint, env)  # Swift, seen from containers
    name = f"labsrv-{uuid.uuid4().hex[:6]}"
    cfg = config.build({"experiment": name, "repository": "https://github.com/acme/p.git",
                        "frameworks": ["sklearn"], "site": "CHI@UC",
                        "node_type": "compute_skylake", "workdir": str(tmp_path / "work"),
                        "endpoints": {"s3_endpoint": forward.endpoint}})
    # the secrets 1_create_credentials leaves: lab secrets, EC2 keys, lab.env
    store = secretsstore.SecretsStore(cfg.workdir)
    credentials.ensure_lab_secrets(store, env={})
    data = store.credentials()
    data["ec2"] = {"access": ec2["access"], "secret": ec2["secret"]}
    store.save_credentials(data)
    clientfiles.write_client_files(cfg, store)
    token = store.lab_env()["JUPYTER_TOKEN"]
    s3 = s3client.s3_client(stack.s3_endpoint, ec2["access"], ec2["secret"])
    storage.ensure_buckets(s3, [cfg.buckets.artifacts, cfg.buckets.backups])

    # "The server": this machine, logged in over SSH as root. Its lab directories live in a
    # shared-propagation mount (as / is on a systemd host) and belong to uid 1000, as they
    # do for `cc` on Chameleon (the containers run as uid 1000).
    paths = compose.HostPaths.under(str(shared_dir / name))
    for d in paths.directories():
        Path(d).mkdir(parents=True, exist_ok=True)
    for d in (paths.repo, paths.lab, paths.mlflow_dir, paths.cache, paths.hf_home):
        os.chown(d, 1000, 1000)
    db = Path(paths.mlflow_dir) / "mlflow.db"
    # the tests' dockerd and Debian's client (/usr/local/bin/docker may not talk to it)
    remote_env = {"DOCKER_HOST": docker_host,
                  "PATH": f"{Path(DOCKER).parent}:/usr/bin:/bin:/usr/sbin:/sbin"}
    ports = {"mlflow": free_port(), "jupyter": free_port()}
    mlflow_url = f"http://127.0.0.1:{ports['mlflow']}"
    build_lab_images(cfg, env)
    # the build context uploaded, a snapshot: this checkout may be edited while the test runs
    source = tmp_path / "replab"
    for part in server.SOURCE_PARTS:
        copy = shutil.copytree if (ROOT / part).is_dir() else shutil.copy2
        copy(ROOT / part, source / part, **({"ignore": shutil.ignore_patterns(
            *hostsetup.SOURCE_EXCLUDE)} if (ROOT / part).is_dir() else {}))
    project = project_label(cfg)
    said: list[str] = []

    def launch() -> dict:
        said.clear()
        t = time.monotonic()
        info = server.launch_remote(cfg, ssh_server, paths=paths, docker_env=remote_env,
                                    build=False, ports=ports, source=source,
                                    progress=said.append,
                                    timeout=300, interval=1)
        TIMINGS[f"launch {len([k for k in TIMINGS if k.startswith('launch')]) + 1}"] = (
            time.monotonic() - t)
        return info

    try:
        # 1. A fresh server: upload, compose up, healthy, lab.json.
        info = launch()
        lab_json = (cfg.workdir_path / "lab.json").read_text()
        assert json.loads(lab_json) == info
        assert info["services"] == {"mlflow": "healthy", "jupyter": "healthy"}
        assert info["mlflow_url"] == mlflow_url
        assert info["jupyter_url"] == f"http://127.0.0.1:{ports['jupyter']}/lab"
        assert info["tunnel"] == (
            f"ssh -N -i {ssh_server.key_filename} -p {ssh_server.port} "
            f"-L {ports['jupyter']}:127.0.0.1:{ports['jupyter']} "
            f"-L {ports['mlflow']}:127.0.0.1:{ports['mlflow']} root@127.0.0.1")
        assert info["compose"] == f"{paths.lab}/compose.yaml"
        for secret in (token, ec2["secret"], ec2["access"]):
            assert secret not in lab_json
        assert any(m.startswith("lab source: uploaded") for m in said), "\n".join(said)
        assert (Path(paths.source) / "docker" / "mlflow" / "Dockerfile").is_file()

        # What was uploaded: compose.yaml as server_spec makes it for the server's Compose,
        # .env with the secrets, 0600.
        conn = remote.connect(ssh_server)
        flavor = server.detect_compose(conn, remote_env)
        v2 = subprocess.run([DOCKER, "compose", "version"], env=env, capture_output=True)
        assert flavor == ("v2" if v2.returncode == 0 else "v1")
        want = server.server_spec(compose.build_compose(cfg, host_paths=paths), flavor=flavor,
                                  ports=ports)
        uploaded = Path(paths.lab, "compose.yaml").read_text()
        assert uploaded == compose.render_compose(want)
        assert ("name" in yaml.safe_load(uploaded)) == (flavor == "v2")
        dotenv = Path(paths.lab, ".env")
        assert stat.S_IMODE(dotenv.stat().st_mode) == 0o600
        assert f"JUPYTER_TOKEN={token}" in dotenv.read_text()

        # MLflow answers on the published loopback port, and nothing listens beyond loopback.
        assert http().get(f"{mlflow_url}/health", timeout=10).text == "OK"
        lab = f"http://127.0.0.1:{ports['jupyter']}/lab"
        assert http().get(f"{lab}?token={token}", timeout=10).status_code == 200
        ids = containers(project, env)
        assert len(ids) == 2
        for cid in ids:
            bindings = json.loads(run([DOCKER, "inspect", "--format",
                                       "{{json .NetworkSettings.Ports}}", cid], env).stdout)
            assert {b["HostIp"] for v in bindings.values() if v for b in v} == {"127.0.0.1"}
        assert server.status_remote(cfg, ssh_server, paths=paths, docker_env=remote_env)[
            "services"] == {"mlflow": "healthy", "jupyter": "healthy"}
        # the Jupyter container knows its exact image (the capture records it)
        image = yaml.safe_load(Path(paths.lab, "compose.yaml").read_text())[
            "services"]["jupyter"]["image"]
        image_id = run([DOCKER, "image", "inspect", "--format", "{{.Id}}", image],
                       env).stdout.strip()
        jupyter = next(c for c in ids if "jupyter" in run(
            [DOCKER, "inspect", "--format", "{{.Name}}", c], env).stdout)
        seen = run([DOCKER, "inspect", "--format", "{{json .Config.Env}}", jupyter], env).stdout
        assert image_id.startswith("sha256:") and f"REPLAB_IMAGE_DIGEST={image_id}" in seen

        # A run logged through the lab (artifact through MLflow's proxy into Swift), then
        # the backup the server's hourly timer makes.
        expected = log_example_runs(mlflow_url, cfg.experiment, tmp_path, runs=1, points=5)
        saved = backup.backup(cfg, reason="test", database=backup.Database.sqlite(db))
        assert saved.runs == 1

        # 2. Launched again: nothing uploaded, the same containers, still healthy.
        again = launch()
        told = "\n".join(said)
        assert re.search(r"^lab source: \S+ is current \(sha256 \w+\)$", told, re.M), told
        assert "uploaded" not in told and "restored" not in told, told
        assert again == info
        assert sorted(containers(project, env)) == sorted(ids)
        assert http().get(f"{mlflow_url}/health", timeout=10).text == "OK"
        assert_runs_present(mlflow_url, expected, tmp_path)

        # 3. Stopped: no container left.
        t = time.monotonic()
        stopped = server.stop_remote(cfg, ssh_server, paths=paths, docker_env=remote_env)
        TIMINGS["stop"] = time.monotonic() - t
        assert stopped and containers(project, env) == []
        assert server.status_remote(cfg, ssh_server, paths=paths, docker_env=remote_env)[
            "services"] == {}

        # 4. A new lease: the server's disk has no database. The launch restores the backup.
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        restored = launch()
        assert any(m.startswith(f"restored MLflow history from backup {saved.key}")
                   for m in said), "\n".join(said)
        assert restored["services"] == {"mlflow": "healthy", "jupyter": "healthy"}
        assert db.stat().st_uid == 1000  # MLflow's user can write it
        assert_runs_present(mlflow_url, expected, tmp_path)
    finally:
        t = time.monotonic()
        try:
            server.stop_remote(cfg, ssh_server, paths=paths, docker_env=remote_env)
        finally:
            TIMINGS["down"] = time.monotonic() - t
            forward.close()
            for bucket in (cfg.buckets.artifacts, cfg.buckets.backups):
                storage.delete_bucket(s3, bucket, force=True)
            TIMINGS["total (test)"] = time.monotonic() - started
            print_timings("lab server timings", capsys)
    assert containers(project, env) == []
