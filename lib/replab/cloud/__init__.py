"""Leases, servers, floating IPs, security groups and keypairs on Chameleon.

Every function takes its client as an argument: a blazarclient ``Client`` (``client``) for
leases, an openstacksdk ``Connection`` (``conn``) for the rest. Only notebooks call the
factories :func:`clients` / :func:`connect`. Verbs follow openstacksdk: ``find_*`` returns
None when absent, ``ensure_*`` finds by name and creates only when absent (returning
``(resource, created)``), ``delete_*(..., ignore_missing=True)`` returns whether it deleted,
``wait_for_*`` raises CloudError on ERROR (with the service's reason) and ResourceTimeout,
all through :func:`wait_for` and its injectable clock. :func:`plan` lists every call
:func:`provision` (2_provision) would make, without making any; :class:`State` is
``<workdir>/state.json``, the teardown inventory.

Modules: ``leases`` (Blazar), ``availability`` (what is free now, when a lease could start),
``compute`` (Nova, Neutron, Glance), ``provision`` (plan and provision), ``state``,
``python_chi`` (a python-chi user's ``chi.context``, session and ``chi.lease.Lease``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from . import availability, python_chi
from ._common import Whoami, not_mine, wait_for, whoami
from .availability import Availability, Slot, next_free_slot
from .compute import (
    DEFAULT_NETWORK,
    DEFAULT_RULES,
    PUBLIC_NETWORK,
    SSH,
    Rule,
    allocate_floating_ip,
    associate_floating_ip,
    delete_keypair,
    delete_security_group,
    delete_server,
    ensure_keypair,
    ensure_security_group,
    ensure_server,
    find_flavor,
    find_network,
    find_server,
    flavor_id,
    get_server,
    image_id,
    network_id,
    owned_by_lease,
    release_floating_ip,
    reserved_floating_ip,
    uses_security_groups,
    wait_for_server,
)
from .leases import (
    EXTENSION_WINDOW_HOURS,
    FLOATING_IP_MODES,
    LeaseWindow,
    delete_lease,
    ensure_lease,
    extend_lease,
    extension_problem,
    failure_reasons,
    find_lease,
    fip_reservation_ids,
    get_lease,
    lease_body,
    lease_end_bounds,
    lease_window,
    reservations,
    reservations_for,
    server_reservation_id,
    wait_for_lease,
)
from .provision import PlannedCall, Provisioned, keypair_name, plan, provision
from .state import STATE_FILE, State, live_ids


class Clients(NamedTuple):
    blazar: Any  # blazarclient.v1.client.Client
    conn: Any  # openstack.connection.Connection


def clients(session, *, region: str | None) -> Clients:
    """A Blazar client and an openstacksdk Connection on one keystoneauth ``session``,
    using the endpoints of ``region`` in its catalog. Makes no call until used."""
    import openstack.connection
    from blazarclient import client as blazar_client

    blazar = blazar_client.Client("1", service_type="reservation", session=session,
                                  region_name=region, interface="public")
    conn = openstack.connection.Connection(session=session, region_name=region)
    return Clients(blazar, conn)


def connect(cfg, *, env: Mapping[str, str] | None = None, cloud: str | None = None,
            clouds_file: str | None = None, chi: Any = None) -> Clients:
    """Authenticate at ``cfg``'s compute site (see ``replab.credentials.authenticate``) and
    return its clients. For notebooks; library functions take clients as arguments.

    ``chi``: a python-chi context (:mod:`.python_chi`); by default this kernel's
    ``chi.context`` when imported: at that site its ``chi.context.session()`` is used.
    Raises CloudError listing every authentication source tried.
    """
    from ..credentials import authenticate
    from ..errors import ConfigError

    if not cfg.auth_url:
        raise ConfigError([("auth_url", f"{cfg.site} has no Keystone URL; set "
                                        "endpoints.auth_url")])
    auth = authenticate(cfg.auth_url, env=env, cloud=cloud, clouds_file=clouds_file, chi=chi)
    return clients(auth.session, region=cfg.region)


__all__ = [
    "Availability", "Clients", "availability", "python_chi", "DEFAULT_NETWORK",
    "DEFAULT_RULES", "EXTENSION_WINDOW_HOURS",
    "FLOATING_IP_MODES", "LeaseWindow", "Whoami", "allocate_floating_ip", "failure_reasons",
    "not_mine", "whoami",
    "PUBLIC_NETWORK", "PlannedCall", "Provisioned", "Rule", "SSH", "STATE_FILE", "Slot",
    "State", "associate_floating_ip", "clients", "connect", "delete_keypair", "delete_lease",
    "delete_security_group", "delete_server", "ensure_keypair", "ensure_lease",
    "ensure_security_group", "ensure_server", "extend_lease", "extension_problem",
    "find_flavor", "find_lease", "find_network", "find_server", "fip_reservation_ids",
    "flavor_id", "get_lease", "get_server", "image_id", "keypair_name", "lease_body",
    "lease_end_bounds", "lease_window", "live_ids", "network_id", "next_free_slot",
    "owned_by_lease", "plan", "provision", "release_floating_ip", "reservations",
    "reservations_for", "reserved_floating_ip", "server_reservation_id",
    "uses_security_groups", "wait_for", "wait_for_lease", "wait_for_server",
]
