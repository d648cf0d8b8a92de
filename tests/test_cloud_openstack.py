"""replab.cloud against a real OpenStack control plane with Blazar (tests/services/cloud.py).

Upstream Keystone, Nova (fake virt driver, hosts compute-1 = gpu_rtx_6000 and compute-2 =
compute_skylake, BlazarFilter), Neutron, Glance, Placement and Blazar 18 with its host,
floating-IP and flavor plugins. The researcher is the ``demo`` user (role member), as in a
Chameleon project. Each test cleans up what it makes; the bare-metal tests share one lease
(module fixture) and end with its teardown.

Run alone: ``.venv/bin/python -m pytest -p tests.fixtures_cloud tests/test_cloud_openstack.py``
"""

from __future__ import annotations

import datetime as _dt
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from replab import cloud as rc
from replab import config, sites
from replab.cloud import leases
from replab.errors import CloudError

pytestmark = [pytest.mark.openstack, pytest.mark.services, pytest.mark.slow,
              pytest.mark.timeout(900)]

if os.environ.get("REPLAB_SKIP_SERVICES") == "1":
    pytest.skip("REPLAB_SKIP_SERVICES=1: the local OpenStack control plane is not started",
                allow_module_level=True)

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGb0lq4fWcP6b2V7t2y5e3k9sXq8m4rj0h1aFQ2cN7eR lab"
OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH7kq0nZ4rV2m6c9Q1sXy8d3f5g7h9j1k3l5n7p9r1tU x"
UC = sites.get_site("CHI@UC")
WAIT = {"timeout": 240, "interval": 1}


def fast_sleep(seconds: float) -> None:
    """provision()'s polls, every 2 s at most instead of Chameleon's 10-15 s (real clock)."""
    time.sleep(min(seconds, 2))


def make_cfg(tmp: Path, *, site: str = "CHI@UC", **extra) -> config.Config:
    raw = {"experiment": f"t{uuid.uuid4().hex[:8]}", "frameworks": ["pytorch"], "site": site,
           "lease_hours": 1, "workdir": str(tmp)}
    raw.update(extra)
    return config.build(raw)


def gpu_cfg(tmp: Path, **extra) -> config.Config:
    return make_cfg(tmp, node_type="gpu_rtx_6000", gpu_vendor="nvidia", **extra)


