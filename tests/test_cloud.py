"""replab.cloud against recorded Blazar, Nova, Neutron and Glance exchanges (requests-mock).

As openstacksdk's own unit tests: each test registers the calls it expects, in order, with
their responses, runs the code, and asserts method, URL and JSON body of every call made.
The clients are the real ones (blazarclient, openstacksdk) on a keystoneauth session whose
token carries a service catalog; the token and version-discovery requests are left out of
the comparison.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import pytest

from replab import cloud as rc
from replab import config, keystonecredentials, keystonelogin, sites
from replab.errors import CloudError, ConfigError, ResourceTimeout

# openstacksdk 4.22 warns about its own internals (Resource._compute_attributes, a
# service_type argument it passes itself); nothing in replab calls them
pytestmark = pytest.mark.filterwarnings("ignore::openstack.warnings.RemovedInSDK50Warning")

REGION = "CHI@UC"
IDENTITY = "https://identity.example.com/v3"
BASE = {
    "reservation": "https://reservation.example.com/v1",
    "compute": "https://compute.example.com/v2.1",
    "network": "https://network.example.com",
    "image": "https://image.example.com",
}
NOW = _dt.datetime(2026, 5, 1, 12, 0, tzinfo=_dt.timezone.utc)
UTC = _dt.timezone.utc

LEASE_ID = "11111111-2222-3333-4444-555555555555"
NODE_RES = "aaaaaaaa-0000-0000-0000-000000000001"
FLAVOR_RES = "aaaaaaaa-0000-0000-0000-000000000002"
FIP_RES = "aaaaaaaa-0000-0000-0000-000000000003"
PUBLIC_NET = "bbbbbbbb-0000-0000-0000-00000000000a"
SHARED_NET = "bbbbbbbb-0000-0000-0000-00000000000b"
IMAGE = "cccccccc-0000-0000-0000-00000000000c"
SERVER = "dddddddd-0000-0000-0000-00000000000d"
PORT = "eeeeeeee-0000-0000-0000-00000000000e"
FIP = "ffffffff-0000-0000-0000-00000000000f"
SG = "99999999-0000-0000-0000-000000000009"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGb0lq4fWcP6b2V7t2y5e3k9sXq8m4rj0h1aFQ2cN7eR lab"


def make_cfg(site: str = "CHI@UC", **extra) -> config.Config:
    raw = {"experiment": "exp1", "frameworks": ["pytorch"], "site": site}
    raw.update(extra)
    return config.build(raw)


# -- the recorded services ---------------------------------------------------------------------
def _token() -> dict:
    catalog = [{"type": t, "id": t, "name": t, "endpoints": [
        {"id": f"{t}-public", "interface": "public", "region": REGION, "region_id": REGION,
         "url": url}]} for t, url in BASE.items()]
    return {"token": {
        "methods": ["password"], "expires_at": "2099-01-01T00:00:00.000000Z",
        "issued_at": "2026-01-01T00:00:00.000000Z",
        "user": {"id": "u1", "name": "alice", "domain": {"id": "default", "name": "Default"}},
        "project": {"id": "p1", "name": "CHI-000000",
                    "domain": {"id": "default", "name": "Default"}},
        "roles": [{"id": "r1", "name": "member"}], "catalog": catalog}}


_COMPUTE_VERSION = {"version": {
    "id": "v2.1", "status": "CURRENT", "min_version": "2.1", "version": "2.96",
    "links": [{"rel": "self", "href": BASE["compute"] + "/"}]}}
_IMAGE_VERSIONS = {"versions": [{
    "id": "v2.16", "status": "CURRENT",
    "links": [{"rel": "self", "href": BASE["image"] + "/v2/"}]}]}
_NETWORK_VERSIONS = {"versions": [{
    "id": "v2.0", "status": "CURRENT",
    "links": [{"rel": "self", "href": BASE["network"] + "/v2.0/"}]}]}
_PLUMBING = {IDENTITY + "/auth/tokens", BASE["compute"], BASE["compute"] + "/",
             BASE["image"] + "/", BASE["network"] + "/"}


@dataclass
class Call:
    method: str
    service: str
    path: str  # relative to the service's endpoint, query unquoted
    body: Any = None


@dataclass
class Api:
    """Expected calls, registered in order; what was called, minus auth and discovery."""

    mock: Any
    expected: list[Call] = field(default_factory=list)
    _responses: dict = field(default_factory=dict)

    def expect(self, method: str, service: str, path: str, *, json: Any = None,
               status: int = 200, body: Any = None) -> None:
        url = BASE[service] + path
        key = (method, url)
        reply: dict[str, Any] = {"status_code": status}
        if json is not None:
            reply["json"] = json
        self._responses.setdefault(key, []).append(reply)
        # (re-)registered with every reply so far: register all before the code runs
        self.mock.register_uri(method, url, list(self._responses[key]), complete_qs=True)
        self.expected.append(Call(method, service, path, body))

    def reset(self) -> None:
        """Forget what was called and expected: the next phase of a test starts afresh."""
        self.mock.reset_mock()
        self.expected.clear()
        self._responses.clear()

    def calls(self) -> list[Call]:
        out = []
        for r in self.mock.request_history:
            if r.url.split("?")[0] in _PLUMBING:
                continue
            service = next((s for s, b in BASE.items() if r.url.startswith(b)), None)
            if service is None:  # a real service the test lets through (real_http)
                continue
            body = json.loads(r.body) if r.body else None
            out.append(Call(r.method, service, unquote(r.url[len(BASE[service]):]), body))
        return out

    def assert_calls(self) -> None:
        """Every expected call, in order, with the expected body where one was given."""
        made = self.calls()
        assert [(c.method, c.service, c.path) for c in made] == [
            (c.method, c.service, c.path) for c in self.expected]
        for want, got in zip(self.expected, made, strict=True):
            if want.body is not None:
                assert got.body == want.body, f"{want.method} {want.path}"


@pytest.fixture
def api(requests_mock) -> Api:
    # registered first, so every expected call (registered later) takes precedence
    requests_mock.register_uri("GET", BASE["compute"], json=_COMPUTE_VERSION)
    requests_mock.register_uri("GET", BASE["compute"] + "/", json=_COMPUTE_VERSION)
    requests_mock.register_uri("GET", BASE["image"] + "/", json=_IMAGE_VERSIONS,
                               status_code=300)
    requests_mock.register_uri("GET", BASE["network"] + "/", json=_NETWORK_VERSIONS)
    requests_mock.register_uri("POST", IDENTITY + "/auth/tokens", json=_token(),
                               headers={"X-Subject-Token": "tok"}, status_code=201)
    return Api(requests_mock)


@pytest.fixture
def clients() -> rc.Clients:
    from keystoneauth1 import session
    from keystoneauth1.identity import v3

    auth = v3.Password(auth_url=IDENTITY, username="alice", password="pw", project_id="p1",
                       user_domain_id="default")
    return rc.clients(session.Session(auth=auth), region=REGION)


@pytest.fixture
def blazar(clients):
    return clients.blazar


@pytest.fixture
def conn(clients):
    return clients.conn


class FakeClock:
    """An injected clock: ``sleep`` advances it instead of sleeping."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


# -- Blazar payloads ---------------------------------------------------------------------------
def lease_json(status: str = "PENDING", *, kvm: bool = False, lease_id: str = LEASE_ID,
               name: str = "exp1-lease", node_type: str = "gpu_rtx_6000", **extra) -> dict:
    reservations = [{"id": FIP_RES, "lease_id": lease_id, "resource_type": "virtual:floatingip",
                     "network_id": PUBLIC_NET, "amount": 1, "status": "pending"}]
    if kvm:
        reservations.append({"id": FLAVOR_RES, "lease_id": lease_id,
                             "resource_type": "flavor:instance", "flavor_id": "flv-h100",
                             "amount": 1, "affinity": None, "status": "pending"})
    else:
        reservations.insert(0, {
            "id": NODE_RES, "lease_id": lease_id, "resource_type": "physical:host",
            "resource_properties": json.dumps(["==", "$node_type", node_type]),
            "hypervisor_properties": "", "min": 1, "max": 1, "status": "pending"})
    lease = {"id": lease_id, "name": name, "status": status, "degraded": False,
             "project_id": "p1", "user_id": "u1",
             "start_date": "2026-05-01T12:00:00.000000", "end_date": "2026-05-02T12:00:00.000000",
             "created_at": "2026-05-01 12:00:00", "reservations": reservations, "events": []}
    lease.update(extra)
    return lease


