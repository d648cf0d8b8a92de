"""What 2_provision does, as one function (:func:`provision`), and its dry run (:func:`plan`).

``plan(cfg)`` lists, in order, every HTTP call ``provision`` makes for that config, without
making any: the tests run both against recorded services and check that they agree. Ids not
known before the calls are placeholders such as ``{lease.id}``; a ``state`` (state.json's
content) fills in the ids it knows and drops the creations it records.
"""

from __future__ import annotations

import datetime as _dt
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import sites
from ..errors import ConfigError
from . import compute, leases
from ._common import Progress, as_utc, iso, parse_time, utcnow, whoami
from .state import State, live_ids

PUBLIC_KEY_PLACEHOLDER = "<the lab's SSH public key>"

log = logging.getLogger(__name__)


def keypair_name(cfg) -> str:
    """The experiment's keypair (``cfg.names`` has the other resource names)."""
    return f"{cfg.experiment}-key"


@dataclass(frozen=True)
class PlannedCall:
    """One HTTP call: ``path`` is relative to the service's endpoint in the catalog."""

    method: str
    service: str  # "reservation" (Blazar), "compute" (Nova), "network" (Neutron), "image"
    path: str
    summary: str
    body: dict[str, Any] | None = None

    def __str__(self) -> str:
        return f"{self.method} {self.service} {self.path}  # {self.summary}"


def _starts_later(start: _dt.datetime, now: _dt.datetime, timeout: float) -> bool:
    """Whether a lease starting at ``start`` cannot be waited for (it starts too late)."""
    return start > now + _dt.timedelta(seconds=timeout)


def check_image(cfg) -> None:
    """ConfigError, before any call, when ``cfg.image`` is not an image of the site (e.g.
    the x86 ``CC-Ubuntu24.04-CUDA`` at CHI@NCAR, whose GH200 nodes are ARM64: an x86
    image goes ACTIVE there and never boots)."""
    site = cfg.site_info
    if site.images and cfg.image not in site.images:
        arch = f" ({site.arch} machines)" if site.arch != sites.X86_64 else ""
        raise ConfigError([("image", f"{cfg.image!r} does not boot at {site.name}{arch}; "
                                     f"use {' or '.join(site.images)}")])


