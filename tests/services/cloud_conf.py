"""The configuration files of the tests' control plane (tests/services/cloud.py writes them).

Standard library only. Every service listens on 127.0.0.1; every path is under the state
directory; passwords are test-only constants (nothing here is a secret).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

HOST = "127.0.0.1"
REGION = "RegionOne"
DB_USER, DB_PASSWORD = "os", "ospw"

# name -> port. Kept apart from tests/services/openstack.py (15000, 16200-16202, 18080,
# 18090, 21211) and below Linux's ephemeral range.
PORTS = {
    "keystone": 26500,
    "placement": 26778,
    "nova": 26774,
    "neutron": 26696,
    "glance": 26292,
    "blazar": 26177,
    "mariadb": 26306,
    "rabbitmq": 26672,
    "rabbitmq_dist": 26673,
    "epmd": 26369,
}
RABBITMQ_CTL_PORTS = (26674, 26680)  # rabbitmqctl's distribution ports (only `down` uses it)

# the service users Keystone gets (project `service`, roles admin + service)
SERVICE_USERS = ("nova", "neutron", "placement", "glance", "blazar")

# the compute hosts of the fake driver and the node_type Blazar gives each (the names of
# lib/replab/sites.py's CHI@UC catalog: its default GPU type and its CPU type)
COMPUTE_HOSTS = {"compute-1": "gpu_rtx_6000", "compute-2": "compute_skylake"}

BLAZAR_PLUGINS = ("physical.host.plugin", "virtual.floatingip.plugin", "flavor.instance.plugin")


def base() -> ModuleType:
    """tests/services/openstack.py (process, HTTP and Keystone helpers), loaded by path under
    another name so that ``openstack`` stays openstacksdk in any process that imports this."""
    name = "replab_services_openstack"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(
            "openstack.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def password(user: str) -> str:
    return f"{user}pw"


def urls() -> dict[str, str]:
    """The catalog: service type -> (public) endpoint URL."""
    p = PORTS
    return {
        "compute": f"http://{HOST}:{p['nova']}/v2.1",
        "placement": f"http://{HOST}:{p['placement']}",
        "network": f"http://{HOST}:{p['neutron']}",
        "image": f"http://{HOST}:{p['glance']}",
        "reservation": f"http://{HOST}:{p['blazar']}/v1",
    }


def _auth(section: str, user: str) -> str:
    return f"""[{section}]
auth_url = http://{HOST}:{PORTS["keystone"]}/v3
www_authenticate_uri = http://{HOST}:{PORTS["keystone"]}/v3
auth_type = password
username = {user}
password = {password(user)}
project_name = service
user_domain_name = Default
project_domain_name = Default
region_name = {REGION}
"""


def db_url(name: str) -> str:
    return f"mysql+pymysql://{DB_USER}:{DB_PASSWORD}@{HOST}:{PORTS['mariadb']}/{name}"


def transport_url() -> str:
    return f"rabbit://guest:guest@{HOST}:{PORTS['rabbitmq']}/"


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def write_all(d: Path, venv: Path) -> dict[str, Path]:
    """Write every config under d/etc, make the state directories; returns the config
    directories by service."""
    etc, st = d / "etc", d / "var"
    dirs = {name: etc / name for name in ("placement", "nova", "neutron", "glance", "blazar")}
    for sub in ("placement", "nova/api", "neutron", "glance/images", "glance/staging",
                "glance/tasks", "blazar", "locks", *(f"nova/{h}" for h in COMPUTE_HOSTS)):
        (st / sub).mkdir(parents=True, exist_ok=True)
    (dirs["neutron"] / "plugins" / "ml2").mkdir(parents=True, exist_ok=True)
    for p in dirs.values():
        p.mkdir(parents=True, exist_ok=True)
    common = "[DEFAULT]\nuse_stderr = true\n"
    mq = transport_url()
    locks = f"[oslo_concurrency]\nlock_path = {st / 'locks'}\n"
    noop = "[oslo_messaging_notifications]\ndriver = noop\n"

    (dirs["placement"] / "placement.conf").write_text(
        f"""{common}[api]
auth_strategy = keystone
[placement_database]
connection = {sqlite_url(st / "placement" / "placement.db")}
{_auth("keystone_authtoken", "placement")}""")

    (dirs["nova"] / "nova.conf").write_text(
        f"""{common}transport_url = {mq}
