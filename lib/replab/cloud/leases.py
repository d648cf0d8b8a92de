"""Blazar leases: find, ensure, wait, extend, availability, delete.

``client`` is a blazarclient v1 ``Client`` (``replab.cloud.clients`` makes one from a
keystoneauth session); every function takes it as an argument and makes no call it does not
document. Leases are the plain dicts Blazar returns.

Payloads follow python-chi 1.2.10 (``chi/lease.py``) and blazarclient 3.6.5
(``blazarclient/v1/leases.py``): a node reservation ``physical:host`` with
``resource_properties`` ``'["==", "$node_type", "<type>"]'``; a KVM reservation
``flavor:instance`` with ``flavor_id``, ``amount`` and ``affinity``; a floating-IP reservation
``virtual:floatingip`` with ``network_id`` and ``amount``.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .. import sites
from ..errors import CloudError, ConfigError
from ._common import (
    Progress,
    as_utc,
    blazar_errors,
    blazar_time,
    delete_call,
    is_uuid,
    missing,
    parse_time,
    utcnow,
    wait_for,
)

NODE = "physical:host"
FLAVOR = "flavor:instance"
FIP = "virtual:floatingip"

ACTIVE, PENDING, STARTING, ERROR, TERMINATED = (
    "ACTIVE", "PENDING", "STARTING", "ERROR", "TERMINATED")
ENDED = ("TERMINATING", TERMINATED, "DELETED", "DELETING")

#: Blazar's MaxLeaseDurationFilter ``reservation_extension_window`` as Chameleon runs it (in
#: hours): within this long of a lease's end, it may be extended by up to the maximum lease
#: length again. Pass ``window_hours=None`` to :func:`extend_lease` for a Blazar without one.
EXTENSION_WINDOW_HOURS = 48.0

LEASE_TIMEOUT = 900.0  # a lease starting "now" is ACTIVE in a minute or two
LEASE_INTERVAL = 10.0

log = logging.getLogger(__name__)


# -- time policy (pure) ----------------------------------------------------------------------
@dataclass(frozen=True)
class LeaseWindow:
    """When a lease runs; ``start_now``: Blazar's ``"now"`` (it starts when Blazar gets it)."""

    start: _dt.datetime
    end: _dt.datetime
    start_now: bool

    @property
    def hours(self) -> float:
        return (self.end - self.start).total_seconds() / 3600

    def dates(self) -> tuple[str, str]:
        """``(start_date, end_date)`` as Blazar's API takes them."""
        return ("now" if self.start_now else blazar_time(self.start)), blazar_time(self.end)


def lease_end_bounds(site: sites.Site, start: _dt.datetime) -> tuple[_dt.datetime,
                                                                      _dt.datetime]:
    """The earliest and latest end a lease starting at ``start`` may have at ``site``
    (one hour to the site's maximum lease length). Raises ConfigError for a site without
    leases."""
    if site.max_lease_hours is None:
        raise ConfigError([("site", f"{site.name!r} takes no lease")])
    start = as_utc(start)
    return start + _dt.timedelta(hours=1), start + _dt.timedelta(hours=site.max_lease_hours)


def lease_window(site: sites.Site, *, hours: float, start: str | _dt.datetime | None = "now",
                 now: _dt.datetime | None = None, past_ok: bool = False) -> LeaseWindow:
    """The start and end of a lease of ``hours`` from ``start`` ("now", an ISO date-time in
    UTC or a datetime), checked against the site's policy. Makes no call.

    Raises ConfigError (field ``lease_hours`` or ``lease_start``) when the lease would be
    shorter than an hour, longer than the site allows, or (unless ``past_ok``: the lease
    exists already) start in the past.
    """
    now = as_utc(now or utcnow())
    start_now = start in (None, "now")
    if start_now:
        begin = now
    else:
        try:
            begin = start if isinstance(start, _dt.datetime) else parse_time(str(start))
        except ValueError:
            raise ConfigError([("lease_start", f"{start!r} is not 'now' or an ISO date-time "
                                               "(UTC) such as '2026-12-01 09:00'")]) from None
        begin = as_utc(begin)
    earliest, latest = lease_end_bounds(site, begin)
    end = begin + _dt.timedelta(hours=hours)
    if not earliest <= end <= latest:
        raise ConfigError([("lease_hours", f"{hours:g} is outside what {site.name} allows: 1 to "
                                           f"{site.max_lease_hours} hours")])
    if not past_ok and begin < now - _dt.timedelta(minutes=1):
        raise ConfigError([("lease_start", f"{blazar_time(begin)} UTC is in the past; use "
                                           "'now' or a later time")])
    return LeaseWindow(begin, end.replace(second=0, microsecond=0), start_now)