BARE_METAL_BODY = {
    "name": "exp1-lease", "start_date": "now", "end_date": "2026-05-02 12:00",
    "reservations": [
        {"resource_type": "physical:host",
         "resource_properties": '["==", "$node_type", "gpu_rtx_6000"]',
         "hypervisor_properties": "", "min": 1, "max": 1},
        {"resource_type": "virtual:floatingip", "network_id": PUBLIC_NET, "amount": 1},
    ],
    "events": [], "before_end_date": None,
}
KVM_BODY = {
    "name": "exp1-lease", "start_date": "now", "end_date": "2026-05-02 12:00",
    "reservations": [
        {"resource_type": "virtual:floatingip", "network_id": PUBLIC_NET, "amount": 1},
        {"resource_type": "flavor:instance", "flavor_id": "flv-h100", "amount": 1,
         "affinity": None},
    ],
    "events": [], "before_end_date": None,
}


# -- leases ------------------------------------------------------------------------------------
def test_lease_for_a_bare_metal_node_type_with_a_floating_ip(api, blazar):
    api.expect("GET", "reservation", "/leases",
               json={"leases": [lease_json("ACTIVE", lease_id="other", name="someone-else")]})
    api.expect("POST", "reservation", "/leases", json={"lease": lease_json()},
               body=BARE_METAL_BODY)
    lease, created = rc.ensure_lease(blazar, make_cfg(), network_id=PUBLIC_NET, now=NOW)
    assert created and lease["id"] == LEASE_ID
    assert rc.server_reservation_id(lease) == NODE_RES
    assert rc.fip_reservation_ids(lease) == [FIP_RES]
    api.assert_calls()


def test_lease_for_a_kvm_flavor_with_a_floating_ip(api, blazar):
    api.expect("GET", "reservation", "/leases", json={"leases": []})
    api.expect("POST", "reservation", "/leases", json={"lease": lease_json(kvm=True)},
               body=KVM_BODY)
    lease, created = rc.ensure_lease(blazar, make_cfg("KVM@TACC"), network_id=PUBLIC_NET,
                                     flavor_id="flv-h100", now=NOW)
    assert created and rc.server_reservation_id(lease) == FLAVOR_RES
    api.assert_calls()


def test_lease_starting_later_sends_its_dates(api, blazar):
    body = dict(BARE_METAL_BODY, start_date="2026-05-03 09:00", end_date="2026-05-03 13:00")
    api.expect("GET", "reservation", "/leases", json={"leases": []})
    api.expect("POST", "reservation", "/leases", json={"lease": lease_json()}, body=body)
    rc.ensure_lease(blazar, make_cfg(lease_hours=4, lease_start="2026-05-03 09:00"),
                    network_id=PUBLIC_NET, now=NOW)
    api.assert_calls()


def test_existing_lease_is_found_not_created(api, blazar):
    api.expect("GET", "reservation", "/leases", json={"leases": [lease_json("ACTIVE")]})
    lease, created = rc.ensure_lease(blazar, make_cfg(), network_id=PUBLIC_NET, now=NOW)
    assert not created and lease["status"] == "ACTIVE"
    api.assert_calls()


def test_existing_lease_is_found_after_its_configured_start(api, blazar):
    cfg = make_cfg(lease_start="2026-05-01 12:00", lease_hours=24)
    api.expect("GET", "reservation", "/leases", json={"leases": [lease_json("ACTIVE")]})
    api.expect("GET", "reservation", "/leases", json={"leases": []})
    lease, created = rc.ensure_lease(blazar, cfg, network_id=PUBLIC_NET,
                                     now=NOW + _dt.timedelta(hours=3))
    assert not created
    with pytest.raises(ConfigError, match="in the past"):  # creating one now would be wrong
        rc.ensure_lease(blazar, cfg, network_id=PUBLIC_NET, now=NOW + _dt.timedelta(hours=3))
    api.assert_calls()


def test_existing_lease_for_another_node_type_is_an_error(api, blazar):
    api.expect("GET", "reservation", "/leases",
               json={"leases": [lease_json("ACTIVE", node_type="compute_skylake")]})
    with pytest.raises(CloudError, match="does not reserve node type gpu_rtx_6000"):
        rc.ensure_lease(blazar, make_cfg(), network_id=PUBLIC_NET, now=NOW)
    api.assert_calls()


def test_existing_lease_in_error_is_reported_with_its_reason(api, blazar):
    # Blazar has no reason field: a failed lease says why in its reservations and events
    failed = lease_json("ERROR", events=[
        {"event_type": "start_lease", "time": "2026-05-01T12:00:00.000000",
         "status": "ERROR"}])
    failed["reservations"][0]["status"] = "error"
    api.expect("GET", "reservation", "/leases", json={"leases": [failed]})
    with pytest.raises(CloudError) as err:
        rc.ensure_lease(blazar, make_cfg(), network_id=PUBLIC_NET, now=NOW)
    text = str(err.value)
    assert f"physical:host reservation {NODE_RES} is in error" in text
    assert "event start_lease at 2026-05-01T12:00:00.000000 failed" in text
    assert LEASE_ID in text and "delete it" in text
    api.assert_calls()  # found, not deleted nor replaced


def test_terminated_lease_is_replaced(api, blazar):
    api.expect("GET", "reservation", "/leases",
               json={"leases": [lease_json("TERMINATED", lease_id="old-lease")]})
    api.expect("DELETE", "reservation", "/leases/old-lease", status=204)
    api.expect("POST", "reservation", "/leases", json={"lease": lease_json()},
               body=BARE_METAL_BODY)
    _, created = rc.ensure_lease(blazar, make_cfg(), network_id=PUBLIC_NET, now=NOW)
    assert created
    api.assert_calls()


def test_two_leases_with_the_name_are_an_error_naming_both(api, blazar):
    api.expect("GET", "reservation", "/leases", json={"leases": [
        lease_json("ACTIVE", lease_id="lease-a"), lease_json("PENDING", lease_id="lease-b")]})
    with pytest.raises(CloudError) as err:
        rc.find_lease(blazar, "exp1-lease")
    assert "lease-a" in str(err.value) and "lease-b" in str(err.value)
    assert err.value.request == "GET /leases"
    api.assert_calls()


def test_blazar_refusal_becomes_a_cloud_error_naming_the_request(api, blazar):
    api.expect("GET", "reservation", "/leases", json={"leases": []})
    api.expect("POST", "reservation", "/leases", status=409, json={
        "error_code": 409, "error_message": "Not enough hosts available",
        "error_name": "NotEnoughHostsAvailable"})
    with pytest.raises(CloudError, match="Not enough hosts available") as err:
        rc.ensure_lease(blazar, make_cfg(), network_id=PUBLIC_NET, now=NOW)
    assert err.value.request == "POST /leases" and "409" in str(err.value)
    api.assert_calls()  # no retry


@pytest.mark.parametrize("site", ["CHI@UC", "CHI@TACC", "KVM@TACC", "CHI@NCAR"])
def test_lease_longer_than_the_site_allows_is_refused_before_any_call(requests_mock, blazar,
                                                                      site):
    cfg = make_cfg(site)
    too_long = sites.get_site(site).max_lease_hours + 1
    with pytest.raises(ConfigError) as err:
        rc.ensure_lease(blazar, cfg, network_id=PUBLIC_NET, flavor_id="f", hours=too_long,
                        now=NOW)
    assert err.value.fields == ["lease_hours"]
    assert requests_mock.call_count == 0


