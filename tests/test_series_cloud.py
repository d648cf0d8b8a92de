"""The series through papermill, as a researcher runs it, against the local cloud standing in
for Chameleon: 0_configure (a site defined by endpoints) -> 1_create_credentials ->
2_provision -> 3_launch_lab -> a tracked run -> 4_replay -> 5_teardown, on real services.

The compute site is CHI@UC with its endpoints pointed at the local control plane
(tests/services/cloud.py: upstream Keystone, Blazar with BlazarFilter, Nova with the fake
driver, Neutron, Glance); the storage site is the local Keystone + Swift with S3
(tests/services/openstack.py), its S3 endpoint given to 0_configure as the address of a TCP
forwarder on the Docker bridge's gateway (Swift listens on loopback; the lab's MLflow
container reaches the artifacts bucket through it, as this machine does). The researcher is
the ``demo`` user of both, authenticated from a clouds.yaml with one entry per Keystone
(replab picks the entry by its URL).

2_provision makes a real lease (the GPU node type + a reserved floating IP), keypair and
server; the fake driver "boots" nothing, so the floating IP Blazar reserved (127.10.0.x, a
loopback address) is where ``fip_sshd`` listens: host setup logs in over SSH at that
address, as root, and runs every step for real, with two substitutions this machine needs
(it is not a systemd host, and it is a CI machine that must not be rewritten): the steps'
system root is a temporary directory (``setup_root``: /etc files written there, apt,
systemctl, usermod and docker restarts skipped, each step saying so) and the home directory
is a temporary one (``setup_home``, in a shared-propagation mount as / is on a systemd host;
state.json records it, and 3_launch_lab and 5_teardown find the lab below it). The
repository, replab's source upload, replab in a venv on the server (pip, from this machine's
wheelhouse), the server's work directory and the rclone configuration all really happen on
"the server".

3_launch_lab starts the lab's compose stack on "the server" over that SSH login: the
sessions' DOCKER_HOST is the tests' own dockerd (tests/docker_support.py, set by
fip_sshd's sshd config, as a server's environment would give it), Debian's Compose v1. What
differs from a Chameleon server, each a parameter a user has too: the images are built
beforehand FROM the debootstrap base (no registry here; ``build_lab_images``, the tags
compose.yaml names, a layer-cache hit when test_lab_docker / test_lab_server built them in
the same session) and started with ``build=False``; MLflow and Jupyter publish free ports
(``mlflow_port`` / ``jupyter_port``). The lab directories belong to uid 1000, as `cc`'s do
on Chameleon (the containers run as uid 1000; the login here is root). The engine accepts
the GPU request compose makes for a GPU node type through a stand-in for the NVIDIA
toolkit's hook (docker_support.NVIDIA_HOOK): no GPU here. A `replab run` of a deterministic
script is tracked against the lab's MLflow (published on this machine's loopback: "the
server" is this machine, so no tunnel), 4_replay replays it (run ``latest``, the lab from
lab.json) to REPRODUCED.

5_teardown backs the lab up over SSH with the server's replab, stops the lab and gives
everything back; the test checks against the cloud's API (as admin) that no lease, server,
floating IP, keypair or security group of the experiment remains, against Keystone and
Swift that the credentials and buckets are gone, and against Docker that no container or
network of the lab's compose project is left.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from replab import cloud as rc
from replab import config, hostsetup, secretsstore, verdict
from replab.errors import CloudError
from replab.lab.compose import HostPaths
from tests import docker_support
from tests.docker_support import (
    DOCKER,
    build_lab_images,
    docker_env,
    engine_host,
    forward_to_bridge,
    free_port,
    http,
    require_gpu_requests,
    run,
)
from tests.fixtures_openstack import removed_afterwards
from tests.gitrepo import make_repo
from tests.notebooks import execute, outputs_text

docker_host = docker_support.docker_host  # fixtures
shared_dir = docker_support.shared_dir

pytestmark = [pytest.mark.openstack, pytest.mark.services, pytest.mark.slow,
              pytest.mark.timeout(1500)]

TIMES: dict[str, float] = {}

FIT = ("from sklearn.datasets import load_iris\n"
       "from sklearn.linear_model import LogisticRegression\n"
       "X, y = load_iris(return_X_y=True)\n"
       "print('score', LogisticRegression(max_iter=300).fit(X, y).score(X, y))\n")


def clouds_file(path: Path, local_cloud, local_openstack) -> Path:
    """A researcher's clouds.yaml: one password entry per Keystone (compute, storage)."""
    demo = local_cloud.user("demo")
    store = local_openstack.demo
    path.write_text(yaml.safe_dump({"clouds": {
        "compute": {"auth": {"auth_url": local_cloud.auth_url, "username": demo["username"],
                             "password": demo["password"], "project_name": demo["project"],
                             "user_domain_name": "Default", "project_domain_name": "Default"},
                    "region_name": local_cloud.region},
        "storage": {"auth": store.auth(local_openstack.auth_url),
                    "region_name": local_openstack.region}}}))
    return path


