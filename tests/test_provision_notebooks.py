"""2_provision and 5_teardown through papermill: dry runs per Chameleon site, real on local."""

import pytest

from replab import config
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
