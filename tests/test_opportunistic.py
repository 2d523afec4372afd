"""Coffee-shop upkeep (ikectl/opportunistic.py) against a fake pluto: its log, the kernel's policies (given to
`upkeep` as the table it read), its whack. The kernel's boundary (deleting a policy) is recorded, not done."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import ip_address
from pathlib import Path

import pytest

from ikecommon.xfrm import Direction, Policy, Selector, Template
from ikectl import daemon, opportunistic
from ikectl.config import Mode
from ikectl.state import Baseline, Exclusion, RunState, Upkeep

A, B = "192.0.2.53", "192.0.2.54"
REFUSAL = (f'"private-or-clear#{A}/32-(0--17--53)"[1] ...{A} #2: IKE_AUTH response rejected Child SA '
           "with TS_UNACCEPTABLE\n")
ESP_REFUSAL = (f'ERROR: "private-or-clear#{A}/32-(0--17--53)"[1] ...{A} #2: netlink response for Add SA '
               f"esp.5c05828d@{A}: Function not implemented (errno 38)\n")
LIVENESS_FAILED = (f'"private-or-clear#{A}/32-(0--17--53)"[1] ...{A} #1: liveness action - clearing connection kind '
                   "CK_INSTANCE\n")  # as pluto 4.10 wrote it in the VM
LATE_AUTH = (f'"private-or-clear#{A}/32-(0--17--53)"[1] ...{A} #1: STATE_V2_PARENT_I2: 0.3 second timeout exceeded '
             "after 1 retransmits.  Possible authentication failure: no acceptable response to our first encrypted "
             "message\n")  # as pluto 4.10 wrote it in the VM
ESTABLISHED = (f'"private-or-clear#{A}/32-(0--17--53)"[1] ...{A} #4: initiator established Child SA using #3; '
               "IPsec tunnel [10.0.0.1-10.0.0.1:0-65535 0] -> [192.0.2.53-192.0.2.53:53-53 17]\n")


def trap(address: str, proto: int) -> Policy:
    return Policy(Selector.of("10.0.0.1/32", f"{address}/32", proto, dport=53), Direction.OUT, 3457217,
                  templates=(Template(),))


def clear_fallback(address: str, proto: int) -> Policy:
    """libreswan 4.10's clear-fallback shunt: the whole protocol, priority 0, no template (measured)."""
    return Policy(Selector.of("10.0.0.1/32", f"{address}/32", proto), Direction.OUT, 0)


def traps(*addresses: str) -> list[Policy]:
    return [trap(a, proto) for a in addresses for proto in (6, 17)]


def record(*resolvers: str, retry: int = 60, upkeep: Upkeep | None = None) -> RunState:
    return RunState(Mode.COFFEE_SHOP, tuple(ip_address(a) for a in resolvers), Path("/run/x"), 0.0,
                    Baseline(True), retry_after_s=retry, upkeep=upkeep or Upkeep())


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
    deleted: list[Policy] = []
    monkeypatch.setattr(daemon.RunDir, "whack", lambda self, timeout_s=15.0: whack)
    monkeypatch.setattr(opportunistic, "_delete", deleted.extend)
    run.log.write_text("")
    return run, whack, deleted


def group(run: daemon.RunDir) -> str:
    return (run.root / "ipsec.d/policies/private-or-clear").read_text()


def test_a_refused_child_sa_puts_the_resolver_in_clear_then_back_after_retry(pluto):
    run, whack, _ = pluto
    state = record(A, B)
    assert opportunistic.upkeep(run, state, traps(A, B), now=1000.0).excluded == {}
    assert whack.calls == []  # nothing to do: nothing touched

    with run.log.open("a") as log:
        log.write(REFUSAL)
    kept = opportunistic.upkeep(run, state, traps(A, B), now=1001.0)
    assert kept.excluded == {A: Exclusion(until=1061.0, reason=opportunistic.REFUSED)}
    assert A not in group(run) and f"{B}/32 udp 0 53" in group(run)
    assert ("delete", f"private-or-clear#{A}/32-(0--17--53)") in whack.calls

    whack.calls.clear()
    state = replace(state, upkeep=kept)
    assert opportunistic.upkeep(run, state, traps(B), now=1030.0) == kept and whack.calls == []  # not yet

    back = opportunistic.upkeep(run, state, traps(B), now=1061.0)
    assert back.excluded == {} and f"{A}/32 tcp 0 53" in group(run) and ("reread",) in whack.calls
    # The old refusal is before A was readmitted: it does not count again.
    state = replace(state, upkeep=back)
    assert opportunistic.upkeep(run, state, traps(A, B), now=1062.0).excluded == {}