def wait_lease_gone(blazar, lease_id: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            rc.get_lease(blazar, lease_id)
        except CloudError as exc:
            assert "404" in str(exc), exc
            return
        assert time.monotonic() < deadline, f"lease {lease_id} still there after {timeout} s"
        time.sleep(1)


@pytest.fixture(scope="module")
def demo(local_cloud):
    return local_cloud.clients("demo")


@pytest.fixture(scope="module")
def admin(local_cloud):
    return local_cloud.clients("admin")


# -- failure paths that leave nothing behind ---------------------------------------------------
def test_lease_for_a_node_type_the_site_lacks_is_refused(demo, tmp_path):
    cfg = make_cfg(tmp_path, node_type="gpu_a100_pcie", gpu_vendor="nvidia")
    with pytest.raises(CloudError, match=r"Not enough hosts available") as err:
        rc.ensure_lease(demo.blazar, cfg, network_id=rc.network_id(demo.conn))
    assert "POST /leases" in str(err.value) and "500" in str(err.value)
    assert rc.find_lease(demo.blazar, cfg.names["lease"]) is None  # Blazar stored nothing


def test_lease_starting_later_stays_pending_and_provision_stops_there(demo, tmp_path):
    start = (_dt.datetime.now(_dt.timezone.utc) + _dt.timedelta(hours=3)).strftime(
        "%Y-%m-%d %H:%M")
    cfg = gpu_cfg(tmp_path, lease_start=start)
    state = rc.State(tmp_path / rc.STATE_FILE)
    done = rc.provision(cfg, demo.blazar, demo.conn, state=state, public_key=KEY,
                        lease_timeout=60, sleep=fast_sleep)
    try:
        assert done.pending_until is not None and done.server is None
        assert leases.blazar_time(done.pending_until) == start
        lease = rc.get_lease(demo.blazar, done.lease["id"])
        assert lease["status"] == "PENDING"
        assert rc.find_server(demo.conn, cfg.names["server"]) is None
        assert state.data["lease"]["id"] == lease["id"]
    finally:
        assert rc.delete_lease(demo.blazar, cfg.names["lease"]) is True
    wait_lease_gone(demo.blazar, done.lease["id"])
    assert rc.delete_lease(demo.blazar, done.lease["id"]) is False


def test_waiting_for_a_deleted_lease_raises_instead_of_waiting(demo, tmp_path):
    start = (_dt.datetime.now(_dt.timezone.utc) + _dt.timedelta(hours=2)).strftime(
        "%Y-%m-%d %H:%M")
    cfg = gpu_cfg(tmp_path, lease_start=start)
    lease, created = rc.ensure_lease(demo.blazar, cfg, network_id=rc.network_id(demo.conn))
    assert created
    assert rc.delete_lease(demo.blazar, lease["id"]) is True
    wait_lease_gone(demo.blazar, lease["id"])
    with pytest.raises(CloudError, match="404"):
        rc.wait_for_lease(demo.blazar, lease["id"], **WAIT)
    with pytest.raises(CloudError, match="not found"):
        rc.delete_lease(demo.blazar, lease["id"], ignore_missing=False)


def test_server_without_a_reservation_goes_to_error_with_novas_reason(demo, tmp_path):
    conn = demo.conn
    name = f"t{uuid.uuid4().hex[:8]}-unreserved"
    server = conn.compute.create_server(
        name=name, image_id=rc.image_id(conn, sites.IMAGE_CUDA),
        flavor_id=rc.flavor_id(conn, "baremetal"),
        networks=[{"uuid": rc.network_id(conn, rc.DEFAULT_NETWORK)}])
    try:
        with pytest.raises(CloudError, match="No valid host was found") as err:
            rc.wait_for_server(conn, server.id, **WAIT)
        assert "is in ERROR" in str(err.value)
    finally:
        assert rc.delete_server(conn, name, wait=True, interval=1, timeout=120) is True
    assert rc.get_server(conn, server.id) is None


def test_keypair_is_created_once_and_another_key_is_refused(demo):
    name = f"t{uuid.uuid4().hex[:8]}-key"
    key, created = rc.ensure_keypair(demo.conn, name, KEY)
    try:
        assert created and key.name == name
        again, created = rc.ensure_keypair(demo.conn, name, KEY + " other comment")
        assert not created and again.fingerprint == key.fingerprint
        with pytest.raises(CloudError, match="exists with another public key"):
            rc.ensure_keypair(demo.conn, name, OTHER_KEY)
    finally:
        assert rc.delete_keypair(demo.conn, name) is True
    assert rc.delete_keypair(demo.conn, name) is False


def test_security_group_opens_ssh_once(demo):
    conn, name = demo.conn, f"t{uuid.uuid4().hex[:8]}-lab"
    group, created = rc.ensure_security_group(conn, name)
    try:
        assert created
        _, created = rc.ensure_security_group(conn, name)
        assert not created
        rules = [r for r in conn.network.security_group_rules(security_group_id=group.id)
                 if r.direction == "ingress" and r.protocol == "tcp"]
        assert [(r.port_range_min, r.port_range_max, r.remote_ip_prefix) for r in rules] == [
            (22, 22, "0.0.0.0/0")]
    finally:
        assert rc.delete_security_group(conn, name) is True
    assert rc.delete_security_group(conn, name) is False


def test_release_gives_back_a_floating_ip_the_project_allocated(demo, local_cloud):
    ip = demo.conn.network.create_ip(floating_network_id=local_cloud.public_network_id)
    assert ip.floating_ip_address.startswith("127.10.0.")
    assert not rc.owned_by_lease(ip)
    assert rc.release_floating_ip(demo.conn, ip.floating_ip_address) is True
    assert demo.conn.network.find_ip(ip.id) is None
    assert rc.release_floating_ip(demo.conn, ip.id) is False


# -- the bare-metal flow: one lease, shared, torn down at the end ------------------------------
@pytest.fixture(scope="module")
def bare_metal(demo, tmp_path_factory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("bare-metal")
    cfg = gpu_cfg(tmp)
    state = rc.State(tmp / rc.STATE_FILE)
    t = time.monotonic()
    done = rc.provision(cfg, demo.blazar, demo.conn, state=state, public_key=KEY,
                        lease_timeout=240, server_timeout=240, sleep=fast_sleep)
    flow = {"cfg": cfg, "state": state, "done": done, "seconds": time.monotonic() - t}
    yield flow
    if not flow.get("torn_down"):  # a test failed before the teardown test ran
        rc.delete_server(demo.conn, cfg.names["server"], wait=True, interval=1)
        rc.delete_keypair(demo.conn, rc.keypair_name(cfg))
        rc.delete_lease(demo.blazar, cfg.names["lease"])


def test_provision_boots_on_the_reserved_gpu_node_with_the_reserved_ip(bare_metal, admin,
                                                                        local_cloud):
    done = bare_metal["done"]
    lease = done.lease
    assert lease["status"] == "ACTIVE"
    node = leases.reservations(lease, leases.NODE)
    assert len(node) == 1 and "gpu_rtx_6000" in node[0]["resource_properties"]
    assert done.server.status == "ACTIVE"
    # the scheduler put it on the GPU host, the one Blazar moved into the lease's aggregate
    assert admin.conn.compute.get_server(done.server.id).compute_host == "compute-1"
    aggregate = next(a for a in admin.conn.compute.aggregates() if a.name == node[0]["id"])
    assert aggregate.hosts == ["compute-1"]
    # the floating IP is the one Blazar made for the reservation, attached to the server
    assert done.address in local_cloud.state["reservable_floating_ips"]
    ip = next(iter(admin.conn.network.ips(floating_ip_address=done.address)))
    fip_res = rc.fip_reservation_ids(lease)[0]
    assert f"reservation:{fip_res}" in ip.tags and rc.owned_by_lease(ip)
    port = next(iter(admin.conn.network.ports(device_id=done.server.id)))
    assert ip.port_id == port.id
    records = bare_metal["state"].data
    assert records["lease"]["id"] == lease["id"]
    assert records["server"]["id"] == done.server.id
    assert records["floating_ip"]["address"] == done.address
    assert all(done.created[k] for k in ("lease", "keypair", "server"))


def test_provision_again_adopts_everything_and_creates_nothing(bare_metal, demo):
    cfg, first = bare_metal["cfg"], bare_metal["done"]
    again = rc.provision(cfg, demo.blazar, demo.conn, state=bare_metal["state"],
                         public_key=KEY, lease_timeout=60, server_timeout=60,
                         sleep=fast_sleep)
    assert again.created == {"lease": False, "keypair": False, "server": False}
    assert again.server.id == first.server.id and again.address == first.address


def test_lease_owned_floating_ip_is_not_released(bare_metal, demo):
    address = bare_metal["done"].address
    assert rc.release_floating_ip(demo.conn, address) is False
    assert list(demo.conn.network.ips(floating_ip_address=address))


def test_second_lease_on_the_only_gpu_node_is_refused(bare_metal, demo, tmp_path):
    cfg = gpu_cfg(tmp_path)
    with pytest.raises(CloudError, match="Not enough hosts available"):
        rc.ensure_lease(demo.blazar, cfg, network_id=rc.network_id(demo.conn))
    assert rc.find_lease(demo.blazar, cfg.names["lease"]) is None


def test_next_free_slot_of_the_gpu_node_is_after_the_lease(bare_metal, admin):
    # Blazar's os-hosts API is admin-only upstream (Chameleon opens it to members)
    lease = rc.get_lease(admin.blazar, bare_metal["done"].lease["id"])
    slot = rc.next_free_slot(admin.blazar, bare_metal["cfg"], hours=1)
    assert slot is not None and slot.resource == "compute-1"
    assert slot.start >= leases.parse_time(lease["end_date"])
    skylake = rc.next_free_slot(admin.blazar, make_cfg(Path("."), node_type="compute_skylake"),
                                hours=1)
    assert skylake is not None and skylake.resource == "compute-2"
    assert skylake.start <= leases.utcnow() + _dt.timedelta(seconds=5)


def test_extend_lease_moves_its_end_by_the_hours_asked(bare_metal, demo):
    lease = rc.get_lease(demo.blazar, bare_metal["done"].lease["id"])
    end = leases.parse_time(lease["end_date"])
    rc.extend_lease(demo.blazar, lease, 2, site=UC)
    lease = rc.wait_for_lease(demo.blazar, lease["id"], **WAIT)  # UPDATING -> ACTIVE
    assert leases.parse_time(lease["end_date"]) == end + _dt.timedelta(hours=2)


def test_teardown_gives_everything_back(bare_metal, demo, admin):
    cfg, done = bare_metal["cfg"], bare_metal["done"]
    conn, blazar = demo.conn, demo.blazar
    assert rc.delete_server(conn, cfg.names["server"], wait=True, interval=1) is True
    assert rc.delete_keypair(conn, rc.keypair_name(cfg)) is True
    assert rc.delete_lease(blazar, cfg.names["lease"]) is True
    bare_metal["torn_down"] = True
    wait_lease_gone(blazar, done.lease["id"])
    assert rc.find_lease(blazar, cfg.names["lease"]) is None
    assert not list(admin.conn.network.ips(floating_ip_address=done.address))  # Blazar's IP
    freepool = next(a for a in admin.conn.compute.aggregates() if a.name == "freepool")
    assert sorted(freepool.hosts) == ["compute-1", "compute-2"]
    assert rc.delete_lease(blazar, cfg.names["lease"]) is False
    assert rc.delete_server(conn, cfg.names["server"]) is False


# -- a lease that ends -------------------------------------------------------------------------
def test_lease_that_has_ended_is_replaced_by_ensure_lease(demo, tmp_path):
    cfg = make_cfg(tmp_path, node_type="compute_skylake")
    net = rc.network_id(demo.conn)
    lease, _ = rc.ensure_lease(demo.blazar, cfg, network_id=net)
    lease = rc.wait_for_lease(demo.blazar, lease["id"], **WAIT)
    # cut it short (what Blazar does at its end date): end it at the next minute
    soon = leases.blazar_time(leases.utcnow() + _dt.timedelta(minutes=1))
    demo.blazar.lease.update(lease["id"], end_date=soon)
    deadline = time.monotonic() + 240
    while rc.get_lease(demo.blazar, lease["id"])["status"] != "TERMINATED":
        assert time.monotonic() < deadline, rc.get_lease(demo.blazar, lease["id"])
        time.sleep(2)
    with pytest.raises(CloudError, match="is TERMINATED"):
        rc.wait_for_lease(demo.blazar, lease["id"], **WAIT)
    fresh, created = rc.ensure_lease(demo.blazar, cfg, network_id=net)
    try:
        assert created and fresh["id"] != lease["id"]
        assert [x["id"] for x in demo.blazar.lease.list()
                if x["name"] == cfg.names["lease"]] == [fresh["id"]]
    finally:
        assert rc.delete_lease(demo.blazar, fresh["id"]) is True
    wait_lease_gone(demo.blazar, fresh["id"])


# -- KVM: a flavor reservation (Blazar's flavor:instance plugin) -------------------------------
def test_kvm_provision_boots_the_reserved_flavor(demo, admin, tmp_path, local_cloud):
    cfg = make_cfg(tmp_path, site="KVM@TACC", flavor="m1.large", gpu_vendor="none")
    state = rc.State(tmp_path / rc.STATE_FILE)
    done = None
    try:
        done = rc.provision(cfg, demo.blazar, demo.conn, state=state, public_key=KEY,
                            lease_timeout=240, server_timeout=240, sleep=fast_sleep)
        res = leases.reservations(done.lease, leases.FLAVOR)
        assert len(res) == 1 and done.lease["status"] == "ACTIVE"
        server = admin.conn.compute.get_server(done.server.id)
        assert server.status == "ACTIVE"
        # Blazar made a private flavor named after the reservation; the server runs it
        assert server.flavor.original_name == f"reservation:{res[0]['id']}"
        assert [g["name"] for g in server.security_groups] == [cfg.names["security_group"]]
        assert done.address in local_cloud.state["reservable_floating_ips"]
    finally:
        rc.delete_server(demo.conn, cfg.names["server"], wait=True, interval=1)
        rc.delete_keypair(demo.conn, rc.keypair_name(cfg))
        rc.delete_security_group(demo.conn, cfg.names["security_group"])
        lease = rc.find_lease(demo.blazar, cfg.names["lease"])
        if lease is not None:
            rc.delete_lease(demo.blazar, lease["id"])
            wait_lease_gone(demo.blazar, lease["id"])
