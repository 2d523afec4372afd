"""The supervisor's rounds against a fake trust layer and a fake kernel boundary: re-attestation is asked for every
round, with `key_changed` exactly once per new 'different key' line in pluto's log; it ends when ikectl is down or
replaced; a blocked record gets no upkeep; the netlink messages that wake it are the removals only. The repairs
themselves run against the real kernel in netns_tests/test_reconcile.py."""

from __future__ import annotations

import os
import struct
from dataclasses import replace
from ipaddress import ip_address
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ikecommon import xfrm
from ikectl import backstop, daemon, nft, plan, policies, session, supervisor, trust
from ikectl.config import Mode
from ikectl.state import Baseline, Blocked, RunState, StateStore

OTHER_KEY_LINE = '"ikectl-trusted-udp" #1: IKE SA authentication request rejected by peer: AUTHENTICATION_FAILED\n'


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> daemon.RunDir:
    run = daemon.RunDir(tmp_path / "run")
    run.root.mkdir()
    config = tmp_path / "ikectl.toml"
    config.write_text(f'[paths]\nrun_dir = "{run.root}"\n')
    StateStore.here().write(RunState(Mode.TRUSTED, (ip_address("192.0.2.53"),), run.root, 1.0, Baseline(True),
                                     trusted=(ip_address("192.0.2.53"),), supervisor_pid=os.getpid(),
                                     config_path=config))
    run.log.write_text("pluto started\n")
    # The kernel and pluto, as the rounds see them: nothing to repair.
    monkeypatch.setattr(session, "gather", lambda run_dir: plan.Facts())
    monkeypatch.setattr(daemon, "pluto_pid", lambda _run: None)
    return run


def test_reattestation_each_round_and_key_changes_once_per_new_line(run, monkeypatch):
    asked: list[bool] = []
    monkeypatch.setattr(trust, "reattest_due", lambda cfg, now, key_changed=False: asked.append(key_changed) or [])
    watcher = supervisor.Supervisor(run)
    assert watcher.tick(1.0) and asked == [False]
    with run.log.open("a") as log:
        log.write(OTHER_KEY_LINE)
    assert watcher.tick(2.0) and watcher.tick(3.0)
    assert asked == [False, True, False]


def test_a_key_change_line_pluto_is_still_writing_is_read_whole_in_the_next_round(run, monkeypatch):
    asked: list[bool] = []
    monkeypatch.setattr(trust, "reattest_due", lambda cfg, now, key_changed=False: asked.append(key_changed) or [])
    watcher = supervisor.Supervisor(run)
    cut = OTHER_KEY_LINE.index("AUTHENTICATION") + 6  # the word that says so, in two writes
    with run.log.open("a") as log:
        log.write(OTHER_KEY_LINE[:cut])
    assert watcher.tick(1.0)
    with run.log.open("a") as log:
        log.write(OTHER_KEY_LINE[cut:])
    assert watcher.tick(2.0) and asked == [False, True]


def test_a_trusted_round_holds_the_guard_table_through_nft_and_never_a_real_one_here(run, monkeypatch,
                                                                                     no_owned_tables):
    monkeypatch.setattr(trust, "reattest_due", lambda *_, **__: [])
    assert supervisor.Supervisor(run).tick(1.0)
    assert no_owned_tables.made == [nft.GUARD]


def test_a_supervisor_ends_when_ikectl_is_down_or_replaced(run, monkeypatch):
    monkeypatch.setattr(trust, "reattest_due", lambda *_, **__: [])
    watcher = supervisor.Supervisor(run)
    store = StateStore.here()
    record = store.read()
    assert isinstance(record, RunState)
    store.write(replace(record, supervisor_pid=os.getpid() + 1))  # a newer `up` started another
    assert not watcher.tick(1.0)
    store.remove()
    assert not watcher.tick(2.0)