def test_a_refusal_of_ups_own_negotiation_excludes_a_resolver_whose_exclusion_ran_out(pluto):
    """The walk (seed 422190952): `up` ran after A's exclusion ran out and before a supervisor round readmitted it,
    so `up` put A back in the group and negotiated; A refused again. Read from the end of the log, that refusal was
    skipped: A stayed in the group while pluto held its DNS and ignored every later ACQUIRE as a duplicate."""
    run, whack, _ = pluto
    run.log.write_text(REFUSAL)  # the refusal that excluded A, before this `up`
    loaded_at = run.log.stat().st_size  # `up` loads the groups with A in them, and negotiates
    with run.log.open("a") as log:
        log.write(REFUSAL)
    state = record(A, B, retry=5, upkeep=Upkeep(excluded={A: Exclusion(until=1000.0, reason=opportunistic.REFUSED)},
                                                 log_offset={A: loaded_at}))
    kept = opportunistic.upkeep(run, state, traps(A, B), now=1001.0, loaded_at=loaded_at)
    assert kept.excluded == {A: Exclusion(until=1006.0, reason=opportunistic.REFUSED)}
    assert A not in group(run) and ("delete", f"private-or-clear#{A}/32-(0--17--53)") in whack.calls
    # Nothing since `up` loaded the groups: readmitted, and the old refusal does not count again.
    run.log.write_text(REFUSAL)
    assert opportunistic.upkeep(run, state, traps(A, B), now=1001.0, loaded_at=loaded_at).excluded == {}


def test_a_kernel_that_refuses_the_esp_sa_puts_the_resolver_in_clear(pluto):
    """IKE completes and pluto's Add SA fails (no ESP in the kernel): pluto holds the query, DNS would be
    blackholed (every query timed out for 50 s, measured on this host). The resolver goes to clear."""
    run, _, _ = pluto
    run.log.write_text(ESP_REFUSAL)
    kept = opportunistic.upkeep(run, record(A), traps(A), now=1000.0)
    assert kept.excluded == {A: Exclusion(until=1060.0, reason=opportunistic.ESP_REFUSED)}


def test_a_clear_fallback_pluto_forgot_is_deleted_after_retry_so_ike_is_tried_again(pluto):
    """libreswan 4.10 forgets an expired clear-fallback shunt but leaves its priority-0 pass policy in the
    kernel, where it outranks the trap for ever (measured: 40 queries over 80 s in clear, no IKE). Once it is
    retry_after_s old it is deleted and the group routed again: the next query meets the trap."""
    run, whack, deleted = pluto
    table = [clear_fallback(A, 17), clear_fallback(A, 6), trap(A, 17), trap(A, 6)]
    first = opportunistic.upkeep(run, record(A, retry=5), table, now=100.0)
    assert first.clear_since == {A: 100.0} and deleted == [] and whack.calls == []
    assert opportunistic.retry_at(replace(record(A, retry=5), upkeep=first), A) == 105.0
    state = replace(record(A, retry=5), upkeep=first)
    assert opportunistic.upkeep(run, state, table, now=104.0).clear_since == {A: 100.0} and deleted == []
    due = opportunistic.upkeep(run, state, table, now=105.0)
    assert deleted == table[:2] and due.clear_since == {}
    assert ("route", "private-or-clear") in whack.calls


def test_a_late_ike_auth_answer_gets_ike_tried_again_soon_backing_off_while_it_stays_late(pluto):
    """The resolver answered IKE_SA_INIT, its IKE_AUTH answer came after ike_timeout_ms: pluto fell back to clear
    while the resolver finished the exchange and now drops this client's clear DNS (in the VM: 12 of 12 queries
    unanswered over 24 s). The clear fallback stands 1 s, not retry_after_s; then 2 s while answers stay late."""
    run, whack, deleted = pluto
    table = [clear_fallback(A, 17), clear_fallback(A, 6), trap(A, 17), trap(A, 6)]
    state = record(A, retry=60)
    run.log.write_text(LATE_AUTH)
    first = opportunistic.upkeep(run, state, table, now=100.0)
    assert first.late_auth == {A: 1} and first.clear_since == {A: 100.0} and deleted == []
    assert opportunistic.retry_at(replace(state, upkeep=first), A) == 101.0
    state = replace(state, upkeep=first)
    again = opportunistic.upkeep(run, state, table, now=101.0)
    assert deleted == table[:2] and ("route", "private-or-clear") in whack.calls
    assert again.late_auth == {A: 1}  # the same late answer is not counted twice
    with run.log.open("a") as log:
        log.write(LATE_AUTH)  # IKE tried again, and again too late
    state = replace(state, upkeep=again)
    second = opportunistic.upkeep(run, state, table, now=102.0)
    assert second.late_auth == {A: 2} and opportunistic.retry_at(replace(state, upkeep=second), A) == 104.0
    with run.log.open("a") as log:
        log.write(ESTABLISHED)
    settled = opportunistic.upkeep(run, replace(state, upkeep=second), traps(A), now=103.0)
    assert settled.late_auth == {} and settled.clear_since == {}


def test_the_retry_after_late_answers_backs_off_to_retry_after_s():
    assert [opportunistic.clear_retry_s(60, n) for n in range(9)] == [60, 1, 2, 4, 8, 16, 32, 60, 60]
    assert opportunistic.clear_retry_s(5, 10_000) == 5


