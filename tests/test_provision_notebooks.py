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
