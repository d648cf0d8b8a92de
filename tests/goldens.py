"""Golden files: expected outputs of the pure builders, under tests/golden/<area>/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent / "golden"


def checker(area: str):
    """``golden(name, text)`` for tests/golden/AREA: ``text`` must equal the file
    (``REPLAB_UPDATE_GOLDEN=1`` rewrites it; a missing file is written and the test fails,
    so a new golden file is always looked at before it is checked in)."""
    def golden(name: str, text: str) -> None:
        path = ROOT / area / name
        update = os.environ.get("REPLAB_UPDATE_GOLDEN") == "1"
        if update or not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            if not update:
                pytest.fail(f"golden file {path} did not exist; written now, check it in")
        assert text == path.read_text(), f"differs from {path} (REPLAB_UPDATE_GOLDEN=1 rewrites)"

    return golden
