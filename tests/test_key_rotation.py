"""Rotation of the service key (enclave_ike/release/rotation.py): a next key made in one replica's enclave, released
by name to the others through the same mutual attestation as a join, served (evidence, /identity) beside the current
key until the switch, and signed with by every replica from the announced time; the old key is gone then.

Real HPKE, real sim evidence, the real sim enclave process where keys must stay inside it, real TCP on loopback."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st
from trust_servers import BackgroundLoop, port_of, running_endpoint, sim_spec

from enclave_ike import cli
from enclave_ike.config import HostPort
from enclave_ike.enclave.attest import envelopes
from enclave_ike.enclave.base import Enclave
from enclave_ike.enclave.errors import EnclaveError
from enclave_ike.enclave.sealing import SealError, spki
from enclave_ike.enclave.sim import SimEnclave
from enclave_ike.enclave.software import SoftwareEnclave
from enclave_ike.evidence_endpoint import Response
from enclave_ike.release.appraise import Appraiser
from enclave_ike.release.endpoint import ReleaseEndpoint
from enclave_ike.release.errors import MessageError, Refused
from enclave_ike.release.holder import Holder
from enclave_ike.release.joiner import Joiner
from enclave_ike.release.keyring import KeyRing, Listing, NextKey
from enclave_ike.release.messages import KeyGrant, KeyRequest
from enclave_ike.release.rotation import Rotation
from ikecommon.attestation.verify import TrustAnchors, verify_envelope
from ikecommon.evidence_client import fetch, fetch_evidence

NOW = datetime(2026, 12, 6, tzinfo=UTC).timestamp()
APPRAISER = Appraiser(sim_spec(), TrustAnchors.simulated())
SWITCH_AT = int(NOW) + 600


def identity(enclave: Enclave) -> bytes:
    return spki(enclave.signer().public_key())


def signs_with(enclave: Enclave, key_spki: bytes) -> bool:
    signer = enclave.signer()
    signature = signer.sign(b"IKE_AUTH octets", signer.schemes[0])
    public = serialization.load_der_public_key(key_spki)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    try:
        public.verify(signature, b"IKE_AUTH octets", ec.ECDSA(signer.schemes[0].hasher()))
    except InvalidSignature:
        return False
    return True


def grant_next(holder: Holder, joiner_enclave: Enclave, key: bytes) -> tuple[Joiner, bytes]:
    joiner = Joiner(joiner_enclave, APPRAISER, key=key)
    return joiner, holder.grant(joiner.request(holder.challenge()), NOW).grant


# --- the enclave: a next key, and the switch ---------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["software", "sim"])
def test_a_next_key_signs_only_after_the_switch_and_the_old_key_is_gone(backend: str) -> None:
    with contextlib_enclave(backend) as enclave:
        signer, current = enclave.signer(), identity(enclave)
        nxt = enclave.make_next()
        assert nxt != current and enclave.make_next() == nxt  # made once
        assert signs_with(enclave, current) and not signs_with(enclave, nxt)
        assert enclave.switch() == nxt
        assert enclave.signer() is signer and identity(enclave) == nxt  # one signer object: the server's stays good
        assert signs_with(enclave, nxt) and not signs_with(enclave, current)
        recipient = SoftwareEnclave().release_recipient()
        with pytest.raises(SealError, match="not one this enclave holds"):
            enclave.seal_identity(recipient, b"info", current)
        with pytest.raises(EnclaveError, match="no next key"):
            enclave.switch()


@contextmanager
def contextlib_enclave(backend: str) -> Iterator[Enclave]:
    if backend == "sim":
        with SimEnclave() as sim:
            yield sim
    else:
        yield SoftwareEnclave()


# --- release of a next key, by name --------------------------------------------------------------------------------

def test_a_next_key_is_released_by_name_with_its_switch_time_and_signs_after_the_switch() -> None:
    with SimEnclave() as first, SimEnclave() as second:
        ring = KeyRing(first)
        joiner = Joiner(second, APPRAISER)  # second joins first: the same current key
        holder = Holder(first, APPRAISER, envelopes(first), keys=ring)
        joiner.accept(holder.grant(joiner.request(holder.challenge()), NOW).grant, NOW)
        assert identity(second) == identity(first)
        nxt, made = ring.start_rotation(SWITCH_AT)
        assert made and ring.start_rotation(SWITCH_AT + 5) == (nxt, False)
        joiner, grant = grant_next(holder, second, nxt.spki)
        accepted = joiner.accept(grant, NOW)
        assert accepted.switch_at == SWITCH_AT and accepted.holder.ike_key == nxt.spki
        assert identity(second) == identity(first) != nxt.spki  # still the current key until the switch
        assert second.switch() == nxt.spki == ring.switch()
        assert identity(second) == identity(first) == nxt.spki and signs_with(second, nxt.spki)


def test_a_key_the_holder_does_not_hold_is_refused_and_nothing_is_sealed() -> None:
    holder_enclave, joiner_enclave = SoftwareEnclave(), SoftwareEnclave()
    holder = Holder(holder_enclave, APPRAISER, envelopes(holder_enclave))
    before = identity(joiner_enclave)
    with pytest.raises(Refused, match="not one this holder holds"):
        grant_next(holder, joiner_enclave, identity(SoftwareEnclave()))
    assert identity(joiner_enclave) == before


def test_a_switch_time_changed_on_the_way_does_not_open() -> None:
    """The switch time is bound into the HPKE context: a grant whose switch_at was rewritten (to make a replica
    switch early, or never) opens to nothing, and the joiner's keys are unchanged."""
    holder_enclave, joiner_enclave = SoftwareEnclave(), SoftwareEnclave()
    ring = KeyRing(holder_enclave)
    holder = Holder(holder_enclave, APPRAISER, envelopes(holder_enclave), keys=ring)
    nxt, _ = ring.start_rotation(SWITCH_AT)
    joiner, body = grant_next(holder, joiner_enclave, nxt.spki)
    grant = KeyGrant.decode(body)
    with pytest.raises(Refused, match="does not open"):
        joiner.accept(KeyGrant(grant.evidence, grant.sealed, SWITCH_AT - 590).encode(), NOW)
    with pytest.raises(EnclaveError, match="no next key"):
        joiner_enclave.switch()


