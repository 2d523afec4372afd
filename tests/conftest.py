"""Unit tests never touch the system's records: ikectl's state directory is a fresh one per test."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "ikectl-state"
    monkeypatch.setenv("IKECTL_STATE_DIR", str(path))
    return path
