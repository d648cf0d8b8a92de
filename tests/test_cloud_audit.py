"""The audit of replab.cloud, credentials and sites (issue 13, part 4): one test per defect.

Recorded exchanges (requests-mock, real blazarclient / openstacksdk / keystoneauth on top),
whose Blazar and Neutron bodies are the real responses of Blazar 18 and Neutron 29 kept in
``tests/blazar_bodies/`` (copied from the shared control-plane recipe; each file holds
``{request, status, body}``). The token's user and project are those of the recorded bodies,
so ownership checks see what a real Blazar returns. Each test is named after its defect and
fails on the code before the fix.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from replab import cloud as rc
from replab import config, hubtoken, keystonelogin, sites
from replab.errors import CloudError, ConfigError

pytestmark = pytest.mark.filterwarnings("ignore::openstack.warnings.RemovedInSDK50Warning")

BODIES = Path(__file__).parent / "blazar_bodies"
REGION = "CHI@UC"
IDENTITY = "https://identity.example.com/v3"
BASE = {"reservation": "https://reservation.example.com/v1",
        "compute": "https://compute.example.com/v2.1",
        "network": "https://network.example.com",
        "image": "https://image.example.com"}
ME = "e23dfd0f47b941f0b1555618b411a296"  # user_id of the recorded leases
PROJECT = "7111003742db4f9a9e7391a0df55146b"
TEAMMATE = "0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f"
PUBLIC_NET = "cd6ee289-feeb-4dd2-986b-6ed00ec7e19e"  # the recorded public network
SHARED_NET = "0c9acb72-2f6e-4904-8620-3aac42f8cb5b"
IMAGE = "cccccccc-0000-0000-0000-00000000000c"
SERVER = "41379505-cbe2-41f5-ac35-39cee5244e0e"
PORT = "dbca428f-ea47-4b16-a079-141daa92fcb6"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGb0lq4fWcP6b2V7t2y5e3k9sXq8m4rj0h1aFQ2cN7eR lab"
UTC = _dt.timezone.utc


def recorded(name: str) -> dict:
    return json.loads((BODIES / f"{name}.json").read_text())


def lease_body(name: str = "lease-show-active", *, rename: str = "exp1-lease",
               **changes: Any) -> dict:
    """A real lease body (``recorded(name)["body"]["lease"]``), renamed to the experiment's
    lease; ``changes`` replace top-level keys."""
    lease = copy.deepcopy(recorded(name)["body"]["lease"])
    lease["name"] = rename
    lease.update(changes)
    return lease


def make_cfg(site: str = "CHI@UC", **extra) -> config.Config:
    raw = {"experiment": "exp1", "frameworks": ["pytorch"], "site": site}
    raw.update(extra)
    return config.build(raw)


# -- the recorded services (token of the recorded user) --------------------------------------
def _token(app_credential: dict | None = None) -> dict:
    catalog = [{"type": t, "id": t, "name": t, "endpoints": [
        {"id": f"{t}-public", "interface": "public", "region": REGION, "region_id": REGION,
         "url": url}]} for t, url in BASE.items()]
    token = {"methods": ["application_credential" if app_credential else "password"],
             "expires_at": "2099-01-01T00:00:00.000000Z",
             "issued_at": "2026-01-01T00:00:00.000000Z",
             "user": {"id": ME, "name": "alice", "domain": {"id": "default", "name": "Default"}},
             "project": {"id": PROJECT, "name": "CHI-000000",
                         "domain": {"id": "default", "name": "Default"}},
             "roles": [{"id": "r1", "name": "member"}], "catalog": catalog}
    if app_credential:
        token["application_credential"] = app_credential
    return {"token": token}


class Api:
    """Expected calls in order (method, service, path[, body]); what was called."""

    def __init__(self, mock):
        self.mock = mock
        self.expected: list[tuple] = []
        self._replies: dict = {}

    def expect(self, method: str, service: str, path: str, *, json: Any = None,
               status: int = 200, body: Any = None) -> None:
        url = BASE[service] + path
        reply: dict[str, Any] = {"status_code": status}
        if json is not None:
            reply["json"] = json
        self._replies.setdefault((method, url), []).append(reply)
        self.mock.register_uri(method, url, list(self._replies[(method, url)]), complete_qs=True)
        self.expected.append((method, service, path, body))

    def replay(self, exchange: dict, service: str = "reservation") -> None:
        """Expect one recorded exchange: its request (method, path, body) and response."""
        req = exchange["request"]
        path = req["path"].removeprefix("/v1")
        self.expect(req["method"], service, path, status=exchange["status"],
                    json=exchange["body"] or None, body=req["body"])

    def calls(self) -> list[tuple]:
        from urllib.parse import unquote

        out = []
        for r in self.mock.request_history:
            service = next((s for s, b in BASE.items() if r.url.startswith(b)), None)
            rest = unquote(r.url[len(BASE[service]):]) if service else ""
            if service is None or rest in ("", "/"):
                continue  # identity and version discovery
            out.append((r.method, service, rest, json.loads(r.body) if r.body else None))
        return out

    def assert_calls(self) -> None:
        made = self.calls()
        assert [c[:3] for c in made] == [c[:3] for c in self.expected]
        for want, got in zip(self.expected, made, strict=True):
            if want[3] is not None:
                assert got[3] == want[3], want[:3]


def _plumbing(requests_mock, token: dict) -> None:
    version = {"version": {"id": "v2.1", "status": "CURRENT", "min_version": "2.1",
                           "version": "2.96",
                           "links": [{"rel": "self", "href": BASE["compute"] + "/"}]}}
    requests_mock.register_uri("GET", BASE["compute"], json=version)
    requests_mock.register_uri("GET", BASE["compute"] + "/", json=version)
    requests_mock.register_uri("GET", BASE["image"] + "/", status_code=300, json={
        "versions": [{"id": "v2.16", "status": "CURRENT",
                      "links": [{"rel": "self", "href": BASE["image"] + "/v2/"}]}]})
    requests_mock.register_uri("GET", BASE["network"] + "/", json={
        "versions": [{"id": "v2.0", "status": "CURRENT",
                      "links": [{"rel": "self", "href": BASE["network"] + "/v2.0/"}]}]})
    requests_mock.register_uri("POST", IDENTITY + "/auth/tokens", json=token,
                               headers={"X-Subject-Token": "tok"}, status_code=201)


def _clients(app_credential: bool = False) -> rc.Clients:
    from keystoneauth1 import session
    from keystoneauth1.identity import v3

    if app_credential:
        auth = v3.ApplicationCredential(auth_url=IDENTITY, application_credential_id="ac1",
                                        application_credential_secret="not-a-secret")
    else:
        auth = v3.Password(auth_url=IDENTITY, username="alice", password="pw",
                           project_id=PROJECT, user_domain_id="default")
    return rc.clients(session.Session(auth=auth), region=REGION)


@pytest.fixture
def api(requests_mock) -> Api:
    _plumbing(requests_mock, _token())
    return Api(requests_mock)


@pytest.fixture
def clients() -> rc.Clients:
    return _clients()


def _server(status: str = "ACTIVE", **extra) -> dict:
    server = {"id": SERVER, "name": "exp1-server", "status": status, "addresses": {},
              "flavor": {"original_name": "baremetal"}, "image": {"id": IMAGE},
              "key_name": "exp1-key", "metadata": {}, "tenant_id": PROJECT, "user_id": ME}
    server.update(extra)
    return server


def _on_demand_ip(port_id: str | None = None) -> dict:
    """The recorded Neutron floating IP, as an on-demand one: no Blazar tags."""
    ip = {k: v for k, v in recorded("neutron-reserved-fip").items() if k != "location"}
    ip.update(tags=[], port_id=port_id, fixed_ip_address=None, port_details=None,
              description="replab exp1: allocated on demand")
    return ip


# -- 1. stale JupyterHub token -----------------------------------------------------------------
HUB = "https://jupyter.example.org/hub/api"


def _hub_env() -> dict:
    return {"OS_ACCESS_TOKEN": "stale-token-from-server-start", "OS_PROJECT_ID": PROJECT,
            "JUPYTERHUB_API_URL": HUB, "JUPYTERHUB_API_TOKEN": "hub-api-token",
            "JUPYTERHUB_USER": "alice"}


def test_defect1_stale_jupyterhub_token_is_refreshed_near_expiry(requests_mock):
    """OS_ACCESS_TOKEN is set once at server start; the token keystoneauth presents is the
    hub's current one, asked again when it expires within a minute."""
    now = [1_000_000.0]
    requests_mock.get(f"{HUB}/users/alice", [
        {"json": {"name": "alice", "auth_state": {"access_token": "fresh-1",
                                                  "expires_at": now[0] + 3600}}},
        {"json": {"name": "alice", "auth_state": {"access_token": "fresh-2",
                                                  "expires_at": now[0] + 7200}}}])
    plugin, desc = keystonelogin._jupyterhub_plugin(IDENTITY, _hub_env(), clock=lambda: now[0])
    assert "refreshed through the hub" in desc
    assert plugin.access_token == "fresh-1"
    assert plugin.access_token == "fresh-1"  # still valid: no second call
    assert requests_mock.call_count == 1
    assert requests_mock.request_history[0].headers["authorization"] == "token hub-api-token"
    now[0] += 3600 - 30  # within the refresh threshold of its expiry
    assert plugin.access_token == "fresh-2" and requests_mock.call_count == 2

    # what Keystone receives: the federated auth with the fresh token as the bearer
    from keystoneauth1 import session

    fed = f"{IDENTITY}/OS-FEDERATION/identity_providers/chameleon/protocols/openid/auth"
    requests_mock.post(fed, status_code=201, headers={"X-Subject-Token": "unscoped"},
                       json=_token())
    requests_mock.post(IDENTITY + "/auth/tokens", status_code=201,
                       headers={"X-Subject-Token": "scoped"}, json=_token())
    plugin, _ = keystonelogin._jupyterhub_plugin(IDENTITY, _hub_env(), clock=lambda: now[0])
    requests_mock.get(f"{HUB}/users/alice", json={"auth_state": {
        "access_token": "fresh-3", "expires_at": now[0] + 3600}})
    session.Session(auth=plugin).get_token()
    bearer = [r.headers["Authorization"] for r in requests_mock.request_history
              if r.url == fed]
    assert bearer == ["Bearer fresh-3"]


