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

The engine, the image builds and the helpers are shared with tests/test_lab_server.py
(tests/docker_support.py).

Environment: REPLAB_SKIP_SERVICES=1 skips; REPLAB_DOCKER_HOST uses that engine instead of
starting one (it must have the base image: ``tests/services/docker.sh base``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import uuid
from pathlib import Path

import pytest
import yaml

from replab import config, rclone, s3client, storage
from replab.lab import compose
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
    wait_healthy,
)

pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.docker]
docker_host = docker_support.docker_host  # fixtures
shared_dir = docker_support.shared_dir


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
    env = docker_env(docker_host)
    stack = local_openstack
    name = f"labdock-{uuid.uuid4().hex[:6]}"

    # The local Swift, reachable from containers at the default bridge's gateway address.
    forward = forward_to_bridge(stack.s3_endpoint, env)
    endpoint = forward.endpoint

    cfg = config.build({"experiment": name, "repository": "https://github.com/acme/p.git",
                        "frameworks": ["sklearn"], "site": "CHI@UC",
                        "node_type": "compute_skylake", "endpoints": {"s3_endpoint": endpoint}})
    s3 = s3client.s3_client(stack.s3_endpoint, ec2["access"], ec2["secret"])
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

    build_lab_images(cfg, env)
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
        print_timings("lab docker timings", capsys)
    assert down.returncode == 0, down.stdout + down.stderr
