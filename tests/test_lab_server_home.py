"""Where the lab lives on the server: the home host setup used, recorded by 2_provision in
state.json, read by 3_launch_lab, ``replab lab`` and 5_teardown (``lab.server_home``)."""

from replab import cloud, config, lab, provisioning
from replab.lab import compose, server


def _cfg(tmp_path):
    return config.build({"experiment": "e1", "frameworks": ["sklearn"], "site": "CHI@UC",
                         "node_type": "compute_skylake", "workdir": str(tmp_path)})


def test_the_home_given_to_host_setup_is_recorded_and_read_back(tmp_path):
    cfg = _cfg(tmp_path)
    state = cloud.State.load(tmp_path)
    state.record("server", id="s1", name="e1-server", site="CHI@UC", user_id="u1")
    assert lab.server_home(cfg) is None  # nothing given: the login user's own home
    provisioning._record_login(state, "~/k", "root", "/srv/home")
    entry = cloud.State.load(tmp_path).get("server")
    assert entry["home"] == "/srv/home" and entry["user_id"] == "u1"
    assert lab.server_home(cfg) == "/srv/home"
    # the lab's directories below it, as host setup made them
    assert compose.HostPaths.for_config(cfg, lab.server_home(cfg)).lab == "/srv/home/e1/lab"

    # provisioned again without one: the record no longer names a home
    provisioning._record_login(state, "~/k", "root")
    assert cloud.State.load(tmp_path).get("server")["home"] is None
    assert lab.server_home(cfg) is None


def test_no_server_recorded_means_no_home(tmp_path):
    assert lab.server_home(_cfg(tmp_path)) is None


def test_ports_become_the_published_ports_of_the_server_spec():
    """3_launch_lab's ``mlflow_port`` / ``jupyter_port`` reach the compose file the server
    gets (``lab.launch`` passes them as ``ports``)."""
    spec = compose.build_compose(config.build({"experiment": "e1", "frameworks": ["sklearn"],
                                               "site": "CHI@UC",
                                               "node_type": "compute_skylake"}))
    moved = server.server_spec(spec, ports={"mlflow": 15001, "jupyter": 18889})
    assert moved["services"]["mlflow"]["ports"] == ["127.0.0.1:15001:5000"]
    assert moved["services"]["jupyter"]["ports"] == ["127.0.0.1:18889:8888"]