def plan(cfg, *, state: State | Mapping[str, Any] | None = None,
         now: _dt.datetime | None = None, public_key: str | None = None,
         floating_ip: str = leases.RESERVED,
         lease_timeout: float = leases.LEASE_TIMEOUT,
         server_timeout: float = compute.SERVER_TIMEOUT) -> list[PlannedCall]:
    """Every call :func:`provision` would make for ``cfg``, in order; makes none.

    With ``state``, resources it records are found, not created. A lease that starts later
    than ``lease_timeout`` from ``now`` ends the plan after its creation (provisioning
    resumes when it is re-run after the start). ``local`` plans nothing. Raises ConfigError
    (as provisioning would, before any call) when the lease breaks the site's policy.
    """
    site = cfg.site_info
    if site.kind == sites.LOCAL:
        return []
    check_image(cfg)
    now = as_utc(now or utcnow())
    known = live_ids(state)
    kvm = site.kind == sites.KVM
    names = cfg.names
    reserve_ip = floating_ip == leases.RESERVED
    lease_id = known.get("lease", "{lease.id}")
    server_id = known.get("server", "{server.id}")
    window = leases.lease_window(site, hours=cfg.lease_hours, start=cfg.lease_start, now=now,
                                 past_ok="lease" in known)
    calls = [PlannedCall("GET", "network", f"/v2.0/networks?name={compute.PUBLIC_NETWORK}",
                         "find the public network (the floating IP is reserved on it)")]
    if kvm:
        calls.append(PlannedCall("GET", "compute", compute.FLAVORS_PATH,
                                 f"find the id of flavor {cfg.flavor}"))
    calls.append(PlannedCall("GET", "reservation", "/leases", f"find lease {names['lease']}"))
    if "lease" not in known:
        body = leases.lease_body(names["lease"], window, leases.reservations_for(
            cfg, network_id="{public_network.id}", flavor_id="{flavor.id}" if kvm else None,
            floating_ip=reserve_ip))
        what = f"1 x {cfg.flavor}" if kvm else f"1 x {cfg.node_type} node"
        start, end = window.dates()
        calls.append(PlannedCall("POST", "reservation", "/leases",
                                 f"reserve {what}{' + 1 floating IP' if reserve_ip else ''}, "
                                 f"{start} to {end} UTC", body))
    if _starts_later(window.start, now, lease_timeout):
        return calls
    calls.append(PlannedCall("GET", "reservation", f"/leases/{lease_id}",
                             f"repeated every {leases.LEASE_INTERVAL:g} s until ACTIVE "
                             f"(at most {lease_timeout:g} s)"))
    key = keypair_name(cfg)
    calls.append(PlannedCall("GET", "compute", f"/os-keypairs/{key}", f"find keypair {key}"))
    if "keypair" not in known:
        calls.append(PlannedCall("POST", "compute", "/os-keypairs", f"create keypair {key}",
                                 {"keypair": {"name": key,
                                              "public_key": public_key or
                                              PUBLIC_KEY_PLACEHOLDER}}))
    group = names["security_group"]
    if compute.uses_security_groups(site):
        calls.append(PlannedCall("GET", "network", f"/v2.0/security-groups?name={group}",
                                 f"find security group {group}"))
        if "security_group" not in known:
            calls.append(PlannedCall("POST", "network", "/v2.0/security-groups",
                                     f"create security group {group}",
                                     {"security_group": {"name": group,
                                                         "description": "replab lab: SSH "
                                                                        "only"}}))
            calls += [PlannedCall("POST", "network", "/v2.0/security-group-rules",
                                  f"open {r.port}/{r.protocol} from {r.remote_ip_prefix}",
                                  {"security_group_rule": r.body("{security_group.id}")})
                      for r in compute.DEFAULT_RULES]
    server = names["server"]
    calls.append(PlannedCall("GET", "compute", f"/servers/detail?name={server}",
                             f"find server {server}"))
    if "server" not in known:
        calls += [PlannedCall("GET", "image", f"/v2/images?name={cfg.image}",
                              f"find image {cfg.image}"),
                  PlannedCall("GET", "network", f"/v2.0/networks?name={compute.DEFAULT_NETWORK}",
                              f"find network {compute.DEFAULT_NETWORK}")]
        if not kvm:
            calls.append(PlannedCall("GET", "compute", compute.FLAVORS_PATH,
                                     f"find flavor {compute.BAREMETAL_FLAVOR}"))
        body = compute.server_body(
            server, image_id="{image.id}",
            flavor_id="{server_reservation.id}" if kvm else "{baremetal_flavor.id}",
            reservation_id=None if kvm else "{server_reservation.id}", keypair=key,
            network_id="{sharednet1.id}", security_groups=[group] if kvm else [])
        calls.append(PlannedCall("POST", "compute", "/servers",
                                 f"boot {server} from {cfg.image} on the lease's reservation",
                                 body))
    calls.append(PlannedCall("GET", "compute", f"/servers/{server_id}",
                             f"repeated every {compute.SERVER_INTERVAL:g} s until ACTIVE "
                             f"(at most {server_timeout:g} s)"))
    if reserve_ip:
        calls.append(PlannedCall("GET", "network",
                                 "/v2.0/floatingips?tags=reservation:{fip_reservation.id}",
                                 "find the floating IP Blazar reserved for the lease"))
    elif "floating_ip" in known:
        calls.append(PlannedCall("GET", "network", f"/v2.0/floatingips/{known['floating_ip']}",
                                 "find the floating IP allocated on demand before"))
    else:
        calls.append(PlannedCall("POST", "network", "/v2.0/floatingips",
                                 "allocate a floating IP on demand (the lease reserves none)",
                                 {"floatingip": {"floating_network_id": "{public_network.id}",
                                                 "description": _ip_description(cfg)}}))
    calls.append(PlannedCall("GET", "network", f"/v2.0/ports?device_id={server_id}",
                             f"find {server}'s port"))
    if "floating_ip" not in known:
        calls.append(PlannedCall("PUT", "network", "/v2.0/floatingips/{floating_ip.id}",
                                 f"attach the floating IP to {server}",
                                 {"floatingip": {"port_id": "{port.id}"}}))
    return calls