def test_a_group_pluto_dropped_is_reloaded_after_retry(pluto):
    run, whack, _ = pluto
    run.log.write_text(LIVENESS_FAILED)
    state = record(A, retry=10)  # liveness cleared the instance and pluto routed no trap again: no policy
    kept = opportunistic.upkeep(run, state, [], now=500.0)
    assert kept.lost_at == {A: 500.0} and whack.calls == []
    state = replace(state, upkeep=kept)
    assert opportunistic.upkeep(run, state, [], now=505.0).lost_at == {A: 500.0}
    reloaded = opportunistic.upkeep(run, state, [], now=510.0)
    assert reloaded.lost_at == {} and whack.calls[:2] == [("reread",), ("route", "private-or-clear")]


def test_policies_another_program_removed_are_not_the_upkeeps(pluto):
    """No liveness failure in pluto's log: the supervisor loads the group again (plan.unrouted), not the upkeep."""
    run, whack, _ = pluto
    kept = opportunistic.upkeep(run, record(A, retry=10), [], now=500.0)
    assert kept.lost_at == {} and whack.calls == []


def test_a_clear_fallback_counts_as_covered_not_lost(pluto):
    """The clear-fallback shunt has no port (the whole protocol): it is pluto's decision, not a lost group."""
    run, whack, _ = pluto
    kept = opportunistic.upkeep(run, record(A), [clear_fallback(A, 17), clear_fallback(A, 6)], now=500.0)
    assert kept.lost_at == {} and whack.calls == []


def test_each_round_reads_on_from_the_last_and_only_whole_lines(pluto):
    """The supervisor's rounds read what pluto wrote since the previous round, never the whole log again;
    a line pluto is still writing is read once it is complete."""
    run, _, _ = pluto
    run.log.write_text("x" * 100_000 + "\n")
    state = record(A, B)
    kept = opportunistic.upkeep(run, state, traps(A, B), now=1000.0)
    assert kept.log_offset == {A: 100_001, B: 100_001}
    state = replace(state, upkeep=kept)
    with run.log.open("a") as log:
        log.write(REFUSAL[:40])  # pluto is in the middle of the line
    kept = opportunistic.upkeep(run, state, traps(A, B), now=1001.0)
    assert kept.excluded == {} and kept.log_offset == {A: 100_001, B: 100_001}
    state = replace(state, upkeep=kept)
    with run.log.open("a") as log:
        log.write(REFUSAL[40:])
    kept = opportunistic.upkeep(run, state, traps(A, B), now=1002.0)
    assert set(kept.excluded) == {A} and kept.log_offset[B] == 100_001 + len(REFUSAL)


def test_a_log_shorter_than_the_offsets_is_read_from_its_start(pluto):
    """pluto restarted and began a new log: the recorded offsets point past its end."""
    run, _, _ = pluto
    run.log.write_text(REFUSAL)
    state = record(A, upkeep=Upkeep(log_offset={A: 500_000}))
    assert set(opportunistic.upkeep(run, state, traps(A), now=1000.0).excluded) == {A}


def test_a_log_that_cannot_be_read_keeps_the_offsets(pluto):
    """A round that cannot read pluto's log reads nothing and moves no offset: rewound to 0, the next round
    would count a refusal from before the resolver's readmission again."""
    run, _, _ = pluto
    run.log.write_text(REFUSAL)
    state = record(A, upkeep=Upkeep(log_offset={A: len(REFUSAL)}))
    run.log.rename(run.log.with_suffix(".away"))
    assert opportunistic.upkeep(run, state, traps(A), now=1000.0).log_offset == {A: len(REFUSAL)}
    run.log.with_suffix(".away").rename(run.log)
    assert opportunistic.upkeep(run, state, traps(A), now=1001.0).excluded == {}


def test_a_readmitted_resolver_reads_on_from_the_last_whole_line(pluto):
    """Readmitted, a resolver is read from the log's last complete line: an old refusal does not count
    again, and a line pluto is still writing is read whole, never from its middle."""
    run, _, _ = pluto
    run.log.write_text(REFUSAL + REFUSAL[:40])
    out = Upkeep(excluded={A: Exclusion(1060.0, opportunistic.REFUSED)}, log_offset={A: 0})
    state = record(A, upkeep=out)
    assert opportunistic.upkeep(run, state, [], now=1030.0) == out
    back = opportunistic.upkeep(run, state, [], now=1061.0)
    assert back.excluded == {} and back.log_offset == {A: len(REFUSAL)}


def test_a_group_rendered_for_an_address_this_host_no_longer_sends_from_has_moved(pluto, monkeypatch):
    """The client's address changed since `up`: pluto cannot load the group again (the supervisor must not try
    every second), and status says what to do."""
    run, _, _ = pluto
    run.conf.write_text("conn private-or-clear\n\tleft=10.0.0.1\n\tauto=ondemand\n")
    now = {4: ip_address("10.0.0.9")}
    monkeypatch.setattr(opportunistic.routes, "source_address", lambda a: now.get(a.version))
    v4, v6 = ip_address(A), ip_address("2001:db8::53")
    assert opportunistic.moved_groups(run, [v4, v6]) == {"private-or-clear": (ip_address("10.0.0.1"), now[4])}
    now[4] = ip_address("10.0.0.1")
    assert opportunistic.moved_groups(run, [v4, v6]) == {}