def test_a_grant_in_the_wrong_role_is_refused() -> None:
    """Asked for the current key, a next key's grant is refused: a holder cannot make a joiner sign with a key
    early. A key asked for by name may come as the holder's current key (a switch the asker missed); the asker's
    role check decides, before anything is imported."""
    holder_enclave = SoftwareEnclave()
    ring = KeyRing(holder_enclave)
    holder = Holder(holder_enclave, APPRAISER, envelopes(holder_enclave), keys=ring)
    nxt, _ = ring.start_rotation(SWITCH_AT)
    fresh = SoftwareEnclave()
    asking_current = Joiner(fresh, APPRAISER)
    request = json.loads(asking_current.request(holder.challenge()))
    rewritten = json.dumps({**request, "key": nxt.spki.hex()}, separators=(",", ":")).encode()  # on the way
    with pytest.raises(Refused, match="granted a next key for the current one"):
        asking_current.accept(holder.grant(rewritten, NOW).grant, NOW)
    asking_by_name = Joiner(fresh, APPRAISER, key=ring.current)
    current_grant = holder.grant(asking_by_name.request(holder.challenge()), NOW).grant
    assert KeyGrant.decode(current_grant).switch_at is None and KeyGrant.decode(current_grant).since == 0
    seen: list[tuple[int | None, int]] = []

    def role(switch_at: int | None, since: int) -> str | None:
        seen.append((switch_at, since))
        return "it is not newer than ours"

    with pytest.raises(Refused, match="it is not newer than ours"):
        asking_by_name.accept(current_grant, NOW, role=role)
    assert seen == [(None, 0)]
    with pytest.raises(EnclaveError, match="no next key"):
        fresh.switch()


def test_a_since_changed_on_the_way_does_not_open() -> None:
    """A current key's `since` (what makes a missed switch catch up) is bound like a switch time: a grant whose
    since was raised, to roll a replica onto this key, opens to nothing."""
    holder_enclave = SoftwareEnclave()
    ring = KeyRing(holder_enclave, since=SWITCH_AT)
    holder = Holder(holder_enclave, APPRAISER, envelopes(holder_enclave), keys=ring)
    joiner, body = grant_next(holder, SoftwareEnclave(), ring.current)
    grant = KeyGrant.decode(body)
    assert grant.since == SWITCH_AT and grant.switch_at is None
    with pytest.raises(Refused, match="does not open"):
        joiner.accept(KeyGrant(grant.evidence, grant.sealed, None, SWITCH_AT + 1).encode(), NOW)