def extension_problem(lease: Mapping[str, Any], hours: float, *, site: sites.Site,
                      now: _dt.datetime | None = None,
                      window_hours: float | None = EXTENSION_WINDOW_HOURS) -> str | None:
    """Why Blazar would refuse extending ``lease`` by ``hours`` at ``site``, or None.

    Mirrors Blazar's MaxLeaseDurationFilter: the lease may last at most the site's maximum
    from its start; within ``window_hours`` of its end it may instead be extended by up to
    the maximum again. Makes no call.
    """
    if site.max_lease_hours is None:
        return f"{site.name} takes no lease"
    if hours <= 0:
        return f"an extension must be a positive number of hours, not {hours:g}"
    most = site.max_lease_hours
    if hours > most:
        return f"{hours:g} h is more than {site.name}'s maximum lease of {most} h"
    now = as_utc(now or utcnow())
    start, end = parse_time(lease["start_date"]), parse_time(lease["end_date"])
    new_end = end + _dt.timedelta(hours=hours)
    in_window = window_hours is not None and now >= end - _dt.timedelta(hours=window_hours)
    total = (new_end - start).total_seconds() / 3600
    if not in_window and total > most:
        when = (f"; within {window_hours:g} h of its end ({blazar_time(end)} UTC) it can be "
                f"extended by up to {most} h" if window_hours is not None else "")
        return (f"the lease would last {total:.0f} h from its start, more than {site.name}'s "
                f"maximum of {most} h{when}")
    return None


# -- reservations (pure) ---------------------------------------------------------------------
def node_reservation(node_type: str, count: int = 1) -> dict[str, Any]:
    """A bare-metal reservation by node type (python-chi ``add_node_reservation``)."""
    return {"resource_type": NODE,
            "resource_properties": json.dumps(["==", "$node_type", node_type]),
            "hypervisor_properties": "", "min": count, "max": count}


def flavor_reservation(flavor_id: str, amount: int = 1) -> dict[str, Any]:
    """A KVM reservation of ``amount`` instances of a flavor (``add_flavor_reservation``)."""
    return {"resource_type": FLAVOR, "flavor_id": flavor_id, "amount": amount,
            "affinity": None}


def fip_reservation(network_id: str, amount: int = 1) -> dict[str, Any]:
    """A floating-IP reservation on the public network (``add_fip_reservation``)."""
    return {"resource_type": FIP, "network_id": network_id, "amount": amount}


def reservations_for(cfg, *, network_id: str, flavor_id: str | None = None) -> list[dict]:
    """The reservations of the experiment's lease: one machine and one floating IP.

    Ordered as python-chi submits them (nodes, floating IPs, flavors). Raises ConfigError
    when the site takes no lease or a KVM site gets no ``flavor_id``.
    """
    kind = cfg.site_info.kind
    if kind == sites.BARE_METAL:
        return [node_reservation(cfg.node_type), fip_reservation(network_id)]
    if kind == sites.KVM:
        if not flavor_id:
            raise ConfigError([("flavor", f"the id of flavor {cfg.flavor!r} is needed to "
                                          "reserve it (see replab.cloud.find_flavor)")])
        return [fip_reservation(network_id), flavor_reservation(flavor_id)]
    raise ConfigError([("site", f"{cfg.site!r} takes no lease")])


def lease_body(name: str, window: LeaseWindow, reservations: list[dict]) -> dict[str, Any]:
    """The JSON body of ``POST /leases`` exactly as blazarclient sends it."""
    start, end = window.dates()
    return {"name": name, "start_date": start, "end_date": end, "reservations": reservations,
            "events": [], "before_end_date": None}