def test_defect1_hub_unreachable_falls_back_to_the_environment_token(requests_mock, caplog):
    requests_mock.get(f"{HUB}/users/alice", status_code=503)
    plugin, _ = keystonelogin._jupyterhub_plugin(IDENTITY, _hub_env())
    assert plugin.access_token == "stale-token-from-server-start"
    assert "stale-token" not in caplog.text and "hub-api-token" not in caplog.text
    assert hubtoken.REFRESH_THRESHOLD == 60.0  # python-chi's threshold


# -- 2. KVM boots with the reserved flavor alone ------------------------------------------------
def test_defect2_kvm_boot_sends_no_reservation_hint_bare_metal_does(api, clients):
    flavor_res = "4fdcb92e-1d00-4b9c-bb21-d1cdeae14991"
    cfg = make_cfg("KVM@TACC", flavor="m1.large", gpu_vendor="none")
    api.expect("GET", "compute", "/servers/detail?name=exp1-server", json={"servers": []})
    api.expect("GET", "image", f"/v2/images?name={cfg.image}",
               json={"images": [{"id": IMAGE, "name": cfg.image}]})
    api.expect("GET", "network", "/v2.0/networks?name=sharednet1",
               json={"networks": [{"id": SHARED_NET, "name": "sharednet1"}]})
    api.expect("POST", "compute", "/servers", status=202, json={"server": _server("BUILD")},
               body={"server": {"name": "exp1-server", "imageRef": IMAGE,
                                "flavorRef": flavor_res, "key_name": "exp1-key",
                                "networks": [{"uuid": SHARED_NET}],
                                "security_groups": [{"name": "exp1-lab"}]}})
    rc.ensure_server(clients.conn, cfg, reservation_id=flavor_res, keypair="exp1-key")
    api.assert_calls()
    assert "OS-SCH-HNT:scheduler_hints" not in api.calls()[-1][3]
    kvm_boot = next(c for c in rc.plan(cfg) if c.path == "/servers")
    assert "OS-SCH-HNT:scheduler_hints" not in kvm_boot.body
    bm_boot = next(c for c in rc.plan(make_cfg()) if c.path == "/servers")
    assert bm_boot.body["OS-SCH-HNT:scheduler_hints"] == {"reservation":
                                                          "{server_reservation.id}"}