def _floating_ip(cfg, conn, lease: Mapping[str, Any], state: State, public_id: str,
                 say: Progress) -> Any:
    """The lease's reserved floating IP; without a floating-IP reservation, the one this
    experiment allocated on demand before (state.json), or a new one. Recorded before it
    is attached, so a failure later still leaves it for the teardown to release."""
    fip_ids = leases.fip_reservation_ids(lease)
    if fip_ids:
        ip = compute.reserved_floating_ip(conn, lease)
        state.record("floating_ip", id=ip.id, name=ip.floating_ip_address, site=cfg.site,
                     created=False, address=ip.floating_ip_address, owned_by_lease=True,
                     reservation_id=fip_ids[0])
        return ip
    entry = state.get("floating_ip")
    ip = None
    if entry and not entry.get("owned_by_lease"):
        ip = compute.get_floating_ip(conn, entry["id"])
    made = ip is None
    if made:
        ip = compute.allocate_floating_ip(conn, public_id, description=_ip_description(cfg))
        say(f"the lease reserves no floating IP: allocated {ip.floating_ip_address} on "
            "demand (the teardown releases it)")
    state.record("floating_ip", id=ip.id, name=ip.floating_ip_address, site=cfg.site,
                 created=made, address=ip.floating_ip_address, owned_by_lease=False)
    return ip


@dataclass
class Provisioned:
    """What :func:`provision` left: ``pending_until`` is set when the lease starts later
    (re-run then); ``created`` says, per kind, whether this run created it."""

    lease: dict[str, Any]
    server: Any = None
    address: str | None = None
    pending_until: _dt.datetime | None = None
    created: dict[str, bool] = field(default_factory=dict)


def _ip_description(cfg) -> str:
    return f"replab {cfg.experiment}: allocated on demand"


def _record_lease(state: State, cfg, lease: Mapping[str, Any], created: bool) -> None:
    state.record("lease", id=lease["id"], name=lease["name"], site=cfg.site, created=created,
                 user_id=lease.get("user_id"),
                 status=lease.get("status"), start=iso(parse_time(lease["start_date"])),
                 end=iso(parse_time(lease["end_date"])),
                 reservations={r["resource_type"]: r["id"]
                               for r in leases.reservations(lease) if r.get("id")})