def test_a_blocked_record_gets_no_upkeep_and_no_reattestation(run, monkeypatch):
    """A failed switch to trusted mode left the record blocked: coffee-shop's upkeep would reload the
    opportunistic group that the switch deleted, and re-attestation would reload trusted mode behind the
    user's back."""
    store = StateStore.here()
    record = store.read()
    assert isinstance(record, RunState)
    store.write(replace(record, blocked=Blocked("applying trusted mode failed: x", 1.0)))
    monkeypatch.setattr(supervisor.opportunistic, "upkeep", lambda *_: pytest.fail("upkeep while blocked"))
    monkeypatch.setattr(trust, "reattest_due", lambda *_, **__: pytest.fail("re-attestation while blocked"))
    assert supervisor.Supervisor(run).tick(1.0)


def test_a_record_blocked_by_a_failed_pin_is_re_attested_so_trusted_mode_can_come_back(run, monkeypatch):
    """The pin failed (an endpoint down for a while, a measurement revoked): trusted mode is blocked, and the
    supervisor keeps re-attesting the pin, which reapplies trusted mode once it verifies again."""
    store = StateStore.here()
    record = store.read()
    assert isinstance(record, RunState)
    store.write(replace(record, blocked=Blocked("pin 'home' failed attestation: x", 1.0, pin="home")))
    asked: list[bool] = []
    monkeypatch.setattr(supervisor.opportunistic, "upkeep", lambda *_: pytest.fail("upkeep while blocked"))
    monkeypatch.setattr(trust, "reattest_due", lambda cfg, now, key_changed=False: asked.append(key_changed) or [])
    assert supervisor.Supervisor(run).tick(1.0) and asked == [False]


def test_a_pluto_that_dies_after_trusted_mode_failed_closed_is_not_started_again(run, monkeypatch):
    """The adversarial review: the failed trusted `up` had put coffee-shop's tree back on disk (its undo), and
    starting pluto from it brought back the opportunistic groups, whose clear fallbacks outrank the backstop."""
    store = StateStore.here()
    record = store.read()
    assert isinstance(record, RunState)
    store.write(replace(record, pluto_pid=123, blocked=Blocked("applying trusted mode failed: x", 1.0)))
    run.conf.write_text("conn private-or-clear\n")
    monkeypatch.setattr(daemon, "start_pluto", lambda _run: pytest.fail("pluto started while blocked"))
    assert supervisor.Supervisor(run).tick(10.0)


def header(kind: int, length: int = 16) -> bytes:
    return struct.pack("=IHHII", length, kind, 0, 0, 0)


def test_only_removals_wake_a_round():
    """pluto adds and updates policies all the time; only deletes, flushes and nftables removals matter."""
    assert not supervisor.removals(header(0x13) + header(0x19))  # XFRM_MSG_NEWPOLICY, XFRM_MSG_UPDPOLICY
    assert supervisor.removals(header(0x13) + header(0x1D))  # ..., XFRM_MSG_FLUSHPOLICY
    assert supervisor.removals(header(0x14))  # XFRM_MSG_DELPOLICY
    assert supervisor.removals(header((10 << 8) | 2))  # NFT_MSG_DELTABLE (nft flush ruleset)
    assert not supervisor.removals(header((10 << 8) | 0) + header((10 << 8) | 15))  # NEWTABLE, NEWGEN
    assert not supervisor.removals(b"\x00" * 7)  # short junk


VECTORS = Path(__file__).parent / "vectors"


def captured(kind: str, stem: str) -> bytes:
    """What the kernel sent to an event socket (tests/vectors/{xfrm,nft}/capture.py)."""
    return bytes.fromhex((VECTORS / kind / f"{stem}.hex").read_text().splitlines()[-1])