# -- 3. CHI@NCAR -------------------------------------------------------------------------------
def test_defect3_ncar_refuses_the_x86_cuda_image_before_any_call(requests_mock, clients,
                                                                 tmp_path):
    cfg = make_cfg("CHI@NCAR", workdir=str(tmp_path))
    assert cfg.node_type == "gpu_gh200_96gb"
    if cfg.image != sites.IMAGE_CUDA_ARM64:  # config.py still picks the x86 default
        for attempt in (lambda: rc.plan(cfg),
                        lambda: rc.provision(cfg, clients.blazar, clients.conn,
                                             state=rc.State.load(tmp_path), public_key=KEY)):
            with pytest.raises(ConfigError, match="CC-Ubuntu24.04-CUDA-ARM64") as err:
                attempt()
            assert err.value.fields == ["image"]
        assert requests_mock.call_count == 0
    arm = config.Config(**{**cfg.__dict__, "image": sites.IMAGE_CUDA_ARM64})
    calls = rc.plan(arm)
    post = next(c for c in calls if c.path == "/leases" and c.method == "POST")
    assert "gpu_gh200_96gb" in post.body["reservations"][0]["resource_properties"]
    assert any(c.path == f"/v2/images?name={sites.IMAGE_CUDA_ARM64}" for c in calls)