def timed(name: str, notebook: str, out: Path, **params) -> str:
    t = time.monotonic()
    execute(notebook, out, **params)
    TIMES[name] = time.monotonic() - t
    return outputs_text(out)


def wait_gone(fetch, what: str, timeout: float = 180) -> None:
    """Poll ``fetch()`` until it returns nothing (or raises a 404 CloudError)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = fetch()
        except CloudError as exc:
            assert "404" in str(exc), exc
            return
        if not found:
            return
        assert time.monotonic() < deadline, f"{what} still there after {timeout} s: {found}"
        time.sleep(2)


@pytest.fixture
def clean_env(monkeypatch):
    """No credentials in the environment: only the clouds.yaml authenticates."""
    for var in ("OS_CLOUD", "OS_ACCESS_TOKEN", "OS_APPLICATION_CREDENTIAL_ID",
                "OS_APPLICATION_CREDENTIAL_SECRET", "OS_AUTH_URL", "JUPYTERHUB_API_TOKEN",
                "SSH_AUTH_SOCK"):
        monkeypatch.delenv(var, raising=False)


def containers(project: str, env: dict, kind: str = "ps") -> list[str]:
    """Ids of the compose project's containers (``ps``, running or not) or networks."""
    argv = [DOCKER, "ps", "-a"] if kind == "ps" else [DOCKER, "network", "ls"]
    return run([*argv, "-q", "--filter", f"label=com.docker.compose.project={project}"],
               env).stdout.split()


def test_series_provisions_on_the_local_cloud_launches_the_lab_replays_and_tears_down(
        local_cloud, local_openstack, fip_sshd, docker_host, shared_dir, clean_env, tmp_path,
        capsys):
    started = time.monotonic()
    experiment = f"sc{uuid.uuid4().hex[:6]}"
    wd, home, sysroot = tmp_path / "work", shared_dir / "home", tmp_path / "sysroot"
    clouds = clouds_file(tmp_path / "clouds.yaml", local_cloud, local_openstack)
    names = config.build({"experiment": experiment, "frameworks": ["sklearn"],
                          "site": "CHI@UC"}).names
    admin = local_cloud.clients("admin")
    store = secretsstore.SecretsStore(wd)
    env = docker_env(docker_host)
    assert docker_host == engine_host()  # the engine fip_sshd's sessions are given
    project = names["lab"].lower()  # the label compose v1 puts on the lab's containers
    safety = removed_afterwards(local_openstack, stores=(store,), containers=tuple(
        f"{experiment}-{b}" for b in ("data", "artifacts", "backups")))
    with safety:
        forward = forward_to_bridge(local_openstack.s3_endpoint, env)  # Swift, for containers
        try:
            _series(experiment, wd, home, sysroot, clouds, local_cloud, local_openstack,
                    fip_sshd, admin, tmp_path, env, forward.endpoint, project)
        finally:
            _stop_the_lab(project, env)
            forward.close()
            _leave_nothing(names, experiment, local_cloud)
            TIMES["total"] = time.monotonic() - started
            with capsys.disabled():
                print("\nseries on the local cloud: " + ", ".join(
                    f"{k} {v:.0f}s" for k, v in TIMES.items()))


