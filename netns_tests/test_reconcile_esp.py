"""Reconciling where ESP works (the VM): another program flushes the XFRM policies, or the nftables ruleset, while
DNS flows (udp and tcp, 50 queries a second, to the pinned resolver and to another): no plaintext port-53 packet
on the wire, both backstops back at once, DNS inside ESP again, and `status` says what happened. And coffee-shop's
clear fallback really expires: once retry_after_s has passed, the next query goes over ESP to a resolver that has
gained IKE. Each prints what it measured (docs/performance.md quotes them). And another program deleting only the
inbound policy of an established SA: DNS is answered again.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path

import pytest

from ikecommon.xfrm import Direction, XfrmClient
from ikectl import policies
from ikectl.config import Mode
from netns_tests.harness.dnsclient import query
from netns_tests.harness.tables import Restoration, removed_and_restored
from netns_tests.scenarios import walk
from netns_tests.scenarios.walk import OE4, OE6, PLAIN4, PLAIN6, TRUSTED, TRUSTED2, Action

RATE = 50  # queries a second, half udp, half tcp


@pytest.fixture
def world(topology, unbound, pluto, capture, tmp_path: Path) -> Iterator[walk.World]:
    with walk.walk_world(topology, unbound, pluto, capture, tmp_path) as made:
        yield made


class Stream:
    """Queries at RATE a second from the client, alternating udp and tcp, and the pinned resolver's two addresses
    and another resolver."""

    def __init__(self, world: walk.World) -> None:
        self.world, self.answered, self.sent = world, {TRUSTED: 0, TRUSTED2: 0, PLAIN4: 0}, 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(tcp,), daemon=True) for tcp in (False, True)]

    def __enter__(self) -> Stream:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self, tcp: bool) -> None:
        turn = 0
        while not self._stop.is_set():
            started = time.monotonic()
            server = (TRUSTED, TRUSTED2, PLAIN4)[turn % 3]
            turn += 1
            if query(self.world.topo, self.world.client, server, timeout=0.5, retry_every=0.5, tcp=tcp).answered:
                self.answered[server] += 1
            self.sent += 1
            self._stop.wait(max(0.0, 2 / RATE - (time.monotonic() - started)))


def restored(world: walk.World, removal: list[str]) -> Restoration:
    """Run `removal` in the client; seconds from the kernel's first event of it until both backstops are whole
    again, seen by an observer process of its own in the client (harness/tables.py)."""
    return removed_and_restored(world.client.netns, removal)


def described(found: Restoration) -> str:
    layers = [f"{name} {after * 1e3:.0f} ms" for name, after in (("XFRM", found.xfrm_after), ("nftables",
                                                                                               found.nft_after))
              if after is not None]
    together = "; removal and restoration reached the observer together" if found.together else ""
    return f"{found.restored_after * 1e3:.0f} ms ({', '.join(layers)}{together})"


@pytest.mark.timing  # measures how soon
def test_flushes_during_a_query_stream_leak_nothing_and_both_layers_come_back(world, capsys):
    for action in (Action("resolvers", (PLAIN4,)), Action("mode", Mode.TRUSTED), Action("up")):
        world.apply(action)
    for pinned in (TRUSTED, TRUSTED2):  # one pin, two addresses: each inside ESP
        assert query(world.topo, world.client, pinned, timeout=20).answered, pinned
    with Stream(world) as stream:
        time.sleep(2)
        xfrm_back = restored(world, ["ip", "xfrm", "policy", "flush"])
        time.sleep(2)
        nft_back = restored(world, ["nft", "flush", "ruleset"])
        time.sleep(2)
    with capsys.disabled():  # the measurement reaches the VM's console, and so the host's output
        print(f"\nstream: {stream.sent} queries, answered {stream.answered}; backstops whole again "
              f"{described(xfrm_back)} after `ip xfrm policy flush`, {described(nft_back)} after `nft flush ruleset` "
              "(from the removal's first event)")
    assert stream.answered[PLAIN4] == 0
    for pinned in (TRUSTED, TRUSTED2):  # pluto's conns loaded again, a new SA
        assert query(world.topo, world.client, pinned, timeout=20).answered, pinned
    notes = " ".join(walk_status_notes(world))
    assert "another program removed trusted mode's protection" in notes, notes
    world.check()
    world.apply(Action("down"))
    assert world.plaintext_in_trusted_phases() == 0


def walk_status_notes(world: walk.World) -> list[str]:
    proc = world.ikectl("status", "--json")
    assert proc.returncode == 0, proc.stderr
    notes: list[str] = json.loads(proc.stdout)["notes"]
    return notes


@pytest.mark.timing  # measures how soon
def test_coffee_shop_tries_ike_again_after_retry_after_s_and_goes_over_esp(world, capsys):
    for action in (Action("resolvers", (OE4,)), Action("up")):
        world.apply(action)
    assert query(world.topo, world.client, OE4, timeout=3).answered  # in clear: no IKE yet
    fallback_seen = time.time()
    world.apply(Action("resolver_ike", True))
    retry_ends = fallback_seen + walk.RETRY_AFTER_S
    while time.time() < retry_ends:
        assert query(world.topo, world.client, OE4, timeout=2).answered  # DNS never breaks meanwhile
    first_esp = None
    while time.time() < retry_ends + 30:
        answer = query(world.topo, world.client, OE4, timeout=2)
        with XfrmClient(world.client.netns) as client:
            over_esp = any(sa.dst == ip_address(OE4) and sa.counters.packets for sa in client.sas() if not sa.larval)
        if answer.answered and over_esp:
            first_esp = time.time()
            break
    assert first_esp is not None, "no query went over ESP within 30 s of the end of retry_after_s"
    with capsys.disabled():
        print(f"\ncoffee-shop retry: first query over ESP {first_esp - retry_ends:.2f} s after retry_after_s "
              f"({walk.RETRY_AFTER_S} s) ended")
    world.check()


def _out_packets(world: walk.World, resolver: str) -> int:
    with XfrmClient(world.client.netns) as client:
        return sum(sa.counters.packets for sa in client.sas() if not sa.larval and sa.dst == ip_address(resolver))


def test_an_established_sa_whose_inbound_policy_another_program_deleted_is_answered_again(world):
    """The walk (seed 2722371450, step 33): another program deleted the in policy of the tunnel-mode SA that
    coffee-shop DNS to an IPv6 resolver went through. The kernel dropped every answer (XfrmInNoPols) while the out
    policy, the SAs and the rest looked whole, and nothing put it back: the supervisor loads the group again."""
    for action in (Action("resolvers", (OE6, PLAIN6)), Action("resolver_ike", True), Action("up")):
        world.apply(action)
    deadline = time.monotonic() + 30
    while True:  # an answer through the SA (not a clear fallback of a negotiation that was slow under TCG)
        before = _out_packets(world, OE6)
        if query(world.topo, world.client, OE6, timeout=2).answered and _out_packets(world, OE6) > before:
            break
        assert time.monotonic() < deadline, f"no answer from {OE6} over ESP within 30 s\n{world.diagnosis()}"
    inbound = [p for p in world.table() if p.direction == Direction.IN and p.templates and p.selector.proto == 17
               and policies.pluto_dns_peer(p) == ip_address(OE6)]
    assert len(inbound) == 1, inbound
    with XfrmClient(world.client.netns) as client:
        client.delete_policy(inbound[0])
    try:
        world.check()  # coffee-shop answers every resolver
    except walk.Violation as exc:
        raise AssertionError(f"{exc}\nthe supervisor's log:\n{world.supervisor_log(40)}") from None
    assert any("were removed by another program: loaded again" in note for note in walk_status_notes(world))