# -- 4. floating IP on demand ------------------------------------------------------------------
def test_defect4_lease_without_reservable_ip_falls_back_to_on_demand(api, clients):
    """Blazar refuses the floating-IP reservation alone (NotEnoughFloatingIPAvailable,
    blazar/manager/exceptions.py, in Blazar's error-body shape): the lease is made without
    it."""
    create = recorded("lease-create")
    refused = {"error_code": 400, "error_message": "Not enough floating IPs available",
               "error_name": 400}
    api.expect("GET", "reservation", "/leases", json={"leases": []})
    api.expect("POST", "reservation", "/leases", status=400, json=refused)
    without_ip = [r for r in create["request"]["body"]["reservations"]
                  if r["resource_type"] != "virtual:floatingip"]
    lease = lease_body("lease-show-after-end-date-update", status="PENDING")  # host only
    api.expect("POST", "reservation", "/leases", status=201, json={"lease": lease})
    cfg = make_cfg(node_type="gpu_rtx_6000")
    got, created = rc.ensure_lease(clients.blazar, cfg, network_id=PUBLIC_NET,
                                   now=_dt.datetime(2026, 12, 2, 5, 35, tzinfo=UTC))
    api.assert_calls()
    first, second = api.calls()[1][3], api.calls()[2][3]
    assert [r["resource_type"] for r in first["reservations"]] == ["physical:host",
                                                                    "virtual:floatingip"]
    assert second["reservations"] == without_ip
    assert created and rc.fip_reservation_ids(got) == []


