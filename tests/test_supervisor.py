"""The supervisor's rounds against a fake trust layer: re-attestation is asked for every round, with
`key_changed` exactly once per new 'different key' line in pluto's log; it ends when ikectl is down."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ikectl import daemon, session, supervisor, trust

OTHER_KEY_LINE = '"ikectl-trusted-udp" #1: IKE SA authentication request rejected by peer: AUTHENTICATION_FAILED\n'


@pytest.fixture
def run(tmp_path: Path) -> daemon.RunDir:
    run = daemon.RunDir(tmp_path / "run")
    run.root.mkdir()
    config = tmp_path / "ikectl.toml"
    config.write_text(f'[paths]\nrun_dir = "{run.root}"\n')
    session.write_state(run, {"version": session.STATE_VERSION, "mode": "trusted", "resolvers": ["192.0.2.53"],
                              "supervisor_pid": os.getpid(), "config_path": str(config)})
    run.log.write_text("pluto started\n")
    return run


def test_reattestation_each_round_and_key_changes_once_per_new_line(run, monkeypatch):
    asked: list[bool] = []
    monkeypatch.setattr(trust, "reattest_due", lambda cfg, run_dir, now, key_changed=False: asked.append(key_changed)
                        or [])
    watcher = supervisor.Supervisor(run)
    assert watcher.tick(1.0) and asked == [False]
    with run.log.open("a") as log:
        log.write(OTHER_KEY_LINE)
    assert watcher.tick(2.0) and watcher.tick(3.0)
    assert asked == [False, True, False]


def test_a_key_change_line_pluto_is_still_writing_is_read_whole_in_the_next_round(run, monkeypatch):
    asked: list[bool] = []
    monkeypatch.setattr(trust, "reattest_due", lambda cfg, run_dir, now, key_changed=False: asked.append(key_changed)
                        or [])
    watcher = supervisor.Supervisor(run)
    cut = OTHER_KEY_LINE.index("AUTHENTICATION") + 6  # the word that says so, in two writes
    with run.log.open("a") as log:
        log.write(OTHER_KEY_LINE[:cut])
    assert watcher.tick(1.0)
    with run.log.open("a") as log:
        log.write(OTHER_KEY_LINE[cut:])
    assert watcher.tick(2.0) and asked == [False, True]


def test_a_supervisor_ends_when_ikectl_is_down_or_replaced(run):
    watcher = supervisor.Supervisor(run)
    state = session.read_state(run)
    assert state is not None
    session.write_state(run, {**state, "supervisor_pid": os.getpid() + 1})  # a newer `up` started another
    assert not watcher.tick(1.0)
    run.state.unlink()
    assert not watcher.tick(2.0)


def test_a_blocked_coffee_shop_state_gets_no_upkeep(run, monkeypatch):
    """A failed switch to trusted mode left coffee-shop's state marked blocked: its upkeep would reload
    the opportunistic group that the switch deleted."""
    state = session.read_state(run)
    assert state is not None
    session.write_state(run, {**state, "mode": "coffee-shop", "config_path": None,
                              "blocked": {"mode": "trusted", "reason": "applying trusted mode failed: x"}})
    monkeypatch.setattr(daemon, "pluto_pid", lambda _run: 1)
    monkeypatch.setattr(supervisor.opportunistic, "upkeep", lambda *_: pytest.fail("upkeep while blocked"))
    assert supervisor.Supervisor(run).tick(1.0)
