"""2_provision and 5_teardown through papermill: dry runs per Chameleon site, real on local."""

import pytest

from replab import config
from replab.errors import ReplabError
from tests.notebooks import execute, outputs_text

CHAMELEON = ["CHI@TACC", "CHI@UC", "KVM@TACC", "CHI@NCAR"]


def _configure(tmp_path, site, **extra):
    wd = tmp_path / "wd"
    execute("0_configure.ipynb", tmp_path / "0.ipynb", experiment="prov", site=site,
            frameworks="pytorch", workdir=str(wd), interactive=False, **extra)
    return wd


@pytest.mark.parametrize("site", CHAMELEON)
def test_dry_runs_list_the_calls_and_make_none(tmp_path, site, monkeypatch):
    # no credentials at all: a dry run must not need them (it makes no call)
    for var in ("OS_CLOUD", "OS_ACCESS_TOKEN", "OS_APPLICATION_CREDENTIAL_ID"):
        monkeypatch.delenv(var, raising=False)
    wd = _configure(tmp_path, site)
    out = tmp_path / "2.ipynb"
    execute("2_provision.ipynb", out, workdir=str(wd), dry_run=True)
    shown = outputs_text(out)
    cfg = config.load(wd)
    assert f"Plan for {site}" in shown and "POST reservation /leases" in shown
    assert cfg.names["server"] in shown and cfg.machine in shown
    if site == "KVM@TACC":
        assert "security-group" in shown or "security_group" in shown
    assert "Then over SSH" in shown and "`nvidia-toolkit`" in shown
    assert "`replab`, `workdir`, `backup-timer`" in shown
    assert not (wd / "state.json").exists()
    td = tmp_path / "5.ipynb"
    execute("5_teardown.ipynb", td, workdir=str(wd), dry_run=True)
    assert "What exists now" in outputs_text(td)


def test_local_provision_checks_prerequisites_and_teardown_keeps_buckets(tmp_path):
    wd = _configure(tmp_path, "local")
    execute("1_create_credentials.ipynb", tmp_path / "1.ipynb", workdir=str(wd))
    out = tmp_path / "2.ipynb"
    execute("2_provision.ipynb", out, workdir=str(wd))
    shown = outputs_text(out)
    assert "ok  mlflow" in shown and "site=local" in shown
    td = tmp_path / "5.ipynb"
    execute("5_teardown.ipynb", td, workdir=str(wd))
    assert "prov-data, prov-artifacts, prov-backups" in outputs_text(td)
    assert (wd / "buckets" / "prov-data").is_dir()
    again = tmp_path / "5b.ipynb"
    execute("5_teardown.ipynb", again, workdir=str(wd), delete_buckets=True)
    assert "bucket directory" in outputs_text(again)
    assert not (wd / "buckets" / "prov-data").exists()


def test_teardown_deletes_nothing_when_the_last_backup_fails(tmp_path):
    """A lab whose database cannot be backed up is not stopped, and nothing is deleted: a
    server's disk would take the MLflow history with it. without_backup=True goes on."""
    from replab import config, provisioning

    wd = _configure(tmp_path, "local")
    execute("1_create_credentials.ipynb", tmp_path / "1.ipynb", workdir=str(wd))
    cfg = config.load(wd)
    (wd / "lab.json").write_text('{"site": "local"}\n')  # a lab whose database is gone
    done = provisioning.teardown(cfg, delete_buckets=True)
    assert done.deleted == [] and done.kept == []
    assert any(p.startswith("MLflow backup: ") for p in done.problems)
    assert "nothing was stopped or deleted" in done.problems[-1]
    assert (wd / "buckets" / "prov-data").is_dir()
    with pytest.raises(ReplabError, match="teardown is incomplete"):
        done.check()
    # the notebook fails the same way, headless
    with pytest.raises(Exception, match="nothing was stopped or deleted"):
        execute("5_teardown.ipynb", tmp_path / "5.ipynb", workdir=str(wd), delete_buckets=True)
    forced = provisioning.teardown(cfg, delete_buckets=True, without_backup=True)
    assert not forced.problems, forced.problems
    assert not (wd / "buckets" / "prov-data").exists()


def test_the_cloud_parameter_names_the_clouds_yaml_entry(tmp_path, monkeypatch):
    """2_provision's ``cloud`` reaches authentication (it was shadowed by the notebook's
    ``from replab import cloud``, so the module itself was passed as the entry name)."""
    for var in ("OS_CLOUD", "OS_ACCESS_TOKEN", "OS_APPLICATION_CREDENTIAL_ID"):
        monkeypatch.delenv(var, raising=False)
    wd = _configure(tmp_path, "CHI@UC")
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text("clouds:\n  mine:\n    auth:\n      auth_url: https://other.example/v3\n"
                      "      username: u\n      password: p\n      project_name: x\n")
    out = tmp_path / "2.ipynb"
    execute("2_provision.ipynb", out, workdir=str(wd), dry_run=True, cloud="mine",
            clouds_file=str(clouds))
    shown = outputs_text(out)
    assert "clouds.yaml entry 'mine' is for https://other.example/v3" in shown
    assert "module" not in shown


def test_setup_options_are_checked_before_anything_is_created():
    from replab import provisioning
    from replab.errors import ConfigError

    assert provisioning._setup_options({"skip": "docker, rclone-fuse", "root": "/x"}) == {
        "skip": ["docker", "rclone-fuse"], "root": "/x"}
    assert provisioning._setup_options({"skip": ""}) == {"skip": []}
    with pytest.raises(ConfigError, match="no host-setup step dockr"):
        provisioning._setup_options({"skip": ["dockr"]})
    with pytest.raises(ConfigError, match="unknown option"):
        provisioning._setup_options({"sudo": True})


def test_recording_the_login_keeps_the_server_record(tmp_path):
    """The login (key, user) is added to the server's record; the owner (user_id) that
    5_teardown checks before deleting, and the reservation, are kept."""
    from replab import cloud, provisioning

    state = cloud.State(tmp_path / "state.json")
    state.record("server", id="s1", name="e-server", site="CHI@UC", reservation_id="r1",
                 user_id="u1")
    login = provisioning._record_login(state, "~/k", "root")
    entry = cloud.State.load(tmp_path).get("server")
    assert login["user"] == "root" and login["key_filename"].endswith("/k")
    assert entry["user_id"] == "u1" and entry["reservation_id"] == "r1"
    assert entry["user"] == "root" and entry["key_filename"] == login["key_filename"]
