"""Servers, keypairs, security groups and floating IPs, through an openstacksdk Connection.

Every function takes the ``conn`` (``openstack.connection.Connection``) and returns
openstacksdk resources. Lookups by name are one list call with the name as a filter, matched
exactly here; two matches raise CloudError naming both ids (python-chi picks the first).

Sources: python-chi 1.2.10 ``chi/server.py`` (``instance_create_args``: a bare-metal
reservation as the ``reservation`` scheduler hint, network ``sharednet1``, flavor ``baremetal``
on bare metal; a KVM server with the reserved flavor and no hint),
``chi/network.py`` (security group rules; floating IPs), ``chi/lease.py``
(``get_reserved_floating_ips``: Blazar tags the IPs it reserved ``reservation:<id>``); Blazar's
flavor plugin names the flavor it creates for a KVM reservation after the reservation
(``flavorid`` = the reservation id).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .. import sites
from ..errors import CloudError
from ._common import (
    NotFound,
    Progress,
    Whoami,
    delete_call,
    is_uuid,
    missing,
    not_mine,
    sdk_errors,
    wait_for,
)

DEFAULT_NETWORK = "sharednet1"  # chi.server.DEFAULT_NETWORK
PUBLIC_NETWORK = "public"  # chi.network.PUBLIC_NETWORK: where floating IPs come from
BAREMETAL_FLAVOR = "baremetal"  # chi.server.BAREMETAL_FLAVOR
FLAVORS_PATH = "/flavors?is_public=None"  # how openstacksdk lists every flavor the project sees
LEASE_IP_TAGS = ("blazar",)  # with "reservation:<id>": what Blazar tags its floating IPs

SERVER_TIMEOUT = 1800.0  # bare metal takes 10-20 minutes to boot
SERVER_INTERVAL = 15.0

log = logging.getLogger(__name__)


# -- lookups ---------------------------------------------------------------------------------
def _one(items: Iterable[Any], name: str, what: str, request: str) -> Any | None:
    found = [x for x in items if x.name == name]
    if len(found) > 1:
        raise CloudError(f"{len(found)} {what}s are named {name!r}: "
                         f"{', '.join(str(x.id) for x in found)}; pass an id, or delete or "
                         "rename the extra ones", request)
    return found[0] if found else None


def find_network(conn, name: str) -> Any | None:
    """``GET /v2.0/networks?name=<name>``: the network, or None."""
    request = f"GET /v2.0/networks?name={name}"
    with sdk_errors("Neutron", request):
        return _one(conn.network.networks(name=name), name, "network", request)


def network_id(conn, name: str = PUBLIC_NETWORK) -> str:
    """The id of the network ``name`` (default the public one); raises CloudError if none."""
    net = find_network(conn, name)
    if net is None:
        raise CloudError(f"no network named {name!r}", f"GET /v2.0/networks?name={name}")
    return net.id


def find_flavor(conn, name: str) -> Any | None:
    """``GET /flavors?is_public=None`` (every flavor the project sees; Nova has no name
    filter): the flavor called ``name``, or None."""
    with sdk_errors("Nova", f"GET {FLAVORS_PATH}"):
        return _one(conn.compute.flavors(details=False), name, "flavor", f"GET {FLAVORS_PATH}")


def flavor_id(conn, name: str) -> str:
    flavor = find_flavor(conn, name)
    if flavor is None:
        raise CloudError(f"no flavor named {name!r} is visible to this project",
                         f"GET {FLAVORS_PATH}")
    return flavor.id


def image_id(conn, name_or_id: str) -> str:
    """An image id: ``name_or_id`` itself when it is one, else ``GET /v2/images?name=``."""
    if is_uuid(name_or_id):
        return name_or_id
    request = f"GET /v2/images?name={name_or_id}"
    with sdk_errors("Glance", request):
        image = _one(conn.image.images(name=name_or_id), name_or_id, "image", request)
    if image is None:
        raise CloudError(f"no image named {name_or_id!r} at this site", request)
    return image.id


def find_server(conn, name: str) -> Any | None:
    """``GET /servers/detail?name=<name>`` (a regex in Nova; matched exactly here)."""
    request = f"GET /servers/detail?name={name}"
    with sdk_errors("Nova", request):
        return _one(conn.compute.servers(name=name), name, "server", request)


# -- keypairs --------------------------------------------------------------------------------
def _key_material(public_key: str) -> str:
    return " ".join(public_key.split()[:2])  # type and key; the comment does not matter


def ensure_keypair(conn, name: str, public_key: str) -> tuple[Any, bool]:
    """The keypair ``name`` holding ``public_key``: ``GET /os-keypairs/<name>``, and
    ``POST /os-keypairs`` when absent. Returns ``(keypair, created)``.

    Raises CloudError when a keypair of that name holds another key (booting with it would
    lock you out): delete it (:func:`delete_keypair`) or use another name.
    """
    request = f"GET /os-keypairs/{name}"
    try:
        with sdk_errors("Nova", request, not_found=True):
            existing = conn.compute.get_keypair(name)
    except NotFound:
        existing = None
    if existing is not None:
        if _key_material(existing.public_key or "") != _key_material(public_key):
            raise CloudError(f"keypair {name!r} exists with another public key "
                             f"(fingerprint {existing.fingerprint}); delete it or choose "
                             "another name", request)
        return existing, False
    with sdk_errors("Nova", "POST /os-keypairs"):
        created = conn.compute.create_keypair(name=name, public_key=public_key.strip())
    log.info("created keypair %s", name)
    return created, True


def delete_keypair(conn, name: str, ignore_missing: bool = True) -> bool:
    """``DELETE /os-keypairs/<name>``; False when it was already gone."""
    request = f"DELETE /os-keypairs/{name}"
    return delete_call(f"keypair {name}", request, sdk_errors("Nova", request, not_found=True),
                       lambda: conn.compute.delete_keypair(name, ignore_missing=False),
                       ignore_missing)


# -- security groups -------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """An ingress rule (python-chi's ``SecurityGroup.add_rule``, with the remote prefix)."""

    port: int
    protocol: str = "tcp"
    remote_ip_prefix: str = "0.0.0.0/0"
    direction: str = "ingress"
    ethertype: str = "IPv4"

    def body(self, security_group_id: str) -> dict[str, Any]:
        """The ``security_group_rule`` object of ``POST /v2.0/security-group-rules``."""
        return {"direction": self.direction, "ethertype": self.ethertype,
                "protocol": self.protocol, "port_range_min": self.port,
                "port_range_max": self.port, "remote_ip_prefix": self.remote_ip_prefix,
                "security_group_id": security_group_id}

    def matches(self, rule: dict[str, Any]) -> bool:
        return (rule.get("direction") == self.direction
                and rule.get("ethertype", "IPv4") == self.ethertype
                and rule.get("protocol") == self.protocol
                and rule.get("port_range_min") == self.port
                and rule.get("port_range_max") == self.port
                and (rule.get("remote_ip_prefix") or "0.0.0.0/0") == self.remote_ip_prefix)


SSH = Rule(22)
#: The lab is reached through SSH tunnels (lab.json), so SSH is the only port opened.
DEFAULT_RULES: tuple[Rule, ...] = (SSH,)


def uses_security_groups(site: sites.Site) -> bool:
    """KVM enforces security groups; Chameleon's bare-metal sites do not use them."""
    return site.kind == sites.KVM


def ensure_security_group(conn, name: str, rules: Sequence[Rule] = DEFAULT_RULES, *,
                          description: str = "replab lab: SSH only") -> tuple[Any, bool]:
    """The security group ``name`` with at least ``rules``: ``GET
    /v2.0/security-groups?name=``, ``POST /v2.0/security-groups`` when absent, then ``POST
    /v2.0/security-group-rules`` for each rule it lacks. Returns ``(group, created)``.
    """
    request = f"GET /v2.0/security-groups?name={name}"
    with sdk_errors("Neutron", request):
        group = _one(conn.network.security_groups(name=name), name, "security group", request)
    created = group is None
    if created:
        with sdk_errors("Neutron", "POST /v2.0/security-groups"):
            group = conn.network.create_security_group(name=name, description=description)
        log.info("created security group %s (%s)", name, group.id)
    have = list(group.security_group_rules or [])
    for rule in rules:
        if any(rule.matches(r) for r in have):
            continue
        with sdk_errors("Neutron", "POST /v2.0/security-group-rules"):
            conn.network.create_security_group_rule(**rule.body(group.id))
        log.info("security group %s: opened %s/%s", name, rule.port, rule.protocol)
    return group, created


def delete_security_group(conn, name_or_id: str, ignore_missing: bool = True) -> bool:
    """Delete a security group by id or name; False when it was already gone."""
    group_id = name_or_id
    if not is_uuid(name_or_id):
        request = f"GET /v2.0/security-groups?name={name_or_id}"
        with sdk_errors("Neutron", request):
            group = _one(conn.network.security_groups(name=name_or_id), name_or_id,
                         "security group", request)
        if group is None:
            return missing(f"security group {name_or_id}", request, ignore_missing)
        group_id = group.id
    request = f"DELETE /v2.0/security-groups/{group_id}"
    return delete_call(f"security group {name_or_id}", request,
                       sdk_errors("Neutron", request, not_found=True),
                       lambda: conn.network.delete_security_group(group_id,
                                                                  ignore_missing=False),
                       ignore_missing)


# -- servers ---------------------------------------------------------------------------------
def server_body(name: str, *, image_id: str, flavor_id: str, reservation_id: str | None,
                keypair: str, network_id: str,
                security_groups: Sequence[str] = ()) -> dict[str, Any]:
    """The JSON body of ``POST /servers`` as openstacksdk sends it.

    ``reservation_id``: the ``reservation`` scheduler hint, for a bare-metal
    (``physical:host``) reservation only; None sends no hint. A KVM (``flavor:instance``)
    reservation is booted with the flavor Blazar made for it alone, as python-chi does
    (``instance_create_args(reservation=None, flavor=<reserved flavor>)``): with the hint,
    BlazarFilter would admit only hosts of a host-reservation aggregate owned by the
    project, which a flavor reservation does not make - "No valid host was found".
    """
    server: dict[str, Any] = {"name": name, "imageRef": image_id, "flavorRef": flavor_id,
                              "key_name": keypair, "networks": [{"uuid": network_id}]}
    if security_groups:
        server["security_groups"] = [{"name": g} for g in security_groups]
    body: dict[str, Any] = {"server": server}
    if reservation_id:
        body["OS-SCH-HNT:scheduler_hints"] = {"reservation": reservation_id}
    return body


def ensure_server(conn, cfg, *, reservation_id: str, keypair: str, image: str | None = None,
                  network: str = DEFAULT_NETWORK,
                  security_groups: Sequence[str] | None = None,
                  me: Whoami | None = None) -> tuple[Any, bool]:
    """The experiment's server (``cfg.names["server"]``), booted on the reservation when
    absent. Returns ``(server, created)``; the server may still be building (see
    :func:`wait_for_server`).

    Calls: ``GET /servers/detail?name=``; when absent the image (``GET /v2/images?name=``,
    default ``cfg.image``), the network (``GET /v2.0/networks?name=``), on bare metal the
    ``baremetal`` flavor (``GET /flavors?is_public=None``), then ``POST /servers``: on bare
    metal with the scheduler hint ``{"reservation": reservation_id}``; on KVM with the
    flavor Blazar made for the reservation (its id is the reservation id) and no hint.
    ``security_groups`` default: the experiment's group on KVM, none on bare metal.
    Raises CloudError when a server of that name belongs to another user (``me``): names
    are per project, and a teammate's server is never adopted.
    """
    name = cfg.names["server"]
    server = find_server(conn, name)
    if server is not None:
        theirs = not_mine(f"server {name} ({server.id})", getattr(server, "user_id", None), me)
        if theirs:
            raise CloudError(theirs, f"GET /servers/detail?name={name}")
        log.info("server %s (%s) exists: %s", name, server.id, server.status)
        return server, False
    kvm = cfg.site_info.kind == sites.KVM
    if security_groups is None:
        security_groups = [cfg.names["security_group"]] if kvm else []
    image_ref = image_id(conn, image or cfg.image)  # the order plan() lists
    network_ref = network_id(conn, network)
    flavor_ref = reservation_id if kvm else flavor_id(conn, BAREMETAL_FLAVOR)
    body = server_body(name, image_id=image_ref, flavor_id=flavor_ref,
                       reservation_id=None if kvm else reservation_id, keypair=keypair,
                       network_id=network_ref, security_groups=security_groups)
    spec = body["server"]
    extra: dict[str, Any] = {}
    if security_groups:
        extra["security_groups"] = spec["security_groups"]
    if "OS-SCH-HNT:scheduler_hints" in body:
        extra["scheduler_hints"] = body["OS-SCH-HNT:scheduler_hints"]
    with sdk_errors("Nova", "POST /servers"):
        server = conn.compute.create_server(
            name=name, image_id=spec["imageRef"], flavor_id=spec["flavorRef"],
            key_name=keypair, networks=spec["networks"], **extra)
    log.info("created server %s (%s) on reservation %s", name, server.id, reservation_id)
    return server, True


def get_server(conn, server_id: str) -> Any | None:
    """``GET /servers/<id>``; None when it does not exist."""
    request = f"GET /servers/{server_id}"
    try:
        with sdk_errors("Nova", request, not_found=True):
            return conn.compute.get_server(server_id)
    except NotFound:
        return None


def fault(server) -> str:
    """Nova's ``fault.message`` of a server in ERROR."""
    info = getattr(server, "fault", None) or {}
    return info.get("message") or "Nova gave no fault message"


def wait_for_server(conn, server_id: str, *, timeout: float = SERVER_TIMEOUT,
                    interval: float = SERVER_INTERVAL,
                    clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep,
                    progress: Progress | None = None) -> Any:
    """Poll ``GET /servers/<id>`` until ACTIVE; return the server.

    Raises CloudError with Nova's ``fault.message`` on ERROR (or when the server vanishes),
    ResourceTimeout after ``timeout`` seconds.
    """
    def failed(server):
        if server is None:
            return f"server {server_id} no longer exists"
        if server.status == "ERROR":
            return f"server {server.name} ({server_id}) is in ERROR: {fault(server)}"
        return None

    def describe(server):
        if server is None:
            return "gone"
        task = getattr(server, "task_state", None)
        return f"{server.status}" + (f" ({task})" if task else "")

    return wait_for(lambda: get_server(conn, server_id),
                    ready=lambda s: s is not None and s.status == "ACTIVE", failed=failed,
                    describe=describe, what=f"server {server_id}", timeout=timeout,
                    interval=interval, clock=clock, sleep=sleep, progress=progress)


def delete_server(conn, name_or_id: str, ignore_missing: bool = True, *, wait: bool = False,
                  timeout: float = 600, interval: float = 10,
                  clock: Callable[[], float] = time.monotonic,
                  sleep: Callable[[float], None] = time.sleep) -> bool:
    """Delete a server by id (``DELETE /servers/<id>``) or name (looked up first).

    Returns whether it deleted; False when it was already gone (or CloudError when
    ``ignore_missing`` is False). With ``wait``, polls until Nova no longer has it.
    """
    server_id = name_or_id
    if not is_uuid(name_or_id):
        server = find_server(conn, name_or_id)
        if server is None:
            return missing(f"server {name_or_id}", f"GET /servers/detail?name={name_or_id}",
                           ignore_missing)
        server_id = server.id
    request = f"DELETE /servers/{server_id}"
    if not delete_call(f"server {name_or_id}", request,
                       sdk_errors("Nova", request, not_found=True),
                       lambda: conn.compute.delete_server(server_id, ignore_missing=False),
                       ignore_missing):
        return False
    if wait:
        wait_for(lambda: get_server(conn, server_id), ready=lambda s: s is None,
                 failed=lambda s: (f"deleting server {server_id} failed: {fault(s)}"
                                   if s is not None and s.status == "ERROR" else None),
                 describe=lambda s: "gone" if s is None else s.status,
                 what=f"deleting server {server_id}", timeout=timeout, interval=interval,
                 clock=clock, sleep=sleep)
    return True


# -- floating IPs ----------------------------------------------------------------------------
def owned_by_lease(ip) -> bool:
    """Whether Blazar made this floating IP for a reservation (it frees it at lease end)."""
    tags = list(getattr(ip, "tags", None) or [])
    return any(t in LEASE_IP_TAGS or t.startswith("reservation:") for t in tags)


def reserved_floating_ip(conn, lease: dict) -> Any:
    """The floating IP Blazar created for ``lease``'s floating-IP reservation: ``GET
    /v2.0/floatingips?tags=reservation:<reservation id>`` (python-chi's
    ``get_reserved_floating_ips`` matches the same tag). Never "any free IP".

    Raises CloudError when the lease reserves none, or Blazar has not made it yet (the lease
    is not ACTIVE).
    """
    from .leases import fip_reservation_ids

    ids = fip_reservation_ids(lease)
    if not ids:
        raise CloudError(f"lease {lease.get('name')} ({lease.get('id')}) reserves no "
                         "floating IP")
    for rid in ids:
        request = f"GET /v2.0/floatingips?tags=reservation:{rid}"
        with sdk_errors("Neutron", request):
            ips = list(conn.network.ips(tags=f"reservation:{rid}"))
        if ips:
            return sorted(ips, key=lambda ip: ip.floating_ip_address)[0]
    raise CloudError(f"no floating IP tagged reservation:{ids[0]} yet: is lease "
                     f"{lease.get('name')} ({lease.get('id')}) ACTIVE "
                     f"(now {lease.get('status')})?", request)


def allocate_floating_ip(conn, network_id: str, *, description: str = "") -> Any:
    """A floating IP allocated on demand from the public network ``network_id``: ``POST
    /v2.0/floatingips`` with ``floating_network_id``. The fallback when the lease has no
    floating-IP reservation; the project owns it until :func:`release_floating_ip`."""
    with sdk_errors("Neutron", "POST /v2.0/floatingips"):
        ip = conn.network.create_ip(floating_network_id=network_id,
                                    **({"description": description} if description else {}))
    log.info("allocated floating IP %s (%s) on demand", ip.floating_ip_address, ip.id)
    return ip


def associate_floating_ip(conn, server, ip) -> Any:
    """Attach floating IP ``ip`` to ``server``'s port: ``GET /v2.0/ports?device_id=`` and
    ``PUT /v2.0/floatingips/<id>`` with ``{"port_id": ...}``. Nothing is sent when it is
    already attached there. Raises CloudError when it is attached to another port.
    """
    request = f"GET /v2.0/ports?device_id={server.id}"
    with sdk_errors("Neutron", request):
        ports = list(conn.network.ports(device_id=server.id))
    if not ports:
        raise CloudError(f"server {server.name} ({server.id}) has no port yet", request)
    port = min(ports, key=lambda p: p.id)  # one network, one port; stable if ever more
    if ip.port_id == port.id:
        return ip
    if ip.port_id:
        raise CloudError(f"floating IP {ip.floating_ip_address} is attached to port "
                         f"{ip.port_id}, not to server {server.name}'s port {port.id}")
    with sdk_errors("Neutron", f"PUT /v2.0/floatingips/{ip.id}"):
        updated = conn.network.update_ip(ip, port_id=port.id)
    log.info("floating IP %s -> server %s", ip.floating_ip_address, server.name)
    return updated


def get_floating_ip(conn, ip_id: str) -> Any | None:
    """``GET /v2.0/floatingips/<id>``; None when it does not exist."""
    request = f"GET /v2.0/floatingips/{ip_id}"
    try:
        with sdk_errors("Neutron", request, not_found=True):
            return conn.network.get_ip(ip_id)
    except NotFound:
        return None


def release_floating_ip(conn, address_or_id: str, ignore_missing: bool = True) -> bool:
    """Give back a floating IP this project allocated itself (``DELETE
    /v2.0/floatingips/<id>``). One that Blazar reserved for a lease is left alone (Blazar
    frees it when the lease ends): returns False. False also when it is already gone.
    """
    if is_uuid(address_or_id):
        request = f"GET /v2.0/floatingips/{address_or_id}"
        ip = get_floating_ip(conn, address_or_id)
    else:
        request = f"GET /v2.0/floatingips?floating_ip_address={address_or_id}"
        with sdk_errors("Neutron", request):
            found = list(conn.network.ips(floating_ip_address=address_or_id))
        ip = found[0] if found else None
    if ip is None:
        return missing(f"floating IP {address_or_id}", request, ignore_missing)
    if owned_by_lease(ip):
        log.info("floating IP %s belongs to a lease reservation (tags %s); Blazar releases "
                 "it when the lease ends", ip.floating_ip_address, ", ".join(ip.tags))
        return False
    request = f"DELETE /v2.0/floatingips/{ip.id}"
    return delete_call(f"floating IP {address_or_id}", request,
                       sdk_errors("Neutron", request, not_found=True),
                       lambda: conn.network.delete_ip(ip, ignore_missing=False),
                       ignore_missing, done="released")
