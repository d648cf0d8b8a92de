"""python-chi interoperation (issue 13, part 5): a Chameleon user's ``chi.context`` and
``chi.lease.Lease`` work with replab, and 2_provision's plan shows what is free.

The context is python-chi 1.2.10's own (``chi.context``, really imported and set as a user
does); its session authenticates against the real local Keystone. Blazar exchanges are
recorded ones whose bodies are the real responses of Blazar 18 in ``tests/blazar_bodies/``
(``host-list``: host 2 ``compute-1`` of node type gpu_rtx_6000, host 1 without a node type;
``host-allocations``: host 2 reserved 2026-12-02 05:35-06:35 UTC by lease b4fe6ab5).
"""

from __future__ import annotations

import datetime as _dt
import json

import pytest

from replab import cloud as rc
from replab import keystonelogin, provisioning, sites
from replab.cloud import python_chi
from replab.errors import CloudError, ConfigError
from tests.test_cloud_audit import (
    IDENTITY,
    Api,
    _clients,
    _plumbing,
    _token,
    lease_body,
    make_cfg,
    recorded,
)

pytestmark = pytest.mark.filterwarnings("ignore::openstack.warnings.RemovedInSDK50Warning")

UTC = _dt.timezone.utc
RESERVED_FROM = _dt.datetime(2026, 12, 2, 5, 35, tzinfo=UTC)  # host-allocations.json
RESERVED_UNTIL = _dt.datetime(2026, 12, 2, 6, 35, tzinfo=UTC)
LEASE_ID = "b4fe6ab5-619f-48f7-80cc-d53688671e2a"
# python-chi's own entry for KVM@TACC (chi/context.py list_sites), so use_site needs no
# request to the site list of api.chameleoncloud.org
KVM_TACC = {"name": "KVM@TACC", "web": "https://kvm.tacc.chameleoncloud.org",
            "location": "Austin, Texas, USA", "user_support_contact": "help@chameleoncloud.org"}


@pytest.fixture
def chi_context():
    """python-chi's context module, as a user's kernel has it; reset afterwards."""
    context = pytest.importorskip("chi.context")
    saved = (context._sites, context._lease_id)
    context.reset()
    yield context
    context.reset()
    context._sites, context._lease_id = saved


@pytest.fixture
def api(requests_mock) -> Api:
    _plumbing(requests_mock, _token())
    return Api(requests_mock)


# -- the context -------------------------------------------------------------------------------
def test_use_site_and_use_project_become_replabs_site_and_project(chi_context, capsys):
    chi_context._sites = {"KVM@TACC": KVM_TACC}
    chi_context.use_site("KVM@TACC")
    chi_context.use_project("CHI-123456")
    chi_context.use_lease_id(LEASE_ID)
    capsys.readouterr()  # python-chi prints; replab does not

    ctx = python_chi.current()
    assert ctx is not None
    assert (ctx.region, ctx.site, ctx.project_name, ctx.lease_id) == (
        "KVM@TACC", "KVM@TACC", "CHI-123456", LEASE_ID)
    # the Keystone python-chi derives from the site list is the one in replab's catalog
    assert ctx.is_for(sites.get_site("KVM@TACC").auth_url)
    assert ctx.defaults() == {"site": "KVM@TACC"}
    assert python_chi.site_default() == "KVM@TACC"
    assert python_chi.site_default("CHI@UC") == "CHI@UC"  # an explicit site wins
    # a config at another site keeps its own, and the plan says so
    note = python_chi.check_site(make_cfg("CHI@UC"))
    assert "KVM@TACC" in note and "CHI@UC" in note
    assert python_chi.check_site(make_cfg("KVM@TACC")) is None
    assert "python-chi's context is at KVM@TACC" in provisioning.plan_markdown(make_cfg())
    assert capsys.readouterr().out == ""


def test_site_from_the_auth_url_when_the_region_is_not_a_site_name(chi_context):
    chi_context.set("auth_url", "https://chi.uc.chameleoncloud.org:5000/v3")
    chi_context.set("region_name", "RegionOne")
    assert python_chi.current().site == "CHI@UC"


