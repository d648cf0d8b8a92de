"""replab.cloud against a real Chameleon project: ``pytest -m chameleon``.

Skipped without credentials: a JupyterHub token (``OS_ACCESS_TOKEN``), an application
credential (``OS_APPLICATION_CREDENTIAL_ID``/``_SECRET`` with ``OS_AUTH_URL``) or a
``clouds.yaml`` entry (``OS_CLOUD``). The site is ``REPLAB_SITE`` (default ``OS_REGION_NAME``,
else CHI@UC). It reserves the smallest machine free now for one hour, boots it, checks it,
and tears everything down, also when a step fails. Costs about one node-hour.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import secrets

import pytest

from replab import cloud as rc
from replab import config, sites

pytestmark = [pytest.mark.chameleon, pytest.mark.slow, pytest.mark.timeout(3600)]

_CREDENTIALS = ("OS_ACCESS_TOKEN", "OS_APPLICATION_CREDENTIAL_ID", "OS_CLOUD")
if not any(os.environ.get(v) for v in _CREDENTIALS):
    pytest.skip(f"no Chameleon credentials (set one of {', '.join(_CREDENTIALS)})",
                allow_module_level=True)

log = logging.getLogger(__name__)
SITE = os.environ.get("REPLAB_SITE") or os.environ.get("OS_REGION_NAME") or "CHI@UC"


def _public_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH,
                            serialization.PublicFormat.OpenSSH).decode() + " replab-live"


def _smallest_first(site: sites.Site) -> list[sites.Machine]:
    """CPU-only machines before GPU ones; within them the shorter (smaller) names first."""
    return sorted(site.machines, key=lambda m: (m.gpu_vendor != "none", len(m.name), m.name))


def _cfg(site: sites.Site, machine: sites.Machine, workdir: str, experiment: str):
    key = "node_type" if site.kind == sites.BARE_METAL else "flavor"
    return config.build({"experiment": experiment, "frameworks": ["pytorch"], "site": site.name,
                         key: machine.name, "gpu_vendor": machine.gpu_vendor,
                         "lease_hours": 1, "workdir": workdir})


def test_reserve_boot_and_tear_down_the_smallest_free_machine(tmp_path):
    site = sites.get_site(SITE)
    if site.kind == sites.LOCAL:
        pytest.skip("REPLAB_SITE is 'local': nothing to reserve")
    experiment = f"replab-live-{secrets.token_hex(3)}"
    probe = _cfg(site, site.machines[0], str(tmp_path), experiment)
    clients = rc.connect(probe)
    now = _dt.datetime.now(_dt.timezone.utc)

    cfg = None
    for machine in _smallest_first(site):
        candidate = _cfg(site, machine, str(tmp_path), experiment)
        flavor = (rc.flavor_id(clients.conn, machine.name) if site.kind == sites.KVM
                  else None)
        slot = rc.next_free_slot(clients.blazar, candidate, hours=1, flavor_id=flavor, now=now)
        log.info("%s at %s: next free %s", machine.name, site.name, slot)
        if slot is not None and slot.start <= now + _dt.timedelta(minutes=5):
            cfg = candidate
            break
    if cfg is None:
        pytest.skip(f"no machine at {site.name} is free for an hour now")

    state = rc.State.load(tmp_path)
    try:
        done = rc.provision(cfg, clients.blazar, clients.conn, state=state,
                            public_key=_public_key(), progress=log.info)
        assert done.pending_until is None
        assert done.server.status == "ACTIVE" and done.address
        assert rc.find_lease(clients.blazar, cfg.names["lease"])["status"] == "ACTIVE"
        assert state.get("floating_ip")["address"] == done.address
    finally:
        rc.delete_server(clients.conn, cfg.names["server"], wait=True)
        rc.delete_lease(clients.blazar, cfg.names["lease"])
        rc.delete_keypair(clients.conn, rc.keypair_name(cfg))
        if rc.uses_security_groups(site):
            rc.delete_security_group(clients.conn, cfg.names["security_group"])
        for kind in list(state.live()):
            state.mark_deleted(kind)
    assert rc.find_server(clients.conn, cfg.names["server"]) is None