def test_a_grant_of_another_key_than_the_one_named_is_refused() -> None:
    """A holder that answers a request for its next key with its current one (the request's `key` rewritten on the
    way): its evidence verifies, but for another key than the joiner named, so nothing is imported."""
    holder_enclave, joiner_enclave = SoftwareEnclave(), SoftwareEnclave()
    ring = KeyRing(holder_enclave)
    holder = Holder(holder_enclave, APPRAISER, envelopes(holder_enclave), keys=ring)
    nxt, _ = ring.start_rotation(SWITCH_AT)
    joiner = Joiner(joiner_enclave, APPRAISER, key=nxt.spki)
    request = json.loads(joiner.request(holder.challenge()))
    rewritten = json.dumps({**request, "key": ring.current.hex()}, separators=(",", ":")).encode()
    with pytest.raises(Refused, match="another key than the one asked for"):
        joiner.accept(holder.grant(rewritten, NOW).grant, NOW)
    with pytest.raises(EnclaveError, match="no next key"):
        joiner_enclave.switch()


def test_request_and_grant_members_are_strict() -> None:
    request = KeyRequest(bytes(32), bytes(32), b"evidence", b"\x30\x59")
    assert KeyRequest.decode(request.encode()) == request
    assert KeyGrant.decode(KeyGrant(b"e", b"s", 1_800_000_000).encode()).switch_at == 1_800_000_000
    document = json.loads(request.encode())
    for bad in ("ZZ", "", "0", "AA", 7, None):
        with pytest.raises(MessageError, match=r"request\.key"):
            KeyRequest.decode(json.dumps({**document, "key": bad}).encode())
    grant = json.loads(KeyGrant(b"e", b"s", 5).encode())
    for name in ("switch_at", "since"):
        for bad_time in (0, -1, 2**40, 1.5, "1", True, None):
            with pytest.raises(MessageError, match=rf"grant\.{name}"):
                KeyGrant.decode(json.dumps({**grant, name: bad_time}).encode())
    with pytest.raises(MessageError, match=r"either next \(switch_at\) or current \(since\), not both"):
        KeyGrant.decode(json.dumps({**grant, "since": 5}).encode())


# --- the listing ---------------------------------------------------------------------------------------------------

def test_a_listing_round_trips_and_two_rotations_agree_on_one_key() -> None:
    first, second = NextKey(b"\x01" * 91, SWITCH_AT), NextKey(b"\x02" * 91, SWITCH_AT)
    listing = Listing(b"\x03" * 91, first)
    assert Listing.decode(listing.encode()) == listing and Listing.decode(Listing(b"\x03").encode()).next is None
    assert first.sorts_before(second) != second.sorts_before(first)
    assert NextKey(b"\x09", SWITCH_AT - 1).sorts_before(NextKey(b"\x01", SWITCH_AT))  # the earlier switch wins


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400) | st.text(max_size=200).map(str.encode))
def test_any_bytes_are_a_listing_or_a_message_error(data: bytes) -> None:
    try:
        Listing.decode(data)
    except MessageError as exc:
        assert exc.field == "listing" and "\n" not in str(exc)


@pytest.mark.parametrize("body", [
    b'{"current":"00","next":{"key":"00","switch_at":1.5}}', b'{"current":"00","next":{"key":"00"}}',
    b'{"current":"zz"}', b'{"current":"00","extra":1}', b'{"next":null}', b'[]', b'{"current":"00","next":7}',
    b'{"current":"00","next":{"key":"00","switch_at":true}}', b'{"current":"00","current":"01"}',
])
def test_malformed_listings_are_refused(body: bytes) -> None:
    with pytest.raises(MessageError, match="listing"):
        Listing.decode(body)


# --- replicas following a rotation over TCP ------------------------------------------------------------------------

