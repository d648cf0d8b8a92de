"""What is free now and when a lease could start: Blazar's host allocations (bare metal) and
flavor availability (KVM). A hint, not a promise: Blazar ignores maintenance and reservations
made meanwhile.

The calls are python-chi's (``chi.hardware.get_nodes(filter_reserved=True)`` and
``Node.next_free_timeslot``: ``GET /os-hosts``, ``GET /os-hosts/allocations``), made through
the caller's blazarclient; the free period is computed as python-chi does, except that
reservations already over are skipped and a gap exactly as long as the lease counts.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Any

from .. import sites
from ..errors import ConfigError
from ._common import as_utc, blazar_errors, parse_time, utcnow

MAX_ROWS = 10  # hosts listed in the markdown table


@dataclass(frozen=True)
class Slot:
    """A free period: from ``start`` until ``end`` (None: no later reservation known)."""

    start: _dt.datetime
    end: _dt.datetime | None
    resource: str  # the host's name (bare metal) or the flavor id (KVM)


@dataclass(frozen=True)
class HostAvailability:
    """One bare-metal host of the node type."""

    name: str  # hypervisor_hostname (python-chi's Node.uid)
    id: str  # Blazar's host id
    reservable: bool
    busy_until: _dt.datetime | None  # end of the reservation running now; None: free now
    slot: Slot | None  # the first free period long enough for the lease (None: not reservable)


@dataclass(frozen=True)
class Availability:
    """What Blazar says about one machine at one site for a lease of ``hours``."""

    site: str
    machine: str  # node type (bare metal) or flavor name (KVM)
    kind: str  # sites.BARE_METAL or sites.KVM
    hours: float
    now: _dt.datetime
    free_now: int  # bare metal: reservable hosts with no reservation running; KVM: instances
    total: int | None  # bare metal: reservable hosts of the type; KVM: None (not published)
    next_slot: Slot | None  # earliest start of a lease of ``hours`` (None: none known)
    hosts: tuple[HostAvailability, ...] = ()
    not_reservable: int = 0

    @property
    def can_start_now(self) -> bool:
        return self.next_slot is not None and self.next_slot.start <= self.now

    def to_dict(self) -> dict[str, Any]:
        slot = self.next_slot
        return {"site": self.site, "machine": self.machine, "kind": self.kind,
                "hours": self.hours, "now": _iso(self.now), "free_now": self.free_now,
                "total": self.total, "not_reservable": self.not_reservable,
                "can_start_now": self.can_start_now,
                "next_slot": None if slot is None else {
                    "start": _iso(slot.start), "end": slot.end and _iso(slot.end),
                    "resource": slot.resource},
                "hosts": [{"name": h.name, "id": h.id, "reservable": h.reservable,
                           "busy_until": h.busy_until and _iso(h.busy_until),
                           "free_from": h.slot and _iso(h.slot.start)} for h in self.hosts]}

    def markdown(self) -> str:
        """A paragraph, a list and (bare metal) a table of hosts, for 2_provision's plan."""
        what = "node" if self.kind == sites.BARE_METAL else "instance"
        lines = [f"**Availability of `{self.machine}` at {self.site}** (Blazar, as of "
                 f"{_show(self.now)}; for a {self.hours:g} h lease)", ""]
        if self.kind == sites.BARE_METAL:
            if not self.total:
                lines.append(f"- no reservable `{self.machine}` node at {self.site}"
                             + (f" ({self.not_reservable} not reservable)"
                                if self.not_reservable else ""))
            else:
                lines.append(f"- free now: {self.free_now} of {self.total} reservable "
                             f"{what}{'s' if self.total != 1 else ''}"
                             + (f" ({self.not_reservable} more not reservable)"
                                if self.not_reservable else ""))
        else:
            lines.append(f"- free now: {self.free_now} {what}{'s' if self.free_now != 1 else ''}"
                         " of this flavor")
        slot = self.next_slot
        if slot is None:
            lines.append(f"- next free slot for {self.hours:g} h: none known")
        else:
            start = "now" if self.can_start_now else _show(slot.start)
            until = _show(slot.end) if slot.end else "no later reservation"
            on = f" on {slot.resource}" if self.kind == sites.BARE_METAL else ""
            lines.append(f"- next free slot for {self.hours:g} h: {start}{on} (free until: "
                         f"{until})")
        rows = sorted((h for h in self.hosts if h.reservable),
                      key=lambda h: (h.slot.start if h.slot else self.now, h.name))
        if rows:
            lines += ["", "| node | now | free for the lease from | until |",
                      "|---|---|---|---|"]
            for h in rows[:MAX_ROWS]:
                now = "free" if h.busy_until is None else f"reserved until {_show(h.busy_until)}"
                start = "now" if h.slot.start <= self.now else _show(h.slot.start)
                lines.append(f"| {h.name} | {now} | {start} | "
                             f"{_show(h.slot.end) if h.slot.end else '-'} |")
            if len(rows) > MAX_ROWS:
                lines.append(f"| ... | {len(rows) - MAX_ROWS} more | | |")
        lines += ["", "A hint, not a promise: Blazar decides when the lease is made "
                      "(maintenance and reservations made meanwhile count)."]
        return "\n".join(lines) + "\n"


