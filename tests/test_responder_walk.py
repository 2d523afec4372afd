"""Random walks over the responder's life: clients from two addresses connect, talk, rekey, delete, replay old
requests and vanish while time passes. After every step the responder's own tables are checked against what
happened on the wire (hypothesis: seeded, and a failing walk is shrunk to its shortest form).

Invariants:
- limits: never more IKE SAs than `max_sas`, nor more established ones from one address than `max_sas_per_peer`;
- dead peers go: every established IKE SA of a client that vanished at t is gone by t + liveness +
  liveness_timeout;
- live peers stay: only SAs of vanished clients are removed as dead, and a live client's SA goes only when it
  deleted it or its address went past `max_sas_per_peer` (counted);
- nothing leaks: the Child SAs the events installed and not yet removed (what the kernel would hold) are exactly
  the Child SAs of the IKE SAs the responder keeps.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from enclave_ike.ikev2.config import (
    DnsSelectors,
    Endpoint,
    Identity,
    InitiatorConfig,
    Limits,
    ResponderConfig,
    Timers,
)
from enclave_ike.ikev2.constants import ProtocolId
from enclave_ike.ikev2.events import ChildSaEstablished, ChildSaRekeyed, SaDeleted
from enclave_ike.ikev2.initiator import Initiator
from enclave_ike.ikev2.payloads import TrafficSelector
from enclave_ike.ikev2.responder import Responder
from fuzz.generators import seeded

RESOLVER = Endpoint(IPv4Address("192.0.2.53"), 500)
ADDRESSES = (IPv4Address("198.51.100.1"), IPv4Address("198.51.100.2"))
LIVENESS, LIVENESS_TIMEOUT = 10.0, 5.0
MAX_SAS, MAX_SAS_PER_PEER = 5, 3
ESTABLISHED = ("ESTABLISHED", "EXPECT_DELETE")
DEAD, REPLACED = "IKE SA removed: dead peer", "IKE SA replaced: max_sas_per_peer"


@dataclass
class Client:
    initiator: Initiator
    spis: set[bytes] = field(default_factory=set)  # every IKE SPIi it had (rekeys make new ones)
    vanished_at: float | None = None
    deleted: bool = False
    sent: list[bytes] = field(default_factory=list)  # its requests, for replays


class ResponderWalk(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        config = ResponderConfig(local_id=Identity.null(),
                                 dns=DnsSelectors((RESOLVER.address,)),
                                 timers=Timers(liveness=LIVENESS, liveness_timeout=LIVENESS_TIMEOUT),
                                 limits=Limits(max_sas=MAX_SAS, max_sas_per_peer=MAX_SAS_PER_PEER))
        self.responder = Responder(config, local=RESOLVER, random=seeded(b"responder"))
        self.clients: dict[Endpoint, Client] = {}
        self.ports = itertools.count(20_000)
        self.now = 0.0
        self.installed: set[bytes] = set()  # our inbound SPIs of Child SAs the events put in and did not take out
        self.dead_spis: set[bytes] = set()  # IKE SPIi removed as dead peers

    # --- the wire ---

    def settle(self) -> None:
        """Deliver everything in flight, now, to whoever still listens; read the responder's events."""
        for _ in range(200):
            moved = False
            for endpoint, client in self.clients.items():
                for data, _ in client.initiator.datagrams_to_send():
                    moved = True
                    if client.vanished_at is None:
                        client.sent.append(data)
                        self.responder.receive(data, endpoint, self.now)
            for data, destination in self.responder.datagrams_to_send():
                moved = True
                client = self.clients.get(destination)
                if client is not None and client.vanished_at is None:
                    client.initiator.receive(data, RESOLVER, self.now)
            self.track()
            if not moved:
                return
        raise AssertionError("the wire did not settle")

    def track(self) -> None:
        for client in self.clients.values():
            if client.initiator.sa is not None:
                client.spis.add(client.initiator.sa.spi_i)
            client.initiator.events()
        while (event := self.responder.next_event()) is not None:
            if isinstance(event, ChildSaEstablished):
                self.installed.add(event.spi_in)
            elif isinstance(event, ChildSaRekeyed):
                self.installed.add(event.new.spi_in)
            elif isinstance(event, SaDeleted) and event.protocol == ProtocolId.ESP:
                self.installed.discard(event.spi_in)
            elif isinstance(event, SaDeleted) and event.reason.startswith("dead peer"):
                self.dead_spis.add(event.ike_spi_i)

    def live(self) -> list[Client]:
        return [c for c in self.clients.values() if c.vanished_at is None and not c.deleted
                and c.initiator.sa is not None and c.initiator.sa.established]

    # --- what users and networks do ---

    @rule(address=st.sampled_from(ADDRESSES))
    def connect(self, address: IPv4Address) -> None:
        endpoint = Endpoint(address, next(self.ports))
        config = InitiatorConfig(tsi=(TrafficSelector(address, address, 17),),
                                 tsr=(TrafficSelector(RESOLVER.address, RESOLVER.address, 17, 53, 53),))
        initiator = Initiator(config, local=endpoint, peer=RESOLVER, random=seeded(b"%d" % endpoint.port),
                              now=self.now)
        self.clients[endpoint] = Client(initiator)
        self.settle()

    @precondition(lambda self: self.live())
    @rule(data=st.data(), action=st.sampled_from(["talk", "rekey_child", "rekey_ike", "delete", "vanish"]))
    def act(self, data: st.DataObject, action: str) -> None:
        client = data.draw(st.sampled_from(self.live()))
        initiator = client.initiator
        if action == "talk":
            initiator.check_liveness(self.now)
        elif action == "rekey_child" and initiator.sa.children:
            initiator.rekey_child_sa(self.now, next(iter(initiator.sa.children)))
        elif action == "rekey_ike":
            initiator.rekey(self.now)
        elif action == "delete":
            initiator.delete(self.now)
            client.deleted = True
        elif action == "vanish":
            client.vanished_at = self.now
        self.settle()

    @precondition(lambda self: any(c.sent for c in self.clients.values()))
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        """Someone on the path sends a copy of a request a client sent before (which keeps no one alive)."""
        endpoint, client = data.draw(st.sampled_from([(e, c) for e, c in self.clients.items() if c.sent]))
        self.responder.receive(data.draw(st.sampled_from(client.sent)), endpoint, self.now)
        self.settle()

    @rule(seconds=st.floats(0.1, 30.0))
    def wait(self, seconds: float) -> None:
        """Time passes: every timer due fires in order (retransmissions, liveness checks, the clients' own)."""
        target = self.now + seconds
        while True:
            timers = [t for t in (self.responder.get_timer(),
                                  *(c.initiator.get_timer() for c in self.clients.values() if c.vanished_at is None))
                      if t is not None and t <= target]
            if not timers:
                break
            self.now = max(self.now, min(timers))
            self.responder.handle_timer(self.now)
            for client in self.clients.values():
                deadline = client.initiator.get_timer()
                if client.vanished_at is None and deadline is not None and deadline <= self.now:
                    client.initiator.handle_timer(self.now)
            self.settle()
        self.now = target

    # --- after every step ---

    @invariant()
    def within_the_limits(self) -> None:
        views = self.responder.views()
        assert len(views) <= MAX_SAS
        established = Counter(v.peer.address for v in views if v.state.name in ESTABLISHED)
        assert max(established.values(), default=0) <= MAX_SAS_PER_PEER, established

    @invariant()
    def dead_peers_are_gone_in_time(self) -> None:
        # Established ones: a replayed IKE_SA_INIT makes a half-open SA again, which its own (bounded) time ends
        kept = {v.spi_i for v in self.responder.views() if v.state.name in ESTABLISHED}
        for client in self.clients.values():
            if client.vanished_at is not None and self.now >= client.vanished_at + LIVENESS + LIVENESS_TIMEOUT:
                assert not client.spis & kept, f"a client that vanished at {client.vanished_at} kept its SA"

    @invariant()
    def only_vanished_clients_are_dead(self) -> None:
        vanished = set().union(*(c.spis for c in self.clients.values() if c.vanished_at is not None))
        assert self.dead_spis <= vanished
        assert self.responder.counts[DEAD] == len(self.dead_spis)

    @invariant()
    def live_clients_keep_their_sa_unless_replaced(self) -> None:
        kept = {v.spi_i for v in self.responder.views()}
        lost = [c for c in self.live() if c.initiator.sa.spi_i not in kept]
        assert len(lost) <= self.responder.counts[REPLACED]

    @invariant()
    def the_kernel_holds_exactly_the_child_sas_of_the_kept_ike_sas(self) -> None:
        children = {child.spi_in for v in self.responder.views() for child in v.children}
        assert self.installed == children


ResponderWalk.TestCase.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
test_responder_walk = ResponderWalk.TestCase