def _series(experiment, wd, home, sysroot, clouds, local_cloud, local_openstack, fip_sshd,
            admin, tmp_path, env, s3_endpoint, project) -> None:
    # -- 0_configure: CHI@UC, its endpoints pointed at the local cloud and object store
    shown = timed("0_configure", "0_configure.ipynb", tmp_path / "0.ipynb",
                  experiment=experiment, site="CHI@UC", frameworks="sklearn",
                  node_type="gpu_rtx_6000", lease_hours=1, workdir=str(wd),
                  auth_url=local_cloud.auth_url, storage_auth_url=local_openstack.auth_url,
                  s3_endpoint=s3_endpoint, region=local_cloud.region, interactive=False)
    cfg = config.load(wd)
    assert cfg.auth_url == local_cloud.auth_url and cfg.image == "CC-Ubuntu24.04-CUDA"
    assert cfg.gpu_vendor == "nvidia" and "gpu_rtx_6000" in shown

    # -- 1_create_credentials at the storage site (the local Keystone + Swift)
    shown = timed("1_create_credentials", "1_create_credentials.ipynb", tmp_path / "1.ipynb",
                  workdir=str(wd), clouds_file=str(clouds))
    assert "application credential: created" in shown and "EC2 credential: created" in shown
    assert (wd / "secrets" / "rclone.conf").exists()

    # -- 2_provision: lease, keypair, server, reserved floating IP, then host setup over SSH
    params = dict(workdir=str(wd), clouds_file=str(clouds), public_key=fip_sshd.public_key,
                  private_key=fip_sshd.key, ssh_user=fip_sshd.user,
                  setup_root=str(sysroot), setup_home=str(home))
    shown = timed("2_provision", "2_provision.ipynb", tmp_path / "2.ipynb", **params)
    assert f"Plan for {cfg.site}" in shown
    state = rc.State.load(wd).data
    address = state["floating_ip"]["address"]
    assert address in fip_sshd.addresses, state["floating_ip"]
    lease = rc.get_lease(admin.blazar, state["lease"]["id"])
    assert lease["status"] == "ACTIVE" and lease["name"] == cfg.names["lease"]
    server = admin.conn.compute.get_server(state["server"]["id"])
    assert server.status == "ACTIVE" and server.compute_host == "compute-1"  # the GPU node
    ip = next(iter(admin.conn.network.ips(floating_ip_address=address)))
    assert ip.port_id == next(iter(admin.conn.network.ports(device_id=server.id))).id
    assert rc.owned_by_lease(ip)  # Blazar's reserved IP, not an on-demand one
    # the login is recorded for 3_launch_lab / 5_teardown, next to the owner check's user_id,
    # with the home host setup used (the lab lives below it)
    assert state["server"]["user"] == "root" and state["server"]["key_filename"] == fip_sshd.key
    assert state["server"]["home"] == str(home)
    assert state["server"]["user_id"] == local_cloud.user("demo")["user_id"]
    # host setup ran over SSH at the floating IP
    assert address in fip_sshd.connections() and fip_sshd.accepted() >= 1
    for step in hostsetup.step_names(cfg):
        assert f"{step}: changed" in shown or f"{step}: unchanged" in shown, step
    paths = HostPaths.for_config(cfg, str(home))
    assert (Path(paths.source) / "lib" / "replab" / "provisioning.py").is_file()
    assert config.load(paths.workdir).experiment == experiment
    assert json.loads((Path(paths.workdir) / "secrets" / "credentials.json").read_text()
                      ).keys() == {"ec2"}  # the application credential stays here
    assert (home / ".config" / "rclone" / "rclone.conf").read_text() == store_text(wd)
    units = sysroot / "etc" / "systemd" / "system"
    assert sorted(p.suffix for p in units.iterdir()) == [".service", ".service", ".timer"]
    assert (sysroot / hostsetup.UDEV_RULE.lstrip("/")).is_file()  # nvidia-toolkit: files only
    assert Path(paths.replab).is_file()

    # -- 2_provision again: everything adopted, nothing created, every step unchanged
    uploaded = (Path(paths.source) / hostsetup.SOURCE_HASH_FILE).read_text()
    shown = timed("2_provision again", "2_provision.ipynb", tmp_path / "2b.ipynb", **params)
    assert rc.State.load(wd).data["server"]["id"] == server.id
    changed = [s for s in hostsetup.step_names(cfg) if f"{s}: changed" in shown]
    # Docker and the NVIDIA toolkit are installs a non-live root skips: still to do, every
    # time (their detail says "not touched"); lab-source and replab only when this checkout
    # changed in between (other work in the same tree); every other step found its work done
    allowed = {hostsetup.DOCKER, hostsetup.NVIDIA}
    if (Path(paths.source) / hostsetup.SOURCE_HASH_FILE).read_text() != uploaded:
        allowed |= {hostsetup.LAB_SOURCE, hostsetup.REPLAB_CLI}
    assert set(changed) <= allowed, changed
    assert "not touched" in shown

    # -- 3_launch_lab over SSH at the floating IP, on the tests' dockerd
    for d in (paths.repo, paths.lab, paths.mlflow_dir, paths.cache, paths.hf_home):
        Path(d).mkdir(parents=True, exist_ok=True)
        os.chown(d, 1000, 1000)  # `cc` (uid 1000) owns them on Chameleon; the login is root
    t = time.monotonic()
    build_lab_images(cfg, env)
    require_gpu_requests(env)
    TIMES["lab images"] = time.monotonic() - t
    ports = {"mlflow": free_port(), "jupyter": free_port()}
    logins = fip_sshd.accepted()
    shown = timed("3_launch_lab", "3_launch_lab.ipynb", tmp_path / "3.ipynb", workdir=str(wd),
                  mlflow_port=ports["mlflow"], jupyter_port=ports["jupyter"], build=False)
    assert fip_sshd.accepted() > logins and fip_sshd.connections()[-1] == address
    lab_json = (wd / "lab.json").read_text()
    info = json.loads(lab_json)
    assert info["services"] == {"mlflow": "healthy", "jupyter": "healthy"}, info
    assert info["host"] == address and info["compose"] == f"{paths.lab}/compose.yaml"
    mlflow_url = f"http://127.0.0.1:{ports['mlflow']}"
    assert info["mlflow_url"] == mlflow_url
    assert info["tunnel"] == (
        f"ssh -N -i {fip_sshd.key} -L {ports['jupyter']}:127.0.0.1:{ports['jupyter']} "
        f"-L {ports['mlflow']}:127.0.0.1:{ports['mlflow']} root@{address}")
    assert info["tunnel"] in shown and "the lab is up on" in shown
    assert "build (the first build" not in shown  # build=False: the images as they are
    secrets = [store_lab_token(wd), *secretsstore.SecretsStore(wd).credentials()["ec2"].values()]
    for secret in secrets:
        assert secret not in lab_json and secret not in shown
    assert http().get(f"{mlflow_url}/health", timeout=10).text == "OK"
    ids = containers(project, env)
    assert len(ids) == 2
    jupyter = next(c for c in ids if "jupyter" in run(
        [DOCKER, "inspect", "--format", "{{.Name}}", c], env).stdout)
    requests_ = json.loads(run([DOCKER, "inspect", "--format",
                                "{{json .HostConfig.DeviceRequests}}", jupyter], env).stdout)
    assert [r["Driver"] for r in requests_] == ["nvidia"]  # the GPU node's lab asks for them

    # -- a run tracked against the lab: `replab run` of a deterministic script
    repo = make_repo(tmp_path / "project", {"fit.py": FIT})
    t = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "replab.cli", "run", "-e", experiment, "--",
                          sys.executable, "fit.py"], cwd=repo, capture_output=True,
                         text=True, timeout=300,
                         env=dict(os.environ, MLFLOW_TRACKING_URI=mlflow_url))
    TIMES["replab run"] = time.monotonic() - t
    assert out.returncode == 0, out.stdout + out.stderr
    original = next(ln for ln in out.stderr.splitlines() if ln.startswith("replab: run ")
                    ).split()[2]

    # -- 4_replay: the latest run of the experiment, on the lab lab.json names
    shown = timed("4_replay", "4_replay.ipynb", tmp_path / "4.ipynb", workdir=str(wd),
                  repo=str(repo))
    assert f"Run `{original}`" in shown and "verdict: REPRODUCED" in shown, shown[-3000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_url)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    replays = [r for r in runs if r.info.run_id != original]
    assert len(runs) == 2 and replays[0].data.tags[verdict.TAG_VERDICT] == "REPRODUCED"

    # -- 5_teardown: the lab backed up and stopped, everything given back
    shown = timed("5_teardown", "5_teardown.ipynb", tmp_path / "5.ipynb", workdir=str(wd),
                  clouds_file=str(clouds), delete_buckets=True)
    assert re.search(r"backed up the server's MLflow database \(2 runs\)", shown), shown
    assert f"| deleted | the lab's services (docker-compose down on {address}" in shown
    for kind in ("server", "lease", "keypair"):
        assert f"| deleted | {kind} " in shown, kind
    assert f"floating IP {address} (the lease returns it)" in shown
    assert "problem" not in shown
    assert containers(project, env) == [] and containers(project, env, "network") == []
    _assert_nothing_left(cfg, state, address, local_cloud, local_openstack, admin, wd)