def test_the_projects_set_in_chi_context_scopes_replabs_authentication(chi_context,
                                                                       requests_mock):
    """The kernel's ``use_project`` wins over the hub's OS_PROJECT_ID (which would otherwise
    scope the token), at a site whose Keystone is not the context's."""
    chi_context._sites = {"KVM@TACC": KVM_TACC}
    chi_context.use_site("KVM@TACC")
    chi_context.use_project("CHI-123456")
    fed = f"{IDENTITY}/OS-FEDERATION/identity_providers/chameleon/protocols/openid/auth"
    requests_mock.post(fed, status_code=201, headers={"X-Subject-Token": "unscoped"},
                       json=_token())
    requests_mock.post(IDENTITY + "/auth/tokens", status_code=201,
                       headers={"X-Subject-Token": "scoped"}, json=_token())
    env = {"OS_ACCESS_TOKEN": "oidc-token", "OS_PROJECT_ID": "the-hubs-project-id"}

    auth = keystonelogin.authenticate(IDENTITY, env=env, chi=python_chi.current())

    assert auth.source == "jupyterhub"
    scoped = json.loads(requests_mock.request_history[-1].body)["auth"]
    assert scoped["scope"] == {"project": {"name": "CHI-123456",
                                           "domain": {"name": "chameleon"}}}
    # without the context, the hub's project id scopes it
    keystonelogin.authenticate(IDENTITY, env=env, chi=False)
    scoped = json.loads(requests_mock.request_history[-1].body)["auth"]
    assert scoped["scope"] == {"project": {"id": "the-hubs-project-id"}}


def test_a_context_that_does_not_authenticate_is_named_among_the_sources_tried(
        chi_context, requests_mock, tmp_path):
    chi_context.set("auth_url", IDENTITY)  # python-chi's default v3token, with no token
    requests_mock.post(IDENTITY + "/auth/tokens", status_code=401, json={"error": {
        "code": 401, "title": "Unauthorized", "message": "The request you have made "
        "requires authentication."}})
    with pytest.raises(CloudError) as err:
        keystonelogin.authenticate(IDENTITY, env={}, chi=python_chi.current(),
                                   clouds_file=str(tmp_path / "clouds.yaml"))
    first = str(err.value).splitlines()[1]
    assert first.startswith("  - python-chi: python-chi's context (chi.context.session(), "
                            "v3token)") and "did not authenticate" in first


@pytest.mark.services
def test_the_session_of_chi_context_is_the_one_replab_uses(chi_context, local_openstack):
    """python-chi set up as its docs say (chi.set ...) against the real local Keystone:
    replab authenticates with that very session and reaches Swift through it."""
    stack, user = local_openstack, local_openstack.demo
    chi_context.set("auth_type", "v3password")
    for key, value in (("auth_url", stack.auth_url), ("username", user.username),
                       ("password", user.password), ("user_domain_name", user.domain),
                       ("project_name", user.project), ("project_domain_name", user.domain),
                       ("region_name", stack.region)):
        chi_context.set(key, value)
    ctx = python_chi.current()

    auth = keystonelogin.authenticate(stack.auth_url, env={}, chi=ctx)

    assert auth.source == "python-chi"
    assert auth.session is chi_context.session().session  # the Adapter's own Session
    assert (auth.user_id, auth.project_id) == (user.user_id, user.project_id)
    conn = rc.clients(auth.session, region=stack.region).conn
    assert isinstance(list(conn.object_store.containers()), list)


# -- availability from os-hosts + allocations ------------------------------------------------
def _expect_hosts(api: Api, allocations: bool = True) -> None:
    api.replay(recorded("host-list"))
    if allocations:
        api.replay(recorded("host-allocations"))


def test_reserved_node_is_busy_now_and_free_when_the_lease_ends(api):
    now = RESERVED_FROM + _dt.timedelta(minutes=5)
    _expect_hosts(api)
    found = rc.availability.summary(_clients().blazar, make_cfg(), hours=4, now=now)
    api.assert_calls()
    assert (found.free_now, found.total, found.not_reservable) == (0, 1, 0)
    assert [h.name for h in found.hosts] == ["compute-1"]  # host 1 has no node type
    assert found.hosts[0].busy_until == RESERVED_UNTIL
    assert found.next_slot == rc.Slot(RESERVED_UNTIL, None, "compute-1")
    assert not found.can_start_now
    text = found.markdown()
    assert "free now: 0 of 1 reservable node" in text
    assert "next free slot for 4 h: 2026-12-02 06:35 UTC on compute-1" in text
    assert "| compute-1 | reserved until 2026-12-02 06:35 UTC | 2026-12-02 06:35 UTC | - |" \
        in text
    assert found.to_dict()["next_slot"]["start"] == "2026-12-02T06:35:00+00:00"


def test_a_gap_before_the_reservation_counts_only_when_the_lease_fits(api):
    before = RESERVED_FROM - _dt.timedelta(minutes=35)  # 05:00, 35 min before it
    for _ in range(2):
        _expect_hosts(api)
    blazar = _clients().blazar
    short = rc.availability.summary(blazar, make_cfg(), hours=0.5, now=before)
    long = rc.availability.summary(blazar, make_cfg(), hours=1, now=before)
    api.assert_calls()
    assert short.free_now == 1 and short.can_start_now
    assert short.next_slot == rc.Slot(before, RESERVED_FROM, "compute-1")
    assert "next free slot for 0.5 h: now on compute-1 (free until: 2026-12-02 05:35 UTC)" \
        in short.markdown()
    assert long.free_now == 1 and not long.can_start_now  # free now, but not for an hour
    assert long.next_slot.start == RESERVED_UNTIL