def test_lease_window_policy():
    site = sites.get_site("CHI@UC")
    window = rc.lease_window(site, hours=24, start="now", now=NOW)
    assert window.dates() == ("now", "2026-05-02 12:00") and window.hours == 24
    later = rc.lease_window(site, hours=168, start="2026-05-10T08:30:00", now=NOW)
    assert later.dates() == ("2026-05-10 08:30", "2026-05-17 08:30")
    assert rc.lease_end_bounds(site, NOW) == (NOW + _dt.timedelta(hours=1),
                                              NOW + _dt.timedelta(hours=168))
    with pytest.raises(ConfigError, match="in the past"):
        rc.lease_window(site, hours=2, start="2026-04-30 09:00", now=NOW)
    with pytest.raises(ConfigError, match="lease_hours"):
        rc.lease_window(site, hours=0.5, now=NOW)
    with pytest.raises(ConfigError, match="takes no lease"):
        rc.lease_window(sites.get_site("local"), hours=1, now=NOW)


def test_kvm_lease_needs_the_flavor_id_before_any_call(requests_mock, blazar):
    with pytest.raises(ConfigError, match="flavor"):
        rc.ensure_lease(blazar, make_cfg("KVM@TACC"), network_id=PUBLIC_NET, now=NOW)
    assert requests_mock.call_count == 0


# -- waits -------------------------------------------------------------------------------------
def test_lease_in_error_raises_with_blazars_reason(api, blazar):
    reason = f"physical:host reservation {NODE_RES} lost a reserved resource (missing_resources)"
    failed = lease_json("ERROR")
    failed["reservations"][0]["missing_resources"] = True
    api.expect("GET", "reservation", f"/leases/{LEASE_ID}", json={"lease": lease_json()})
    api.expect("GET", "reservation", f"/leases/{LEASE_ID}", json={"lease": failed})
    clock = FakeClock()
    with pytest.raises(CloudError) as err:
        rc.wait_for_lease(blazar, LEASE_ID, clock=clock, sleep=clock.sleep)
    assert reason in str(err.value) and LEASE_ID in str(err.value)
    assert clock.sleeps == [10.0]
    api.assert_calls()


def test_lease_wait_times_out_on_the_injected_clock(api, blazar):
    for _ in range(4):
        api.expect("GET", "reservation", f"/leases/{LEASE_ID}",
                   json={"lease": lease_json("STARTING")})
    clock, lines = FakeClock(), []
    with pytest.raises(ResourceTimeout, match="STARTING"):
        rc.wait_for_lease(blazar, LEASE_ID, timeout=30, interval=10, clock=clock,
                          sleep=clock.sleep, progress=lines.append)
    assert clock.sleeps == [10, 10, 10] and clock.now == 30
    assert len(lines) == 3 and "STARTING" in lines[0]
    api.assert_calls()


def test_lease_wait_returns_the_active_lease(api, blazar):
    api.expect("GET", "reservation", f"/leases/{LEASE_ID}", json={"lease": lease_json()})
    api.expect("GET", "reservation", f"/leases/{LEASE_ID}",
               json={"lease": lease_json("STARTING")})
    api.expect("GET", "reservation", f"/leases/{LEASE_ID}",
               json={"lease": lease_json("ACTIVE")})
    clock = FakeClock()
    lease = rc.wait_for_lease(blazar, LEASE_ID, clock=clock, sleep=clock.sleep)
    assert lease["status"] == "ACTIVE" and clock.now == 20
    api.assert_calls()