@dataclass
class Replica:
    enclave: SimEnclave
    ring: KeyRing
    endpoint: ReleaseEndpoint
    rotation: Rotation | None = None
    published: int = 0

    @property
    def address(self) -> HostPort:
        return HostPort("127.0.0.1", self.endpoint.bound[0][1])


@pytest.fixture
def replicas() -> Iterator[list[Replica]]:
    """Two replicas of one service (the second joined the first), each with its release endpoint on loopback."""
    loop = BackgroundLoop()
    made: list[Replica] = []
    try:
        for _ in range(2):
            enclave = SimEnclave()
            if made:
                joiner = Joiner(enclave, APPRAISER)
                holder = made[0].endpoint.holder
                joiner.accept(holder.grant(joiner.request(holder.challenge()), NOW).grant, NOW)
            ring = KeyRing(enclave)
            endpoint = ReleaseEndpoint(Holder(enclave, APPRAISER, envelopes(enclave), keys=ring),
                                       [("127.0.0.1", 0)], clock=lambda: NOW)
            loop.run(endpoint.start())
            made.append(Replica(enclave, ring, endpoint))
        yield made
    finally:
        for replica in made:
            loop.run(replica.endpoint.stop())
            replica.enclave.close()
        loop.close()


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def follow(replicas: list[Replica], clock: Clock, notice_s: float = 600) -> None:
    for replica in replicas:
        others = [r.address for r in replicas if r is not replica]

        def published(replica: Replica = replica) -> None:
            replica.published += 1

        replica.rotation = Rotation(replica.ring, replica.enclave, notice_s=notice_s, poll_s=1, peers=others,
                                    appraiser=APPRAISER, published=published, clock=clock)


def following(replicas: list[Replica]) -> tuple[Replica, Replica, Clock]:
    """Both replicas follow each other's rotations, on one test clock."""
    clock = Clock()
    follow(replicas, clock)
    return replicas[0], replicas[1], clock


def test_a_rotation_started_on_one_replica_reaches_the_other_and_both_switch_at_the_announced_time(
        replicas: list[Replica], caplog: pytest.LogCaptureFixture) -> None:
    first, second, clock = following(replicas)
    assert first.rotation is not None and second.rotation is not None
    old = first.ring.current
    caplog.set_level(logging.INFO, "enclave_ike.release")
    started = first.rotation.start()
    assert started is not None and started.switch_at == int(NOW) + 600 and first.published == 1
    second.rotation.poll()
    assert second.ring.next == started and second.published == 1
    assert "rotation: obtained the next key" in caplog.text and "(sim evidence matching 'sim-default')" in caplog.text
    second.rotation.poll()  # held already: asked nothing more
    assert first.endpoint.tally.granted == 1
    clock.now = started.switch_at - 1
    for replica in replicas:
        assert replica.rotation is not None
        replica.rotation.switch_if_due()
        assert replica.ring.current == old and signs_with(replica.enclave, old)
    clock.now = started.switch_at
    for replica in replicas:
        assert replica.rotation is not None
        replica.rotation.switch_if_due()
        assert replica.ring.current == identity(replica.enclave) == started.spki and replica.ring.next is None
        assert signs_with(replica.enclave, started.spki)
    assert caplog.text.count("rotation: switched from key") == 2


def test_two_replicas_that_each_start_a_rotation_agree_on_one_next_key(replicas: list[Replica]) -> None:
    clock = Clock()
    follow(replicas, clock)
    keys = [r.rotation.start() for r in replicas if r.rotation is not None]
    assert keys[0] is not None and keys[1] is not None and keys[0].spki != keys[1].spki
    for replica in replicas:
        assert replica.rotation is not None
        replica.rotation.poll()
    winner = keys[0] if keys[0].sorts_before(keys[1]) else keys[1]
    assert replicas[0].ring.next == replicas[1].ring.next == winner
    clock.now = winner.switch_at
    for replica in replicas:
        assert replica.rotation is not None
        replica.rotation.switch_if_due()
    assert identity(replicas[0].enclave) == identity(replicas[1].enclave) == winner.spki