def test_defect4_on_demand_ip_is_recorded_and_released_by_teardown(api, clients, tmp_path):
    """A lease without a floating-IP reservation (the recorded host-only lease): provision
    allocates one from the public network, records it, and the teardown releases it."""
    from replab import provisioning

    cfg = make_cfg(workdir=str(tmp_path / "wd"), node_type="gpu_rtx_6000")
    lease = lease_body("lease-show-after-end-date-update")
    lid = lease["id"]
    ip = _on_demand_ip()
    api.expect("GET", "network", "/v2.0/networks?name=public",
               json={"networks": [{"id": PUBLIC_NET, "name": "public"}]})
    api.expect("GET", "reservation", "/leases", json={"leases": [lease]})
    api.expect("GET", "reservation", f"/leases/{lid}", json={"lease": lease})
    api.expect("GET", "compute", "/os-keypairs/exp1-key",
               json={"keypair": {"name": "exp1-key", "public_key": KEY}})
    api.expect("GET", "compute", "/servers/detail?name=exp1-server",
               json={"servers": [_server()]})
    api.expect("GET", "compute", f"/servers/{SERVER}", json={"server": _server()})
    api.expect("POST", "network", "/v2.0/floatingips", status=201, json={"floatingip": ip},
               body={"floatingip": {"floating_network_id": PUBLIC_NET,
                                    "description": "replab exp1: allocated on demand"}})
    api.expect("GET", "network", f"/v2.0/ports?device_id={SERVER}",
               json={"ports": [{"id": PORT, "device_id": SERVER}]})
    api.expect("PUT", "network", f"/v2.0/floatingips/{ip['id']}",
               json={"floatingip": _on_demand_ip(PORT)}, body={"floatingip": {"port_id": PORT}})
    done = rc.provision(cfg, clients.blazar, clients.conn, state=rc.State.load(cfg.workdir),
                        public_key=KEY, now=_dt.datetime(2026, 12, 2, 6, 0, tzinfo=UTC),
                        sleep=lambda s: None)
    api.assert_calls()
    assert done.address == "127.10.0.50"
    saved = json.loads((tmp_path / "wd" / "state.json").read_text())
    assert saved["floating_ip"]["owned_by_lease"] is False
    assert saved["floating_ip"]["created"] is True and saved["floating_ip"]["id"] == ip["id"]
    assert saved["lease"]["user_id"] == ME and saved["server"]["user_id"] == ME

    api.mock.reset_mock()
    api.expected.clear()
    api._replies.clear()
    gone = {"itemNotFound": {"code": 404, "message": "not found"}}
    api.expect("DELETE", "compute", f"/servers/{SERVER}", status=204)
    api.expect("GET", "compute", f"/servers/{SERVER}", status=404, json=gone)
    api.expect("GET", "network", f"/v2.0/floatingips/{ip['id']}",
               json={"floatingip": _on_demand_ip(PORT)})
    api.expect("DELETE", "network", f"/v2.0/floatingips/{ip['id']}", status=204)
    api.replay({**recorded("lease-delete"),
                "request": {**recorded("lease-delete")["request"],
                            "path": f"/v1/leases/{lid}"}})
    api.expect("DELETE", "compute", "/os-keypairs/exp1-key", status=202)
    out = provisioning.teardown(cfg, clients=clients, keep_credentials=True)
    api.assert_calls()
    assert not out.problems, out.problems
    assert f"floating_ip 127.10.0.50 ({ip['id']})" in out.deleted


# -- 5. extension rules ------------------------------------------------------------------------
def test_defect5_extension_earlier_than_48h_before_the_end_is_refused_before_any_call(
        requests_mock, clients):
    """Blazar's MaxLeaseDurationFilter (reservation_extension_window = 48 h on Chameleon)
    refuses any extension asked earlier than 48 h before the end, however short."""
    site = sites.get_site("CHI@UC")
    start = _dt.datetime(2026, 12, 2, 5, 37, tzinfo=UTC)
    lease = lease_body("lease-show-after-end-date-update",
                       end_date="2026-12-05T05:37:00.000000")  # a 72 h lease
    with pytest.raises(ConfigError, match="only within 48 h of its end") as err:
        rc.extend_lease(clients.blazar, lease, 24, site=site, now=start)
    assert "2026-12-03 05:37" in str(err.value)  # when the window opens
    assert requests_mock.call_count == 0
    # inside the window: up to the maximum again, counted from the current end
    assert rc.extension_problem(lease, 168, site=site,
                                now=start + _dt.timedelta(hours=25)) is None
    # plain Blazar without a window: the whole lease must fit the maximum
    assert "would last 240 h" in rc.extension_problem(lease, 168, site=site, now=start,
                                                      window_hours=None)