def _iso(t: _dt.datetime) -> str:
    return as_utc(t).isoformat(timespec="seconds")


def _show(t: _dt.datetime) -> str:
    return as_utc(t).strftime("%Y-%m-%d %H:%M UTC")


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


def _reservable(host: dict) -> bool:
    return host.get("reservable", True) not in (False, "False", "false")


def summary(client, cfg, *, hours: float | None = None, machine: str | None = None,
            flavor_id: str | None = None, now: _dt.datetime | None = None) -> Availability:
    """What is free now and the earliest start of a lease of ``hours`` (default
    ``cfg.lease_hours``) for ``machine`` (default ``cfg``'s node type or flavor).

    Bare metal: ``GET /os-hosts`` (hosts whose ``node_type`` is the machine) and
    ``GET /os-hosts/allocations``. KVM: ``GET /flavor-instances/availability?flavor_id=``
    (needs ``flavor_id``, the flavor's id: ``replab.cloud.flavor_id``). Raises CloudError
    when Blazar refuses, ConfigError for a KVM site without ``flavor_id``.
    """
    now = as_utc(now or utcnow())
    hours = float(hours or cfg.lease_hours or 1)
    length = _dt.timedelta(hours=hours)
    site = cfg.site_info
    if site.kind == sites.KVM:
        return _flavor_summary(client, site, machine or cfg.flavor, flavor_id, now, hours)
    node_type = machine or cfg.node_type
    with blazar_errors("GET /os-hosts"):
        hosts = [h for h in client.host.list() if h.get("node_type") == node_type]
    allocations: dict[str, list] = {}
    if any(_reservable(h) for h in hosts):
        with blazar_errors("GET /os-hosts/allocations"):
            allocations = {str(a.get("resource_id")): a.get("reservations") or []
                           for a in client.host.list_allocations()}
    rows = []
    for host in hosts:
        name = host.get("hypervisor_hostname") or str(host["id"])
        busy = [(parse_time(r["start_date"]), parse_time(r["end_date"]))
                for r in allocations.get(str(host["id"]), [])]
        running = [end for start, end in busy if start <= now < end]
        slot = None
        if _reservable(host):
            start, end = _first_gap(busy, now, length)
            slot = Slot(start, end, name)
        rows.append(HostAvailability(name=name, id=str(host["id"]),
                                     reservable=_reservable(host),
                                     busy_until=max(running) if running else None, slot=slot))
    free = [h for h in rows if h.reservable]
    best = min((h.slot for h in free), key=lambda s: (s.start, s.resource), default=None)
    return Availability(site=site.name, machine=node_type, kind=site.kind, hours=hours,
                        now=now, free_now=sum(1 for h in free if h.busy_until is None),
                        total=len(free), next_slot=best, hosts=tuple(rows),
                        not_reservable=len(rows) - len(free))


def next_free_slot(client, cfg, *, hours: float | None = None, flavor_id: str | None = None,
                   now: _dt.datetime | None = None) -> Slot | None:
    """The earliest time a lease of ``hours`` (default ``cfg.lease_hours``) could start
    (:func:`summary`'s ``next_slot``); None when the site has no such machine."""
    return summary(client, cfg, hours=hours, flavor_id=flavor_id, now=now).next_slot


def _flavor_summary(client, site, flavor: str | None, flavor_id: str | None,
                    now: _dt.datetime, hours: float) -> Availability:
    if not flavor_id:
        raise ConfigError([("flavor", "the flavor's id is needed to ask Blazar when it is "
                                      "free (see replab.cloud.find_flavor)")])
    request = f"GET /flavor-instances/availability?flavor_id={flavor_id}"
    with blazar_errors(request):
        body = client.flavor_instance.get_availability(flavor_id=flavor_id)
    segments = sorted((seg for fr in (body or {}).get("flavor_instances", [])
                       if fr.get("flavor_id") == flavor_id
                       for seg in fr.get("availability", [])),
                      key=lambda s: parse_time(s["start"]))
    free_now = next((int(s.get("available") or 0) for s in segments
                     if parse_time(s["start"]) <= now < parse_time(s["end"])), 0)
    length = _dt.timedelta(hours=hours)
    run_start = run_end = None
    slot = None
    for seg in segments:
        start, end = max(parse_time(seg["start"]), now), parse_time(seg["end"])
        if int(seg.get("available") or 0) < 1 or end <= now:
            run_start = run_end = None
            continue
        if run_start is None or start > run_end:
            run_start = start
        run_end = end
        if run_end - run_start >= length:
            slot = Slot(run_start, run_end, flavor_id)
            break
    return Availability(site=site.name, machine=flavor or flavor_id, kind=site.kind,
                        hours=hours, now=now, free_now=free_now, total=None, next_slot=slot)