def test_a_replica_that_missed_the_switch_catches_up(replicas: list[Replica],
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """The second replica never polled in the window (it joined late, its clock runs ahead, it was cut off): the
    first switched alone. At its next poll the second sees a current key made current after its own, obtains it by
    name (the switch time bound into the grant as `since`) and switches at once."""
    first, second, clock = following(replicas)
    assert first.rotation is not None and second.rotation is not None
    started = first.rotation.start()
    assert started is not None
    clock.now = started.switch_at
    first.rotation.switch_if_due()
    assert first.ring.since == started.switch_at
    caplog.set_level(logging.INFO, "enclave_ike.release")
    second.rotation.poll()
    assert second.ring.next == started  # the key, and the time it became current
    assert "rotation: this replica missed the switch to key" in caplog.text
    second.rotation.switch_if_due()
    assert second.ring.current == identity(second.enclave) == started.spki == first.ring.current
    assert second.ring.since == first.ring.since
    second.rotation.poll()  # nothing more to take
    assert first.endpoint.tally.granted == 1


def test_a_split_identity_ends_on_the_key_every_replica_ranks_first(replicas: list[Replica]) -> None:
    """Two rotations switched alone at the same second (or two first keys): the same `since`, two keys. Every
    replica ranks them alike (keyring.newer), so the one whose key ranks second takes the other's."""
    clock = Clock()
    follow(replicas, clock)
    for replica in replicas:
        assert replica.rotation is not None
        assert replica.rotation.start() is not None
    clock.now += 600
    for replica in replicas:
        assert replica.rotation is not None
        replica.rotation.switch_if_due()
    assert replicas[0].ring.current != replicas[1].ring.current
    assert replicas[0].ring.since == replicas[1].ring.since
    for replica in replicas:
        assert replica.rotation is not None
        replica.rotation.poll()
        replica.rotation.switch_if_due()
    assert replicas[0].ring.current == replicas[1].ring.current


def test_a_peer_that_keeps_the_old_key_long_after_the_switch_is_named_once(
        replicas: list[Replica], caplog: pytest.LogCaptureFixture) -> None:
    first, second, clock = following(replicas)
    assert first.rotation is not None and second.rotation is not None
    started = first.rotation.start()
    assert started is not None
    second.rotation.poll()
    clock.now = started.switch_at + 60
    first.rotation.switch_if_due()  # the second cannot switch (its loop is stuck, say)
    caplog.set_level(logging.INFO, "enclave_ike.release")
    for _ in range(3):
        first.rotation.poll()
    assert caplog.text.count(f"rotation: {second.address} still signs with the old key") == 1


def test_a_key_broker_replica_refuses_to_start_a_rotation(caplog: pytest.LogCaptureFixture) -> None:
    enclave = SoftwareEnclave()
    ring = KeyRing(enclave)
    rotation = Rotation(ring, enclave, notice_s=60, poll_s=1, refused="the key broker holds it")
    assert rotation.start() is None and ring.next is None
    assert "rotation not started: the key broker holds it" in caplog.text


def test_the_run_loop_switches_on_time_without_peers() -> None:
    enclave = SoftwareEnclave()
    ring = KeyRing(enclave)
    clock = Clock()
    rotation = Rotation(ring, enclave, notice_s=5, poll_s=30, clock=clock)

    async def scenario() -> None:
        task = asyncio.create_task(rotation.run())
        started = await asyncio.to_thread(rotation.start)
        assert started is not None
        await asyncio.sleep(0.2)
        assert ring.next == started
        clock.now = started.switch_at
        rotation._wake()  # the loop waits at most until the switch time; the test's clock jumped there
        for _ in range(100):
            if ring.next is None:
                break
            await asyncio.sleep(0.05)
        task.cancel()
        assert ring.current == started.spki == identity(enclave)

    asyncio.run(scenario())


# --- the evidence endpoint during a rotation -----------------------------------------------------------------------

def test_evidence_is_served_for_both_keys_during_the_window() -> None:
    enclave = SoftwareEnclave()
    ring = KeyRing(enclave)
    nonce = bytes(range(32))
    with running_endpoint(enclave) as endpoint:
        endpoint.keys = ring
        port = port_of(endpoint)
        identity_doc = json.loads(fetch("127.0.0.1", port, "/identity", 4096, 5))
        assert "next" not in identity_doc
        with pytest.raises(Exception, match="404"):
            fetch("127.0.0.1", port, f"/evidence?nonce={nonce.hex()}&key=next", 65536, 5)
        nxt, _ = ring.start_rotation(SWITCH_AT)
        assert json.loads(fetch("127.0.0.1", port, "/identity", 4096, 5))["next"] == {"switch_at": SWITCH_AT}
        now = datetime.now(UTC)
        current = verify_envelope(fetch_evidence("127.0.0.1", port, nonce), nonce, sim_spec(),
                                  TrustAnchors.simulated(), now)
        staged = verify_envelope(fetch("127.0.0.1", port, f"/evidence?nonce={nonce.hex()}&key=next", 65536, 5),
                                 nonce, sim_spec(), TrustAnchors.simulated(), now)
        assert current.ike_key == ring.current != staged.ike_key == nxt.spki
        for bad in ("key=current", "key=next&key=next", "key="):
            with pytest.raises(Exception, match="400"):
                fetch("127.0.0.1", port, f"/evidence?nonce={nonce.hex()}&{bad}", 65536, 5)


def test_the_release_endpoint_lists_the_keys_held(replicas: list[Replica]) -> None:
    first = replicas[0]
    port = first.address.port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /release/keys HTTP/1.1\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert Listing.decode(answer.split(b"\r\n\r\n", 1)[1]) == Listing(first.ring.current)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST /release/keys HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 405")


def test_a_rotation_under_way_shows_in_the_metrics() -> None:
    from enclave_ike.metrics import Metrics  # noqa: PLC0415 - prometheus_client only here
    from enclave_ike.server import _switch_time  # noqa: PLC0415

    enclave = SoftwareEnclave()
    ring = KeyRing(enclave)
    metrics = Metrics()
    metrics.key_switch_at.set_function(lambda: _switch_time(ring.next))
    assert b"enclave_ike_key_switch_time_seconds 0.0" in metrics.render(NOW)
    ring.start_rotation(SWITCH_AT)
    assert b"enclave_ike_key_switch_time_seconds 1.7965158e+09" in metrics.render(NOW)  # SWITCH_AT
    ring.switch()
    assert b"enclave_ike_key_switch_time_seconds 0.0" in metrics.render(NOW)


def test_a_rotation_that_would_leave_a_replica_behind_is_not_started(replicas: list[Replica],
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A replica that gives no key to others while it has peers, or one whose peer follows no rotation (no peers of
    its own, a key from the key broker): refused, one line naming why, no key made."""
    first, second = replicas
    enclave = SoftwareEnclave()
    ring = KeyRing(enclave)
    silent = Rotation(ring, enclave, notice_s=60, poll_s=1, peers=[first.address], gives=False,
                      appraiser=APPRAISER)
    assert silent.start() is None and ring.next is None
    assert "rotation not started: this replica gives no key to others ([release] listen is empty)" in caplog.text
    second.ring.follows = False  # the second polls no one (a first replica without peers, or a key broker's)
    clock = Clock()
    follow(replicas, clock)
    assert first.rotation is not None and first.rotation.start() is None and first.ring.next is None
    assert f"rotation not started: the replica at {second.address} follows no rotation" in caplog.text


def test_the_rotation_goes_on_when_publishing_or_switching_fails(caplog: pytest.LogCaptureFixture) -> None:
    """A full disk under the published identity, an enclave that cannot switch: one line each, the keys as the
    enclave has them, a switch tried again after poll_s (not in a loop), and the run loop alive."""
    enclave = SoftwareEnclave()
    ring = KeyRing(enclave)
    clock = Clock()

    def published() -> None:
        raise OSError(28, "No space left on device")

    rotation = Rotation(ring, enclave, notice_s=5, poll_s=30, published=published, clock=clock)
    started = rotation.start()
    assert started is not None and "rotation: cannot publish the identity: [Errno 28] No space left" in caplog.text
    switch = enclave.switch
    enclave.switch = lambda: (_ for _ in ()).throw(EnclaveError("the enclave is gone"))  # type: ignore[method-assign]
    clock.now = started.switch_at

    async def scenario() -> None:
        task = asyncio.create_task(rotation.run())
        await asyncio.sleep(0.5)
        assert caplog.text.count("rotation: cannot switch to the next key") == 1  # tried again after 30 s only
        enclave.switch = switch  # type: ignore[method-assign]
        clock.now += 30
        rotation._wake()
        for _ in range(100):
            if ring.next is None:
                break
            await asyncio.sleep(0.05)
        assert not task.done()
        task.cancel()

    asyncio.run(scenario())
    assert ring.current == started.spki == identity(enclave)


def test_two_first_keys_stay_apart_and_are_named_once(replicas: list[Replica],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A replica of source = "new" restarted (or a partition at the service's start): two first keys (since 0).
    Nothing says which is the service's, so neither replica moves (a coin flip would move every client); each
    names the other once."""
    first, second, clock = following(replicas)
    assert first.rotation is not None and second.rotation is not None
    fresh = SimEnclave()  # the first replica restarted: a key of its own, since 0
    first.enclave.close()
    first.enclave, first.ring = fresh, KeyRing(fresh)
    first.endpoint.holder = Holder(fresh, APPRAISER, envelopes(fresh), keys=first.ring)
    follow(replicas, clock)
    caplog.set_level(logging.INFO, "enclave_ike.release")
    for _ in range(2):
        for replica in replicas:
            assert replica.rotation is not None
            replica.rotation.poll()
    assert first.ring.current != second.ring.current and first.ring.next is None and second.ring.next is None
    assert caplog.text.count("both the service's first keys (a split identity") == 2  # once each way


def test_a_peer_whose_clock_runs_far_ahead_is_not_followed(replicas: list[Replica],
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """The starter's clock is a year ahead: its next key (switching in a year, by ours) and, after it switched
    alone, its current key (current since a year from now) are both refused, with the reason; nothing is pending."""
    first, second, clock = following(replicas)
    assert first.rotation is not None and second.rotation is not None
    ahead = Clock()
    ahead.now = clock.now + 365 * 86_400
    first.rotation = Rotation(first.ring, first.enclave, notice_s=600, poll_s=1, peers=[second.address],
                              appraiser=APPRAISER, clock=ahead)
    caplog.set_level(logging.INFO, "enclave_ike.release")
    started = first.rotation.start()
    assert started is not None
    second.rotation.poll()
    assert second.ring.next is None and "more than 2592000 s ahead (a clock far off?)" in caplog.text
    ahead.now = started.switch_at
    first.rotation.switch_if_due()
    second.rotation._refusals_said.clear()
    second.rotation.poll()
    assert second.ring.next is None and "ahead of this replica's clock (a clock far off?)" in caplog.text


def test_a_listing_that_lies_about_a_switch_time_does_not_override_the_agreed_next_key(
        replicas: list[Replica]) -> None:
    """A proxy lists the first replica's next key with switch time 1 (so that it would sort first): the grant
    says the real time, and that one does not win over the next key the second already holds."""
    first, second, clock = following(replicas)
    assert first.rotation is not None and second.rotation is not None
    ours = second.rotation.start()
    clock.now += 10
    theirs = first.ring.start_rotation(int(clock.now) + 600)[0]
    assert ours is not None and ours.sorts_before(theirs)
    second.rotation._obtain(str(first.address), theirs.spki, 1)  # as if listed with switch_at = 1
    assert second.ring.next == ours


def test_a_catch_up_that_comes_as_a_next_key_is_refused(replicas: list[Replica]) -> None:
    """Asked for a peer's newer current key, the holder answers with it as its next key (a listing that lied about
    which is which): refused, and the pending next key stays."""
    first, second, clock = following(replicas)
    assert first.rotation is not None and second.rotation is not None
    theirs = first.ring.start_rotation(int(clock.now) + 600)[0]
    second.rotation._obtain(str(first.address), theirs.spki, None)  # a catch-up request
    assert second.ring.next is None and first.endpoint.tally.granted == 1  # granted, then refused by the asker


def test_a_peer_that_answers_without_a_listing_stops_a_start(replicas: list[Replica],
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """A peer that is there but does not list its keys (a build without rotation: 404) would keep the old key:
    the start is refused, naming it. One that is not there at all (nothing listens) does not stop it."""
    first, second, clock = following(replicas)
    assert first.rotation is not None
    original = ReleaseEndpoint._route

    async def without_listing(self: ReleaseEndpoint, path: str, body: bytes, peer: str) -> Response:
        if path == "/release/keys":
            return Response.text(HTTPStatus.NOT_FOUND, "/release/keys: not here")
        return await original(self, path, body, peer)

    ReleaseEndpoint._route = without_listing  # type: ignore[method-assign]
    try:
        assert first.rotation.start() is None and first.ring.next is None
    finally:
        ReleaseEndpoint._route = original  # type: ignore[method-assign]
    assert f"the replica at {second.address} answers, but not with the keys it holds" in caplog.text
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        nobody = HostPort("127.0.0.1", unused.getsockname()[1])
    lone = Rotation(first.ring, first.enclave, notice_s=600, poll_s=1, peers=[nobody], appraiser=APPRAISER,
                    clock=clock)
    assert lone.start() is not None


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_enclave_ike_rotate_starts_one_on_the_running_server_and_says_when_it_switches(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`enclave-ike rotate` against a real `enclave-ike serve` (sim enclave, loopback): it signals the server, waits
    for the published identity to name the next key, and prints its fingerprint and switch time; asked again, it
    says the rotation is under way. Without a server, or with a NULL-auth one: one line, exit 1."""
    publish = tmp_path / "identity.json"
    config = tmp_path / "enclave-ike.toml"
    config.write_text(f'[listen]\naddresses = ["127.0.0.1"]\nike_port = {_free_port(socket.SOCK_DGRAM)}\n'
                      f'natt_port = {_free_port(socket.SOCK_DGRAM)}\n[identity]\nbackend = "sim"\n'
                      f'id = "@resolver.example"\npublish = "{publish}"\n[apply]\nmode = "none"\n'
                      '[evidence]\nenabled = false\n[metrics]\nenabled = false\n[release]\nrotate_notice_s = 3600\n')
    assert cli.main(["rotate", "--config", str(config)]) == 1
    assert "no identity published" in capsys.readouterr().err
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        serve = subprocess.Popen([sys.executable, "-m", "enclave_ike.cli", "serve", "--config", str(config)],
                                 stdout=out, stderr=subprocess.STDOUT)
    try:
        for _ in range(600):
            if "listening on" in log.read_text() or serve.poll() is not None:
                break
            time.sleep(0.05)
        assert "listening on" in log.read_text(), log.read_text()
        assert cli.main(["rotate", "--config", str(config)]) == 0
        said = capsys.readouterr().out
        assert re.fullmatch(rf"rotation started by serve \(pid {serve.pid}\): next key [0-9a-f]{{16}}; every replica "
                            r"switches to it at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(in 3[56]\d\d s\)\n", said), said
        fingerprint = said.split("next key ")[1][:16]
        assert f"rotation: next key {fingerprint} made" in log.read_text()
        assert cli.main(["rotate", "--config", str(config)]) == 0
        assert capsys.readouterr().out.startswith(f"a rotation is already under way by serve (pid {serve.pid}): "
                                                  f"next key {fingerprint}")
        with pytest.raises(SystemExit):
            cli.main(["rotate", "--config", str(config), "--wait", "soon"])
        for wait in ("nan", "0", "601"):
            assert cli.main(["rotate", "--config", str(config), "--wait", wait]) == 2
            assert f"--wait {wait}: expected seconds" in capsys.readouterr().err
    finally:
        serve.terminate()
        serve.wait(10)
    assert cli.main(["rotate", "--config", str(config)]) == 1  # it unpublished on its way out
    assert "no identity published" in capsys.readouterr().err


def test_enclave_ike_rotate_refuses_a_null_auth_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from enclave_ike import config as cfg  # noqa: PLC0415
    from enclave_ike.server import PublishedIdentity  # noqa: PLC0415

    path = tmp_path / "enclave-ike.toml"
    path.write_text(f'[listen]\naddresses = ["192.0.2.1"]\n[identity]\npublish = "{tmp_path / "identity.json"}"\n')
    config = cfg.load(path)
    PublishedIdentity.of(config, None).publish(config.identity.publish)  # as a NULL-auth serve (this pid) would
    assert cli.main(["rotate", "--config", str(path)]) == 1
    assert 'identity.auth is "null": there is no key to rotate' in capsys.readouterr().err