def provision(cfg, blazar, conn, *, state: State, public_key: str,
              now: _dt.datetime | None = None, floating_ip: str = leases.RESERVED,
              lease_timeout: float = leases.LEASE_TIMEOUT,
              server_timeout: float = compute.SERVER_TIMEOUT,
              clock: Callable[[], float] = time.monotonic,
              sleep: Callable[[float], None] = time.sleep,
              progress: Progress | None = None) -> Provisioned:
    """Lease, keypair, security group (KVM), server and floating IP for ``cfg``, each found
    or created, in the order :func:`plan` lists; every resource is recorded in ``state``
    as soon as it exists. Idempotent: a re-run adopts what exists, except a server in
    ERROR (from a failed boot), which it deletes and boots again. Only resources of the
    calling user are adopted (names are per project; see ``_common.not_mine``).

    ``floating_ip``: see :func:`leases.ensure_lease`. When the lease has no floating-IP
    reservation (``"on_demand"``, or Blazar refused it) an IP is allocated from the public
    network, recorded (``owned_by_lease: false``) so that the teardown releases it.

    Raises ConfigError (bad lease length or image, before any call), CloudError (a service
    refused, or a resource went to ERROR, with the service's reason), ResourceTimeout.
    """
    site = cfg.site_info
    if site.kind == sites.LOCAL:
        raise ConfigError([("site", "'local' provisions nothing: no lease, no server")])
    now = as_utc(now or utcnow())
    say = progress or (lambda _line: None)
    kvm = site.kind == sites.KVM
    # the policy check, before any call (ensure_lease repeats it, at no cost)
    leases.lease_window(site, hours=cfg.lease_hours, start=cfg.lease_start, now=now,
                        past_ok=True)
    check_image(cfg)
    me = whoami(conn.session)

    public_id = compute.network_id(conn, compute.PUBLIC_NETWORK)
    flavor_id = compute.flavor_id(conn, cfg.flavor) if kvm else None
    lease, created = leases.ensure_lease(blazar, cfg, network_id=public_id,
                                         flavor_id=flavor_id, now=now, me=me,
                                         floating_ip=floating_ip)
    _record_lease(state, cfg, lease, created)
    result = Provisioned(lease=lease, created={"lease": created})
    say(f"lease {lease['name']} ({lease['id']}): {'created' if created else 'exists'}, "
        f"{leases.describe(lease)}")
    starts = parse_time(lease["start_date"])
    if lease.get("status") == leases.PENDING and _starts_later(starts, now, lease_timeout):
        result.pending_until = starts
        say(f"the lease starts at {iso(starts)}: run 2_provision again then")
        return result
    lease = leases.wait_for_lease(blazar, lease["id"], timeout=lease_timeout, clock=clock,
                                  sleep=sleep, progress=say)
    _record_lease(state, cfg, lease, created)
    result.lease = lease

    key, made = compute.ensure_keypair(conn, keypair_name(cfg), public_key)
    state.record("keypair", id=key.name, name=key.name, site=cfg.site, created=made)
    result.created["keypair"] = made
    if compute.uses_security_groups(site):
        group, made = compute.ensure_security_group(conn, cfg.names["security_group"])
        state.record("security_group", id=group.id, name=group.name, site=cfg.site,
                     created=made)
        result.created["security_group"] = made

    reservation_id = leases.server_reservation_id(lease)
    server, made = compute.ensure_server(conn, cfg, reservation_id=reservation_id,
                                         keypair=key.name, me=me)
    if not made and server.status == "ERROR":
        # a boot that failed before (its fault was reported then): Nova never recovers an
        # ERROR server, so it is deleted and booted again on the same reservation
        say(f"server {server.name} ({server.id}) is in ERROR ({compute.fault(server)}): "
            "deleting it and booting a new one")
        compute.delete_server(conn, server.id, wait=True, clock=clock, sleep=sleep)
        state.mark_deleted("server")
        server, made = compute.ensure_server(conn, cfg, reservation_id=reservation_id,
                                             keypair=key.name, me=me)
    state.record("server", id=server.id, name=server.name, site=cfg.site, created=made,
                 reservation_id=reservation_id, image=cfg.image,
                 user_id=getattr(server, "user_id", None) or me.user_id)
    result.created["server"] = made
    say(f"server {server.name} ({server.id}): {'booting' if made else 'exists'}")
    server = compute.wait_for_server(conn, server.id, timeout=server_timeout, clock=clock,
                                     sleep=sleep, progress=say)
    result.server = server

    ip = _floating_ip(cfg, conn, lease, state, public_id, say)
    ip = compute.associate_floating_ip(conn, server, ip)
    result.address = ip.floating_ip_address
    log.info("provisioned %s: server %s at %s", cfg.experiment, server.name, result.address)
    say(f"server {server.name} is ACTIVE at {result.address}")
    return result