def test_defect5_and_8_extension_sends_end_date_as_blazar_takes_it(api, clients):
    update = recorded("lease-update-end-date")
    lease = lease_body("lease-show-after-end-date-update", rename="lease-ext",
                       end_date="2026-12-02T06:37:00.000000")
    lid = lease["id"]
    api.expect("GET", "reservation", f"/leases/{lid}", json={"lease": lease})
    api.replay(update)
    got = rc.extend_lease(clients.blazar, lease, 2, site=sites.get_site("CHI@UC"),
                          now=_dt.datetime(2026, 12, 2, 5, 40, tzinfo=UTC))
    api.assert_calls()
    assert api.calls()[-1][3] == {"end_date": "2026-12-02 08:37"}  # never prolong_for
    assert got["end_date"] == "2026-12-02T08:37:00.000000"


# -- 6. names are per project ------------------------------------------------------------------
def test_defect6_a_teammates_lease_is_neither_adopted_nor_deleted(api, clients):
    theirs = lease_body(user_id=TEAMMATE)
    ended = lease_body(user_id=TEAMMATE, status="TERMINATED")
    me = rc.whoami(clients.conn.session)
    assert me.user_id == ME
    for listed in (theirs, ended, theirs):
        api.expect("GET", "reservation", "/leases", json={"leases": [listed]})
    for _ in range(2):
        with pytest.raises(CloudError, match=f"belongs to user {TEAMMATE}"):
            rc.ensure_lease(clients.blazar, make_cfg(), network_id=PUBLIC_NET, me=me,
                            now=_dt.datetime(2026, 12, 2, 5, 35, tzinfo=UTC))
    with pytest.raises(CloudError, match="another experiment name"):
        rc.delete_lease(clients.blazar, "exp1-lease", me=me)
    api.assert_calls()  # GETs only: no POST, no DELETE


def test_defect6_a_teammates_server_is_not_adopted(api, clients):
    api.expect("GET", "compute", "/servers/detail?name=exp1-server",
               json={"servers": [_server(user_id=TEAMMATE)]})
    with pytest.raises(CloudError, match="belongs to user"):
        rc.ensure_server(clients.conn, make_cfg(), reservation_id="r", keypair="exp1-key",
                         me=rc.whoami(clients.conn.session))
    api.assert_calls()


def test_defect6_teardown_never_deletes_what_state_records_as_another_users(api, clients,
                                                                           tmp_path):
    from replab import provisioning

    cfg = make_cfg(workdir=str(tmp_path / "wd"))
    state = rc.State.load(cfg.workdir)
    state.record("lease", id="b4fe6ab5-619f-48f7-80cc-d53688671e2a", name="exp1-lease",
                 site="CHI@UC", created=False, user_id=TEAMMATE)
    out = provisioning.teardown(cfg, clients=clients, keep_credentials=True)
    assert api.calls() == []
    assert any(f"belongs to user {TEAMMATE}" in p for p in out.problems)


# -- 7. restricted application credential at the compute site ---------------------------------
def test_defect7_restricted_app_credential_is_named_before_lease_creation(requests_mock):
    _plumbing(requests_mock, _token({"id": "ac1", "name": "lab-cred", "restricted": True}))
    api = Api(requests_mock)
    clients = _clients(app_credential=True)
    me = rc.whoami(clients.conn.session)
    assert me.restricted and me.application_credential == "lab-cred (ac1)"
    api.expect("GET", "reservation", "/leases", json={"leases": []})
    with pytest.raises(CloudError, match="unrestricted") as err:
        rc.ensure_lease(clients.blazar, make_cfg(), network_id=PUBLIC_NET, me=me,
                        now=_dt.datetime(2026, 12, 2, 5, 35, tzinfo=UTC))
    assert "trust" in str(err.value) and "lab-cred (ac1)" in str(err.value)
    api.assert_calls()  # no POST /leases


def test_defect7_unrestricted_app_credential_is_not_refused(requests_mock):
    _plumbing(requests_mock, _token({"id": "ac2", "name": "ok", "restricted": False}))
    assert not rc.whoami(_clients(app_credential=True).conn.session).restricted


