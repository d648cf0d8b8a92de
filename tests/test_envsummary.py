"""replab.envsummary: the readable environment summary of a real captured manifest, and
replab.runlinks' handling of the description (the user's text is never lost)."""

import platform

from replab import capture, envsummary, runlinks
from tests.gitrepo import git, make_repo


def _manifest(tmp_path, monkeypatch):
    repo = make_repo(tmp_path / "proj", {"train.py": "print('hi')\n"})
    (repo / "train.py").write_text("print('changed')\n")
    (repo / "data.csv").write_text("a,b\n1,2\n")
    git(repo, "checkout", "-q", "-b", "feat/<script>alert(1)</script>")
    monkeypatch.setenv("MY_API_TOKEN", "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB")
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    m = capture.collect(repo=str(repo), inputs=[str(repo / "data.csv")],
                        seeds={"seed": 7, "seeded": ["numpy", "random"]})
    return m, repo


def test_summary_shows_what_a_reader_checks_first(tmp_path, monkeypatch):
    m, repo = _manifest(tmp_path, monkeypatch)
    md = envsummary.render_markdown(m)
    commit = git(repo, "rev-parse", "HEAD")
    digest = m["captures"]["inputs"][0]["sha256"]
    for text in (commit, platform.python_version(), digest, "seed | 7 (seeded: numpy, random)",
                 "PYTHONHASHSEED=0", "uncommitted changes | yes: 1 unstaged", "data.csv",
                 "| numpy |", "| mlflow |", "GPU | none (CPU only)"):
        assert text in md, text
    html = envsummary.render_html(m)
    assert commit in html and platform.python_version() in html and digest in html
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")


def test_summary_escapes_recorded_text_and_shows_no_secrets(tmp_path, monkeypatch):
    m, _ = _manifest(tmp_path, monkeypatch)
    html = envsummary.render_html(m)
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    md = envsummary.render_markdown(m)
    for text in (md, html):
        assert "ghp_0123456789" not in text and "MY_API_TOKEN" not in text


def test_summary_names_what_was_not_captured():
    m = {"schema_version": 1, "captures": {"python": {"version": "3.12.1"}},
         "skipped": {"git": "not a git repository"}, "errors": {"gpu": "OSError: boom"}}
    md = envsummary.render_markdown(m)
    assert "git | not captured (not a git repository)" in md
    assert "FAILED: gpu | OSError: boom" in md and "3.12.1" in md
    assert set(envsummary.artifacts(m)) == {"replab/environment.md", "replab/environment.html"}


def test_replab_section_keeps_the_users_note_and_is_replaced_not_repeated():
    user = "My baseline.\n\nSee [the paper](https://example.org)."
    once = runlinks.with_section(user, "replays", "first list")
    assert once.startswith(user) and runlinks.section_of(once, "replays") == "first list"
    twice = runlinks.with_section(once, "replays", "second list")
    assert twice.startswith(user) and twice.count("<!-- replab:replays -->") == 1
    assert runlinks.section_of(twice, "replays") == "second list" and "first" not in twice
    top = runlinks.with_section("program's own note", "replay-of", "Replay of x", first=True)
    assert top.index("Replay of x") < top.index("program's own note")
    assert runlinks.with_section(None, "s", "body").strip().endswith("<!-- /replab:s -->")


def test_ui_addresses_drop_credentials_and_have_none_for_file_stores():
    assert runlinks.ui_base("http://u:secret@host:5000/") == "http://host:5000"
    assert runlinks.run_url("https://h/mlflow", "3", "ab") == "https://h/mlflow/#/experiments/3/runs/ab"
    assert runlinks.run_url("sqlite:///x.db", "3", "ab") == "#/experiments/3/runs/ab"
    assert runlinks.run_path("3", "ab", "replab/verdict/report.html") == (
        "#/experiments/3/runs/ab/artifactPath/replab/verdict/report.html")


def test_gpus_are_listed_with_driver_memory_and_capability():
    from replab.capture.gpu import parse_nvidia_smi_csv

    gpu = parse_nvidia_smi_csv("0, NVIDIA H200, GPU-1111, 143771, 570.86.15, 9.0\n"
                               "1, NVIDIA H200, GPU-2222, 143771, 570.86.15, 9.0\n")
    m = {"schema_version": 1, "captures": {"gpu": gpu}}
    md = envsummary.render_markdown(m)
    assert "GPU | 2x nvidia (driver 570.86.15)" in md
    assert "| 1 | NVIDIA H200 | 140.4 GiB | 9.0 | - |" in md
    assert "GPU-1111" not in md  # device UUIDs identify a machine, not an environment