def reservations(lease: Mapping[str, Any], resource_type: str | None = None) -> list[dict]:
    """The lease's reservations (of one type); copes with Blazar's JSON-in-a-string form."""
    res = lease.get("reservations") or []
    if isinstance(res, str):  # seen from Blazar; python-chi unpacks it the same way
        res = json.loads(res)
    return [r for r in res if resource_type is None or r.get("resource_type") == resource_type]


def server_reservation_id(lease: Mapping[str, Any]) -> str:
    """The id of the reservation to boot the server on (the node or flavor reservation).

    Raises CloudError when the lease has none or several.
    """
    found = reservations(lease, NODE) + reservations(lease, FLAVOR)
    if len(found) != 1:
        raise CloudError(f"lease {lease.get('name')} ({lease.get('id')}) has "
                         f"{len(found)} node/flavor reservations; expected one")
    return found[0]["id"]


def fip_reservation_ids(lease: Mapping[str, Any]) -> list[str]:
    return [r["id"] for r in reservations(lease, FIP)]


def describe(lease: Mapping[str, Any]) -> str:
    """``ACTIVE`` / ``ERROR (reason)`` / ``ACTIVE, degraded``, for messages."""
    text = str(lease.get("status"))
    if lease.get("degraded"):
        text += ", degraded"
    if lease.get("status_reason"):
        text += f" ({lease['status_reason']})"
    return text


def _mismatch(lease: Mapping[str, Any], cfg) -> str | None:
    if cfg.site_info.kind == sites.BARE_METAL:
        nodes = reservations(lease, NODE)
        if not any(cfg.node_type in str(r.get("resource_properties", "")) for r in nodes):
            return f"it does not reserve node type {cfg.node_type}"
    elif not reservations(lease, FLAVOR):
        return f"it reserves no flavor (wanted {cfg.flavor})"
    if not reservations(lease, FIP):
        return "it reserves no floating IP"
    return None


# -- calls -----------------------------------------------------------------------------------
def find_lease(client, name: str) -> dict | None:
    """The lease called ``name``, or None. One call: ``GET /leases``.

    Raises CloudError when several leases have that name (naming every id; never a pick).
    """
    with blazar_errors("GET /leases"):
        leases = client.lease.list()
    found = [lease for lease in leases if lease.get("name") == name]
    if len(found) > 1:
        ids = ", ".join(f"{lease['id']} ({lease.get('status')})" for lease in found)
        raise CloudError(f"{len(found)} leases are named {name!r}: {ids}; delete the extra "
                         "ones (or rename them) so replab knows which is the experiment's",
                         "GET /leases")
    return found[0] if found else None


def get_lease(client, lease_id: str) -> dict:
    """``GET /leases/<id>``; raises CloudError (also when it does not exist)."""
    with blazar_errors(f"GET /leases/{lease_id}"):
        return client.lease.get(lease_id)


