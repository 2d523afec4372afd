"""The planner (ikectl/plan.py) as tables of before and after: the intent, what the kernel and /proc show, the
record, and the steps in their order. Pure: nothing here touches the system."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import ip_address
from pathlib import Path

import pytest

from ikecommon.keys import PinnedKey
from ikecommon.xfrm import Direction, Policy, Selector, Template
from ikecommon.xfrm import Mode as Mode_
from ikectl import backstop, plan, policies, protect, render
from ikectl.config import Mode, TrustedResolver
from ikectl.nft import TableState
from ikectl.observe import Protection
from ikectl.plan import (
    DeletePolicies,
    EnsureSupervisor,
    Facts,
    Forget,
    Intent,
    LiftBackstop,
    LoadConns,
    Negotiate,
    PlutoFacts,
    Protect,
    Record,
    ReloadConns,
    RemoveBackstop,
    RemoveLeftovers,
    RestoreKernel,
    StartPluto,
    StopRun,
    TuneAcquires,
    UnloadConns,
    Upkeep,
    WriteTree,
)
from ikectl.render import Profile
from ikectl.state import Baseline, Blocked, Exclusion, RunState
from ikectl.state import Upkeep as UpkeepRecord

PINNED, A, B = ip_address("192.0.2.53"), ip_address("198.51.100.1"), ip_address("198.51.100.2")
RUN, OLD_RUN = Path("/run/ikectl"), Path("/run/ikectl-old")
PIN = TrustedResolver(PINNED, "@dns.example.net", PinnedKey("ecdsa", b"\x01" * 64))
NONE = Protection(len(backstop.policies()), TableState.ABSENT)
BOTH = Protection(0, TableState.INTACT)
RUNNING = PlutoFacts(pid=42)


def trusted(*others, run_dir=RUN) -> Intent:
    return Intent(Mode.TRUSTED, run_dir, (PINNED, *others), Profile(Mode.TRUSTED, trusted=PIN))


def coffee(*resolvers, run_dir=RUN) -> Intent:
    return Intent(Mode.COFFEE_SHOP, run_dir, resolvers, Profile(Mode.COFFEE_SHOP, opportunistic=resolvers))


def record(mode: Mode, *resolvers, run_dir=RUN, **changes) -> RunState:
    base = RunState(mode, resolvers, run_dir, 1.0, Baseline(True), trusted=(PINNED,) if mode == Mode.TRUSTED else (),
                    pluto_pid=42)
    return replace(base, **changes)


def trap(address, proto=17, src="10.0.0.1") -> Policy:
    return Policy(Selector.of(f"{src}/32", f"{address}/32", proto, dport=53), Direction.OUT, 3457217,
                  templates=(Template(),))


def clear_fallback(address, proto=17) -> Policy:
    return Policy(Selector.of("10.0.0.1/32", f"{address}/32", proto), Direction.OUT, 0)


def kinds(steps) -> list[str]:
    return [type(s).__name__ for s in steps]


# --- trusted `up` ------------------------------------------------------------------------------------------

def test_fresh_trusted_up_protects_before_anything_else():
    steps = plan.up(trusted(), Facts(protection=NONE), None)
    assert steps == (Protect(), WriteTree(), StartPluto(), LoadConns(replacing=False, rescan=False), Negotiate(),
                     EnsureSupervisor(), Record())


def test_switching_from_coffee_shop_deletes_its_policies_clear_passes_first_right_after_the_backstop():
    table = (trap(A), clear_fallback(A), trap(PINNED), clear_fallback(PINNED, 6))
    steps = plan.up(trusted(), Facts(policies=table, protection=NONE, pluto=RUNNING),
                    record(Mode.COFFEE_SHOP, A, PINNED))
    assert isinstance(steps[1], DeletePolicies) and steps[0] == Protect()
    doomed = steps[1].policies
    # Every one of pluto's policies for the resolvers coffee-shop had, the pinned one's too (an opportunistic
    # NULL-auth SA would carry its DNS unauthenticated); the ways out in clear go first.
    assert set(doomed) == set(table) and all(policies.clear_pass(p) for p in doomed[:2])
    assert kinds(steps[2:]) == ["UnloadConns", "RemoveLeftovers", "WriteTree", "LoadConns", "Negotiate",
                                "EnsureSupervisor", "Record"]
    assert steps[2] == UnloadConns(tuple(plan.OE_CONNS.values()), Mode.COFFEE_SHOP)
    assert steps[5] == LoadConns(replacing=False, rescan=True)


def test_trusted_again_keeps_the_pinned_resolvers_esp_but_never_a_clear_pass_to_it():
    sa_policy = trap(PINNED)
    stray = clear_fallback(PINNED)
    steps = plan.up(trusted(), Facts(policies=(sa_policy, stray), protection=BOTH, pluto=RUNNING),
                    record(Mode.TRUSTED, PINNED))
    assert steps[0] == DeletePolicies((stray,), "DNS to resolvers trusted mode does not use")
    assert steps[1:] == (WriteTree(), LoadConns(replacing=True, rescan=True), Negotiate(), EnsureSupervisor(),
                         Record())


def test_leftovers_of_a_resolver_no_longer_listed_go_in_trusted_mode():
    """The walk a user found: coffee-shop with A, the network changes to B, then trusted: A's clear-fallback
    policies (which pluto forgot) outrank the backstop. A is in the record's `managed`, so they go."""
    earlier = record(Mode.COFFEE_SHOP, B, managed=frozenset({A, B}))
    steps = plan.up(trusted(B), Facts(policies=(clear_fallback(A), clear_fallback(A, 6)), protection=NONE,
                                     pluto=RUNNING), earlier)
    assert steps[1] == DeletePolicies((clear_fallback(A), clear_fallback(A, 6)),
                                      "DNS to resolvers trusted mode does not use")


