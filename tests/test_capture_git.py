"""The git capture against real repositories built in tmp_path."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import subprocess
from pathlib import Path

import pytest

from replab.capture import collect, manifest_json
from replab.capture.git import parse_remotes, parse_status
from tests.capture_support import git, make_repo


def capture_git(repo: Path, **options) -> dict:
    manifest = collect(["git"], repo=str(repo), **options)
    assert not manifest["errors"], manifest["errors"]
    return manifest["captures"]["git"]


def test_clean_repo(tmp_path):
    repo = make_repo(tmp_path / "r")
    info = capture_git(repo)
    assert info["commit"] == git(repo, "rev-parse", "HEAD").strip()
    assert info["branch"] == "main" and info["detached"] is False and info["empty"] is False
    assert info["dirty"] is False
    assert info["changes"] == {"staged": 0, "unstaged": 0, "unmerged": 0, "untracked": 0}
    assert info["diff"] == "" and info["untracked"] == []
    assert info["remote"] is None and info["remote_url"] is None and info["remotes"] == {}
    assert info["root"] == os.path.realpath(repo)


def test_repo_option_may_name_a_subdirectory(tmp_path):
    repo = make_repo(tmp_path / "r", {"src/a.py": "a = 1\n"})
    assert capture_git(repo / "src")["root"] == os.path.realpath(repo)


def test_unstaged_change_is_in_the_diff(tmp_path):
    repo = make_repo(tmp_path / "r")
    (repo / "train.py").write_text("print('changed')\n")
    info = capture_git(repo)
    assert info["dirty"] is True
    assert info["changes"]["unstaged"] == 1 and info["changes"]["staged"] == 0
    assert "+print('changed')" in info["diff"]
    assert "diff --git a/train.py b/train.py" in info["diff"]
    assert info["diff_sha256"] == hashlib.sha256(info["diff"].encode()).hexdigest()


def test_staged_changes_are_counted_and_diffed(tmp_path):
    repo = make_repo(tmp_path / "r")
    (repo / "new.py").write_text("x = 1\n")
    git(repo, "add", "new.py")
    info = capture_git(repo)
    assert info["changes"]["staged"] == 1 and info["changes"]["unstaged"] == 0
    assert info["dirty"] is True
    assert "new file mode" in info["diff"] and "+x = 1" in info["diff"]


def test_staged_rename_counts_once(tmp_path):
    repo = make_repo(tmp_path / "r", {"a.py": "".join(f"line {i}\n" for i in range(50))})
    git(repo, "mv", "a.py", "b.py")
    info = capture_git(repo)
    assert info["changes"] == {"staged": 1, "unstaged": 0, "unmerged": 0, "untracked": 0}


def test_untracked_files_text_binary_big_and_ignored(tmp_path):
    repo = make_repo(tmp_path / "r", {".gitignore": "*.log\n", "train.py": "pass\n"})
    (repo / "notes.txt").write_text("remember the seed\n")
    (repo / "data").mkdir()
    (repo / "data" / "blob.bin").write_bytes(bytes(range(256)) * 4)
    (repo / "big.txt").write_text("y" * 70_000)
    (repo / "run.log").write_text("ignored\n")
    info = capture_git(repo)
    files = {f["path"]: f for f in info["untracked"]}
    assert set(files) == {"notes.txt", "data/blob.bin", "big.txt"}  # run.log is ignored
    assert info["changes"]["untracked"] == 3 and info["dirty"] is True

    notes = files["notes.txt"]
    assert notes["content"] == "remember the seed\n"
    assert notes["sha256"] == hashlib.sha256(b"remember the seed\n").hexdigest()
    assert notes["size"] == 18

    blob = files["data/blob.bin"]
    assert "content" not in blob and blob["omitted"] == "binary"
    assert blob["sha256"] == hashlib.sha256(bytes(range(256)) * 4).hexdigest()

    big = files["big.txt"]
    assert "content" not in big and "larger than" in big["omitted"] and big["size"] == 70_000
    assert big["sha256"] == hashlib.sha256(b"y" * 70_000).hexdigest()
    assert info["untracked_truncated"] is False


def test_untracked_secrets_are_listed_not_inlined(tmp_path):
    repo = make_repo(tmp_path / "r")
    (repo / ".env").write_text("WANDB_API_KEY=abcdef0123456789\n")
    (repo / "notes.md").write_text("push to https://me:hunter2hunter2@git.example/x\n")
    manifest = collect(["git"], repo=str(repo))
    files = {f["path"]: f for f in manifest["captures"]["git"]["untracked"]}
    assert files[".env"]["omitted"] == files["notes.md"]["omitted"] == "may hold a secret"
    assert files[".env"]["sha256"] and "content" not in files["notes.md"]
    text = manifest_json(manifest)
    assert "abcdef0123456789" not in text and "hunter2hunter2" not in text


def test_untracked_caps_are_options(tmp_path):
    repo = make_repo(tmp_path / "r")
    for i in range(5):
        (repo / f"f{i}.txt").write_text("z" * 100)
    info = capture_git(repo, untracked_max_bytes=1000, untracked_total_bytes=250,
                       untracked_max_files=4)
    assert info["untracked_count"] == 5 and info["untracked_truncated"] is True
    assert len(info["untracked"]) == 4
    inlined = [f for f in info["untracked"] if "content" in f]
    assert len(inlined) == 2 and info["untracked_inlined_bytes"] == 200
    assert all("total" in f["omitted"] for f in info["untracked"] if "content" not in f)

    info = capture_git(repo, untracked_max_bytes=10)
    assert not any("content" in f for f in info["untracked"])


def test_untracked_symlink_is_listed_not_followed(tmp_path):
    repo = make_repo(tmp_path / "r")
    os.symlink("/etc/hostname", repo / "link")
    (entry,) = capture_git(repo)["untracked"]
    assert entry["path"] == "link" and entry["symlink"] == "/etc/hostname"
    assert "content" not in entry


def test_detached_head(tmp_path):
    repo = make_repo(tmp_path / "r")
    head = git(repo, "rev-parse", "HEAD").strip()
    git(repo, "checkout", "-q", "--detach")
    info = capture_git(repo)
    assert info["detached"] is True and info["branch"] is None and info["commit"] == head


def test_remote_with_token_is_stripped(tmp_path):
    token = "ghp_" + "A1b2C3d4" * 5
    repo = make_repo(tmp_path / "r")
    git(repo, "remote", "add", "origin", f"https://alice:{token}@github.com/acme/proj.git")
    git(repo, "remote", "add", "mirror", "https://oauth2:glpat-SECRETSECRET123@gitlab.com/a/b")
    git(repo, "remote", "add", "ssh", "git@github.com:acme/proj.git")
    manifest = collect(["git"], repo=str(repo))
    info = manifest["captures"]["git"]
    assert info["remote"] == "origin"
    assert info["remote_url"] == "https://github.com/acme/proj.git"
    assert info["remotes"] == {"origin": "https://github.com/acme/proj.git",
                               "mirror": "https://gitlab.com/a/b",
                               "ssh": "git@github.com:acme/proj.git"}
    text = manifest_json(manifest)
    assert token not in text and "glpat-SECRETSECRET123" not in text and "alice" not in text


def test_upstream_picks_the_remote(tmp_path):
    upstream = make_repo(tmp_path / "up")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(upstream), str(clone)], check=True)
    git(clone, "remote", "add", "aaa", "https://example.org/other.git")
    info = capture_git(clone)
    assert info["upstream"] == "origin/main" and info["remote"] == "origin"
    assert info["remote_url"] == str(upstream)


def test_repo_without_commits(tmp_path):
    repo = make_repo(tmp_path / "r", {"a.py": "a = 1\n", "b.py": "b = 2\n"}, commit=False)
    git(repo, "add", "a.py")
    info = capture_git(repo)
    assert info["empty"] is True and info["commit"] is None and info["branch"] == "main"
    assert info["changes"]["staged"] == 1 and info["changes"]["untracked"] == 1
    assert "+a = 1" in info["diff"]
    assert [f["path"] for f in info["untracked"]] == ["b.py"]


def test_not_a_repository_is_skipped(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    manifest = collect(["git"], repo=str(plain))
    assert "git" not in manifest["captures"] and not manifest["errors"]
    assert "not inside a git work tree" in manifest["skipped"]["git"]


def test_missing_repository_path_is_an_error_not_an_exception(tmp_path):
    manifest = collect(["git"], repo=str(tmp_path / "nope"))
    assert manifest["errors"]["git"].startswith("FileNotFoundError")


def test_non_utf8_diff_is_kept_exactly(tmp_path):
    repo = make_repo(tmp_path / "r")
    (repo / "latin.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    git(repo, "add", "latin.txt")
    info = capture_git(repo)
    assert info["diff"] is None
    assert b"caf\xe9" in base64.b64decode(info["diff_base64"])


def test_with_an_artifacts_dir_the_diff_is_an_attachment_not_manifest_text(tmp_path):
    repo = make_repo(tmp_path / "r")
    (repo / "train.py").write_text("x = 1\n" * 1000)
    artifacts = tmp_path / "artifacts"
    manifest = collect(["git"], repo=str(repo), artifacts_dir=str(artifacts))
    info = manifest["captures"]["git"]
    assert info["diff"] is None and info["diff_attachment"] == "diff.patch"
    saved = (artifacts / "diff.patch").read_bytes()
    assert b"+x = 1\n" in saved and "x = 1" not in manifest_json(manifest)  # stored once
    assert hashlib.sha256(saved).hexdigest() == info["diff_sha256"]
    assert info["diff_bytes"] == len(saved)
    assert manifest["attachments"]["diff.patch"]["capture"] == "git"


def test_without_an_artifacts_dir_a_diff_too_big_to_inline_is_left_out_with_the_reason(
        tmp_path, caplog):
    repo = make_repo(tmp_path / "r")
    (repo / "train.py").write_text("x = 1\n" * 1000)
    info = capture_git(repo, diff_max_bytes=100)
    assert info["diff"] is None and "diff_attachment" not in info
    assert "larger than 100 bytes" in info["diff_omitted"] and info["diff_bytes"] > 100
    assert "--artifacts-dir" in caplog.text


def test_manifest_rebuilds_the_working_tree(tmp_path):
    """What a replay does: clone at the commit, apply the diff, restore untracked files."""
    repo = make_repo(tmp_path / "r", {"train.py": "lr = 0.1\n", "model.bin": "v1\n"})
    (repo / "model.bin").write_bytes(b"\x00\x01binary\x02" * 20)  # binary change
    (repo / "train.py").write_text("lr = 0.2\n")  # unstaged
    (repo / "extra.py").write_text("import os\n")
    git(repo, "add", "extra.py")  # staged new file
    git(repo, "rm", "-q", "--cached", "model.bin")  # staged delete + untracked binary
    git(repo, "add", "-N", "model.bin")  # ...then intent-to-add: in the diff again
    (repo / "untracked.cfg").write_text("seed: 3\n")
    info = capture_git(repo)

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    git(clone, "checkout", "-q", info["commit"])
    patch = tmp_path / "p.patch"
    patch.write_text(info["diff"])
    git(clone, "apply", "--binary", str(patch))
    for entry in info["untracked"]:
        (clone / entry["path"]).write_text(entry["content"])
    for name in ("train.py", "model.bin", "extra.py", "untracked.cfg"):
        assert (clone / name).read_bytes() == (repo / name).read_bytes(), name


def test_secrets_added_by_uncommitted_changes_are_masked_and_the_diff_still_applies(
        tmp_path, caplog):
    committed = "URL = 'https://example.org/data'\nTOKEN = 'ghp_" + "C" * 36 + "'\n"
    repo = make_repo(tmp_path / "r", {"train.py": committed})
    hf = "hf_" + "A" * 30
    aws = "AKIA" + "B" * 16
    (repo / "train.py").write_text(
        "URL = 'https://alice:s3cretpass@example.org/data'\n"  # credentials in a URL
        "TOKEN = 'ghp_" + "C" * 36 + "'\n"  # committed already: a context line, kept
        f"HF = '{hf}'\nKEY = '{aws}'\nlr = 0.1\n")
    info = capture_git(repo)
    text = manifest_json(collect(["git"], repo=str(repo)))
    for secret in (hf, aws, "s3cretpass"):
        assert secret not in info["diff"] and secret not in text
    assert info["diff_secrets_masked"] == 3
    assert info["diff_sha256"] == hashlib.sha256(info["diff"].encode()).hexdigest()
    assert "+lr = 0.1" in info["diff"] and "masked in the run record" in caplog.text
    # the masked diff applies to the commit: a replay gets the change, masked values in it
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    patch = tmp_path / "p.patch"
    patch.write_text(info["diff"])
    git(clone, "apply", str(patch))
    replayed = (clone / "train.py").read_text()
    assert "lr = 0.1" in replayed and "URL = 'https://example.org/data'" in replayed
    assert hf not in replayed and "ghp_" + "C" * 36 in replayed  # the committed line as is


def test_few_git_calls(tmp_path, monkeypatch):
    """A wrapper `git` first on PATH counts the calls: 3 on a clean tree, 4 when dirty."""
    real_git = subprocess.run(["which", "git"], capture_output=True, text=True).stdout.strip()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "calls.log"
    wrapper = bindir / "git"
    wrapper.write_text(f'#!/bin/sh\necho "$1" >> "{log}"\nexec "{real_git}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    repo = make_repo(tmp_path / "r")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    capture_git(repo)
    clean_calls = log.read_text().split()
    (repo / "train.py").write_text("changed\n")
    log.write_text("")
    capture_git(repo)
    dirty_calls = log.read_text().split()
    assert clean_calls == ["rev-parse", "status", "config"]
    assert dirty_calls == ["rev-parse", "status", "config", "diff"]


def test_parse_status_pure():
    raw = b"\0".join([
        b"# branch.oid 0123abcd", b"# branch.head (detached)",
        b"1 M. N... 100644 100644 100644 aaa bbb staged.py",
        b"1 .M N... 100644 100644 100644 aaa bbb unstaged.py",
        b"1 MM N... 100644 100644 100644 aaa bbb both.py",
        b"2 R. N... 100644 100644 100644 aaa bbb R100 new name.py", b"old name.py",
        b"u UU N... 100644 100644 100644 100644 a b c conflict.py",
        b"? with space.txt", b"",
    ])
    status = parse_status(raw)
    assert status.commit == "0123abcd" and status.detached and status.branch is None
    assert (status.staged, status.unstaged, status.unmerged) == (3, 2, 1)
    assert status.untracked == ["with space.txt"]


def test_parse_remotes_pure():
    raw = (b"remote.origin.url https://u:p@h.example/x.git\n"
           b"remote.my.fork.url ssh://git:pw@h.example/y\n")
    assert parse_remotes(raw) == {"origin": "https://h.example/x.git",
                                  "my.fork": "ssh://git@h.example/y"}


@pytest.mark.parametrize("caps", [{}, {"untracked_hash_max_bytes": 10}])
def test_hash_cap(tmp_path, caps):
    repo = make_repo(tmp_path / "r")
    (repo / "weights.bin").write_bytes(b"\x00" * 100)
    (entry,) = capture_git(repo, **caps)["untracked"]
    if caps:
        assert entry["sha256"] is None and "not hashed" in entry["omitted"]
    else:
        assert entry["sha256"] == hashlib.sha256(b"\x00" * 100).hexdigest()


# -- secret-looking assignments in uncommitted changes and untracked files --------------------
PW_DIFF, PW_YAML, PW_TRACKED, PW_ENV = ("Diff-Pw-4c1d", "Yaml-Pw-8e2f", "Tracked-Pw-7a3b",
                                        "Env-Pw-5d9c")
FIXTURE_PW = "Fixture-Pw-not-a-secret"
KEPT_LINES = ('token = os.environ["HF_TOKEN"]', 'pad_token = "<pad>"', "max_tokens = 512",
              f'password = "{PW_DIFF}-kept"  # replab: no-mask')


def _repo_with_planted_secrets(tmp_path) -> Path:
    """A repository whose uncommitted changes and untracked files hold planted passwords,
    plus a fixture file opted out of masking through .gitattributes."""
    repo = make_repo(tmp_path / "r", {
        "train.py": "lr = 0.1\n", "settings.yaml": "epochs: 3\n",
        ".gitattributes": "tests/fixtures/*.yaml replab-no-mask\n"})
    (repo / "train.py").write_text(
        f'lr = 0.2\npassword = "{PW_DIFF}"\n' + "\n".join(KEPT_LINES) + "\n")
    (repo / "settings.yaml").write_text(f"epochs: 3\ndb:\n  password: {PW_TRACKED}\n")
    (repo / "config.yaml").write_text(f"seed: 3\npassword: {PW_YAML}\napi_key: ${{API_KEY}}\n")
    (repo / ".env").write_text(f"DB_PASSWORD={PW_ENV}\n")
    (repo / "tests" / "fixtures").mkdir(parents=True)
    (repo / "tests" / "fixtures" / "login.yaml").write_text(f"password: {FIXTURE_PW}\n")
    return repo


def test_planted_passwords_are_masked_in_the_record_and_the_replay_workspace(tmp_path, caplog):
    from replab import replay  # the replay's own workspace builder, as `replab replay` runs it

    repo = _repo_with_planted_secrets(tmp_path)
    manifest = collect(["git"], repo=str(repo))
    text = manifest_json(manifest)
    for planted in (PW_DIFF + '"', PW_YAML, PW_TRACKED, PW_ENV):
        assert planted not in text, planted
    info = manifest["captures"]["git"]
    assert info["diff_secrets_masked"] == 2  # train.py's password, settings.yaml's
    assert info["diff_sha256"] == hashlib.sha256(info["diff"].encode()).hexdigest()
    for line in KEPT_LINES:  # false positives and the line opted out stay as written
        assert f"+{line}\n" in info["diff"], line
    files = {f["path"]: f for f in info["untracked"]}
    config = files["config.yaml"]
    assert config["secrets_masked"] == 1 and "api_key: ${API_KEY}" in config["content"]
    assert config["sha256"] == hashlib.sha256(config["content"].encode()).hexdigest()
    assert files[".env"]["omitted"] == "may hold a secret"
    fixture = files["tests/fixtures/login.yaml"]  # the per-file opt-out
    assert fixture["content"] == f"password: {FIXTURE_PW}\n" and "secrets_masked" not in fixture
    assert "masked in the run record" in caplog.text and PW_YAML not in caplog.text
    # nor does the diff name the unmasked files' blobs (a hash to test guesses against)
    for name in ("train.py", "settings.yaml"):
        assert git(repo, "hash-object", name).strip() not in info["diff"], name

    # the masked diff still applies to the commit
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    (tmp_path / "p.patch").write_text(info["diff"])
    git(clone, "apply", "--check", str(tmp_path / "p.patch"))

    source = replay.Source(run_id="r1", experiment=None, params={}, tags={}, metrics={},
                           manifest=manifest, lock=None, origin="test")
    ws = replay.rebuild_workspace(source, tmp_path / "ws", repo=repo, allow_missing=True)
    train = (ws / "train.py").read_text()
    assert 'password = "Dif…"' in train and f'password = "{PW_DIFF}"' not in train
    assert all(line in train for line in KEPT_LINES)
    assert (ws / "settings.yaml").read_text() == "epochs: 3\ndb:\n  password: Tra…\n"
    assert (ws / "config.yaml").read_text() == "seed: 3\npassword: Yam…\napi_key: ${API_KEY}\n"
    assert (ws / "tests/fixtures/login.yaml").read_text() == f"password: {FIXTURE_PW}\n"
    assert not (ws / ".env").exists()

    # a capture of the replay workspace records the same code: masking twice changes nothing
    again = collect(["git"], repo=str(ws))["captures"]["git"]
    assert again["diff_sha256"] == info["diff_sha256"] and "diff_secrets_masked" not in again
    again_files = {f["path"]: f for f in again["untracked"]}
    assert again_files["config.yaml"]["sha256"] == config["sha256"]


def test_opting_out_per_file_covers_the_diff_too(tmp_path):
    repo = make_repo(tmp_path / "r", {"conf/test.env": "A=1\n", "conf/prod.env": "A=1\n",
                                      ".gitattributes": "conf/test.env replab-no-mask\n"})
    (repo / "conf/test.env").write_text(f"A=1\nPASSWORD={FIXTURE_PW}\n")
    (repo / "conf/prod.env").write_text(f"A=1\nPASSWORD={PW_ENV}\n")
    info = capture_git(repo)
    assert f"+PASSWORD={FIXTURE_PW}\n" in info["diff"] and PW_ENV not in info["diff"]
    assert info["diff_secrets_masked"] == 1


def test_masked_big_and_non_utf8_diffs_keep_no_planted_value(tmp_path):
    repo = make_repo(tmp_path / "r", {"latin.cfg": "x\n", "big.cfg": "x\n"})
    (repo / "latin.cfg").write_bytes(f"caf\xe9\npassword = {PW_DIFF}\n".encode("latin-1"))
    info = capture_git(repo)
    raw = base64.b64decode(info["diff_base64"])
    assert b"caf\xe9" in raw and PW_DIFF.encode() not in raw and info["diff_secrets_masked"] == 1
    assert hashlib.sha256(raw).hexdigest() == info["diff_sha256"]
    (repo / "big.cfg").write_text("x = 1\n" * 100 + f"token: {PW_TRACKED}\n")
    artifacts = tmp_path / "artifacts"
    manifest = collect(["git"], repo=str(repo), artifacts_dir=str(artifacts))
    saved = (artifacts / "diff.patch").read_bytes()
    assert b"caf\xe9" in saved  # exact bytes, not base64, in the attachment
    assert PW_TRACKED.encode() not in saved and PW_DIFF.encode() not in saved
    assert hashlib.sha256(saved).hexdigest() == manifest["captures"]["git"]["diff_sha256"]


def test_a_private_key_added_to_a_tracked_file_is_masked_to_its_last_line(tmp_path):
    body = ["MIIEpAIBAAKCAQEAplantedKeyBodyLineOne0123456789abcdefghijklmnop",
            "Zm9vYmFyYmF6cXV4plantedKeyBodyLineTwo0123456789abcdefghijklmnop"]
    key = "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(body) + \
          "\n-----END RSA PRIVATE KEY-----\n"
    repo = make_repo(tmp_path / "r", {"deploy.py": "HOST = 'x'\n"})
    (repo / "deploy.py").write_text(f"HOST = 'x'\nKEY = '''\n{key}'''\n")
    artifacts = tmp_path / "artifacts"
    collect(["git"], repo=str(repo), artifacts_dir=str(artifacts))
    saved = (artifacts / "diff.patch").read_text()
    assert all(line not in saved for line in body) and "planted" not in saved
    assert "+-----END RSA PRIVATE KEY-----\n" in saved
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    git(clone, "apply", "--check", str(artifacts / "diff.patch"))