def store_lab_token(wd: Path) -> str:
    return secretsstore.SecretsStore(wd).lab_env()["JUPYTER_TOKEN"]


def _stop_the_lab(project: str, env: dict) -> None:
    """Whatever a failed run left in Docker: the lab's containers and network."""
    ids = containers(project, env)
    if ids:
        run([DOCKER, "rm", "-f", *ids], env, check=False)
    nets = containers(project, env, "network")
    if nets:
        run([DOCKER, "network", "rm", *nets], env, check=False)


def store_text(wd: Path) -> str:
    return secretsstore.SecretsStore(wd).read(secretsstore.SecretsStore.RCLONE) or ""


def _assert_nothing_left(cfg, state, address, local_cloud, local_openstack, admin, wd):
    demo = local_cloud.clients("demo")
    wait_gone(lambda: rc.get_lease(admin.blazar, state["lease"]["id"]), "the lease")
    assert rc.find_lease(demo.blazar, cfg.names["lease"]) is None
    assert admin.conn.compute.find_server(state["server"]["id"]) is None
    wait_gone(lambda: list(admin.conn.network.ips(floating_ip_address=address)),
              f"floating IP {address}")
    assert demo.conn.compute.find_keypair(rc.keypair_name(cfg)) is None
    assert not [g for g in demo.conn.network.security_groups()
                if g.name == cfg.names["security_group"]]
    freepool = next(a for a in admin.conn.compute.aggregates() if a.name == "freepool")
    assert "compute-1" in freepool.hosts  # Blazar gave the node back
    live = rc.State.load(wd).live()
    assert not live, live
    # the storage site: credentials and buckets gone
    assert secretsstore.SecretsStore(wd).credentials().get("ec2") is None
    from tests.fixtures_openstack import demo_connection

    conn = demo_connection(local_openstack)
    try:
        containers = {c.name for c in conn.object_store.containers()}
        assert not containers & {cfg.buckets.data, cfg.buckets.artifacts, cfg.buckets.backups}
        r = conn.identity.get(f"/users/{conn.current_user_id}/application_credentials"
                              f"?name={cfg.names['application_credential']}")
        assert r.json()["application_credentials"] == []
    finally:
        conn.close()


def _leave_nothing(names, experiment, local_cloud) -> None:
    """Whatever a failed run left in the cloud, by the experiment's names."""
    demo = local_cloud.clients("demo")
    rc.delete_server(demo.conn, names["server"], wait=True, interval=1)
    lease = rc.find_lease(demo.blazar, names["lease"])
    if lease is not None:
        rc.delete_lease(demo.blazar, lease["id"])
    for kp in demo.conn.compute.keypairs():
        if kp.name.startswith(experiment):
            demo.conn.compute.delete_keypair(kp)
