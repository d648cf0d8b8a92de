"""What each recorded lock line installs from here: old and new line forms read alike, local
paths kept while they exist, replab taken from the running source, the rest set aside with
the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from replab.lockplan import local_path, parse_entry, parse_lock, plan


@pytest.mark.parametrize("line,name,version,editable,target", [
    ("torch==2.4.0", "torch", "2.4.0", False, None),
    ("-e file:///src/pkg  # pkg==0.2", "pkg", "0.2", True, "file:///src/pkg"),
    ("-e pkg @ file:///src/pkg  # pkg==0.2", "pkg", "0.2", True, "file:///src/pkg"),  # old
    ("-e /src/pkg", None, None, True, "/src/pkg"),
    ("pkg @ file:///src/pkg  # pkg==0.2", "pkg", "0.2", False, "file:///src/pkg"),
    ("b @ git+https://h/r@c  # b==3", "b", "3", False, "git+https://h/r@c"),
    ("w @ https://files.example/w-1.whl#sha256=ff  # w==1", "w", "1", False,
     "https://files.example/w-1.whl#sha256=ff"),
])
def test_every_line_form_is_read(line, name, version, editable, target):
    entry = parse_entry(line)
    assert (entry.name, entry.version, entry.editable, entry.target) == (
        name, version, editable, target)


def test_parse_lock_reads_old_and_new_forms_alike():
    old = "a==1\n-e pkg @ file:///x  # pkg==0.2\nb @ git+https://h/r@c  # b==3\n"
    new = "a==1\n-e file:///x  # pkg==0.2\nb @ git+https://h/r@c  # b==3\n"
    assert parse_lock(old) == parse_lock(new) == {"a": "1", "pkg": "0.2", "b": "3"}
    assert parse_lock("# a comment\n\n--index-url https://x\n") == {}


def test_local_paths():
    assert local_path("file:///src/my%20pkg") == Path("/src/my pkg")
    assert local_path("file:///src/mono#subdirectory=pkg") == Path("/src/mono/pkg")
    assert local_path("file:///tmp/w.whl#sha256=ee") == Path("/tmp/w.whl")
    assert local_path("/src/pkg") == Path("/src/pkg")
    assert local_path("git+https://h/r@c") is None
    assert local_path("https://files.example/w.whl") is None


def test_the_plan_installs_what_exists_and_names_what_does_not(tmp_path):
    here = tmp_path / "here"
    here.mkdir()
    wheel = tmp_path / "w-1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    gone = tmp_path / "gone"
    lock = (f"a==1\n"
            f"-e here @ {here.as_uri()}  # here==0.1\n"  # old form, path exists
            f"w @ {wheel.as_uri()}#sha256=00  # w==1.0\n"
            f"b @ git+https://h/r@c  # b==3\n"
            f"-e {gone.as_uri()}  # gonepkg==2\n"
            f"g @ {(tmp_path / 'g.whl').as_uri()}  # g==1\n")
    p = plan(lock)
    assert p.lines == ["a==1", f"-e {here.as_uri()}", f"w @ {wheel.as_uri()}#sha256=00",
                       "b @ git+https://h/r@c"]
    assert [e.name for e in p.entries] == ["a", "here", "w", "b"]
    assert [(e.name, "does not exist here" in why) for e, why in p.skipped] == [
        ("gonepkg", True), ("g", True)]
    assert str(gone) in p.skipped[0][1] and "directory" in p.skipped[0][1]
    assert "file" in p.skipped[1][1]
    assert p.text == "".join(f"{ln}\n" for ln in p.lines) and not p.notes


def test_replab_comes_from_the_running_source_when_its_path_is_gone(tmp_path):
    source = tmp_path / "replab-src"
    source.mkdir()
    gone = tmp_path / "old-checkout"
    editable = plan(f"-e {gone.as_uri()}  # replab==0.1.0\n", replab_source=source)
    assert editable.lines == [f"-e {source.as_uri()}"] and not editable.skipped
    assert str(source) in editable.notes[0] and str(gone) in editable.notes[0]
    assert plan(f"replab @ {gone.as_uri()}  # replab==0.1.0\n",
                replab_source=source).lines == [f"replab @ {source.as_uri()}"]
    assert plan("replab==0.1.0\n", replab_source=source).lines == [f"replab @ {source.as_uri()}"]
    kept = plan(f"-e {source.as_uri()}  # replab==0.1.0\n", replab_source=tmp_path / "x")
    assert kept.lines == [f"-e {source.as_uri()}"] and not kept.notes  # recorded path exists
    nowhere = plan(f"-e {gone.as_uri()}  # replab==0.1.0\n", replab_source=None)
    assert not nowhere.lines and "no source tree" in nowhere.skipped[0][1]
