"""The packages capture reads only the start of each METADATA file: what it reads must be what
``importlib.metadata``'s full parse gives, whatever the file looks like."""

from __future__ import annotations

import importlib.metadata as md
from pathlib import Path

from replab.capture.packages import installed


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