def test_after_the_reservation_the_node_is_free_with_no_end(api):
    later = RESERVED_UNTIL + _dt.timedelta(minutes=1)
    _expect_hosts(api)
    slot = rc.next_free_slot(_clients().blazar, make_cfg(), hours=2, now=later)
    api.assert_calls()
    assert slot == rc.Slot(later, None, "compute-1")


def test_a_node_type_the_site_does_not_list_has_no_slot_and_no_allocation_call(api):
    _expect_hosts(api, allocations=False)
    found = rc.availability.summary(_clients().blazar, make_cfg(node_type="gpu_a100_pcie"),
                                    now=RESERVED_FROM)
    api.assert_calls()
    assert (found.total, found.next_slot) == (0, None)
    assert "no reservable `gpu_a100_pcie` node at CHI@UC" in found.markdown()
    assert "none known" in found.markdown()


def test_2_provisions_plan_shows_the_availability(api):
    now = RESERVED_FROM + _dt.timedelta(minutes=5)
    _expect_hosts(api)
    text = provisioning.plan_markdown(make_cfg(), clients=_clients(), now=now)
    api.assert_calls()  # reads only: the plan's calls are listed, not made
    assert "**Plan for CHI@UC**" in text and "`POST reservation /leases`" in text
    assert "**Availability of `gpu_rtx_6000` at CHI@UC**" in text
    assert "free now: 0 of 1 reservable node" in text


def test_the_plan_says_why_availability_was_not_checked(requests_mock):
    _plumbing(requests_mock, _token())
    requests_mock.get("https://reservation.example.com/v1/os-hosts", status_code=503,
                      json={"error_code": 503, "error_message": "Service Unavailable"})
    text = provisioning.plan_markdown(make_cfg(), clients=_clients())
    assert "**Plan for CHI@UC**" in text
    assert "**Availability of `gpu_rtx_6000` at CHI@UC**: not checked: Blazar" in text
    assert "GET /os-hosts" in text


# -- leases: chi.lease.Lease in, chi.lease.Lease out -----------------------------------------
def test_a_replab_lease_becomes_a_chi_lease():
    pytest.importorskip("chi.lease")
    body = recorded("lease-show-active")["body"]["lease"]  # created_at has microseconds
    lease = python_chi.to_chi_lease(body)
    assert (lease.id, lease.name, lease.user_id) == (LEASE_ID, "lease-gpu", body["user_id"])
    assert [r["id"] for r in lease.node_reservations] == [rc.server_reservation_id(body)]
    assert [r["id"] for r in lease.fip_reservations] == rc.fip_reservation_ids(body)


def test_a_chi_lease_is_taken_where_replab_takes_a_lease(api):
    """get_lease, wait_for_lease and delete_lease take python-chi's Lease: only its id is
    read (its ``status`` property would call Blazar: no unexpected call is made)."""
    pytest.importorskip("chi.lease")
    chi_lease = python_chi.to_chi_lease(lease_body(rename="lease-gpu"))
    shown = recorded("lease-show-active")
    api.replay(shown)
    api.replay(shown)
    api.replay(recorded("lease-delete"))
    blazar = _clients().blazar
    assert rc.get_lease(blazar, chi_lease)["id"] == LEASE_ID
    assert rc.wait_for_lease(blazar, chi_lease, timeout=1)["status"] == "ACTIVE"
    assert rc.delete_lease(blazar, chi_lease) is True
    api.assert_calls()


def test_an_unsubmitted_chi_lease_is_refused_with_what_to_give():
    chi_lease = pytest.importorskip("chi.lease")
    draft = chi_lease.Lease("draft", duration=_dt.timedelta(hours=1))  # no id yet
    with pytest.raises(ConfigError, match="submitted chi.lease.Lease"):
        python_chi.lease_id(draft)
    assert python_chi.lease_id({"id": LEASE_ID}) == LEASE_ID
    assert python_chi.lease_id(LEASE_ID) == LEASE_ID


def test_replab_does_not_import_python_chi_itself():
    import subprocess
    import sys

    code = ("import sys, replab.cloud, replab.credentials, replab.provisioning; "
            "from replab.cloud import python_chi; "
            "print(python_chi.current(), 'chi' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["None", "False"]