def ensure_lease(client, cfg, *, network_id: str, flavor_id: str | None = None,
                 start: str | _dt.datetime | None = None, hours: float | None = None,
                 now: _dt.datetime | None = None) -> tuple[dict, bool]:
    """The experiment's lease (``cfg.names["lease"]``), created when absent.

    Reserves one ``cfg.node_type`` node (bare metal) or one instance of the flavor
    ``flavor_id`` (KVM: the id of ``cfg.flavor``), plus one floating IP on the public
    network ``network_id``, for ``hours`` (default ``cfg.lease_hours``) from ``start``
    (default ``cfg.lease_start``). Returns ``(lease, created)``.

    Calls: ``GET /leases``; when absent ``POST /leases``. A lease of that name that has
    ended (TERMINATED) is deleted first (``DELETE /leases/<id>``).
    Raises ConfigError before any call when the length breaks the site's policy (and before
    creating one that would start in the past);
    CloudError when the existing lease is in ERROR or reserves something else, or Blazar
    refuses.
    """
    when = {"hours": hours or cfg.lease_hours, "now": now,
            "start": start if start is not None else cfg.lease_start}
    lease_window(cfg.site_info, past_ok=True, **when)  # the length, before any call
    body_reservations = reservations_for(cfg, network_id=network_id, flavor_id=flavor_id)
    name = cfg.names["lease"]
    lease = find_lease(client, name)
    if lease is not None:
        status = lease.get("status")
        if status in ENDED:
            log.info("lease %s (%s) is %s; replacing it", name, lease["id"], status)
            _delete(client, lease["id"], name, ignore_missing=True)
        elif status == ERROR:
            raise CloudError(f"lease {name} ({lease['id']}) is in ERROR: "
                             f"{lease.get('status_reason') or 'no reason given'}; delete it "
                             "(replab.cloud.delete_lease or 5_teardown) and provision again")
        else:
            problem = _mismatch(lease, cfg)
            if problem:
                raise CloudError(f"lease {name} ({lease['id']}) exists but {problem}; delete "
                                 "it (5_teardown) or use another experiment name")
            log.info("lease %s (%s) exists: %s", name, lease["id"], describe(lease))
            return lease, False
    window = lease_window(cfg.site_info, **when)  # a start in the past matters only now
    body = lease_body(name, window, body_reservations)
    with blazar_errors("POST /leases"):
        created = client.lease.create(name=body["name"], start=body["start_date"],
                                      end=body["end_date"], reservations=body["reservations"],
                                      events=body["events"])
    log.info("created lease %s (%s), %s to %s", name, created.get("id"), body["start_date"],
             body["end_date"])
    return created, True


def wait_for_lease(client, lease_id: str, *, timeout: float = LEASE_TIMEOUT,
                   interval: float = LEASE_INTERVAL, clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep,
                   progress: Progress | None = None) -> dict:
    """Poll ``GET /leases/<id>`` until the lease is ACTIVE; return it.

    Raises CloudError with Blazar's ``status_reason`` when it goes to ERROR (or ends), and
    ResourceTimeout after ``timeout`` seconds. A degraded ACTIVE lease is returned, with a
    warning logged.
    """
    def failed(lease):
        if lease.get("status") == ERROR:
            return (f"lease {lease.get('name')} ({lease_id}) is in ERROR: "
                    f"{lease.get('status_reason') or 'Blazar gave no reason'}")
        if lease.get("status") in ENDED:
            return f"lease {lease.get('name')} ({lease_id}) is {lease.get('status')}"
        return None

    lease = wait_for(lambda: get_lease(client, lease_id),
                     ready=lambda lease: lease.get("status") == ACTIVE, failed=failed,
                     describe=describe, what=f"lease {lease_id}", timeout=timeout,
                     interval=interval, clock=clock, sleep=sleep, progress=progress)
    if lease.get("degraded"):
        log.warning("lease %s is ACTIVE but degraded: %s", lease_id,
                    lease.get("status_reason") or "a reserved resource is unavailable")
    return lease


def extend_lease(client, lease: Mapping[str, Any], hours: float, *, site: sites.Site,
                 now: _dt.datetime | None = None,
                 window_hours: float | None = EXTENSION_WINDOW_HOURS) -> dict:
    """Move ``lease``'s end ``hours`` later: ``PUT /leases/<id>`` with the new ``end_date``
    (blazarclient reads the lease first: ``GET /leases/<id>``).

    Checked against the site's policy first (see :func:`extension_problem`): a refused
    extension raises ConfigError before any call. Raises CloudError when Blazar refuses
    (e.g. the node is reserved by someone else after the current end).
    """
    problem = extension_problem(lease, hours, site=site, now=now, window_hours=window_hours)
    if problem:
        raise ConfigError([("hours", f"cannot extend lease {lease.get('name')} "
                                     f"({lease.get('id')}): {problem}")])
    end = blazar_time(parse_time(lease["end_date"]) + _dt.timedelta(hours=hours))
    with blazar_errors(f"PUT /leases/{lease['id']}"):
        updated = client.lease.update(lease["id"], end_date=end)
    log.info("extended lease %s (%s) to %s UTC", lease.get("name"), lease["id"], end)
    return updated