def test_policies_of_someone_else_are_never_ikectls_to_delete():
    """Another daemon's private-or-clear for 0.0.0.0/0, its pass for the whole protocol to a resolver: not of
    pluto's per-protocol DNS kind, so left alone (the nftables backstop drops what they let out)."""
    foreign = (Policy(Selector.of("10.0.0.1/32", "0.0.0.0/0"), Direction.OUT, 3850497, templates=(Template(),)),
               Policy(Selector.of("10.0.0.1/32", f"{PINNED}/32"), Direction.OUT, 0))
    steps = plan.up(trusted(), Facts(policies=foreign, protection=NONE), record(Mode.COFFEE_SHOP, PINNED))
    assert not any(isinstance(s, DeletePolicies) for s in steps)
    assert policies.leaks(foreign) == [foreign[1]]


def test_a_changed_run_dir_stops_the_old_pluto_after_the_backstop_and_cleans_what_it_left():
    steps = plan.up(trusted(), Facts(protection=NONE), record(Mode.TRUSTED, PINNED,
                                                                                run_dir=OLD_RUN))
    assert steps[:3] == (Protect(),
                         StopRun(OLD_RUN, f"the config's run_dir is now {RUN}, was {OLD_RUN}", remove_dir=True),
                         RemoveLeftovers(frozenset({PINNED})))
    assert StartPluto() in steps  # a pluto of its own in the new run dir


def test_a_stopped_pluto_is_replaced_not_waited_on():
    facts = Facts(protection=BOTH, pluto=PlutoFacts(pid=42, stopped=True))
    steps = plan.up(trusted(), facts, record(Mode.TRUSTED, PINNED))
    assert steps[0] == StopRun(RUN, "pluto (pid 42) is stopped and answers nothing")
    assert StartPluto() in steps and LoadConns(replacing=False, rescan=False) in steps


def test_a_blocked_record_is_replaced_in_full():
    blocked = record(Mode.TRUSTED, PINNED, blocked=Blocked("applying trusted mode failed: x", 1.0))
    steps = plan.up(trusted(), Facts(policies=(trap(PINNED),), protection=BOTH, pluto=RUNNING), blocked)
    assert steps[0] == DeletePolicies((trap(PINNED),), "DNS to resolvers trusted mode does not use")


def test_protection_first_is_the_same_decision_as_the_plans():
    """ikectl/protect.py runs before the lock and before the planner is loaded; what it deletes is what the plan's
    first DeletePolicies would."""
    table = (trap(A), clear_fallback(A))
    earlier = record(Mode.COFFEE_SHOP, A)
    first = protect.doomed(table, protect.managed((PINNED,), earlier), protect.kept((PINNED,), RUN, earlier))
    assert first == [clear_fallback(A), trap(A)]
    steps = plan.up(trusted(), Facts(policies=table, protection=NONE), earlier)
    assert steps[1] == DeletePolicies(tuple(first), "DNS to resolvers trusted mode does not use")
    assert protect.kept((PINNED,), RUN, record(Mode.TRUSTED, PINNED)) == {PINNED}
    assert protect.kept((PINNED,), OLD_RUN, record(Mode.TRUSTED, PINNED)) == frozenset()


# --- coffee-shop `up` --------------------------------------------------------------------------------------

def test_fresh_coffee_shop_up_queues_the_trigger_and_never_touches_a_backstop():
    steps = plan.up(coffee(A), Facts(protection=NONE, larval_drop=True), None)
    assert steps == (TuneAcquires(larval_drop=False, acq_expires_s=plan.ACQ_EXPIRES_S), WriteTree(), StartPluto(),
                     LoadConns(replacing=False, rescan=False),
                     Negotiate(), Upkeep(), EnsureSupervisor(), Record())


