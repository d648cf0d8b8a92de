"""The packages capture reads only the start of each METADATA file: what it reads must be what
``importlib.metadata``'s full parse gives, whatever the file looks like."""

from __future__ import annotations

import importlib.metadata as md
import zipfile
from pathlib import Path

from replab.capture.packages import distributions, installed, normalize


def _dist(site: Path, dirname: str, files: dict[str, bytes]) -> Path:
    info = site / dirname
    info.mkdir(parents=True)
    for name, data in files.items():
        (info / name).write_bytes(data)
    return info


def test_names_and_versions_are_those_of_the_full_parse(tmp_path):
    site = tmp_path / "site"
    classifiers = b"".join(b"Classifier: Topic :: Scientific/Engineering :: %d\n" % i
                           for i in range(400))  # a header far past the first read
    # a two-byte character at bytes 4095-4096, across the first read's end, before Version
    pad = b"Summary: " + b"x" * (4096 - 1 - len(b"Metadata-Version: 2.1\nName: Late\n") - 9)
    infos = [
        _dist(site, "crlf-1.0.dist-info", {
            "METADATA": b"Metadata-Version: 2.1\r\nName: CrLf\r\nVersion: 1.0\r\n\r\nbody\r\n"}),
        _dist(site, "long-2.0.dist-info", {
            "METADATA": b"Metadata-Version: 2.1\nName: Long_Header\n" + classifiers
            + b"Version: 2.0\n\n" + b"# README\n" * 5000}),
        _dist(site, "late-3.0.dist-info", {
            "METADATA": b"Metadata-Version: 2.1\nName: Late\n" + pad + "é".encode()
            + b"\nVersion: 3.0\n\nName: not-this\n"}),
        _dist(site, "fallback-4.0.dist-info", {"METADATA": b"",
                                               "PKG-INFO": b"Name: fallback\nVersion: 4.0\n"}),
        _dist(site, "nover-5.0.dist-info", {"METADATA": b"Name: nover\n\nVersion: 5.0\n"}),
    ]
    got = {d["name"]: d["version"] for d in installed([str(site)])}
    full = [md.Distribution.at(info).metadata for info in infos]
    assert got == {m["Name"]: m["Version"] for m in full if m["Version"]}
    assert got == {"CrLf": "1.0", "Long_Header": "2.0", "Late": "3.0", "fallback": "4.0"}


def _first_per_name(dists) -> dict[str, tuple[str, str]]:
    """What a lock must pin: the first distribution of each name, as importlib imports it."""
    out: dict[str, tuple[str, str]] = {}
    for dist in dists:
        meta = dist.metadata
        if meta["Name"] and meta["Version"]:
            out.setdefault(normalize(meta["Name"]), (meta["Name"], meta["Version"]))
    return out


def test_this_venv_reads_as_importlib_metadata_reads_it():
    """The lock is right: every distribution importlib.metadata finds on sys.path (first one
    per name), with the name and version its full parse gives, and nothing else."""
    got = {normalize(d["name"]): (d["name"], d["version"]) for d in installed()}
    assert got == _first_per_name(md.distributions())
    assert "pytest" in got and "replab" in got


def _where(dist) -> str:
    return dist if isinstance(dist, str) else str(dist._path)


def test_distributions_come_in_importlib_metadata_order(tmp_path):
    """Directories, an egg, a zip file and a missing entry on the path: the same metadata, in
    the same order (which of two copies wins) as importlib.metadata."""
    site, egg = tmp_path / "site", tmp_path / "old-1.0-py3.egg"
    _dist(site, "b_pkg-1.0.dist-info", {"METADATA": b"Name: b-pkg\nVersion: 1.0\n"})
    _dist(site, "a-1.dist-info", {"METADATA": b"Name: a\nVersion: 1\n"})
    _dist(site, "B.Pkg-2.0.dist-info", {"METADATA": b"Name: B.Pkg\nVersion: 2.0\n"})
    _dist(site, "legacy.egg-info", {"PKG-INFO": b"Name: legacy\nVersion: 0.1\n"})
    _dist(egg, "EGG-INFO", {"PKG-INFO": b"Name: old\nVersion: 1.0\n"})
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("zipped-3.0.dist-info/METADATA", "Name: zipped\nVersion: 3.0\n")
        zf.writestr("a-9.dist-info/METADATA", "Name: a\nVersion: 9\n")
    paths = [str(site), str(egg), str(archive), str(tmp_path / "missing"), str(site)]
    assert [_where(d) for d in distributions(paths)] == [
        _where(str(d._path)) for d in md.distributions(path=paths)]
    got = {normalize(d["name"]): (d["name"], d["version"]) for d in installed(paths)}
    assert got == _first_per_name(md.distributions(path=paths))
    assert got["b-pkg"] in (("b-pkg", "1.0"), ("B.Pkg", "2.0")) and got["a"] == ("a", "1")
    assert got["zipped"] == ("zipped", "3.0") and got["old"] == ("old", "1.0")
