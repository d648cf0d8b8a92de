"""The series through papermill, as a researcher runs it, against the local cloud standing in
for Chameleon: 0_configure (a site defined by endpoints) -> 1_create_credentials ->
2_provision -> 5_teardown, on real services.

The compute site is CHI@UC with its endpoints pointed at the local control plane
(tests/services/cloud.py: upstream Keystone, Blazar with BlazarFilter, Nova with the fake
driver, Neutron, Glance); the storage site is the local Keystone + Swift with S3
(tests/services/openstack.py). The researcher is the ``demo`` user of both, authenticated
from a clouds.yaml with one entry per Keystone (replab picks the entry by its URL).

2_provision makes a real lease (the GPU node type + a reserved floating IP), keypair and
server; the fake driver "boots" nothing, so the floating IP Blazar reserved (127.10.0.x, a
loopback address) is where ``fip_sshd`` listens: host setup logs in over SSH at that
address, as root, and runs every step for real, with two substitutions this machine needs
(it is not a systemd host, and it is a CI machine that must not be rewritten): the steps'
system root is a temporary directory (``setup_root``: /etc files written there, apt,
systemctl, usermod and docker restarts skipped, each step saying so) and the home directory
is a temporary one (``setup_home``). The repository, replab's source upload, replab in a
venv on the server (pip, from this machine's wheelhouse), the server's work directory and
the rclone configuration all really happen on "the server".

5_teardown gives everything back; the test checks against the cloud's API (as admin) that
no lease, server, floating IP, keypair or security group of the experiment remains, and
against Keystone and Swift that the credentials and buckets are gone.

Not run here: 3_launch_lab and 4_replay (README, Testing, "The cloud path": the lab's
images cannot be built on a machine without a registry through 3_launch_lab's own path).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
import yaml

from replab import cloud as rc
from replab import config, credentials, hostsetup
from replab.errors import CloudError
from replab.lab.compose import HostPaths
from tests.fixtures_openstack import removed_afterwards
from tests.notebooks import execute, outputs_text

pytestmark = [pytest.mark.openstack, pytest.mark.services, pytest.mark.slow,
              pytest.mark.timeout(1500)]

TIMES: dict[str, float] = {}


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


def test_series_provisions_on_the_local_cloud_sets_the_host_up_over_ssh_and_tears_down(
        local_cloud, local_openstack, fip_sshd, clean_env, tmp_path, capsys):
    started = time.monotonic()
    experiment = f"sc{uuid.uuid4().hex[:6]}"
    wd, home, sysroot = tmp_path / "work", tmp_path / "home", tmp_path / "sysroot"
    clouds = clouds_file(tmp_path / "clouds.yaml", local_cloud, local_openstack)
    names = config.build({"experiment": experiment, "frameworks": ["sklearn"],
                          "site": "CHI@UC"}).names
    admin = local_cloud.clients("admin")
    store = credentials.SecretsStore(wd)
    safety = removed_afterwards(local_openstack, stores=(store,), containers=tuple(
        f"{experiment}-{b}" for b in ("data", "artifacts", "backups")))
    with safety:
        try:
            _series(experiment, wd, home, sysroot, clouds, local_cloud, local_openstack,
                    fip_sshd, admin, tmp_path)
        finally:
            _leave_nothing(names, experiment, local_cloud)
            TIMES["total"] = time.monotonic() - started
            with capsys.disabled():
                print("\nseries on the local cloud: " + ", ".join(
                    f"{k} {v:.0f}s" for k, v in TIMES.items()))


def _series(experiment, wd, home, sysroot, clouds, local_cloud, local_openstack, fip_sshd,
            admin, tmp_path) -> None:
    # -- 0_configure: CHI@UC, its endpoints pointed at the local cloud and object store
    shown = timed("0_configure", "0_configure.ipynb", tmp_path / "0.ipynb",
                  experiment=experiment, site="CHI@UC", frameworks="sklearn",
                  node_type="gpu_rtx_6000", lease_hours=1, workdir=str(wd),
                  auth_url=local_cloud.auth_url, storage_auth_url=local_openstack.auth_url,
                  s3_endpoint=local_openstack.s3_endpoint, region=local_cloud.region,
                  interactive=False)
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
    # the login is recorded for 3_launch_lab / 5_teardown, next to the owner check's user_id
    assert state["server"]["user"] == "root" and state["server"]["key_filename"] == fip_sshd.key
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

    # -- 5_teardown: everything given back
    shown = timed("5_teardown", "5_teardown.ipynb", tmp_path / "5.ipynb", workdir=str(wd),
                  clouds_file=str(clouds), delete_buckets=True)
    for kind in ("server", "lease", "keypair"):
        assert f"| deleted | {kind} " in shown, kind
    assert f"floating IP {address} (the lease returns it)" in shown
    assert "problem" not in shown
    _assert_nothing_left(cfg, state, address, local_cloud, local_openstack, admin, wd)


def store_text(wd: Path) -> str:
    return credentials.SecretsStore(wd).read(credentials.SecretsStore.RCLONE) or ""


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
    assert credentials.SecretsStore(wd).credentials().get("ec2") is None
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