# -- 8. failure reasons from the fields Blazar returns -----------------------------------------
def test_defect8_not_enough_hosts_is_blazars_500_with_what_to_do(api, clients):
    refused = recorded("lease-create-second-gpu-lease-conflict")
    assert refused["status"] == 500  # not a 409
    api.expect("GET", "reservation", "/leases", json={"leases": []})
    api.expect("POST", "reservation", "/leases", status=500, json=refused["body"])
    with pytest.raises(CloudError) as err:
        rc.ensure_lease(clients.blazar, make_cfg(), network_id=PUBLIC_NET,
                        now=_dt.datetime(2026, 12, 2, 5, 35, tzinfo=UTC))
    text = str(err.value)
    assert "(500)" in text and "Not enough hosts available" in text
    assert "next_free_slot" in text and "gpu_rtx_6000" in text
    assert err.value.request == "POST /leases"


def test_defect8_lease_in_error_names_the_failed_event_not_status_reason(api, clients):
    lease = lease_body(status="ERROR")
    assert set(lease) == {"id", "name", "user_id", "project_id", "start_date", "end_date",
                          "trust_id", "status", "degraded", "created_at", "updated_at",
                          "reservations", "events"}
    start = next(e for e in lease["events"] if e["event_type"] == "start_lease")
    start["status"] = "ERROR"
    lease["reservations"][0]["status"] = "error"
    api.expect("GET", "reservation", f"/leases/{lease['id']}", json={"lease": lease})
    with pytest.raises(CloudError) as err:
        rc.wait_for_lease(clients.blazar, lease["id"], sleep=lambda s: None)
    text = str(err.value)
    assert "event start_lease at 2026-12-02T05:35:00.000000 failed" in text
    assert "physical:host reservation 61ccb097" in text and "is in error" in text
    assert "status_reason" not in text and "gave no reason" not in text


# -- 9. Trovi reads trovi.json as an RO-Crate --------------------------------------------------
def test_defect9_trovi_metadata_loads_as_the_importer_loads_it(tmp_path):
    """trovi/importing/views.py: the file named settings.RO_CRATE_FILENAME ("trovi.json"),
    loaded with rocrate (Metadata.BASENAME overwritten), root entity dereferenced, then
    name / disambiguatingDescription / description / keywords / author / actionApplication.
    Trovi's limits: trovi/settings.py (title 140, short description 200, long 5000, tag 32,
    author name and affiliation 200)."""
    from rocrate import rocrate
    from rocrate.model.metadata import Metadata

    root = Path(__file__).parent.parent
    shutil.copy(root / "trovi.json", tmp_path / "trovi.json")
    saved = Metadata.BASENAME
    Metadata.BASENAME = "trovi.json"
    try:
        crate = rocrate.ROCrate(str(tmp_path)).dereference("./")
        title, short = crate.get("name"), crate.get("disambiguatingDescription")
        long = crate.get("description")
        tags = [t.strip() for t in crate.get("keywords").split(",")]
        authors = [{"full_name": a.get("name"), "email": a.get("email"),
                    "affiliation": a.get("affiliation")} for a in crate.get("author")]
        setup = [{"type": o.get("trovi_type"), "arguments": o.get("trovi_arguments")}
                 for o in crate.get("actionApplication", [])
                 if o.type == "SoftwareApplication" and o.get("trovi_type")]
    finally:
        Metadata.BASENAME = saved
    assert 0 < len(title) <= 140 and 0 < len(short) <= 200 and 0 < len(long) <= 5000
    assert "reproducibility" in tags and all(0 < len(t) <= 32 for t in tags)
    assert authors and all(0 < len(a["full_name"]) <= 200 and "@" in a["email"]
                           and len(a["affiliation"]) <= 200 for a in authors)
    # no setup entry: Trovi then uses its default, a JupyterHub launch with no arguments
    # (ArtifactVersionSerializer.create); rocrate cannot hold the {} arguments one needs
    assert setup == []
    assert "0_configure.ipynb" in long and (root / "0_configure.ipynb").exists()