def delete_lease(client, name_or_id: str, ignore_missing: bool = True) -> bool:
    """Delete a lease by id (``DELETE /leases/<id>``) or name (``GET /leases`` first).

    Returns whether it deleted; a lease already gone returns False, or raises CloudError
    when ``ignore_missing`` is False.
    """
    lease_id = name_or_id
    if not is_uuid(name_or_id):
        lease = find_lease(client, name_or_id)
        if lease is None:
            return missing(f"lease {name_or_id}", "GET /leases", ignore_missing)
        lease_id = lease["id"]
    return _delete(client, lease_id, name_or_id, ignore_missing)


def _delete(client, lease_id: str, label: str, ignore_missing: bool) -> bool:
    request = f"DELETE /leases/{lease_id}"
    return delete_call(f"lease {label}", request, blazar_errors(request, not_found=True),
                       lambda: client.lease.delete(lease_id), ignore_missing)


# -- availability ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Slot:
    """A free period: from ``start`` until ``end`` (None: no later reservation known)."""

    start: _dt.datetime
    end: _dt.datetime | None
    resource: str  # the host's name (bare metal) or the flavor id (KVM)


def _first_gap(busy: list[tuple[_dt.datetime, _dt.datetime]], now: _dt.datetime,
               length: _dt.timedelta) -> tuple[_dt.datetime, _dt.datetime | None]:
    possible = now
    for start, end in sorted(busy):
        if end <= possible:
            continue  # over (or inside an earlier one)
        if possible + length <= start:
            return possible, start
        possible = max(possible, end)
    return possible, None


def next_free_slot(client, cfg, *, hours: float | None = None, flavor_id: str | None = None,
                   now: _dt.datetime | None = None) -> Slot | None:
    """The earliest time a lease of ``hours`` (default ``cfg.lease_hours``) could start.

    Bare metal, through Blazar's host API (as python-chi's ``Node.next_free_timeslot``):
    ``GET /os-hosts`` (hosts whose ``node_type`` is ``cfg.node_type`` and reservable) and
    ``GET /os-hosts/allocations``. KVM: ``GET /flavor-instances/availability?flavor_id=``
    (needs ``flavor_id``). Returns None when the site has no such machine. Blazar ignores
    maintenance and reservations made meanwhile: the slot is a hint, not a promise.
    """
    now = as_utc(now or utcnow())
    length = _dt.timedelta(hours=hours or cfg.lease_hours or 1)
    if cfg.site_info.kind == sites.KVM:
        return _flavor_slot(client, flavor_id, now, length)
    with blazar_errors("GET /os-hosts"):
        hosts = [h for h in client.host.list()
                 if h.get("node_type") == cfg.node_type and h.get("reservable", True)
                 not in (False, "False", "false")]
    if not hosts:
        return None
    with blazar_errors("GET /os-hosts/allocations"):
        allocations = {str(a.get("resource_id")): a.get("reservations") or []
                       for a in client.host.list_allocations()}
    best: Slot | None = None
    for host in hosts:
        busy = [(parse_time(r["start_date"]), parse_time(r["end_date"]))
                for r in allocations.get(str(host["id"]), [])]
        start, end = _first_gap(busy, now, length)
        if best is None or start < best.start:
            best = Slot(start, end, host.get("hypervisor_hostname") or str(host["id"]))
    return best


def _flavor_slot(client, flavor_id, now, length) -> Slot | None:
    if not flavor_id:
        raise ConfigError([("flavor", "the flavor's id is needed to ask Blazar when it is "
                                      "free (see replab.cloud.find_flavor)")])
    request = f"GET /flavor-instances/availability?flavor_id={flavor_id}"
    with blazar_errors(request):
        body = client.flavor_instance.get_availability(flavor_id=flavor_id)
    segments = [seg for fr in (body or {}).get("flavor_instances", [])
                if fr.get("flavor_id") == flavor_id for seg in fr.get("availability", [])]
    run_start = run_end = None
    for seg in sorted(segments, key=lambda s: parse_time(s["start"])):
        start, end = max(parse_time(seg["start"]), now), parse_time(seg["end"])
        if int(seg.get("available") or 0) < 1 or end <= now:
            run_start = run_end = None
            continue
        if run_start is None or start > run_end:
            run_start = start
        run_end = end
        if run_end - run_start >= length:
            return Slot(run_start, run_end, flavor_id)
    return None
