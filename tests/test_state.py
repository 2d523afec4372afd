"""The run state's store (ikectl/state.py): the typed record round-trips, writes are atomic and leave nothing
behind, anything that is not a record of this version reads as Unreadable (never an exception), one lock."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from dataclasses import replace
from ipaddress import ip_address
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ikectl.config import Mode
from ikectl.state import (
    SCHEMA_VERSION,
    Baseline,
    Blocked,
    Exclusion,
    Interference,
    RunState,
    StateBusy,
    StateError,
    StateStore,
    Unreadable,
    Upkeep,
    netns_id,
)

FULL = RunState(
    mode=Mode.COFFEE_SHOP, resolvers=(ip_address("192.0.2.53"), ip_address("2001:db8::53")), run_dir=Path("/run/x"),
    up_at=1000.5, baseline=Baseline(True, ("135 OUT", "136 IN")), trusted=(),
    managed=frozenset({ip_address("192.0.2.53"), ip_address("198.51.100.9")}), pluto_pid=42, supervisor_pid=43,
    config_path=Path("/etc/ikectl/ikectl.toml"), retry_after_s=30,
    upkeep=Upkeep({"192.0.2.53": Exclusion(2000.0, "refused")}, {"192.0.2.53": 77}, {"2001:db8::53": 3.0},
                  {"2001:db8::53": 4.0}),
    unprotected={"2001:db8::53": "no route to it"}, blocked=Blocked("why", 5.0, "home"), esp_refused="no gcm",
    portal_until=6.0, interference=(Interference(7.0, "flushed"),))


def test_a_record_round_trips(tmp_path: Path):
    store = StateStore(tmp_path, 4026531840)
    store.write(FULL)
    assert store.read() == FULL
    assert json.loads(store.path.read_text())["version"] == SCHEMA_VERSION
    assert sorted(p.name for p in tmp_path.iterdir()) == [store.path.name]  # no temp file left behind


def test_a_trusted_record_keeps_every_pinned_address_and_reads_one_written_before_there_could_be_several(
        tmp_path: Path):
    store = StateStore(tmp_path, 4026531840)
    pinned = (ip_address("192.0.2.53"), ip_address("198.51.100.53"))
    trusted = replace(FULL, mode=Mode.TRUSTED, trusted=pinned, resolvers=pinned)
    store.write(trusted)
    assert store.read() == trusted
    older = {k: v for k, v in trusted.to_json().items() if k != "trusted_also"}
    assert older["trusted"] == "192.0.2.53"  # what an older ikectl reads
    store.path.write_text(json.dumps(older))
    assert store.read() == replace(trusted, trusted=pinned[:1])


def test_each_network_namespace_has_its_own_record(tmp_path: Path):
    one, other = StateStore(tmp_path, 1), StateStore(tmp_path, 2)
    one.write(FULL)
    assert other.read() is None and one.read() == FULL
    assert StateStore.here().netns == netns_id() != os.stat("/proc/self/ns/net").st_ino  # the cookie, not the inode


def test_interference_keeps_the_latest_few():
    state = FULL
    for n in range(20):
        state = state.noting(f"event {n}", float(n))
    assert [i.what for i in state.interference] == [f"event {n}" for n in range(12, 20)]


@pytest.mark.parametrize("content", [
    b"", b"{", b"[]", b'{"version": 1, "mode": "trusted"}', b"\xff\xfe binary",
    json.dumps({**FULL.to_json(), "mode": "paranoid"}).encode(),
    json.dumps({**FULL.to_json(), "pluto_pid": True}).encode(),
    json.dumps({**FULL.to_json(), "resolvers": ["not an address"]}).encode(),
    json.dumps({k: v for k, v in FULL.to_json().items() if k != "baseline"}).encode(),
])
def test_anything_but_a_record_of_this_version_is_unreadable(tmp_path: Path, content: bytes):
    store = StateStore(tmp_path, 1)
    tmp_path.joinpath(store.path.name).write_bytes(content)
    found = store.read()
    assert isinstance(found, Unreadable) and str(store.path) in found.why


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                max_size=6), max_leaves=30)


def read_back(tmp_path: Path, document: object) -> RunState | Unreadable | None:
    store = StateStore(tmp_path, 1)
    store.root.mkdir(exist_ok=True)
    store.path.write_text(json.dumps(document))
    return store.read()


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_fuzzed_documents_read_as_unreadable(tmp_path_factory: pytest.TempPathFactory, document: object):
    assert isinstance(read_back(tmp_path_factory.mktemp("s"), document), Unreadable)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(FULL.to_json())), JSON)
def test_a_record_with_one_field_changed_reads_as_a_record_or_as_unreadable(
        tmp_path_factory: pytest.TempPathFactory, key: str, value: object):
    found = read_back(tmp_path_factory.mktemp("s"), {**FULL.to_json(), key: value})
    assert isinstance(found, RunState | Unreadable)
    if isinstance(found, RunState):  # what was read is what a write of it gives back
        assert RunState.from_json(found.to_json()) == found


def _hold(path: str, seconds: float) -> None:
    store = StateStore(Path(path), 1)
    with store.lock():
        time.sleep(seconds)


def test_the_lock_is_one_and_a_bounded_wait_gives_up(tmp_path: Path):
    store = StateStore(tmp_path, 1)
    holder = multiprocessing.get_context("fork").Process(target=_hold, args=(str(tmp_path), 1.0))
    holder.start()
    deadline = time.monotonic() + 5
    while not store.lock_path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    started = time.monotonic()
    with pytest.raises(StateBusy, match=r"held by another ikectl \(pid \d+\) for over 0\.2 s"), \
            store.lock(wait_s=0.2):
        pass
    assert 0.2 <= time.monotonic() - started < 0.9
    with store.lock(wait_s=5):  # free once the holder is done
        pass
    holder.join(5)


def test_a_state_directory_that_cannot_take_the_record_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateError, match="not a directory ikectl can write"):
        StateStore(blocker, 1).check()
    with pytest.raises(StateError, match="cannot make it"):
        StateStore(blocker / "below", 1).check()


def test_the_lock_names_its_holder_and_a_stuck_one_can_be_ended(tmp_path):
    store = StateStore(tmp_path, 1)
    holder = multiprocessing.get_context("fork").Process(target=_hold, args=(str(tmp_path), 30.0))
    holder.start()
    deadline = time.monotonic() + 5
    while store.holder() != holder.pid and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(StateBusy, match=rf"held by another ikectl \(pid {holder.pid}\)"), store.lock(wait_s=0.3):
        pass
    asked: list[int] = []

    def unstick(pid: int) -> bool:
        asked.append(pid)
        os.kill(pid, 9)  # what daemon.end_if_stuck does to a stopped supervisor
        holder.join(5)
        return True

    with store.lock(wait_s=10, unstick=unstick):
        assert store.holder() == os.getpid()
    assert asked == [holder.pid]


def test_the_baseline_is_kept_once_and_read_back(tmp_path):
    store = StateStore(tmp_path, 1)
    assert store.baseline() is None
    assert store.keep_baseline(Baseline(True, ("135 OUT",), 7)) == Baseline(True, ("135 OUT",), 7)
    assert store.keep_baseline(Baseline(False)) == Baseline(True, ("135 OUT",), 7)  # the first one stays
    store.remove()
    assert store.baseline() is None


def test_a_baseline_cut_short_leaves_none_that_down_would_misread(tmp_path, monkeypatch):
    """Written like the record (temporary file, fsync, rename): a crash in the middle leaves no half file, which
    `down` would read as no baseline at all, and so never put larval drop back."""
    store = StateStore(tmp_path, 1)

    def power_cut(*_: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", power_cut)
    with pytest.raises(StateError, match=r"baseline\.json: cannot write it"):
        store.keep_baseline(Baseline(True, ("135 OUT",), 7))
    assert store.baseline() is None and list(tmp_path.iterdir()) == []  # no half file, no temporary left
    monkeypatch.undo()
    assert store.keep_baseline(Baseline(True, ("135 OUT",), 7)) == store.baseline() == Baseline(True, ("135 OUT",), 7)


def test_a_baseline_written_before_acq_expires_was_kept_reads_as_the_kernels_default(tmp_path):
    store = StateStore(tmp_path, 1)
    store.baseline_path.write_text(json.dumps({"larval_drop": True, "nd_bypass": []}))
    assert store.baseline() == Baseline(True, (), 30)


def test_busy_elsewhere_tells_another_process_holding_the_lock_from_this_one(tmp_path):
    """The supervisor's watcher leaves the backstops alone while a coffee-shop `up` or a `down` holds the lock."""
    store = StateStore(tmp_path, 1)
    assert not store.busy_elsewhere()  # no lock file yet
    with store.lock():
        assert not store.busy_elsewhere()  # this process holds it
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); "
         "fcntl.flock(fd, fcntl.LOCK_EX); os.pwrite(fd, f'{os.getpid()}\\n'.encode(), 0); print(flush=True); "
         "time.sleep(60)", str(store.lock_path)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"\n"
        assert store.busy_elsewhere()
    finally:
        holder.kill()
        holder.wait()
    assert not store.busy_elsewhere()
