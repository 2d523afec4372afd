"""Random walks over a rotating service: three replicas (software enclaves, their release endpoints on loopback,
real HPKE and sim evidence) start rotations, poll each other, switch, restart and rejoin, while the wall clock
jumps (hypothesis: seeded, a failing walk shrunk to its shortest form).

Invariants, after every step:
- each replica's enclave signs with the key its key ring says is current (the server's one signer follows a switch);
- every key any replica holds is the service's: the first one, or a next key some replica's rotation made;
- a poll takes, peer after peer, a next key that sorts before its own (two rotations started at once converge), or
  a current key that is the service's over its own (keyring.newer: a switch it missed, or a split);
- a switch at its time makes the next key the current one, and nothing else;
- a replica restarted joins with the current key of the replica it asks.
And at the end of every walk, whatever happened: after a few rounds in which every replica polls the others and every
switch time passes, all replicas sign with one key.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from trust_servers import BackgroundLoop, sim_spec

from enclave_ike.config import HostPort
from enclave_ike.enclave import custody
from enclave_ike.enclave.attest import envelopes
from enclave_ike.enclave.sealing import spki
from enclave_ike.enclave.software import SoftwareEnclave
from enclave_ike.release.appraise import Appraiser
from enclave_ike.release.endpoint import ReleaseEndpoint
from enclave_ike.release.holder import Holder
from enclave_ike.release.joiner import Joiner
from enclave_ike.release.keyring import KeyRing, NextKey, newer
from enclave_ike.release.rotation import Rotation
from ikecommon.attestation.verify import TrustAnchors

APPRAISER = Appraiser(sim_spec(), TrustAnchors.simulated())
START = 1_800_000_000.0
NOTICE_S = 600
REPLICAS = 3


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


class Keys:
    """Deterministic keys, so that a walk (whose outcome depends on which next key sorts first) replays exactly and
    shrinks: each walk's n-th key is derived from n."""

    def __init__(self) -> None:
        self.made = 0

    def __call__(self, like: object = None) -> ec.EllipticCurvePrivateKey:
        self.made += 1
        return ec.derive_private_key(0x5EED0000 + self.made, ec.SECP256R1())


KEYS = Keys()


def enclave() -> SoftwareEnclave:
    return SoftwareEnclave(KEYS())


class Replica:
    """One replica: its enclave and key ring behind a release endpoint that stays on one port across restarts."""

    def __init__(self, endpoint: ReleaseEndpoint, clock: Clock, own: SoftwareEnclave) -> None:
        self.endpoint, self.clock = endpoint, clock
        self.enclave = own
        self.ring = KeyRing(own)
        self.rotation: Rotation | None = None

    @property
    def address(self) -> HostPort:
        return HostPort("127.0.0.1", self.endpoint.bound[0][1])

    def serve(self, peers: list[HostPort]) -> None:
        self.endpoint.holder = Holder(self.enclave, APPRAISER, envelopes(self.enclave), keys=self.ring)
        self.rotation = Rotation(self.ring, self.enclave, notice_s=NOTICE_S, poll_s=1, peers=peers,
                                 appraiser=APPRAISER, clock=self.clock)

    def restart_from(self, holder: Replica) -> None:
        """A new process: a new enclave, which joins with the holder's current key (its next key comes at the
        first poll)."""
        self.enclave = enclave()
        joiner = Joiner(self.enclave, APPRAISER)
        source = holder.endpoint.holder
        accepted = joiner.accept(source.grant(joiner.request(source.challenge()), self.clock()).grant, self.clock())
        self.ring = KeyRing(self.enclave, since=accepted.since)


@pytest.fixture(scope="module")
def loop() -> Iterator[BackgroundLoop]:
    background = BackgroundLoop()
    yield background
    background.close()


