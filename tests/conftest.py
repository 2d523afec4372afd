"""Unit tests never touch the system: ikectl's state directory is a fresh one per test, and the nftables tables
ikectl's processes own (the supervisor's guard, a trusted `up`'s) are stand-ins. A real one, made in this host's
own namespace by a Supervisor under test, dropped DNS for the whole host until the test run ended."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest
from trust_servers import sim_spec

from ikectl import config, nft


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


# --- for the tests of `ikectl trust` ---

@pytest.fixture
def cfg(tmp_path: Path) -> config.Config:
    """A config whose run dir and trust store are the test's own."""
    return config.Config(run_dir=tmp_path / "run", trust_dir=tmp_path / "trust")


@pytest.fixture
def spec_file(tmp_path: Path) -> str:
    """A measurement spec that accepts the sim enclave's default build."""
    path = tmp_path / "spec.json"
    path.write_bytes(sim_spec().encode())
    return str(path)