@pytest.mark.parametrize(("larval_drop", "acq_expires_s", "tuned"), [
    (True, 30, True), (False, 30, True), (True, plan.ACQ_EXPIRES_S, True), (False, plan.ACQ_EXPIRES_S, False)])
def test_an_unanswered_acquire_holds_its_flow_for_seconds_not_the_kernels_30(larval_drop, acq_expires_s, tuned):
    """A flush or the retry after retry_after_s takes pluto's clear fallback from under the larval state of an
    ACQUIRE pluto did not answer: DNS to that resolver waited on it for the kernel's 30 s (the walk, in the VM)."""
    facts = Facts(protection=NONE, pluto=RUNNING, larval_drop=larval_drop, acq_expires_s=acq_expires_s)
    steps = plan.up(coffee(A), facts, record(Mode.COFFEE_SHOP, A))
    assert (TuneAcquires(False, plan.ACQ_EXPIRES_S) in steps) == tuned
    assert plan.ACQ_EXPIRES_S < 5  # below the shortest retry_after_s the config allows


def test_leaving_trusted_lifts_the_backstop_only_once_the_traps_are_in():
    steps = plan.up(coffee(A), Facts(protection=BOTH, pluto=RUNNING, larval_drop=False),
                    record(Mode.TRUSTED, PINNED))
    names = kinds(steps)
    assert names.index("LoadConns") < names.index("LiftBackstop")
    assert UnloadConns(render.trusted_conns(1), Mode.TRUSTED) in steps
    assert RemoveLeftovers(frozenset({PINNED})) in steps  # the pinned resolver is no longer listed


def test_a_leftover_backstop_with_no_record_is_lifted_too():
    """A backstop in the kernel that no record accounts for (a crash between the backstop and the record):
    coffee-shop must not leave DNS blocked."""
    steps = plan.up(coffee(A), Facts(protection=Protection(3, TableState.ABSENT)), None)
    assert LiftBackstop() in steps


def test_coffee_shop_again_replaces_its_conns_in_place():
    steps = plan.up(coffee(A, B), Facts(protection=NONE, pluto=RUNNING, larval_drop=False,
                                                 acq_expires_s=plan.ACQ_EXPIRES_S), record(Mode.COFFEE_SHOP, A, B))
    assert steps == (WriteTree(), LoadConns(replacing=True, rescan=True), Negotiate(), Upkeep(),
                     EnsureSupervisor(), Record())


def test_a_resolver_the_network_no_longer_offers_leaves_nothing_behind():
    steps = plan.up(coffee(B), Facts(protection=NONE, pluto=RUNNING, larval_drop=False),
                    record(Mode.COFFEE_SHOP, A))
    assert RemoveLeftovers(frozenset({A})) in steps


# --- down --------------------------------------------------------------------------------------------------

def test_down_takes_everything_of_every_run_dir_and_restores_the_kernel():
    earlier = record(Mode.TRUSTED, PINNED, run_dir=OLD_RUN, managed=frozenset({A}))
    steps = plan.down(earlier, (RUN,))
    assert steps == (StopRun(OLD_RUN, "ikectl down"), StopRun(RUN, "ikectl down"), RemoveBackstop(),
                     RemoveLeftovers(frozenset({A, PINNED})), RestoreKernel(Baseline(True)), Forget((OLD_RUN, RUN)))


def test_down_without_a_record_still_stops_and_removes_what_the_config_names():
    assert plan.down(None, (RUN,)) == (StopRun(RUN, "ikectl down"), RemoveBackstop(), Forget((RUN,)))


# --- the supervisor's repairs ------------------------------------------------------------------------------

@pytest.mark.parametrize(("facts", "expected"), [
    (Facts(policies=(trap(PINNED, 17), trap(PINNED, 6)), protection=BOTH, pluto=RUNNING), ((), ())),
    (Facts(policies=(trap(PINNED, 17), trap(PINNED, 6)), protection=NONE, pluto=RUNNING), ((Protect(),), ())),
    (Facts(policies=(), protection=Protection(0, TableState.ABSENT), pluto=RUNNING),
     ((Protect(),), render.trusted_conns(1))),
    (Facts(policies=(), protection=BOTH, pluto=PlutoFacts(pid=42, stopped=True)), ((), ())),  # cannot be routed
])
def test_trusted_repairs(facts, expected):
    steps, missing = expected
    assert plan.repair(record(Mode.TRUSTED, PINNED), facts, backstop_wanted=True) == steps
    assert plan.unrouted(record(Mode.TRUSTED, PINNED), facts) == missing


def test_conns_are_routed_only_when_the_supervisor_says_they_stayed_unrouted():
    """pluto swaps its own policies in every rekey: routing a conn in the middle of one lost queries (VM)."""
    facts = Facts(policies=(), protection=BOTH, pluto=RUNNING)
    assert plan.repair(record(Mode.TRUSTED, PINNED), facts, True) == ()
    assert plan.repair(record(Mode.TRUSTED, PINNED), facts, True, route=render.trusted_conns(1)) == (
        ReloadConns(render.trusted_conns(1)),)


