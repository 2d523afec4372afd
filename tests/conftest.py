"""Unit tests never touch the system: ikectl's state directory is a fresh one per test, and the nftables tables
ikectl's processes own (the supervisor's guard, a trusted `up`'s) are stand-ins. A real one, made in this host's
own namespace by a Supervisor under test, dropped DNS for the whole host until the test run ended."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest

from ikectl import nft


class StandInGuard:
    """nft.Guard's interface, holding nothing."""

    made: ClassVar[list[str]] = []

    def __init__(self, name: str = nft.GUARD) -> None:
        StandInGuard.made.append(name)

    def release(self) -> None:
        pass


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "ikectl-state"
    monkeypatch.setenv("IKECTL_STATE_DIR", str(path))
    return path


@pytest.fixture(autouse=True)
def no_owned_tables(monkeypatch: pytest.MonkeyPatch) -> type[StandInGuard]:
    StandInGuard.made = []
    monkeypatch.setattr(nft, "Guard", StandInGuard)
    return StandInGuard
