"""When a lease could start: Blazar's host allocations (bare metal) and flavor availability
(KVM). A hint, not a promise: Blazar ignores maintenance and reservations made meanwhile."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

from .. import sites
from ..errors import ConfigError
from ._common import as_utc, blazar_errors, parse_time, utcnow


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
