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
from . import python_chi
from ._common import (
    Progress,
    Whoami,
    as_utc,
    blazar_errors,
    blazar_time,
    delete_call,
    is_uuid,
    missing,
    not_mine,
    parse_time,
    utcnow,
    wait_for,
)

NODE = "physical:host"
FLAVOR = "flavor:instance"
FIP = "virtual:floatingip"

#: How the lease's floating IP is had: reserved with the lease (the default; falls back to
#: on demand when Blazar refuses the reservation) or allocated on demand.
RESERVED, ON_DEMAND = "reserved", "on_demand"
FLOATING_IP_MODES = (RESERVED, ON_DEMAND)

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

    Blazar's MaxLeaseDurationFilter (``blazar/enforcement/filters/max_lease_duration_filter.py``,
    ``check_update``), as Chameleon runs it with ``reservation_extension_window`` = 48 h:
    an extension asked earlier than ``window_hours`` before the lease's current end is
    refused (``MaxReservationUpdateWindowException``, "Lease can only be extended within ...
    of the leases current end time"); inside the window the lease may run up to the site's
    maximum from its *current end*. Without a window (``window_hours=None``, plain Blazar)
    the whole lease, from its start, must fit in the maximum. The same rule holds for every
    reservation type: Blazar applies it to the lease, and both the host plugin and
    Chameleon's flavor plugin (``update_reservation``) accept a new end date when the same
    hosts stay free. Makes no call.
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
    if lease.get("status") in ENDED or (end <= now and lease.get("status") != PENDING):
        return f"the lease has ended ({lease.get('status')}, end {blazar_time(end)} UTC)"
    if window_hours is not None:
        opens = end - _dt.timedelta(hours=window_hours)
        if now < opens:
            return (f"{site.name} extends a lease only within {window_hours:g} h of its end "
                    f"({blazar_time(end)} UTC): ask again after {blazar_time(opens)} UTC")
        return None  # inside the window: up to the maximum again, counted from the end
    new_end = end + _dt.timedelta(hours=hours)
    total = (new_end - start).total_seconds() / 3600
    if total > most:
        return (f"the lease would last {total:.0f} h from its start, more than {site.name}'s "
                f"maximum of {most} h")
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


def reservations_for(cfg, *, network_id: str, flavor_id: str | None = None,
                     floating_ip: bool = True) -> list[dict]:
    """The reservations of the experiment's lease: one machine and (``floating_ip``) one
    floating IP.

    Ordered as python-chi submits them (nodes, floating IPs, flavors). Raises ConfigError
    when the site takes no lease or a KVM site gets no ``flavor_id``.
    """
    kind = cfg.site_info.kind
    ips = [fip_reservation(network_id)] if floating_ip else []
    if kind == sites.BARE_METAL:
        return [node_reservation(cfg.node_type), *ips]
    if kind == sites.KVM:
        if not flavor_id:
            raise ConfigError([("flavor", f"the id of flavor {cfg.flavor!r} is needed to "
                                          "reserve it (see replab.cloud.find_flavor)")])
        return [*ips, flavor_reservation(flavor_id)]
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


def failure_reasons(lease: Mapping[str, Any]) -> list[str]:
    """What Blazar records about a failing lease: reservations whose ``status`` is
    ``error`` or that miss resources, and events whose ``status`` is ``ERROR``. (Blazar
    has no reason field: a lease's keys are ``id name user_id project_id start_date
    end_date trust_id status degraded created_at updated_at reservations events``.)"""
    out = []
    for r in reservations(lease):
        what = f"{r.get('resource_type')} reservation {r.get('id')}"
        if str(r.get("status", "")).lower() == "error":
            out.append(f"{what} is in error")
        if r.get("missing_resources"):
            out.append(f"{what} lost a reserved resource (missing_resources)")
        if r.get("resources_changed"):
            out.append(f"{what} had its resources changed (resources_changed)")
    for e in lease.get("events") or []:
        if str(e.get("status", "")).upper() == "ERROR":
            out.append(f"event {e.get('event_type')} at {e.get('time')} failed")
    return out


def describe(lease: Mapping[str, Any]) -> str:
    """``ACTIVE`` / ``ERROR (event start_lease ... failed)`` / ``ACTIVE, degraded``."""
    text = str(lease.get("status"))
    if lease.get("degraded"):
        text += ", degraded"
    reasons = failure_reasons(lease)
    if reasons:
        text += f" ({'; '.join(reasons)})"
    return text


def _why(lease: Mapping[str, Any]) -> str:
    return "; ".join(failure_reasons(lease)) or "Blazar records no failed reservation or event"


def _mismatch(lease: Mapping[str, Any], cfg) -> str | None:
    if cfg.site_info.kind == sites.BARE_METAL:
        nodes = reservations(lease, NODE)
        if not any(cfg.node_type in str(r.get("resource_properties", "")) for r in nodes):
            return f"it does not reserve node type {cfg.node_type}"
    elif not reservations(lease, FLAVOR):
        return f"it reserves no flavor (wanted {cfg.flavor})"
    return None  # no floating-IP reservation: provisioning allocates one on demand


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


def get_lease(client, lease: Any) -> dict:
    """``GET /leases/<id>`` of ``lease`` (an id, a lease dict or a ``chi.lease.Lease``);
    raises CloudError (also when it does not exist)."""
    lease_id = python_chi.lease_id(lease)
    with blazar_errors(f"GET /leases/{lease_id}"):
        return client.lease.get(lease_id)


#: Blazar's refusals that concern the floating-IP reservation alone (blazar/manager/
#: exceptions.py: NotEnoughFloatingIPAvailable, UnsupportedResourceType for a site without
#: the floating-IP plugin): the lease is then made without it and the IP allocated on demand.
_FIP_REFUSALS = ("not enough floating ip", "virtual:floatingip")


def _fip_refusal(exc: CloudError) -> bool:
    text = str(exc).lower()
    return any(t in text for t in _FIP_REFUSALS)


def _explain(exc: CloudError, cfg, me: Whoami | None) -> CloudError:
    """Blazar's refusal of ``POST /leases`` with what to do about it."""
    text = str(exc)
    hint = ""
    if "not enough hosts available" in text.lower():
        what = cfg.node_type if cfg.site_info.kind == sites.BARE_METAL else cfg.flavor
        hint = (f": no {what} is free at {cfg.site} for the whole period; "
                "replab.cloud.next_free_slot says when one is, or choose another "
                "machine or a shorter lease")
    elif me is not None and me.application_credential and "(500)" in text:
        hint = (f": you authenticate with application credential {me.application_credential}"
                "; Blazar creates a trust for every lease, which an application credential "
                "can do only when it is unrestricted")
    return CloudError(text + hint, exc.request)


def _restricted_problem(cfg, me: Whoami | None) -> str | None:
    if me is None or not me.restricted:
        return None
    return (f"you authenticate at {cfg.site} with the restricted application credential "
            f"{me.application_credential}. Blazar creates a Keystone trust for every new lease "
            "and a restricted application credential may not create trusts (Blazar answers "
            "500). Authenticate at the compute site through Chameleon's JupyterHub or a "
            "clouds.yaml password entry, or create an unrestricted application credential "
            f"there (openstack application credential create --unrestricted ...). The "
            "object-store credential replab makes stays restricted: it is not used here")


def ensure_lease(client, cfg, *, network_id: str, flavor_id: str | None = None,
                 start: str | _dt.datetime | None = None, hours: float | None = None,
                 now: _dt.datetime | None = None, me: Whoami | None = None,
                 floating_ip: str = RESERVED) -> tuple[dict, bool]:
    """The experiment's lease (``cfg.names["lease"]``), created when absent.

    Reserves one ``cfg.node_type`` node (bare metal) or one instance of the flavor
    ``flavor_id`` (KVM: the id of ``cfg.flavor``), plus one floating IP on the public
    network ``network_id``, for ``hours`` (default ``cfg.lease_hours``) from ``start``
    (default ``cfg.lease_start``). Returns ``(lease, created)``.

    ``floating_ip``: ``"reserved"`` (the default) reserves the IP with the lease; when
    Blazar refuses that reservation alone (no floating-IP plugin, or no reservable IP
    left) the lease is made without it and provisioning allocates an IP on demand.
    ``"on_demand"`` never reserves one. A lease without a floating-IP reservation shows
    as ``fip_reservation_ids(lease) == []``.

    ``me`` (:func:`whoami` of the session): a lease of that name owned by another user of
    the project is refused, never adopted or replaced; a restricted application credential
    is refused before ``POST /leases`` (it cannot make the trust Blazar needs).

    Calls: ``GET /leases``; when absent ``POST /leases`` (again without the floating IP
    when Blazar refused it). A lease of that name that has ended (TERMINATED) is deleted
    first (``DELETE /leases/<id>``).
    Raises ConfigError before any call when the length breaks the site's policy (and before
    creating one that would start in the past);
    CloudError when the existing lease is another user's, in ERROR or reserves something
    else, or Blazar refuses (with what to do).
    """
    if floating_ip not in FLOATING_IP_MODES:
        raise ConfigError([("floating_ip", f"{floating_ip!r} is not one of "
                                           f"{', '.join(FLOATING_IP_MODES)}")])
    when = {"hours": hours or cfg.lease_hours, "now": now,
            "start": start if start is not None else cfg.lease_start}
    lease_window(cfg.site_info, past_ok=True, **when)  # the length, before any call
    body_reservations = reservations_for(cfg, network_id=network_id, flavor_id=flavor_id,
                                         floating_ip=floating_ip == RESERVED)
    name = cfg.names["lease"]
    lease = find_lease(client, name)
    if lease is not None:
        status = lease.get("status")
        theirs = not_mine(f"lease {name} ({lease['id']})", lease.get("user_id"), me)
        if theirs:
            raise CloudError(theirs, "GET /leases")
        if status in ENDED:
            log.info("lease %s (%s) is %s; replacing it", name, lease["id"], status)
            _delete(client, lease["id"], name, ignore_missing=True)
        elif status == ERROR:
            raise CloudError(f"lease {name} ({lease['id']}) is in ERROR: "
                             f"{_why(lease)}; delete it "
                             "(replab.cloud.delete_lease or 5_teardown) and provision again")
        else:
            problem = _mismatch(lease, cfg)
            if problem:
                raise CloudError(f"lease {name} ({lease['id']}) exists but {problem}; delete "
                                 "it (5_teardown) or use another experiment name")
            log.info("lease %s (%s) exists: %s", name, lease["id"], describe(lease))
            return lease, False
    window = lease_window(cfg.site_info, **when)  # a start in the past matters only now
    restricted = _restricted_problem(cfg, me)
    if restricted:
        raise CloudError(restricted, "POST /leases")
    body = lease_body(name, window, body_reservations)
    try:
        created = _create(client, body)
    except CloudError as exc:
        if not (floating_ip == RESERVED and _fip_refusal(exc)):
            raise _explain(exc, cfg, me) from exc
        log.warning("Blazar refused the floating-IP reservation (%s); reserving the lease "
                    "without it: the IP is allocated on demand from the public network", exc)
        body = lease_body(name, window, [r for r in body_reservations
                                         if r["resource_type"] != FIP])
        try:
            created = _create(client, body)
        except CloudError as again:
            raise _explain(again, cfg, me) from again
    log.info("created lease %s (%s), %s to %s", name, created.get("id"), body["start_date"],
             body["end_date"])
    return created, True


def _create(client, body: Mapping[str, Any]) -> dict:
    with blazar_errors("POST /leases"):
        return client.lease.create(name=body["name"], start=body["start_date"],
                                   end=body["end_date"], reservations=body["reservations"],
                                   events=body["events"])


def wait_for_lease(client, lease: Any, *, timeout: float = LEASE_TIMEOUT,
                   interval: float = LEASE_INTERVAL, clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep,
                   progress: Progress | None = None) -> dict:
    """Poll ``GET /leases/<id>`` until ``lease`` (id, dict, ``chi.lease.Lease``) is ACTIVE;
    return it (Blazar's dict).

    Raises CloudError with what Blazar records (:func:`failure_reasons`) when it goes to
    ERROR (or ends), and
    ResourceTimeout after ``timeout`` seconds. A degraded ACTIVE lease is returned, with a
    warning logged.
    """
    lease_id = python_chi.lease_id(lease)

    def failed(lease):
        if lease.get("status") == ERROR:
            return f"lease {lease.get('name')} ({lease_id}) is in ERROR: {_why(lease)}"
        if lease.get("status") in ENDED:
            return f"lease {lease.get('name')} ({lease_id}) is {lease.get('status')}"
        return None

    lease = wait_for(lambda: get_lease(client, lease_id),
                     ready=lambda lease: lease.get("status") == ACTIVE, failed=failed,
                     describe=describe, what=f"lease {lease_id}", timeout=timeout,
                     interval=interval, clock=clock, sleep=sleep, progress=progress)
    if lease.get("degraded"):
        log.warning("lease %s is ACTIVE but degraded: %s", lease_id,
                    "; ".join(failure_reasons(lease)) or "a reserved resource is unavailable")
    return lease


def extend_lease(client, lease: Any, hours: float, *, site: sites.Site,
                 now: _dt.datetime | None = None,
                 window_hours: float | None = EXTENSION_WINDOW_HOURS) -> dict:
    """Move ``lease``'s end ``hours`` later: ``PUT /leases/<id>`` with the new ``end_date``
    (blazarclient reads the lease first: ``GET /leases/<id>``). A ``chi.lease.Lease`` or
    an id is read first (``GET /leases/<id>``).

    Checked against the site's policy first (see :func:`extension_problem`): a refused
    extension raises ConfigError before any call. Raises CloudError when Blazar refuses
    (e.g. the node is reserved by someone else after the current end).
    """
    if not isinstance(lease, Mapping):
        lease = get_lease(client, lease)
    problem = extension_problem(lease, hours, site=site, now=now, window_hours=window_hours)
    if problem:
        raise ConfigError([("hours", f"cannot extend lease {lease.get('name')} "
                                     f"({lease.get('id')}): {problem}")])
    end = blazar_time(parse_time(lease["end_date"]) + _dt.timedelta(hours=hours))
    with blazar_errors(f"PUT /leases/{lease['id']}"):
        updated = client.lease.update(lease["id"], end_date=end)
    log.info("extended lease %s (%s) to %s UTC", lease.get("name"), lease["id"], end)
    return updated


def delete_lease(client, name_or_id: Any, ignore_missing: bool = True, *,
                 me: Whoami | None = None) -> bool:
    """Delete a lease by id (``DELETE /leases/<id>``; also a ``chi.lease.Lease`` or dict)
    or name (``GET /leases`` first).

    Returns whether it deleted; a lease already gone returns False, or raises CloudError
    when ``ignore_missing`` is False. By name with ``me``: a lease of another user of the
    project is refused (CloudError), never deleted.
    """
    lease_id = name_or_id = python_chi.lease_id(name_or_id)
    if not is_uuid(name_or_id):
        lease = find_lease(client, name_or_id)
        if lease is None:
            return missing(f"lease {name_or_id}", "GET /leases", ignore_missing)
        theirs = not_mine(f"lease {name_or_id} ({lease['id']})", lease.get("user_id"), me)
        if theirs:
            raise CloudError(theirs, "GET /leases")
        lease_id = lease["id"]
    return _delete(client, lease_id, name_or_id, ignore_missing)


def _delete(client, lease_id: str, label: str, ignore_missing: bool) -> bool:
    request = f"DELETE /leases/{lease_id}"
    return delete_call(f"lease {label}", request, blazar_errors(request, not_found=True),
                       lambda: client.lease.delete(lease_id), ignore_missing)