def test_the_watcher_counts_backstop_policies_from_the_kernels_own_events():
    """A flush takes all of them; a delete of one of ours, that one; anyone else's policy, none (pluto deletes its
    own all the time); events that do not decode cannot tell, and the table is read instead."""
    flush = captured("xfrm", "kernel-event-policy-flush")
    delete = captured("xfrm", "kernel-event-policy-delete-backstop")
    assert supervisor.xfrm_news(flush) == supervisor.XfrmNews(len(backstop.policies()))
    assert supervisor.xfrm_news(delete) == supervisor.XfrmNews(1)
    assert supervisor.xfrm_news(delete + flush).lost == len(backstop.policies())  # never more than there are
    assert supervisor.xfrm_news(captured("xfrm", "kernel-event-policy-delete-block")) == supervisor.XfrmNews(0)
    assert supervisor.xfrm_news(delete[:-8]) == supervisor.XfrmNews(None)
    assert supervisor.xfrm_news(b"") == supervisor.XfrmNews(0)


def test_the_watcher_sees_a_clear_pass_for_dns_being_added():
    """pluto's clear fallback outranks the XFRM backstop: while the backstops are wanted it is removed at once."""
    news = supervisor.xfrm_news(captured("xfrm", "kernel-event-policy-add-clear-pass"))
    assert news.lost == 0 and len(news.passes) == 1
    assert policies.pluto_dns_peer(news.passes[0]) == ip_address("10.1.0.53")


@pytest.mark.parametrize(("stem", "removed", "added"), [
    ("event-ikectl-table-load", True, True),  # `add table; delete table; table {...}`: one transaction
    ("event-ikectl-table-reload", True, True),
    ("event-flush-ruleset", True, False),
    ("event-ikectl-rule-delete", True, False),
    ("event-other-tables", False, False),  # another table, and a table of ours' name in another family
])
def test_nftables_events_are_read_for_ikectls_table_alone(stem, removed, added):
    assert nft.table_events(captured("nft", stem)) == nft.TableEvents(removed, added)


def test_nftables_events_that_do_not_parse_send_the_watcher_to_look():
    whole = captured("nft", "event-ikectl-rule-delete")
    assert nft.table_events(whole[:-3]) == nft.TableEvents(True, True)
    assert nft.table_events(whole[:20]) == nft.TableEvents(True, True)
    assert nft.table_events(b"") == nft.TableEvents(False, False)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400), st.integers(min_value=0, max_value=400))
def test_event_readers_never_raise_on_any_bytes(junk, cut):
    """The watcher thread reads whatever the kernel (or a lost, cut burst) gives it: no input may stop it."""
    for data in (junk, captured("nft", "event-flush-ruleset")[:cut] + junk):
        nft.table_events(data)
        assert supervisor.removals(data) in (True, False)
    for data in (junk, captured("xfrm", "kernel-event-policy-delete-backstop")[:cut] + junk):
        news = supervisor.xfrm_news(data)
        assert news.lost is None or 0 <= news.lost <= len(backstop.policies())


class FakeTable:
    """The OS boundary of XfrmHit: the kernel's policy table as a list, and a prepared batch that fills it."""

    def __init__(self, present: list[xfrm.Policy]) -> None:
        self.present, self.sent = present, 0

    def policies(self) -> list[xfrm.Policy]:
        return self.present

    def put_back(self) -> None:
        self.sent += 1
        self.present = backstop.policies()


@pytest.mark.parametrize(("losses", "present", "sent", "told"), [
    ([0], "all", 0, 0),  # pluto's own churn: nothing sent
    ([1, 0], "all", 1, 1),  # what the events name is put back without reading the table
    ([16], "none", 1, 16),
    ([1, None], "half", 1, 8),  # events that could not tell: the table is read, and only what is missing counts
    ([None], "all", 0, 0),
])
def test_the_watcher_puts_back_what_the_events_name_and_reads_the_table_only_when_they_cannot_tell(
        losses, present, sent, told):
    everything = backstop.policies()
    table = FakeTable({"all": everything, "none": [], "half": everything[::2]}[present])
    hit = supervisor.XfrmHit(table, table)  # type: ignore[arg-type]
    for lost in losses:
        hit.add(supervisor.XfrmNews(lost))
    assert hit.any == (losses != [0])
    assert hit.put_back() == told
    assert table.sent == sent
