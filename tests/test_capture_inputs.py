"""The inputs capture: scheme references (``sklearn:load_digits``) are not file paths."""

from __future__ import annotations

import hashlib

import numpy
from sklearn.datasets import load_digits

from replab.capture import collect
from replab.capture.inputs import describe, sklearn_hash


def test_a_sklearn_dataset_is_a_uri_with_a_content_hash_of_its_arrays(tmp_path):
    (item,) = collect(["inputs"], repo=str(tmp_path),
                      inputs=["sklearn:load_digits"])["captures"]["inputs"]
    bunch = load_digits()
    expected = hashlib.sha256()
    for key in ("data", "target"):
        a = numpy.ascontiguousarray(bunch[key])
        expected.update(f"{key} {a.dtype.str} {a.shape}\n".encode() + a.tobytes())
    assert item["kind"] == "uri" and item["uri"] == "sklearn:load_digits"
    assert item["hash"] == "content" and item["sha256"] == expected.hexdigest()
    assert item["library"].startswith("scikit-learn ")
    assert "path" not in item
    assert sklearn_hash("load_iris")["sha256"] != item["sha256"]


def test_other_references_are_uris_without_a_hash(tmp_path):
    assert describe("hf:user/dataset", str(tmp_path), None) == {"kind": "uri",
                                                                 "uri": "hf:user/dataset"}
    # downloads and loaders that need arguments are not loaded
    assert describe("sklearn:fetch_openml", None, None) == {"kind": "uri",
                                                            "uri": "sklearn:fetch_openml"}
    assert describe("sklearn:load_files", None, None) == {"kind": "uri",
                                                          "uri": "sklearn:load_files"}


def test_a_file_whose_name_looks_like_a_reference_is_still_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run:1.csv").write_text("x")
    entry = describe("run:1.csv", str(tmp_path), None)
    assert entry["kind"] == "file" and entry["path"] == "run:1.csv"
    assert entry["sha256"] == hashlib.sha256(b"x").hexdigest()


def test_file_uris_with_one_slash_are_files(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("hello")
    entry = describe(f"file:{f}", None, None)
    assert entry["kind"] == "file" and entry["path"] == str(f.resolve())
