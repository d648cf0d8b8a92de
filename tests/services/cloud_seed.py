"""Seed the tests' control plane like a Chameleon bare-metal site, over REST (stdlib only).

Keystone: users ``admin`` (project admin) and ``demo`` (role member in project demo, the
researcher), project ``service`` with a user per service, the catalog. Neutron: the external
network ``public`` (subnet 127.10.0.0/24, DHCP off: Linux routes all of 127/8 to lo), the
shared ``sharednet1`` (127.20.0.0/24) and ``router1`` between them. Glance: the images of
lib/replab/sites.py (1 MiB each). Nova: flavors ``baremetal`` and ``m1.tiny``, the aggregate
``freepool``. Blazar: both compute hosts with their ``node_type``, reservable floating IPs
127.10.0.10-.14 (outside the subnet's allocation pool .100-.200).
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from typing import Any

import cloud_conf as conf

BASE = conf.base()
StackError = BASE.StackError

USERS = {
    "admin": {"username": "admin", "password": "adminpw", "project": "admin", "role": "admin"},
    "demo": {"username": "demo", "password": "demopw", "project": "demo", "role": "member"},
}
IMAGES = ("CC-Ubuntu24.04", "CC-Ubuntu24.04-CUDA", "CC-Ubuntu24.04-ROCm")  # sites.IMAGES
FLAVORS = {"baremetal": (1, 1024, 10), "m1.tiny": (1, 512, 1), "m1.large": (4, 8192, 40)}
# vcpus, RAM MB, disk GB; m1.large is a KVM@TACC flavor (sites.py), for flavor:instance leases
PUBLIC_CIDR, PUBLIC_POOL = "127.10.0.0/24", ("127.10.0.100", "127.10.0.200")
RESERVABLE_IPS = tuple(f"127.10.0.{i}" for i in range(10, 15))  # 10-20 s each to register
SHARED_CIDR = "127.20.0.0/24"


class Api:
    """REST calls with one admin token; ``call`` raises StackError on an unexpected status."""

    def __init__(self, auth_url: str):
        self.auth_url = auth_url
        self.token, body = BASE.keystone_token(auth_url, USERS["admin"])
        self.admin_project_id = body["project"]["id"]
        self.admin_user_id = body["user"]["id"]

    def call(self, method: str, url: str, body: Any = None, expect: tuple[int, ...] = (200,),
             headers: dict[str, str] | None = None) -> Any:
        if headers:
            status, payload = self.raw(method, url, body, headers)
        else:
            status, _, payload = BASE.http(method, url, body, token=self.token, timeout=60)
        if status not in expect:
            raise StackError(f"{method} {url} -> {status}: {str(payload)[:500]}")
        return payload

    def raw(self, method: str, url: str, data: Any, headers: dict[str, str]) -> tuple[int, Any]:
        import json

        raw = data if isinstance(data, bytes) else json.dumps(data).encode()
        req = urllib.request.Request(url, data=raw, method=method,
                                     headers={"X-Auth-Token": self.token, **headers})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(req, timeout=60) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()


def keystone(api: Api) -> dict[str, dict]:
    """Roles, projects, users and the catalog; returns the users (with their ids)."""
    ks = api.auth_url
    roles = {r["name"]: r["id"] for r in api.call("GET", f"{ks}/roles")["roles"]}
    for name in ("member", "reader", "service"):
        if name not in roles:
            roles[name] = api.call("POST", f"{ks}/roles", {"role": {"name": name}},
                                   (201,))["role"]["id"]

    def project(name: str) -> str:
        return api.call("POST", f"{ks}/projects", {"project": {
            "name": name, "domain_id": "default", "enabled": True}}, (201,))["project"]["id"]

    def user(name: str, pw: str, project_id: str, role_names: tuple[str, ...]) -> str:
        uid = api.call("POST", f"{ks}/users", {"user": {
            "name": name, "password": pw, "domain_id": "default",
            "default_project_id": project_id, "enabled": True}}, (201,))["user"]["id"]
        for r in role_names:
            api.call("PUT", f"{ks}/projects/{project_id}/users/{uid}/roles/{roles[r]}",
                     expect=(204,))
        return uid

    service_project = project("service")
    for name in conf.SERVICE_USERS:
        user(name, conf.password(name), service_project, ("admin", "service"))
    users = {"admin": dict(USERS["admin"], user_id=api.admin_user_id,
                           project_id=api.admin_project_id, domain="Default")}
    demo_project = project("demo")
    demo = USERS["demo"]
    users["demo"] = dict(demo, project_id=demo_project, domain="Default",
                         user_id=user(demo["username"], demo["password"], demo_project,
                                      ("member",)))
    names = {"compute": "nova", "placement": "placement", "network": "neutron",
             "image": "glance", "reservation": "blazar"}
    for kind, url in conf.urls().items():
        sid = api.call("POST", f"{ks}/services", {"service": {
            "type": kind, "name": names[kind], "enabled": True}}, (201,))["service"]["id"]
        for interface in ("public", "internal", "admin"):
            api.call("POST", f"{ks}/endpoints", {"endpoint": {
                "service_id": sid, "interface": interface, "region_id": conf.REGION,
                "url": url, "enabled": True}}, (201,))
    return users


def neutron(api: Api) -> dict[str, str]:
    n = conf.urls()["network"] + "/v2.0"
    public = api.call("POST", f"{n}/networks", {"network": {
        "name": "public", "router:external": True, "provider:network_type": "flat",
        "provider:physical_network": "public"}}, (201,))["network"]["id"]
    api.call("POST", f"{n}/subnets", {"subnet": {
        "name": "public-subnet", "network_id": public, "ip_version": 4, "cidr": PUBLIC_CIDR,
        "gateway_ip": "127.10.0.1", "enable_dhcp": False,
        "allocation_pools": [{"start": PUBLIC_POOL[0], "end": PUBLIC_POOL[1]}]}}, (201,))
    shared = api.call("POST", f"{n}/networks", {"network": {
        "name": "sharednet1", "shared": True}}, (201,))["network"]["id"]
    subnet = api.call("POST", f"{n}/subnets", {"subnet": {
        "name": "sharednet1-subnet", "network_id": shared, "ip_version": 4,
        "cidr": SHARED_CIDR, "gateway_ip": "127.20.0.1", "enable_dhcp": False}},
        (201,))["subnet"]["id"]
    router = api.call("POST", f"{n}/routers", {"router": {
        "name": "router1", "external_gateway_info": {"network_id": public}}},
        (201,))["router"]["id"]
    api.call("PUT", f"{n}/routers/{router}/add_router_interface", {"subnet_id": subnet})
    return {"public": public, "sharednet1": shared, "router1": router}


def glance(api: Api) -> dict[str, str]:
    g = conf.urls()["image"] + "/v2"
    ids = {}
    for name in IMAGES:
        image = api.call("POST", f"{g}/images", {
            "name": name, "disk_format": "raw", "container_format": "bare",
            "visibility": "public"}, (201,))
        api.call("PUT", f"{g}/images/{image['id']}/file", os.urandom(1 << 20), (204,),
                 headers={"Content-Type": "application/octet-stream"})
        ids[name] = image["id"]
    return ids


def nova(api: Api) -> dict[str, str]:
    c = conf.urls()["compute"]
    ids = {}
    for name, (vcpus, ram, disk) in FLAVORS.items():
        ids[name] = api.call("POST", f"{c}/flavors", {"flavor": {
            "name": name, "vcpus": vcpus, "ram": ram, "disk": disk,
            "os-flavor-access:is_public": True}})["flavor"]["id"]
    api.call("POST", f"{c}/os-aggregates", {"aggregate": {"name": "freepool"}})
    return ids


def hypervisors_up(api: Api) -> list[str]:
    c = conf.urls()["compute"]
    body = api.call("GET", f"{c}/os-hypervisors/detail", headers=None)
    return sorted(h["hypervisor_hostname"] for h in body.get("hypervisors", [])
                  if h.get("state") == "up" and h.get("status") == "enabled")


def computes_reporting(api: Api, since: str) -> list[str]:
    """The nova-compute hosts whose last heartbeat is later than ``since`` (UTC, ISO): a
    restored database says "up" for a minute after the snapshot whatever runs."""
    c = conf.urls()["compute"]
    body = api.call("GET", f"{c}/os-services?binary=nova-compute")
    return sorted(s["host"] for s in body.get("services", [])
                  if s.get("state") == "up" and (s.get("updated_at") or "") > since)


def wait_hypervisors(api: Api, since: str, timeout: float = 240) -> None:
    want = sorted(conf.COMPUTE_HOSTS)
    deadline = time.monotonic() + timeout
    up: list[str] = []
    while time.monotonic() < deadline:
        up = hypervisors_up(api)
        if up == want and computes_reporting(api, since) == want:
            return
        time.sleep(1)
    raise StackError(f"hypervisors up after {timeout:.0f}s: {up}, wanted {want}; see the "
                     "nova-compute-*.log files")


def blazar(api: Api, public_network: str) -> dict[str, str]:
    """Register the hosts (with node_type) and the reservable floating IPs."""
    b = conf.urls()["reservation"]
    hosts = {}
    for name, node_type in conf.COMPUTE_HOSTS.items():
        # Blazar finds the host through Nova, which maps a new compute every 5 s
        deadline = time.monotonic() + 60
        while True:
            status, _, body = BASE.http("POST", f"{b}/os-hosts",
                                        {"name": name, "node_type": node_type},
                                        token=api.token, timeout=60)
            if status in (200, 201):
                hosts[name] = str(body["host"]["id"])
                break
            if time.monotonic() > deadline:
                raise StackError(f"POST /os-hosts {name} -> {status}: {str(body)[:400]}")
            time.sleep(2)
    for address in RESERVABLE_IPS:
        api.call("POST", f"{b}/floatingips", {"floating_network_id": public_network,
                                             "floating_ip_address": address}, (200, 201))
    return hosts