# a stable node uuid (state_path/compute_id), so that a compute restarts on its database;
# FakeDriver makes a new one in every process ("Duplicate compute node record")
compute_driver = fake.FakeDriverWithoutFakeNodes
my_ip = {HOST}
state_path = {st / "nova" / "api"}
vif_plugging_is_fatal = False
vif_plugging_timeout = 0
# a fake hypervisor has room for anything: let the reservation decide, not the RAM filter
ram_allocation_ratio = 1.0
[wsgi]
api_paste_config = {dirs["nova"] / "api-paste.ini"}
[api]
auth_strategy = keystone
[api_database]
connection = {db_url("nova_api")}
[database]
connection = {db_url("nova_cell1")}
{locks}[scheduler]
discover_hosts_in_cells_interval = 5
[filter_scheduler]
available_filters = nova.scheduler.filters.all_filters
available_filters = blazarnova.scheduler.filters.blazar_filter.BlazarFilter
enabled_filters = ComputeFilter,ComputeCapabilitiesFilter,ImagePropertiesFilter,AggregateInstanceExtraSpecsFilter,BlazarFilter
[vnc]
enabled = false
{noop}[cinder]
os_region_name = {REGION}
[glance]
region_name = {REGION}
{_auth("keystone_authtoken", "nova")}{_auth("placement", "placement")}{_auth("neutron", "neutron")}{_auth("service_user", "nova")}# Neutron 29 lets only a service (a request with a service token) delete a server's port
send_service_user_token = true
""")  # noqa: E501
    for host in COMPUTE_HOSTS:
        (dirs["nova"] / f"{host}.conf").write_text(
            f"""[DEFAULT]
host = {host}
state_path = {st / "nova" / host}
instances_path = {st / "nova" / host / "instances"}
""")

    (dirs["neutron"] / "neutron.conf").write_text(
        f"""{common}core_plugin = ml2
service_plugins = router
auth_strategy = keystone
transport_url = {mq}
state_path = {st / "neutron"}
api_workers = 1
rpc_workers = 0
api_paste_config = {dirs["neutron"] / "api-paste.ini"}
notify_nova_on_port_status_changes = True
notify_nova_on_port_data_changes = True
[database]
connection = {sqlite_url(st / "neutron" / "neutron.db")}
{locks}[agent]
root_helper =
{_auth("keystone_authtoken", "neutron")}{_auth("nova", "nova")}""")
    (dirs["neutron"] / "plugins" / "ml2" / "ml2_conf.ini").write_text(
        """[ml2]
type_drivers = flat,vlan
tenant_network_types = vlan
mechanism_drivers = alwaysbind
extension_drivers = port_security
[ml2_type_flat]
flat_networks = public
[ml2_type_vlan]
network_vlan_ranges = physnet1:100:200
""")

    (dirs["glance"] / "glance-api.conf").write_text(
        f"""{common}bind_host = {HOST}
bind_port = {PORTS["glance"]}
workers = 1
enabled_backends = fs:file
[glance_store]
default_backend = fs
[fs]
filesystem_store_datadir = {st / "glance" / "images"}
[os_glance_staging_store]
filesystem_store_datadir = {st / "glance" / "staging"}
[os_glance_tasks_store]
filesystem_store_datadir = {st / "glance" / "tasks"}
[database]
connection = {sqlite_url(st / "glance" / "glance.db")}
[paste_deploy]
flavor = keystone
config_file = {venv / "etc" / "glance" / "glance-api-paste.ini"}
{locks}{_auth("keystone_authtoken", "glance")}""")

    (dirs["blazar"] / "blazar.conf").write_text(
        f"""{common}host = {HOST}
port = {PORTS["blazar"]}
transport_url = {mq}
os_auth_host = {HOST}
os_auth_port = {PORTS["keystone"]}
os_auth_protocol = http
os_auth_version = v3
os_admin_username = blazar
os_admin_password = {password("blazar")}
os_admin_project_name = service
os_admin_user_domain_name = Default
os_admin_project_domain_name = Default
os_region_name = {REGION}
[database]
connection = {sqlite_url(st / "blazar" / "blazar.db")}
[manager]
plugins = {",".join(BLAZAR_PLUGINS)}
{locks}{_auth("keystone_authtoken", "blazar")}[nova]
aggregate_freepool_name = freepool
{noop}""")
    (dirs["blazar"] / "wsgi.py").write_text(
        "from blazar.api import wsgi_app\napplication = wsgi_app.init_app()\n")

    for name in ("nova", "neutron"):
        src = venv / "etc" / name / "api-paste.ini"
        (dirs[name] / "api-paste.ini").write_bytes(src.read_bytes())
    return dirs
