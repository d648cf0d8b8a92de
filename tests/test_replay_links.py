"""What a user sees in MLflow after a replay (real MLflow server, real example project):
the replay and its original linked both ways by clickable descriptions, the verdict as a
column of both, the replay nested under its original, and the readable environment summary
beside the raw manifest."""

import platform
import re
import tempfile
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from replab import replay, runlinks, tracking, verdict
from tests.conftest import ROOT
from tests.gitrepo import git, make_repo, train_example

NOTE = runlinks.TAG_NOTE
USER_NOTE = "My **baseline** for the paper. Do not delete."


def _digits(tmp_path):
    src = ROOT / "examples" / "digits"
    return make_repo(tmp_path / "digits", {p.name: p.read_text() for p in src.glob("*.py")})


def _text(client, run_id, path):
    with tempfile.TemporaryDirectory() as tmp:
        return Path(client.download_artifacts(run_id, path, tmp)).read_text()


def test_mlflow_ui_has_the_run_page_route_the_links_use():
    """The links' route is the run page of the installed MLflow UI (not an experiment tab
    such as traces or evaluations), and artifacts open under it."""
    js = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    bundle = "".join(p.read_text(errors="replace") for p in js.glob("main.*.js"))
    assert 'runPage(){return(0,r.Oz)("/experiments/:experimentId/runs/:runUuid")' in bundle \
        or '"/experiments/:experimentId/runs/:runUuid"' in bundle
    assert '"/experiments/:experimentId/runs/:runUuid/artifactPath/*"' in bundle
    assert re.fullmatch(r"#/experiments/7/runs/abc", runlinks.run_path("7", "abc"))


def test_replay_and_original_link_both_ways_and_show_the_verdict(tracking_uri, tmp_path):
    repo = _digits(tmp_path)
    original = train_example(repo, tracking_uri, "--seed", "5", "--epochs", "2")
    client = MlflowClient(tracking_uri)
    client.set_tag(original, NOTE, USER_NOTE)
    exp = client.get_run(original).info.experiment_id
    lines = []
    first = replay.replay_run(original, repo=repo, workdir=tmp_path / "wd",
                              progress=lines.append)
    rid = first.execution.new_run_id
    assert first.verdict.verdict == verdict.Outcome.REPRODUCED

    # the replay: a description linking the original (and its report), nested under it
    r = client.get_run(rid).data.tags
    assert f"(#/experiments/{exp}/runs/{original})" in r[NOTE]
    assert f"(#/experiments/{exp}/runs/{rid}/artifactPath/replab/verdict/report.html)" in r[NOTE]
    assert "**REPRODUCED**" in r[NOTE] and r[tracking.TAG_REPLAY_OF] == original
    assert r[runlinks.TAG_PARENT] == original
    assert r[verdict.TAG_VERDICT] == "REPRODUCED" and r[runlinks.TAG_VERDICT_AT]
    assert first.links.replay_url == f"{tracking_uri}/#/experiments/{exp}/runs/{rid}"
    assert any(first.links.replay_url in ln for ln in lines)

    # the original: its replays, the latest verdict and when, the user's note kept
    o = client.get_run(original).data.tags
    assert o[runlinks.TAG_REPLAYS] == rid
    assert o[verdict.TAG_VERDICT] == "REPRODUCED" and o[runlinks.TAG_VERDICT_REPLAY] == rid
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", o[runlinks.TAG_VERDICT_AT])
    assert o[NOTE].startswith(USER_NOTE)
    assert f"(#/experiments/{exp}/runs/{rid})" in o[NOTE] and "REPRODUCED" in o[NOTE]

    # the runs table can filter and sort on the verdict column
    shown = client.search_runs([exp], filter_string=f"tags.`{verdict.TAG_VERDICT}` = "
                                                    "'REPRODUCED'")
    assert {original, rid} <= {x.info.run_id for x in shown}

    # a second replay: listed first, the note's section replaced, not repeated
    second = replay.replay_run(original, repo=repo, workdir=tmp_path / "wd2")
    rid2 = second.execution.new_run_id
    o = client.get_run(original).data.tags
    assert o[runlinks.TAG_REPLAYS] == f"{rid2},{rid}"
    assert o[runlinks.TAG_VERDICT_REPLAY] == rid2
    assert o[NOTE].startswith(USER_NOTE) and o[NOTE].count("<!-- replab:replays -->") == 1
    assert f"runs/{rid})" in o[NOTE] and f"runs/{rid2})" in o[NOTE]
    assert o[NOTE].index(rid2) < o[NOTE].index(rid)

    # the readable environment summary beside the raw manifest, on both runs
    commit = git(repo, "rev-parse", "HEAD")
    for run_id in (rid, original):
        names = {f.path for f in client.list_artifacts(run_id, "replab")}
        assert {"replab/manifest.json", "replab/environment.md",
                "replab/environment.html"} <= names
        for path in ("replab/environment.md", "replab/environment.html"):
            text = _text(client, run_id, path)
            assert platform.python_version() in text and commit in text


def test_a_replay_in_another_experiment_links_without_nesting(tracking_uri):
    with tracking.start_run(experiment="t-links-a", capture=False) as a:
        pass
    with tracking.start_run(experiment="t-links-b", capture=False, replay_of=a.run_id,
                            run_name="odd | name [x]") as b:
        pass
    client = MlflowClient(tracking_uri)
    links = runlinks.link_replay(client, a.run_id, b.run_id, verdict="NOT_REPRODUCED",
                                 tracking_uri=tracking_uri)
    assert not links.nested and links.back_linked
    bt = client.get_run(b.run_id).data.tags
    assert runlinks.TAG_PARENT not in bt
    assert f"(#/experiments/{a.experiment_id}/runs/{a.run_id})" in bt[NOTE]
    at = client.get_run(a.run_id).data.tags
    assert at[runlinks.TAG_REPLAYS] == b.run_id and at[verdict.TAG_VERDICT] == "NOT_REPRODUCED"
    assert f"(#/experiments/{b.experiment_id}/runs/{b.run_id})" in at[NOTE]
    rows = [ln for ln in runlinks.section_of(at[NOTE], "replays").splitlines()
            if ln.startswith("|")]
    # a run name with markdown characters stays in its cell: 3 columns on every row
    assert [len(re.findall(r"(?<!\\)\|", ln)) for ln in rows] == [4, 4, 4]


def test_a_bundle_replayed_elsewhere_names_its_original_without_a_dead_link(tracking_uri,
                                                                           tmp_path):
    repo = _digits(tmp_path)
    original = train_example(repo, tracking_uri, "--seed", "1", "--epochs", "1")
    bundle = replay.export_bundle(original, tmp_path / "run.tar.gz")
    offline = f"sqlite:///{tmp_path}/offline.db"
    result = replay.replay_run(str(bundle), tracking_uri=offline, repo=repo,
                               workdir=tmp_path / "wd")
    assert result.links.original_url is None and not result.links.nested
    tags = MlflowClient(offline).get_run(result.execution.new_run_id).data.tags
    assert f"run `{original}` (from bundle" in tags[NOTE]
    assert f"runs/{original}" not in tags[NOTE]  # no link to a run this server lacks
    assert runlinks.TAG_PARENT not in tags
    assert tags[verdict.TAG_VERDICT] == result.verdict.verdict.value