def test_wait_for_is_the_one_helper():
    seen = iter(["a", "b", "boom"])
    clock = FakeClock()
    with pytest.raises(CloudError, match="thing failed: exploded"):
        rc.wait_for(lambda: next(seen), ready=lambda x: x == "done",
                    failed=lambda x: "exploded" if x == "boom" else None, what="thing",
                    timeout=100, interval=7, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == [7, 7]
    clock = FakeClock()
    with pytest.raises(ResourceTimeout, match="last seen: 'x'|last seen: x"):
        rc.wait_for(lambda: "x", ready=lambda x: False, what="thing", timeout=10,
                    interval=4, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == [4, 4, 2]  # never sleeps past the deadline


# -- extending ---------------------------------------------------------------------------------
def test_extension_beyond_policy_is_refused_before_any_call(requests_mock, blazar):
    site = sites.get_site("CHI@UC")
    lease = lease_json("ACTIVE")  # 24 h, 2026-05-01 12:00 to 2026-05-02 12:00
    with pytest.raises(ConfigError, match="more than CHI@UC's maximum"):
        rc.extend_lease(blazar, lease, 200, site=site, now=NOW)
    # a 5-day lease asked two hours in: before the 48 h extension window opens
    long = lease_json("ACTIVE", end_date="2026-05-06T12:00:00.000000")
    with pytest.raises(ConfigError, match="only within 48 h of its end .*after 2026-05-04 12:00"):
        rc.extend_lease(blazar, long, 100, site=site, now=NOW + _dt.timedelta(hours=2))
    # without a window (plain Blazar), the same holds near the end
    with pytest.raises(ConfigError, match="would last 220 h"):
        rc.extend_lease(blazar, long, 100, site=site, now=NOW + _dt.timedelta(hours=119),
                        window_hours=None)
    with pytest.raises(ConfigError, match="positive"):
        rc.extend_lease(blazar, lease, 0, site=site, now=NOW)
    assert requests_mock.call_count == 0


def test_extension_within_policy_moves_the_end(api, blazar):
    site = sites.get_site("CHI@UC")
    lease = lease_json("ACTIVE")
    # blazarclient reads the lease before it sends the new end
    api.expect("GET", "reservation", f"/leases/{LEASE_ID}", json={"lease": lease})
    api.expect("PUT", "reservation", f"/leases/{LEASE_ID}",
               json={"lease": lease_json("ACTIVE", end_date="2026-05-03T12:00:00.000000")},
               body={"end_date": "2026-05-03 12:00"})
    # inside the last 48 h: up to the maximum again, even past 168 h from the start
    api.expect("GET", "reservation", f"/leases/{LEASE_ID}", json={"lease": lease})
    api.expect("PUT", "reservation", f"/leases/{LEASE_ID}",
               json={"lease": lease_json("ACTIVE")}, body={"end_date": "2026-05-09 12:00"})
    updated = rc.extend_lease(blazar, lease, 24, site=site, now=NOW)
    assert updated["end_date"].startswith("2026-05-03")
    rc.extend_lease(blazar, lease, 168, site=site, now=NOW + _dt.timedelta(hours=1))
    api.assert_calls()


# -- deleting ----------------------------------------------------------------------------------
def test_deleting_a_lease_already_gone(api, blazar):
    api.expect("DELETE", "reservation", f"/leases/{LEASE_ID}", status=404, json={
        "error_code": 404, "error_message": f"Object with {{'lease_id': '{LEASE_ID}'}} not "
                                            "found", "error_name": "NotFound"})
    api.expect("GET", "reservation", "/leases", json={"leases": []})
    assert rc.delete_lease(blazar, LEASE_ID) is False
    assert rc.delete_lease(blazar, "exp1-lease") is False
    api.assert_calls()
    with pytest.raises(CloudError, match="not found"):
        rc.delete_lease(blazar, LEASE_ID, ignore_missing=False)


def test_deleting_a_lease_by_name(api, blazar):
    api.expect("GET", "reservation", "/leases", json={"leases": [lease_json("ACTIVE")]})
    api.expect("DELETE", "reservation", f"/leases/{LEASE_ID}", status=204)
    assert rc.delete_lease(blazar, "exp1-lease") is True
    api.assert_calls()


def test_deleting_compute_and_network_things_already_gone(api, conn):
    gone = {"itemNotFound": {"code": 404, "message": "not found"}}
    api.expect("DELETE", "compute", f"/servers/{SERVER}", status=404, json=gone)
    api.expect("GET", "compute", "/servers/detail?name=exp1-server", json={"servers": []})
    api.expect("DELETE", "compute", "/os-keypairs/exp1-key", status=404, json=gone)
    api.expect("DELETE", "network", f"/v2.0/security-groups/{SG}", status=404,
               json={"NeutronError": {"type": "SecurityGroupNotFound", "message": "gone"}})
    api.expect("GET", "network", "/v2.0/security-groups?name=exp1-lab",
               json={"security_groups": []})
    api.expect("GET", "network", "/v2.0/floatingips?floating_ip_address=192.5.87.10",
               json={"floatingips": []})
    assert rc.delete_server(conn, SERVER) is False
    assert rc.delete_server(conn, "exp1-server") is False
    assert rc.delete_keypair(conn, "exp1-key") is False
    assert rc.delete_security_group(conn, SG) is False
    assert rc.delete_security_group(conn, "exp1-lab") is False
    assert rc.release_floating_ip(conn, "192.5.87.10") is False
    api.assert_calls()


def test_deleting_a_server_and_waiting_until_it_is_gone(api, conn):
    api.expect("DELETE", "compute", f"/servers/{SERVER}", status=204)
    api.expect("GET", "compute", f"/servers/{SERVER}", json={"server": server_json("ACTIVE")})
    api.expect("GET", "compute", f"/servers/{SERVER}", status=404,
               json={"itemNotFound": {"code": 404, "message": "gone"}})
    clock = FakeClock()
    assert rc.delete_server(conn, SERVER, wait=True, clock=clock, sleep=clock.sleep)
    api.assert_calls()


def test_floating_ip_of_the_lease_is_not_released(api, conn):
    api.expect("GET", "network", "/v2.0/floatingips?floating_ip_address=192.5.87.10",
               json={"floatingips": [fip_json(tags=["blazar", f"reservation:{FIP_RES}"])]})
    assert rc.release_floating_ip(conn, "192.5.87.10") is False
    api.assert_calls()  # no DELETE


def test_floating_ip_the_project_allocated_is_released(api, conn):
    api.expect("GET", "network", f"/v2.0/floatingips/{FIP}", json={"floatingip": fip_json()})
    api.expect("DELETE", "network", f"/v2.0/floatingips/{FIP}", status=204)
    assert rc.release_floating_ip(conn, FIP) is True
    api.assert_calls()


# -- availability ------------------------------------------------------------------------------
def test_next_free_slot_for_a_node_type(api, blazar):
    hosts = [{"id": "1", "hypervisor_hostname": "node-a", "node_type": "gpu_rtx_6000",
              "reservable": True},
             {"id": "2", "hypervisor_hostname": "node-b", "node_type": "gpu_rtx_6000",
              "reservable": True},
             {"id": "3", "hypervisor_hostname": "node-c", "node_type": "compute_skylake",
              "reservable": True}]
    allocations = [
        {"resource_id": "1", "reservations": [
            {"id": "r1", "lease_id": "l1", "start_date": "2026-05-01T00:00:00.000000",
             "end_date": "2026-05-03T00:00:00.000000"}]},
        {"resource_id": "2", "reservations": [
            {"id": "r2", "lease_id": "l2", "start_date": "2026-05-01T10:00:00.000000",
             "end_date": "2026-05-01T20:00:00.000000"},
            {"id": "r3", "lease_id": "l3", "start_date": "2026-05-02T06:00:00.000000",
             "end_date": "2026-05-04T00:00:00.000000"}]},
        {"resource_id": "3", "reservations": []}]
    api.expect("GET", "reservation", "/os-hosts", json={"hosts": hosts})
    api.expect("GET", "reservation", "/os-hosts/allocations", json={"allocations": allocations})
    slot = rc.next_free_slot(blazar, make_cfg(), hours=6, now=NOW)
    assert slot == rc.Slot(_dt.datetime(2026, 5, 1, 20, tzinfo=UTC),
                           _dt.datetime(2026, 5, 2, 6, tzinfo=UTC), "node-b")
    api.assert_calls()


def test_next_free_slot_for_a_kvm_flavor(api, blazar):
    segments = [{"start": "2026-05-01 12:00", "end": "2026-05-01 18:00", "available": 0,
                 "total": 4},
                {"start": "2026-05-01 18:00", "end": "2026-05-02 02:00", "available": 1,
                 "total": 4},
                {"start": "2026-05-02 02:00", "end": "2026-05-05 00:00", "available": 2,
                 "total": 4}]
    api.expect("GET", "reservation", "/flavor-instances/availability?flavor_id=flv-h100",
               json={"flavor_instances": [{"flavor_id": "flv-h100", "availability": segments}]})
    slot = rc.next_free_slot(blazar, make_cfg("KVM@TACC"), hours=24, flavor_id="flv-h100",
                             now=NOW)
    assert slot.start == _dt.datetime(2026, 5, 1, 18, tzinfo=UTC) and slot.resource == "flv-h100"
    api.assert_calls()


# -- servers, keypairs, security groups, floating IPs ------------------------------------------
def server_json(status: str = "BUILD", **extra) -> dict:
    server = {"id": SERVER, "name": "exp1-server", "status": status, "addresses": {},
              "flavor": {"original_name": "baremetal"}, "image": {"id": IMAGE},
              "key_name": "exp1-key", "metadata": {}, "tenant_id": "p1"}
    server.update(extra)
    return server


def fip_json(port_id=None, tags=()) -> dict:
    return {"id": FIP, "floating_ip_address": "192.5.87.10", "floating_network_id": PUBLIC_NET,
            "port_id": port_id, "status": "DOWN", "tags": list(tags), "project_id": "p1"}


def test_server_is_booted_on_the_reservation(api, conn):
    api.expect("GET", "compute", "/servers/detail?name=exp1-server",
               json={"servers": [server_json("ACTIVE", id="x", name="exp1-server-2")]})
    api.expect("GET", "image", "/v2/images?name=CC-Ubuntu24.04-CUDA",
               json={"images": [{"id": IMAGE, "name": "CC-Ubuntu24.04-CUDA"}]})
    api.expect("GET", "network", "/v2.0/networks?name=sharednet1",
               json={"networks": [{"id": SHARED_NET, "name": "sharednet1"}]})
    api.expect("GET", "compute", "/flavors?is_public=None", json={"flavors": [
        {"id": "flv-bm", "name": "baremetal"}, {"id": "flv-x", "name": "m1.small"}]})
    api.expect("POST", "compute", "/servers", status=202, json={"server": server_json()},
               body={"server": {"name": "exp1-server", "imageRef": IMAGE,
                                "flavorRef": "flv-bm", "key_name": "exp1-key",
                                "networks": [{"uuid": SHARED_NET}]},
                     "OS-SCH-HNT:scheduler_hints": {"reservation": NODE_RES}})
    server, created = rc.ensure_server(conn, make_cfg(), reservation_id=NODE_RES,
                                       keypair="exp1-key")
    assert created and server.id == SERVER
    api.assert_calls()


def test_kvm_server_uses_the_reserved_flavor_and_the_security_group(api, conn):
    api.expect("GET", "compute", "/servers/detail?name=exp1-server", json={"servers": []})
    api.expect("GET", "image", f"/v2/images?name={sites.IMAGE_CPU}",
               json={"images": [{"id": IMAGE, "name": sites.IMAGE_CPU}]})
    api.expect("GET", "network", "/v2.0/networks?name=sharednet1",
               json={"networks": [{"id": SHARED_NET, "name": "sharednet1"}]})
    api.expect("POST", "compute", "/servers", status=202, json={"server": server_json()},
               body={"server": {"name": "exp1-server", "imageRef": IMAGE,
                                "flavorRef": FLAVOR_RES, "key_name": "exp1-key",
                                "networks": [{"uuid": SHARED_NET}],
                                "security_groups": [{"name": "exp1-lab"}]}})
    cfg = make_cfg("KVM@TACC", flavor="m1.large", gpu_vendor="none")
    assert cfg.image == sites.IMAGE_CPU
    rc.ensure_server(conn, cfg, reservation_id=FLAVOR_RES, keypair="exp1-key")
    api.assert_calls()


def test_existing_server_is_found_not_booted(api, conn):
    api.expect("GET", "compute", "/servers/detail?name=exp1-server",
               json={"servers": [server_json("ACTIVE")]})
    server, created = rc.ensure_server(conn, make_cfg(), reservation_id=NODE_RES,
                                       keypair="exp1-key")
    assert not created and server.status == "ACTIVE"
    api.assert_calls()


def test_two_images_with_the_name_are_an_error(api, conn):
    api.expect("GET", "image", "/v2/images?name=CC-Ubuntu24.04",
               json={"images": [{"id": "img-1", "name": "CC-Ubuntu24.04"},
                                {"id": "img-2", "name": "CC-Ubuntu24.04"}]})
    with pytest.raises(CloudError, match="img-1, img-2"):
        rc.image_id(conn, "CC-Ubuntu24.04")
    api.assert_calls()


def test_server_in_error_raises_with_novas_fault(api, conn):
    api.expect("GET", "compute", f"/servers/{SERVER}", json={"server": server_json()})
    api.expect("GET", "compute", f"/servers/{SERVER}", json={"server": server_json(
        "ERROR", fault={"code": 500, "message": "No valid host was found. There are not "
                                                "enough hosts available."})})
    clock = FakeClock()
    with pytest.raises(CloudError, match="No valid host was found"):
        rc.wait_for_server(conn, SERVER, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == [15.0]
    api.assert_calls()


def test_server_wait_times_out(api, conn):
    for _ in range(5):  # polled at 0, 15, 30, 45 and 60 s: still BUILD at the deadline
        api.expect("GET", "compute", f"/servers/{SERVER}", json={"server": server_json()})
    clock = FakeClock()
    with pytest.raises(ResourceTimeout, match="BUILD"):
        rc.wait_for_server(conn, SERVER, timeout=60, interval=15, clock=clock,
                           sleep=clock.sleep)
    assert clock.now == 60
    api.assert_calls()


def test_the_reserved_floating_ip_is_attached(api, conn):
    lease = lease_json("ACTIVE")
    api.expect("GET", "network", f"/v2.0/floatingips?tags=reservation:{FIP_RES}",
               json={"floatingips": [fip_json(tags=["blazar", f"reservation:{FIP_RES}"])]})
    api.expect("GET", "network", f"/v2.0/ports?device_id={SERVER}",
               json={"ports": [{"id": PORT, "device_id": SERVER, "network_id": SHARED_NET}]})
    api.expect("PUT", "network", f"/v2.0/floatingips/{FIP}",
               json={"floatingip": fip_json(port_id=PORT)},
               body={"floatingip": {"port_id": PORT}})
    from openstack.compute.v2.server import Server

    server = Server(**server_json("ACTIVE"))
    ip = rc.reserved_floating_ip(conn, lease)
    assert ip.floating_ip_address == "192.5.87.10"
    assert rc.associate_floating_ip(conn, server, ip).port_id == PORT
    api.assert_calls()


def test_no_reserved_floating_ip_yet_is_an_error(api, conn):
    api.expect("GET", "network", f"/v2.0/floatingips?tags=reservation:{FIP_RES}",
               json={"floatingips": []})
    with pytest.raises(CloudError, match=f"reservation:{FIP_RES}"):
        rc.reserved_floating_ip(conn, lease_json("STARTING"))
    api.assert_calls()


def test_security_group_is_created_with_ssh_only(api, conn):
    api.expect("GET", "network", "/v2.0/security-groups?name=exp1-lab",
               json={"security_groups": []})
    api.expect("POST", "network", "/v2.0/security-groups", status=201,
               json={"security_group": {"id": SG, "name": "exp1-lab",
                                        "security_group_rules": [
                                            {"id": "e1", "direction": "egress",
                                             "ethertype": "IPv4", "protocol": None}]}},
               body={"security_group": {"name": "exp1-lab",
                                        "description": "replab lab: SSH only"}})
    api.expect("POST", "network", "/v2.0/security-group-rules", status=201,
               json={"security_group_rule": {"id": "r1"}},
               body={"security_group_rule": {
                   "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp",
                   "port_range_min": 22, "port_range_max": 22,
                   "remote_ip_prefix": "0.0.0.0/0", "security_group_id": SG}})
    group, created = rc.ensure_security_group(conn, "exp1-lab")
    assert created and group.id == SG
    api.assert_calls()


def test_existing_security_group_gets_only_missing_rules(api, conn):
    ssh = {"id": "r1", "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp",
           "port_range_min": 22, "port_range_max": 22, "remote_ip_prefix": "0.0.0.0/0"}
    api.expect("GET", "network", "/v2.0/security-groups?name=exp1-lab", json={
        "security_groups": [{"id": SG, "name": "exp1-lab", "security_group_rules": [ssh]}]})
    api.expect("POST", "network", "/v2.0/security-group-rules", status=201,
               json={"security_group_rule": {"id": "r2"}},
               body={"security_group_rule": dict(
                   {k: v for k, v in ssh.items() if k != "id"}, port_range_min=8888,
                   port_range_max=8888, security_group_id=SG)})
    group, created = rc.ensure_security_group(conn, "exp1-lab", [rc.SSH, rc.Rule(8888)])
    assert not created
    api.assert_calls()


def test_keypair_is_created_once_and_a_different_key_is_refused(api, conn):
    gone = {"itemNotFound": {"code": 404, "message": "Keypair exp1-key not found"}}
    api.expect("GET", "compute", "/os-keypairs/exp1-key", status=404, json=gone)
    api.expect("POST", "compute", "/os-keypairs",
               json={"keypair": {"name": "exp1-key", "public_key": KEY, "fingerprint": "fp"}},
               body={"keypair": {"name": "exp1-key", "public_key": KEY}})
    api.expect("GET", "compute", "/os-keypairs/exp1-key",
               json={"keypair": {"name": "exp1-key", "public_key": KEY.replace(" lab", " x"),
                                 "fingerprint": "fp"}})
    api.expect("GET", "compute", "/os-keypairs/exp1-key",
               json={"keypair": {"name": "exp1-key", "public_key": "ssh-rsa AAAAB3Nza other",
                                 "fingerprint": "fp2"}})
    assert rc.ensure_keypair(conn, "exp1-key", KEY)[1] is True
    assert rc.ensure_keypair(conn, "exp1-key", KEY)[1] is False  # the comment does not count
    with pytest.raises(CloudError, match="another public key"):
        rc.ensure_keypair(conn, "exp1-key", KEY)
    api.assert_calls()


# -- plan --------------------------------------------------------------------------------------
CHAMELEON_SITES = [name for name, site in sites.SITES.items() if site.kind != sites.LOCAL]


def _shape(calls):
    return [(c.method, c.service, c.path) for c in calls]


@pytest.mark.parametrize("site", CHAMELEON_SITES)
def test_plan_lists_every_call_and_makes_none(requests_mock, site):
    cfg = make_cfg(site)
    calls = rc.plan(cfg, now=NOW)
    kvm = sites.get_site(site).kind == sites.KVM
    lookup_flavor = [("GET", "compute", "/flavors?is_public=None")]
    expected = [
        ("GET", "network", "/v2.0/networks?name=public"),
        *(lookup_flavor if kvm else []),
        ("GET", "reservation", "/leases"),
        ("POST", "reservation", "/leases"),
        ("GET", "reservation", "/leases/{lease.id}"),
        ("GET", "compute", "/os-keypairs/exp1-key"),
        ("POST", "compute", "/os-keypairs"),
        *([("GET", "network", "/v2.0/security-groups?name=exp1-lab"),
           ("POST", "network", "/v2.0/security-groups"),
           ("POST", "network", "/v2.0/security-group-rules")] if kvm else []),
        ("GET", "compute", "/servers/detail?name=exp1-server"),
        ("GET", "image", f"/v2/images?name={cfg.image}"),
        ("GET", "network", "/v2.0/networks?name=sharednet1"),
        *([] if kvm else lookup_flavor),
        ("POST", "compute", "/servers"),
        ("GET", "compute", "/servers/{server.id}"),
        ("GET", "network", "/v2.0/floatingips?tags=reservation:{fip_reservation.id}"),
        ("GET", "network", "/v2.0/ports?device_id={server.id}"),
        ("PUT", "network", "/v2.0/floatingips/{floating_ip.id}"),
    ]
    assert _shape(calls) == expected
    lease_post = next(c for c in calls if c.path == "/leases" and c.method == "POST")
    kinds = [r["resource_type"] for r in lease_post.body["reservations"]]
    assert kinds == (["virtual:floatingip", "flavor:instance"] if kvm
                     else ["physical:host", "virtual:floatingip"])
    if not kvm:
        assert cfg.node_type in lease_post.body["reservations"][0]["resource_properties"]
    boot = next(c for c in calls if c.path == "/servers")
    if kvm:  # the flavor Blazar made for the reservation, and no reservation hint
        assert boot.body["server"]["flavorRef"] == "{server_reservation.id}"
        assert "OS-SCH-HNT:scheduler_hints" not in boot.body
    else:
        assert boot.body["OS-SCH-HNT:scheduler_hints"] == {
            "reservation": "{server_reservation.id}"}
    assert all(c.summary for c in calls)
    assert requests_mock.call_count == 0


def test_plan_skips_what_state_records(requests_mock, tmp_path):
    state = rc.State.load(tmp_path)
    state.record("lease", id=LEASE_ID, name="exp1-lease", site="CHI@UC")
    state.record("keypair", id="exp1-key", name="exp1-key", site="CHI@UC")
    state.record("server", id=SERVER, name="exp1-server", site="CHI@UC")
    calls = rc.plan(make_cfg(), state=state, now=NOW)
    assert [c.method for c in calls].count("POST") == 0
    assert ("GET", "reservation", f"/leases/{LEASE_ID}") in _shape(calls)
    assert ("GET", "compute", f"/servers/{SERVER}") in _shape(calls)
    assert ("PUT", "network", "/v2.0/floatingips/{floating_ip.id}") in _shape(calls)
    # the same from a plain mapping, as in state.json
    assert rc.plan(make_cfg(), state=state.as_dict(), now=NOW) == calls
    state.mark_deleted("server")
    assert ("POST", "compute", "/servers") in _shape(rc.plan(make_cfg(), state=state, now=NOW))
    assert requests_mock.call_count == 0


def test_plan_for_a_lease_starting_later_stops_after_reserving(requests_mock):
    calls = rc.plan(make_cfg(lease_start="2026-06-01 08:00"), now=NOW)
    assert _shape(calls)[-1] == ("POST", "reservation", "/leases")
    assert calls[-1].body["start_date"] == "2026-06-01 08:00"
    assert rc.plan(make_cfg("local"), now=NOW) == []
    assert requests_mock.call_count == 0


def test_plan_refuses_a_lease_the_site_does_not_allow():
    cfg = make_cfg()
    cfg = config.Config(**{**cfg.__dict__, "lease_hours": 500})  # past config validation
    with pytest.raises(ConfigError, match="lease_hours"):
        rc.plan(cfg, now=NOW)


# -- provision: what plan says, call for call ---------------------------------------------------
def _register_provision(api: Api, kvm: bool) -> None:
    image = sites.IMAGE_CUDA
    api.expect("GET", "network", "/v2.0/networks?name=public",
               json={"networks": [{"id": PUBLIC_NET, "name": "public"}]})
    if kvm:
        api.expect("GET", "compute", "/flavors?is_public=None",
                   json={"flavors": [{"id": "flv-h100", "name": "g1.h100.pci.1"}]})
    api.expect("GET", "reservation", "/leases", json={"leases": []})
    api.expect("POST", "reservation", "/leases", json={"lease": lease_json(kvm=kvm)},
               body=KVM_BODY if kvm else BARE_METAL_BODY)
    api.expect("GET", "reservation", f"/leases/{LEASE_ID}",
               json={"lease": lease_json("STARTING", kvm=kvm)})
    api.expect("GET", "reservation", f"/leases/{LEASE_ID}",
               json={"lease": lease_json("ACTIVE", kvm=kvm)})
    api.expect("GET", "compute", "/os-keypairs/exp1-key", status=404,
               json={"itemNotFound": {"code": 404, "message": "not found"}})
    api.expect("POST", "compute", "/os-keypairs",
               json={"keypair": {"name": "exp1-key", "public_key": KEY}})
    if kvm:
        api.expect("GET", "network", "/v2.0/security-groups?name=exp1-lab",
                   json={"security_groups": []})
        api.expect("POST", "network", "/v2.0/security-groups", status=201, json={
            "security_group": {"id": SG, "name": "exp1-lab", "security_group_rules": []}})
        api.expect("POST", "network", "/v2.0/security-group-rules", status=201,
                   json={"security_group_rule": {"id": "r1"}})
    api.expect("GET", "compute", "/servers/detail?name=exp1-server", json={"servers": []})
    api.expect("GET", "image", f"/v2/images?name={image}",
               json={"images": [{"id": IMAGE, "name": image}]})
    api.expect("GET", "network", "/v2.0/networks?name=sharednet1",
               json={"networks": [{"id": SHARED_NET, "name": "sharednet1"}]})
    if not kvm:
        api.expect("GET", "compute", "/flavors?is_public=None",
                   json={"flavors": [{"id": "flv-bm", "name": "baremetal"}]})
    api.expect("POST", "compute", "/servers", status=202, json={"server": server_json()})
    for status in ("BUILD", "BUILD", "ACTIVE"):
        api.expect("GET", "compute", f"/servers/{SERVER}", json={"server": server_json(status)})
    api.expect("GET", "network", f"/v2.0/floatingips?tags=reservation:{FIP_RES}",
               json={"floatingips": [fip_json(tags=["blazar", f"reservation:{FIP_RES}"])]})
    api.expect("GET", "network", f"/v2.0/ports?device_id={SERVER}",
               json={"ports": [{"id": PORT, "device_id": SERVER}]})
    api.expect("PUT", "network", f"/v2.0/floatingips/{FIP}",
               json={"floatingip": fip_json(port_id=PORT)})


def _placeholder_match(planned: Any, actual: Any) -> bool:
    if isinstance(planned, str) and isinstance(actual, str):
        parts = re.split(r"\{[a-z_.0-9]+\}", planned)  # "{lease.id}": any id
        pattern = "[^/?&]+".join(re.escape(part) for part in parts)
        return re.fullmatch(pattern, actual) is not None
    if isinstance(planned, dict) and isinstance(actual, dict):
        return planned.keys() == actual.keys() and all(
            _placeholder_match(planned[k], actual[k]) for k in planned)
    if isinstance(planned, list) and isinstance(actual, list):
        return len(planned) == len(actual) and all(
            _placeholder_match(p, a) for p, a in zip(planned, actual, strict=True))
    return planned == actual


@pytest.mark.parametrize("site", ["CHI@UC", "KVM@TACC"])
def test_provision_makes_exactly_the_planned_calls(api, clients, tmp_path, site):
    kvm = site == "KVM@TACC"
    cfg = make_cfg(site, workdir=str(tmp_path))
    _register_provision(api, kvm)
    state = rc.State.load(tmp_path)
    clock, lines = FakeClock(), []
    done = rc.provision(cfg, clients.blazar, clients.conn, state=state, public_key=KEY,
                        now=NOW, clock=clock, sleep=clock.sleep, progress=lines.append)
    assert done.address == "192.5.87.10" and done.server.status == "ACTIVE"
    assert done.created == ({"lease": True, "keypair": True, "security_group": True,
                             "server": True} if kvm else
                            {"lease": True, "keypair": True, "server": True})
    api.assert_calls()

    # the plan, call for call (a wait is one planned call however often it polls)
    made = []
    for call in api.calls():
        if made and (made[-1].method, made[-1].path) == (call.method, call.path):
            continue
        made.append(call)
    planned = rc.plan(cfg, now=NOW, public_key=KEY)
    assert len(planned) == len(made)
    for want, got in zip(planned, made, strict=True):
        assert (want.method, want.service) == (got.method, got.service)
        assert _placeholder_match(want.path, got.path), (want.path, got.path)
        if want.body is not None:
            assert _placeholder_match(want.body, got.body), want.path

    # the inventory
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["lease"]["id"] == LEASE_ID and saved["lease"]["status"] == "ACTIVE"
    assert saved["server"]["id"] == SERVER and saved["floating_ip"]["address"] == "192.5.87.10"
    assert saved["floating_ip"]["owned_by_lease"] is True
    assert ("security_group" in saved) == kvm
    assert keystonecredentials.lease_end(cfg, saved) == _dt.datetime(2026, 5, 2, 12, tzinfo=UTC)
    assert any("ACTIVE at 192.5.87.10" in line for line in lines)


def test_provision_a_lease_starting_later_stops_after_reserving(api, clients, tmp_path):
    cfg = make_cfg(lease_start="2026-06-01 08:00", lease_hours=4, workdir=str(tmp_path))
    later = lease_json(start_date="2026-06-01T08:00:00.000000",
                       end_date="2026-06-01T12:00:00.000000")
    api.expect("GET", "network", "/v2.0/networks?name=public",
               json={"networks": [{"id": PUBLIC_NET, "name": "public"}]})
    api.expect("GET", "reservation", "/leases", json={"leases": []})
    api.expect("POST", "reservation", "/leases", json={"lease": later})
    done = rc.provision(cfg, clients.blazar, clients.conn, state=rc.State.load(tmp_path),
                        public_key=KEY, now=NOW)
    assert done.pending_until == _dt.datetime(2026, 6, 1, 8, tzinfo=UTC)
    api.assert_calls()
    assert _shape(api.calls()) == [(c.method, c.service, c.path)
                                   for c in rc.plan(cfg, now=NOW)]


def _register_adopted_lease_and_key(api: Api) -> None:
    api.expect("GET", "network", "/v2.0/networks?name=public",
               json={"networks": [{"id": PUBLIC_NET, "name": "public"}]})
    api.expect("GET", "reservation", "/leases", json={"leases": [lease_json("ACTIVE")]})
    api.expect("GET", "reservation", f"/leases/{LEASE_ID}",
               json={"lease": lease_json("ACTIVE")})
    api.expect("GET", "compute", "/os-keypairs/exp1-key",
               json={"keypair": {"name": "exp1-key", "public_key": KEY}})


def test_provision_rerun_adopts_what_exists(api, clients, tmp_path):
    cfg = make_cfg(workdir=str(tmp_path))
    _register_adopted_lease_and_key(api)
    api.expect("GET", "compute", "/servers/detail?name=exp1-server",
               json={"servers": [server_json("ACTIVE")]})
    api.expect("GET", "compute", f"/servers/{SERVER}", json={"server": server_json("ACTIVE")})
    api.expect("GET", "network", f"/v2.0/floatingips?tags=reservation:{FIP_RES}",
               json={"floatingips": [fip_json(port_id=PORT, tags=["blazar"])]})
    api.expect("GET", "network", f"/v2.0/ports?device_id={SERVER}",
               json={"ports": [{"id": PORT, "device_id": SERVER}]})
    state = rc.State.load(tmp_path)
    done = rc.provision(cfg, clients.blazar, clients.conn, state=state, public_key=KEY,
                        now=NOW, clock=FakeClock(), sleep=lambda s: None)
    assert not any(done.created.values())
    api.assert_calls()  # nothing created, the IP already attached: no PUT
    assert state.get("lease")["created"] is False
    planned = rc.plan(cfg, state=state, now=NOW)
    assert [c.method for c in planned] == [c.method for c in api.calls()]


# -- 2_provision and 5_teardown (replab.provisioning) on recorded services --------------------
GONE = {"itemNotFound": {"code": 404, "message": "not found"}}
NO_VALID_HOST = "No valid host was found. There are not enough hosts available."


def _public_key_file(tmp_path) -> str:
    path = tmp_path / "id_ed25519.pub"
    path.write_text(KEY + "\n")
    return str(path)


def _register_boot(api: Api, statuses: tuple[str, ...], server_id: str = SERVER) -> None:
    api.expect("GET", "image", f"/v2/images?name={sites.IMAGE_CUDA}",
               json={"images": [{"id": IMAGE, "name": sites.IMAGE_CUDA}]})
    api.expect("GET", "network", "/v2.0/networks?name=sharednet1",
               json={"networks": [{"id": SHARED_NET, "name": "sharednet1"}]})
    api.expect("GET", "compute", "/flavors?is_public=None",
               json={"flavors": [{"id": "flv-bm", "name": "baremetal"}]})
    api.expect("POST", "compute", "/servers", status=202,
               json={"server": server_json(id=server_id)},
               body={"server": {"name": "exp1-server", "imageRef": IMAGE,
                                "flavorRef": "flv-bm", "key_name": "exp1-key",
                                "networks": [{"uuid": SHARED_NET}]},
                     "OS-SCH-HNT:scheduler_hints": {"reservation": NODE_RES}})
    for status in statuses:
        extra = {"fault": {"code": 500, "message": NO_VALID_HOST}} if status == "ERROR" else {}
        api.expect("GET", "compute", f"/servers/{server_id}",
                   json={"server": server_json(status, id=server_id, **extra)})


def _provision_all(cfg, clients, tmp_path, lines):
    from replab import provisioning

    clock = FakeClock()
    return provisioning.provision_all(cfg, public_key=_public_key_file(tmp_path),
                                      clients=clients, setup=False, progress=lines.append,
                                      now=NOW, clock=clock, sleep=clock.sleep)


def test_server_in_error_midway_is_reported_recorded_and_torn_down(api, clients, tmp_path):
    """The boot fails: a clear error with Nova's fault, state.json keeps what exists, the
    teardown deletes exactly that (and says what it kept), and a second teardown calls
    nothing."""
    from replab import provisioning

    cfg = make_cfg(workdir=str(tmp_path / "wd"))
    _register_adopted_lease_and_key(api)
    api.expect("GET", "compute", "/servers/detail?name=exp1-server", json={"servers": []})
    _register_boot(api, ("BUILD", "ERROR"))
    lines: list[str] = []
    with pytest.raises(CloudError, match="No valid host was found") as err:
        _provision_all(cfg, clients, tmp_path, lines)
    assert SERVER in str(err.value) and "exp1-server" in str(err.value)
    api.assert_calls()
    state = rc.State.load(cfg.workdir)
    assert set(state.live()) == {"lease", "keypair", "server"}
    assert state.get("server")["id"] == SERVER

    api.reset()
    api.expect("DELETE", "compute", f"/servers/{SERVER}", status=204)
    api.expect("GET", "compute", f"/servers/{SERVER}", status=404, json=GONE)
    api.expect("DELETE", "reservation", f"/leases/{LEASE_ID}", status=204)
    api.expect("DELETE", "compute", "/os-keypairs/exp1-key", status=202)
    said: list[str] = []
    done = provisioning.teardown(cfg, clients=clients, keep_credentials=True,
                                 progress=said.append)
    api.assert_calls()
    assert not done.problems, done.problems
    assert done.deleted == [f"server exp1-server ({SERVER})", f"lease exp1-lease ({LEASE_ID})",
                            "keypair exp1-key (exp1-key)"]
    assert any("buckets" in k for k in done.kept) and any("credentials" in k
                                                          for k in done.kept)
    assert rc.State.load(cfg.workdir).live() == {}
    md = done.markdown()
    assert "| deleted | server exp1-server" in md and "| kept | buckets" in md

    api.mock.reset_mock()
    again = provisioning.teardown(cfg, clients=clients, keep_credentials=True)
    assert api.calls() == [] and again.deleted == [] and not again.problems
    # a lab.json left from a lab on that server: the server is gone, nothing to back up
    (tmp_path / "wd" / "lab.json").write_text('{"site": "CHI@UC", "host": "192.5.87.10"}')
    said = []
    third = provisioning.teardown(cfg, clients=clients, keep_credentials=True,
                                  progress=said.append)
    assert api.calls() == [] and not third.problems, third.problems
    assert any("already gone" in line for line in said)


def test_rerun_after_a_server_error_boots_a_new_server(api, clients, tmp_path):
    """A re-run after the failure continues: the server left in ERROR is deleted (Nova never
    recovers one) and a new one boots on the same reservation; state.json keeps both."""
    cfg = make_cfg(workdir=str(tmp_path / "wd"))
    state = rc.State.load(cfg.workdir)
    state.record("server", id=SERVER, name="exp1-server", site="CHI@UC", created=True)
    new_id = "dddddddd-0000-0000-0000-0000000000ff"
    _register_adopted_lease_and_key(api)
    api.expect("GET", "compute", "/servers/detail?name=exp1-server", json={"servers": [
        server_json("ERROR", fault={"code": 500, "message": NO_VALID_HOST})]})
    api.expect("DELETE", "compute", f"/servers/{SERVER}", status=204)
    api.expect("GET", "compute", f"/servers/{SERVER}", status=404, json=GONE)
    api.expect("GET", "compute", "/servers/detail?name=exp1-server", json={"servers": []})
    _register_boot(api, ("BUILD", "ACTIVE"), server_id=new_id)
    api.expect("GET", "network", f"/v2.0/floatingips?tags=reservation:{FIP_RES}",
               json={"floatingips": [fip_json(tags=["blazar", f"reservation:{FIP_RES}"])]})
    api.expect("GET", "network", f"/v2.0/ports?device_id={new_id}",
               json={"ports": [{"id": PORT, "device_id": new_id}]})
    api.expect("PUT", "network", f"/v2.0/floatingips/{FIP}",
               json={"floatingip": fip_json(port_id=PORT)},
               body={"floatingip": {"port_id": PORT}})
    lines: list[str] = []
    done = _provision_all(cfg, clients, tmp_path, lines)
    api.assert_calls()
    assert done.address == "192.5.87.10"
    assert any("is in ERROR (No valid host" in ln and "booting a new one" in ln for ln in lines)
    saved = json.loads((tmp_path / "wd" / "state.json").read_text())
    assert saved["server"]["id"] == new_id and not saved["server"].get("deleted_at")
    assert [h["id"] for h in saved["history"] if h["kind"] == "server"] == [SERVER]


def test_ssh_repository_needs_an_agent_before_anything_is_created(requests_mock, clients,
                                                                   tmp_path, monkeypatch):
    from replab import provisioning

    cfg = make_cfg(workdir=str(tmp_path / "wd"), repository="git@github.com:acme/proj.git")
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    with pytest.raises(ConfigError, match="SSH_AUTH_SOCK is unset"):
        provisioning.provision_all(cfg, public_key=_public_key_file(tmp_path), clients=clients)
    with pytest.raises(ConfigError, match="forward_agent=False"):
        provisioning.provision_all(cfg, public_key=_public_key_file(tmp_path), clients=clients,
                                   forward_agent=False)
    assert requests_mock.request_history == []  # refused before any call


@pytest.fixture
def teardown_store(local_openstack, tmp_path):
    """The secrets store of tmp_path/wd; what it holds at the end is deleted at the local
    Keystone, whatever the test left."""
    from replab.secretsstore import SecretsStore
    from tests.fixtures_openstack import removed_afterwards

    store = SecretsStore(tmp_path / "wd")
    with removed_afterwards(local_openstack, stores=(store,)):
        yield store


@pytest.mark.services
def test_teardown_of_a_kvm_lab_deletes_everything_and_the_credentials(
        api, clients, tmp_path, local_openstack, teardown_store):
    """After a complete KVM provision: the server (waited for until gone), the lease, the
    security group and the keypair are deleted on the recorded services; the floating IP
    is the lease's, so nothing releases it; the application and EC2 credentials are
    deleted for real at the (local) Keystone and dropped from the secrets store."""
    from replab import provisioning
    from tests.fixtures_openstack import clouds_yaml, unique_name

    clouds = clouds_yaml(local_openstack, tmp_path / "clouds.yaml")
    cfg = make_cfg("KVM@TACC", workdir=str(tmp_path / "wd"),
                   endpoints={"storage_auth_url": local_openstack.auth_url})
    api.mock.real_http = True  # Keystone is real; the compute site is recorded
    _register_provision(api, kvm=True)
    clock = FakeClock()
    rc.provision(cfg, clients.blazar, clients.conn, state=rc.State.load(cfg.workdir),
                 public_key=KEY, now=NOW, clock=clock, sleep=clock.sleep)
    api.assert_calls()
    auth = keystonelogin.authenticate(local_openstack.auth_url, env={}, clouds_file=clouds)
    store = teardown_store
    expires = NOW.replace(year=2099)
    keystonecredentials.ensure_application_credential(auth, unique_name("replab-teardown-test"),
                                                      expires, store)
    keystonecredentials.ensure_ec2_credential(auth, store)
    app = store.credentials()["application_credential"]
    assert keystonecredentials.app_credential_works(local_openstack.auth_url, app["id"],
                                                    app["secret"])

    api.reset()
    api.expect("DELETE", "compute", f"/servers/{SERVER}", status=204)
    api.expect("GET", "compute", f"/servers/{SERVER}", status=404, json=GONE)
    api.expect("DELETE", "reservation", f"/leases/{LEASE_ID}", status=204)
    api.expect("DELETE", "network", f"/v2.0/security-groups/{SG}", status=204)
    api.expect("DELETE", "compute", "/os-keypairs/exp1-key", status=202)
    done = provisioning.teardown(cfg, clients=clients, clouds_file=clouds)
    api.assert_calls()  # no floating-IP call: the lease returns it
    assert not done.problems, done.problems
    assert "floating IP 192.5.87.10 (the lease returns it)" in done.kept
    assert {d.split()[0] for d in done.deleted} >= {"server", "lease", "security_group",
                                                    "keypair", "application", "EC2"}
    assert store.credentials().keys().isdisjoint({"application_credential", "ec2"})
    assert not keystonecredentials.app_credential_works(local_openstack.auth_url, app["id"],
                                                        app["secret"])
    assert rc.State.load(cfg.workdir).live() == {}


# -- state.json --------------------------------------------------------------------------------
def test_state_records_marks_deleted_and_reloads(tmp_path):
    state = rc.State.load(tmp_path)
    assert state.live() == {}
    t0 = _dt.datetime(2026, 5, 1, 12, tzinfo=UTC)
    state.record("lease", id="l1", name="exp1-lease", site="CHI@UC", at=t0,
                 end="2026-05-02T12:00:00+00:00")
    state.record("lease", id="l1", name="exp1-lease", site="CHI@UC", status="ACTIVE",
                 at=t0 + _dt.timedelta(hours=1))
    state.record("server", id="s1", name="exp1-server", site="CHI@UC", at=t0)
    again = rc.State.load(tmp_path / "state.json")
    assert again.get("lease")["created_at"] == "2026-05-01T12:00:00+00:00"
    assert again.get("lease")["status"] == "ACTIVE" and again.ids() == {"lease": "l1",
                                                                         "server": "s1"}
    again.mark_deleted("server", at=t0)
    again.record("server", id="s2", name="exp1-server", site="CHI@UC", at=t0)
    final = rc.State.load(tmp_path)
    assert final.get("server")["id"] == "s2"
    assert final.data["history"][0]["id"] == "s1" and final.data["history"][0]["deleted_at"]
    assert rc.live_ids(final.as_dict()) == {"lease": "l1", "server": "s2"}
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(ValueError):
        final.record("volume", id="v", name="v", site="CHI@UC")


def test_corrupt_state_names_the_file(tmp_path):
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(ConfigError, match="state.json"):
        rc.State.load(tmp_path)


def test_lease_payloads_are_what_python_chi_builds():
    """The reservation dicts equal python-chi's own builders' output (chi.lease)."""
    chi_lease = pytest.importorskip("chi.lease")
    mine = rc.reservations_for(make_cfg(), network_id=PUBLIC_NET)
    theirs: list = []
    chi_lease.add_node_reservation(theirs, count=1, node_type="gpu_rtx_6000")
    assert mine[0] == theirs[0]
    assert mine[1] == {"resource_type": "virtual:floatingip", "network_id": PUBLIC_NET,
                       "amount": 1}  # chi's add_fip_reservation, minus its network lookup
    lease = chi_lease.Lease("x", duration=_dt.timedelta(hours=1))
    lease.add_flavor_reservation(id="flv-h100")
    kvm = rc.reservations_for(make_cfg("KVM@TACC"), network_id=PUBLIC_NET,
                              flavor_id="flv-h100")
    assert kvm[1] == lease.flavor_reservations[0]