class RotationWalk(RuleBasedStateMachine):
    loop: BackgroundLoop

    def __init__(self) -> None:
        super().__init__()
        KEYS.made = 0
        self.clock = Clock()
        self.replicas: list[Replica] = []
        for _ in range(REPLICAS):
            own = enclave()
            endpoint = ReleaseEndpoint(Holder(own, APPRAISER, envelopes(own)), [("127.0.0.1", 0)], clock=self.clock)
            self.loop.run(endpoint.start())
            self.replicas.append(Replica(endpoint, self.clock, own))
        for replica in self.replicas[1:]:  # the second and third join the first: one service key
            replica.restart_from(self.replicas[0])
        for replica in self.replicas:
            replica.serve([r.address for r in self.replicas if r is not replica])
        self.service_keys = {self.replicas[0].ring.current}

    def teardown(self) -> None:
        """Every walk ends settled: whatever happened, the replicas end on one key."""
        try:
            self.settle()
        finally:
            for replica in self.replicas:
                self.loop.run(replica.endpoint.stop())

    def _rotation(self, index: int) -> Rotation:
        rotation = self.replicas[index].rotation
        assert rotation is not None
        return rotation

    @rule(index=st.integers(0, REPLICAS - 1))
    def start(self, index: int) -> None:
        before = self.replicas[index].ring.next
        started = self._rotation(index).start()
        assert started is not None
        assert started == before if before is not None else started.switch_at == int(self.clock.now) + NOTICE_S
        self.service_keys.add(started.spki)

    @rule(index=st.integers(0, REPLICAS - 1))
    def poll(self, index: int) -> None:
        replica = self.replicas[index]
        current, since, expected = replica.ring.current, replica.ring.since, replica.ring.next

        def held(key: bytes) -> bool:
            return key == current or (expected is not None and key == expected.spki)

        for peer in (r for r in self.replicas if r is not replica):  # in the order of its [release] peers
            offered = peer.ring.next
            if offered is not None and not held(offered.spki) and (expected is None
                                                                   or offered.sorts_before(expected)):
                expected = offered
            elif peer.ring.current != current and not held(peer.ring.current) and \
                    newer(peer.ring.since, peer.ring.current, since, current):
                expected = NextKey(peer.ring.current, peer.ring.since)
        self._rotation(index).poll()
        assert replica.ring.next == expected, (replica.ring.next, expected)

    @rule(seconds=st.sampled_from([1, 60, NOTICE_S - 1, NOTICE_S, NOTICE_S + 1, 3 * NOTICE_S]))
    def time_passes(self, seconds: int) -> None:
        self.clock.now += seconds

    @precondition(lambda self: any(r.ring.next is not None for r in self.replicas))
    @rule(offset=st.sampled_from([-1, 0, 1]))
    def a_switch_time_comes(self, offset: int) -> None:
        """The clock reaches a pending switch time (or a second either side of it)."""
        pending = min(r.ring.next.switch_at for r in self.replicas if r.ring.next is not None)
        self.clock.now = max(self.clock.now, pending + offset)

    @rule(index=st.integers(0, REPLICAS - 1))
    def switch(self, index: int) -> None:
        replica = self.replicas[index]
        before, pending = replica.ring.current, replica.ring.next
        self._rotation(index).switch_if_due()
        if pending is not None and self.clock.now >= pending.switch_at:
            assert replica.ring.current == pending.spki and replica.ring.next is None
        else:
            assert replica.ring.current == before and replica.ring.next == pending

    @rule(index=st.integers(0, REPLICAS - 1), source=st.integers(1, REPLICAS - 1))
    def restart(self, index: int, source: int) -> None:
        replica, holder = self.replicas[index], self.replicas[(index + source) % REPLICAS]
        replica.restart_from(holder)
        replica.serve([r.address for r in self.replicas if r is not replica])
        assert replica.ring.current == holder.ring.current and replica.ring.since == holder.ring.since
        assert replica.ring.next is None

    def settle(self) -> None:
        """Rounds in which everyone polls everyone, every pending switch time passes and everyone switches: one key."""
        for _ in range(3):
            for _ in range(2):
                for index in range(REPLICAS):
                    self._rotation(index).poll()
            pending = [r.ring.next.switch_at for r in self.replicas if r.ring.next is not None]
            self.clock.now = max([self.clock.now, *pending])
            for index in range(REPLICAS):
                self._rotation(index).switch_if_due()
        assert len({r.ring.current for r in self.replicas}) == 1

    @invariant()
    def enclaves_sign_with_the_rings_current_key(self) -> None:
        for replica in self.replicas:
            assert spki(replica.enclave.signer().public_key()) == replica.ring.current

    @invariant()
    def every_key_held_is_the_services(self) -> None:
        for replica in self.replicas:
            assert replica.ring.current in self.service_keys
            assert replica.ring.next is None or replica.ring.next.spki in self.service_keys


RotationWalk.TestCase.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)


def test_rotation_walk(loop: BackgroundLoop, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(custody, "_like", KEYS)  # next keys made by the enclaves: derived too
    RotationWalk.loop = loop
    RotationWalk.TestCase("runTest").runTest()
