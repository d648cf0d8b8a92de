"""The replab command's edge: paths, the tracking server, help, exit codes, lab status."""

import json
import os
import subprocess
import sys

import pytest

from replab import cli, form
from tests.gitrepo import make_repo

COMMANDS = ["series", "demo", "config", "lab", "run", "replay", "verify", "diff", "bundle"]


def _replab(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "replab.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _no_server_env():
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


# -- help ---------------------------------------------------------------------------------------
def test_top_level_help_describes_replab_not_its_implementation(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    assert "reproducible ML on Chameleon Cloud" in out and "Thin:" not in out
    assert "exit codes:" in out
    for code, meaning in cli.EXIT_CODES.items():
        assert f"{code:<3} {meaning.split()[0]}" in out
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_a_description_an_example_and_its_exit_codes(name, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([name, "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    description = out.split("\n\n")[1]
    assert len(description.split()) >= 15, description  # a paragraph, not a title
    examples = out.split("examples:\n", 1)[1].split("\n\n", 1)[0]
    assert f"replab {name}" in examples
    assert "\nexit codes:\n  0" in out or "\nexit codes:\n  the program's" in out


def test_usage_errors_exit_2(tmp_path):
    out = _replab("replay", cwd=tmp_path)
    assert out.returncode == 2 and "the following arguments are required: run" in out.stderr


# -- the tracking server --------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["replay", "latest", "-e", "demo", "--workdir", "work/demo"],
    ["verify", "0" * 32, "1" * 32],
    ["diff", "0" * 32, "1" * 32],
    ["bundle", "export", "0" * 32, "-o", "b.tar.gz"],
    ["run", "--", sys.executable, "-c", "print(1)"],
])
def test_without_a_tracking_server_each_command_says_how_to_give_one_and_writes_no_store(
        argv, tmp_path):
    out = _replab(*argv, cwd=tmp_path, env=_no_server_env())
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("replab: no MLflow tracking server: give --tracking-uri URL")
    assert "MLFLOW_TRACKING_URI" in lines[0] and "lab.json does not exist" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no mlflow.db, no mlruns/


def test_the_workdir_lab_gives_the_server_and_errors_name_it(mlflow_server, tmp_path):
    wd = tmp_path / "work" / "demo"
    wd.mkdir(parents=True)
    (wd / "lab.json").write_text(json.dumps({"mlflow_url": mlflow_server.url}))
    out = _replab("replay", "latest", "-e", "no-such-experiment", "--workdir", "work/demo",
                  cwd=tmp_path, env=_no_server_env())
    assert out.returncode == 4, out.stderr
    line = out.stderr.strip()
    assert "no experiment named 'no-such-experiment'" in line
    assert mlflow_server.url in line and str(wd / "lab.json") in line
    assert not (tmp_path / "mlflow.db").exists()


def test_a_relative_workdir_replays(tracking_uri, tmp_path):
    """The README's example: `replab replay RUN --workdir work/demo` from another directory
    (the replay runs inside its workspace, where a relative path means something else)."""
    repo = make_repo(tmp_path / "project", {"fit.py": "print('score', 0.75)\n"})
    run = _replab("run", "-e", "t-cli-rel", "--", sys.executable, "fit.py", cwd=repo)
    assert run.returncode == 0, run.stderr
    run_id = next(ln for ln in run.stderr.splitlines() if ln.startswith("replab: run ")
                  ).split()[2]
    out = _replab("replay", run_id, "--repo", "project", "--workdir", "work/demo",
                  "--no-rebuild-env", cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "verdict: REPRODUCED" in out.stdout
    assert list((tmp_path / "work" / "demo" / "replays").glob("*/report/report.html"))
    assert not (repo / "work").exists() and not (tmp_path / "mlflow.db").exists()


# -- lab status -----------------------------------------------------------------------------------
def test_lab_status_is_a_table_and_json_on_request(tmp_path):
    wd = tmp_path / "wd"
    form.configure({"experiment": "st", "frameworks": "sklearn", "site": "local",
                    "workdir": str(wd)}, interactive=False)
    table = _replab("lab", "status", "--workdir", "wd", cwd=tmp_path)
    assert table.returncode == 1, table.stderr  # nothing runs: not healthy
    lines = table.stdout.splitlines()
    assert lines[0].startswith("lab: NOT healthy") and "site=local" in lines[0]
    assert lines[1].split()[:3] == ["service", "running", "healthy"]
    rows = {ln.split()[0]: ln.split()[1:3] for ln in lines[2:]}
    assert rows["mlflow"] == ["no", "no"] and rows["jupyter"] == ["no", "no"]
    raw = _replab("lab", "status", "--json", "--workdir", str(wd), cwd=tmp_path)
    assert raw.returncode == 1 and json.loads(raw.stdout)["healthy"] is False


def test_status_table_of_a_server_lab_shows_each_service_state():
    text = cli.status_table({"site": "CHI@UC", "host": "10.0.0.5",
                             "services": {"mlflow": "healthy", "jupyter": "starting"}})
    lines = text.splitlines()
    assert lines[0] == "lab: NOT healthy  site=CHI@UC  host=10.0.0.5"
    assert [ln.split() for ln in lines[1:]] == [["service", "state"], ["mlflow", "healthy"],
                                                ["jupyter", "starting"]]


def test_status_table_names_unrecorded_processes_after_the_services():
    text = cli.status_table({"site": "local", "healthy": False,
                             "services": {"mlflow": {"running": False, "healthy": False}},
                             "unrecorded": [{"service": "mlflow", "pid": 4242}],
                             "summary": ["unrecorded mlflow: pid 4242 (replab lab stop ends it)"]})
    lines = text.splitlines()
    assert "unrecorded" not in lines[0] and "summary" not in lines[0]
    assert lines[-1] == "unrecorded mlflow: pid 4242 (replab lab stop ends it)"
