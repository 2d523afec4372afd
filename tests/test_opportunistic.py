"""Coffee-shop upkeep (ikectl/opportunistic.py) against a fake pluto: its log, its policies, its whack."""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path

import pytest

from ikectl import daemon, opportunistic

A, B = "192.0.2.53", "192.0.2.54"
REFUSAL = (f'"private-or-clear#{A}/32-(0--17--53)"[1] ...{A} #2: IKE_AUTH response rejected Child SA '
           "with TS_UNACCEPTABLE\n")


class FakeWhack:
    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def reread_groups(self) -> None:
        self.calls.append(("reread",))

    def route(self, conn: str) -> None:
        self.calls.append(("route", conn))

    def delete(self, conn: str) -> None:
        self.calls.append(("delete", conn))


@pytest.fixture
def pluto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    run = daemon.RunDir(tmp_path)
    whack = FakeWhack()
    covered: set[str] = {A, B}
    monkeypatch.setattr(daemon.RunDir, "whack", lambda self: whack)
    monkeypatch.setattr(opportunistic, "policed",
                        lambda: {(ip_address(a), p) for a in covered for p in (6, 17)})
    run.log.write_text("")
    return run, whack, covered


def group(run: daemon.RunDir) -> str:
    return (run.root / opportunistic.GROUP_FILE).read_text()


def test_a_refused_child_sa_puts_the_resolver_in_clear_then_back_after_retry(pluto):
    run, whack, _ = pluto
    state = {"resolvers": [A, B]}
    assert opportunistic.upkeep(run, state, 60, now=1000.0).excluded == {}
    assert whack.calls == []  # nothing to do: nothing touched

    with run.log.open("a") as log:
        log.write(REFUSAL)
    record = opportunistic.upkeep(run, state, 60, now=1001.0)
    assert record.excluded == {A: opportunistic.Exclusion(until=1061.0, reason=opportunistic.REFUSED)}
    assert A not in group(run) and f"{B}/32 udp 0 53" in group(run)
    assert ("delete", f"private-or-clear#{A}/32-(0--17--53)") in whack.calls
    assert opportunistic.reason_for({**state, "opportunistic": record.to_state()}, A) == opportunistic.REFUSED

    whack.calls.clear()
    state["opportunistic"] = record.to_state()
    assert opportunistic.upkeep(run, state, 60, now=1030.0) == record and whack.calls == []  # not yet

    back = opportunistic.upkeep(run, state, 60, now=1061.0)
    assert back.excluded == {} and f"{A}/32 tcp 0 53" in group(run) and ("reread",) in whack.calls
    # The old refusal is before A was readmitted: it does not count again.
    state["opportunistic"] = back.to_state()
    assert opportunistic.upkeep(run, state, 60, now=1062.0).excluded == {}


def test_a_group_pluto_dropped_is_reloaded_after_retry(pluto):
    run, whack, covered = pluto
    state = {"resolvers": [A]}
    covered.discard(A)  # liveness cleared the instance and pluto routed no trap again
    record = opportunistic.upkeep(run, state, 10, now=500.0)
    assert record.lost_at == {A: 500.0} and whack.calls == []
    state["opportunistic"] = record.to_state()
    assert opportunistic.upkeep(run, state, 10, now=505.0).lost_at == {A: 500.0}
    reloaded = opportunistic.upkeep(run, state, 10, now=510.0)
    assert reloaded.lost_at == {} and whack.calls[:2] == [("reread",), ("route", "private-or-clear")]


def test_a_record_survives_state_json():
    record = opportunistic.Upkeep(excluded={A: opportunistic.Exclusion(5.0, "why")}, log_offset={A: 7},
                                  lost_at={B: 3.0})
    assert opportunistic.Upkeep.from_state({"opportunistic": record.to_state()}) == record


def test_each_round_reads_on_from_the_last_and_only_whole_lines(pluto):
    """The supervisor's rounds read what pluto wrote since the previous round, never the whole log again;
    a line pluto is still writing is read once it is complete."""
    run, _, _ = pluto
    run.log.write_text("x" * 100_000 + "\n")
    state: dict = {"resolvers": [A, B]}
    record = opportunistic.upkeep(run, state, 60, now=1000.0)
    assert record.log_offset == {A: 100_001, B: 100_001}
    state["opportunistic"] = record.to_state()
    with run.log.open("a") as log:
        log.write(REFUSAL[:40])  # pluto is in the middle of the line
    record = opportunistic.upkeep(run, state, 60, now=1001.0)
    assert record.excluded == {} and record.log_offset == {A: 100_001, B: 100_001}
    state["opportunistic"] = record.to_state()
    with run.log.open("a") as log:
        log.write(REFUSAL[40:])
    record = opportunistic.upkeep(run, state, 60, now=1002.0)
    assert set(record.excluded) == {A} and record.log_offset[B] == 100_001 + len(REFUSAL)


def test_a_log_shorter_than_the_offsets_is_read_from_its_start(pluto):
    """pluto restarted and began a new log: the recorded offsets point past its end."""
    run, _, _ = pluto
    run.log.write_text(REFUSAL)
    state = {"resolvers": [A], "opportunistic": opportunistic.Upkeep(log_offset={A: 500_000}).to_state()}
    assert set(opportunistic.upkeep(run, state, 60, now=1000.0).excluded) == {A}


def test_a_log_that_cannot_be_read_keeps_the_offsets(pluto):
    """A round that cannot read pluto's log reads nothing and moves no offset: rewound to 0, the next round
    would count a refusal from before the resolver's readmission again."""
    run, _, _ = pluto
    run.log.write_text(REFUSAL)
    state = {"resolvers": [A], "opportunistic": opportunistic.Upkeep(log_offset={A: len(REFUSAL)}).to_state()}
    run.log.rename(run.log.with_suffix(".away"))
    assert opportunistic.upkeep(run, state, 60, now=1000.0).log_offset == {A: len(REFUSAL)}
    run.log.with_suffix(".away").rename(run.log)
    assert opportunistic.upkeep(run, state, 60, now=1001.0).excluded == {}


def test_a_readmitted_resolver_reads_on_from_the_last_whole_line(pluto):
    """Readmitted, a resolver is read from the log's last complete line: an old refusal does not count
    again, and a line pluto is still writing is read whole, never from its middle."""
    run, _, _ = pluto
    run.log.write_text(REFUSAL + REFUSAL[:40])
    out = opportunistic.Upkeep(excluded={A: opportunistic.Exclusion(1060.0, opportunistic.REFUSED)},
                               log_offset={A: 0})
    state = {"resolvers": [A], "opportunistic": out.to_state()}
    assert opportunistic.upkeep(run, state, 60, now=1030.0) == out
    back = opportunistic.upkeep(run, state, 60, now=1061.0)
    assert back.excluded == {} and back.log_offset == {A: len(REFUSAL)}