def test_an_open_portal_window_leaves_the_backstop_out():
    facts = Facts(policies=(trap(PINNED, 17), trap(PINNED, 6)), protection=NONE, pluto=RUNNING)
    assert plan.repair(record(Mode.TRUSTED, PINNED), facts, backstop_wanted=False) == ()


def test_coffee_shop_names_the_groups_of_members_that_lost_their_traps():
    members = record(Mode.COFFEE_SHOP, A, ip_address("2001:db8::53"))
    facts = Facts(policies=(trap(A, 17), trap(A, 6)), protection=NONE, pluto=RUNNING)
    assert plan.unrouted(members, facts) == (plan.OE_CONNS[6],)
    excluded = replace(members, upkeep=UpkeepRecord(excluded={"2001:db8::53": Exclusion(9e9, "refused")}))
    assert plan.unrouted(excluded, facts) == ()  # an excluded resolver has no traps
    dropped = replace(members, upkeep=UpkeepRecord(lost_at={"2001:db8::53": 100.0}))
    assert plan.unrouted(dropped, facts) == ()  # pluto dropped it itself: the upkeep routes it after retry_after_s
    assert plan.repair(members, facts, backstop_wanted=False) == ()


def sa_policies(address, proto=17, reqid=16445, src="10.0.0.1") -> tuple[Policy, Policy, Policy]:
    """pluto's out, in and fwd policies of an established tunnel-mode SA for DNS with `address` over `proto`."""
    out = Template(Mode_.TUNNEL, reqid, ip_address(src), ip_address(address))
    back = Template(Mode_.TUNNEL, reqid, ip_address(address), ip_address(src))
    forth, reply = (Selector.of(f"{src}/32", f"{address}/32", proto, dport=53),
                    Selector.of(f"{address}/32", f"{src}/32", proto, sport=53))
    return (Policy(forth, Direction.OUT, 3407872, templates=(out,)),
            Policy(reply, Direction.IN, 3407872, templates=(back,)),
            Policy(reply, Direction.FWD, 3407872, templates=(back,)))


@pytest.mark.parametrize("mode", [Mode.COFFEE_SHOP, Mode.TRUSTED])
def test_an_established_sa_whose_inbound_policy_another_program_deleted_is_loaded_again(mode):
    """The walk in the VM (seed 2722371450): with the in policy of a tunnel-mode SA gone, the kernel drops every
    answer while the out policy still looks whole. Only a live SA makes a lone out policy broken: a trap is one."""
    resolver = PINNED if mode == Mode.TRUSTED else A
    conns = render.trusted_conns(1) if mode == Mode.TRUSTED else (plan.OE_CONNS[4],)
    out, inbound, fwd = sa_policies(resolver)
    tcp = sa_policies(resolver, proto=6, reqid=16441)
    facts = Facts(policies=(out, inbound, fwd, *tcp), protection=BOTH, pluto=RUNNING, live_reqids=frozenset({16445}))
    assert plan.unrouted(record(mode, resolver), facts) == ()
    lost = replace(facts, policies=(out, fwd, *tcp))
    assert policies.unpaired_reqids(lost.policies) == {16445}
    assert plan.unrouted(record(mode, resolver), lost) == conns
    # Its fwd policy is for packets this host forwards: DNS of its own does without it.
    assert plan.unrouted(record(mode, resolver), replace(facts, policies=(out, inbound, *tcp))) == ()
    # A trap: the out policy alone, and no live SA by its reqid.
    traps = Facts(policies=(out, *tcp), protection=BOTH, pluto=RUNNING, live_reqids=frozenset())
    assert plan.unrouted(record(mode, resolver), traps) == ()
    # A trap whose reqid a live SA shares (an SA left after a flush, or an instance of the trap's conn): still a
    # trap, with neither in nor fwd policy, and never reloaded for it (the tcp SA's policies are whole)
    shared = replace(traps, live_reqids=frozenset({16445, 16441}))
    assert policies.unpaired_reqids(shared.policies) == set()
    assert plan.unrouted(record(mode, resolver), shared) == ()


def test_a_clear_pass_to_a_managed_resolver_in_trusted_mode_is_removed_by_the_watch():
    facts = Facts(policies=(trap(PINNED, 17), trap(PINNED, 6), clear_fallback(A)), protection=BOTH, pluto=RUNNING)
    steps = plan.repair(record(Mode.TRUSTED, PINNED, managed=frozenset({A})), facts, backstop_wanted=True)
    assert steps == (DeletePolicies((clear_fallback(A),), "DNS to resolvers trusted mode does not use"),)
