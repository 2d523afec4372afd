"""Attested key release between replicas (enclave_ike/release): the holder gives the identity key only to an enclave
whose evidence matches the spec, sealed to the key that evidence binds; the joiner takes it only from a holder whose
evidence matches too. Every refusal leaves both keys as they were.

Real sim evidence, real HPKE (cryptography), the real sim enclave process where the key must not leave it."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave_ike.enclave.attest import attest, envelopes
from enclave_ike.enclave.base import Enclave
from enclave_ike.enclave.sealing import SealError, spki
from enclave_ike.enclave.sim import SimEnclave
from enclave_ike.enclave.software import SoftwareEnclave
from enclave_ike.release.appraise import Appraiser
from enclave_ike.release.errors import MessageError, Refused
from enclave_ike.release.holder import CHALLENGE_TTL_S, Holder
from enclave_ike.release.joiner import Joiner
from enclave_ike.release.messages import KeyGrant, KeyRequest, seal_info
from ikecommon.attestation.binding import KEY_REQUEST_LABEL
from ikecommon.attestation.envelope import Envelope
from ikecommon.attestation.sim import DEFAULT_REGISTERS
from ikecommon.attestation.spec import MeasurementEntry, MeasurementSpec
from ikecommon.attestation.verify import TrustAnchors

NOW = datetime(2026, 12, 6, tzinfo=UTC).timestamp()
OTHER_BUILD = (hashlib.sha384(b"another build").digest(),)
SPEC = MeasurementSpec((MeasurementEntry("resolver-v1", "sim", ((0, DEFAULT_REGISTERS[0]),)),))
APPRAISER = Appraiser(SPEC, TrustAnchors.simulated())


def identity(enclave: Enclave) -> bytes:
    return spki(enclave.signer().public_key())


def holder_of(enclave: Enclave) -> Holder:
    return Holder(enclave, APPRAISER, envelopes(enclave))


def release(holder: Holder, joiner_enclave: Enclave, now: float = NOW) -> None:
    joiner = Joiner(joiner_enclave, APPRAISER)
    request = joiner.request(holder.challenge())
    joiner.accept(holder.grant(request, now).grant, now)


def test_a_joiner_gets_the_holders_key_and_signs_with_it() -> None:
    holder_enclave, joiner_enclave = SoftwareEnclave(), SoftwareEnclave()
    assert identity(holder_enclave) != identity(joiner_enclave)
    holder = holder_of(holder_enclave)
    joiner = Joiner(joiner_enclave, APPRAISER)
    granted = holder.grant(joiner.request(holder.challenge()), NOW)
    assert (granted.measurement_id, granted.kind) == ("resolver-v1", "sim")
    verified = joiner.accept(granted.grant, NOW).holder
    assert verified.ike_key == identity(holder_enclave) == identity(joiner_enclave)
    signer = joiner_enclave.signer()
    key = holder_enclave.signer().public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(signer.sign(b"IKE_AUTH octets", signer.schemes[0]), b"IKE_AUTH octets",
               ec.ECDSA(signer.schemes[0].hasher()))


def test_release_between_sim_enclave_processes_never_puts_the_key_in_ours() -> None:
    """The sim backend: the key goes from one child process to another, sealed; serve's processes hold only
    public keys and sealed bytes, and the new replica signs for the service (also with a P-384 key)."""
    with SimEnclave(key_type="ecdsa-p384") as first, SimEnclave(key_type="ecdsa-p384") as second, \
            SimEnclave() as third:
        release(holder_of(first), second)
        assert identity(second) == identity(first)
        release(holder_of(second), third)  # a replica that was given the key gives it on
        assert identity(third) == identity(first)
        signature = third.signer().sign(b"octets", third.signer().schemes[0])
        key = first.signer().public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        key.verify(signature, b"octets", ec.ECDSA(third.signer().schemes[0].hasher()))


def test_the_sim_enclave_refuses_an_rsa_key() -> None:
    """A service key the sim backend cannot sign with is refused inside the child, and its key stays."""
    holder = SoftwareEnclave(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    with SimEnclave() as joiner_enclave:
        before = identity(joiner_enclave)
        with pytest.raises(Refused, match="RSA-2048; this enclave signs with ECDSA"):
            release(holder_of(holder), joiner_enclave)
        assert identity(joiner_enclave) == before


# --- a holder refuses ---------------------------------------------------------------------------------------------


def test_a_replayed_request_is_refused() -> None:
    holder_enclave = SoftwareEnclave()
    holder = holder_of(holder_enclave)
    request = Joiner(SoftwareEnclave(), APPRAISER).request(holder.challenge())
    holder.grant(request, NOW)
    with pytest.raises(Refused, match=r"already used \(a replayed request\)"):
        holder.grant(request, NOW + 1)


@pytest.mark.parametrize("forged", ["random", "another holder's", "edited"])
def test_a_challenge_it_never_issued_is_refused(forged: str) -> None:
    holder = holder_of(SoftwareEnclave())
    challenge = {"random": os.urandom(40), "another holder's": holder_of(SoftwareEnclave()).challenge(),
                 "edited": bytes([holder.challenge()[0] ^ 1]) + holder.challenge()[1:]}[forged]
    with pytest.raises(Refused, match="not one this holder issued"):
        holder.grant(Joiner(SoftwareEnclave(), APPRAISER).request(challenge), NOW)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_stale_challenge_is_refused() -> None:
    """Its age is on the holder's monotonic clock: a wall clock that steps changes nothing."""
    clock = Clock()
    enclave = SoftwareEnclave()
    holder = Holder(enclave, APPRAISER, envelopes(enclave), monotonic=clock)
    request = Joiner(SoftwareEnclave(), APPRAISER).request(holder.challenge())
    clock.now += CHALLENGE_TTL_S + 1
    with pytest.raises(Refused, match="stale: issued 31 s ago"):
        holder.grant(request, NOW)
    fresh = Joiner(SoftwareEnclave(), APPRAISER).request(holder.challenge())
    holder.grant(fresh, NOW + 86400 * 365)  # the wall clock a year on: the challenge is as fresh as it was


def test_a_challenge_is_used_up_by_a_request_that_fails() -> None:
    """A request with bad evidence still takes its challenge: a second try needs a new one."""
    holder = holder_of(SoftwareEnclave())
    challenge = holder.challenge()
    with pytest.raises(Refused, match="measurements"):
        holder.grant(Joiner(SoftwareEnclave(registers=OTHER_BUILD), APPRAISER).request(challenge), NOW)
    with pytest.raises(Refused, match="already used"):
        holder.grant(Joiner(SoftwareEnclave(), APPRAISER).request(challenge), NOW)


def test_a_joiner_with_another_measurement_is_refused_and_nothing_is_sealed() -> None:
    holder_enclave = SoftwareEnclave()
    sealed: list[bytes] = []
    seal = holder_enclave.seal_identity
    holder_enclave.seal_identity = lambda *args: sealed.append(seal(*args)) or sealed[-1]  # type: ignore[method-assign]
    holder = holder_of(holder_enclave)
    joiner = Joiner(SoftwareEnclave(registers=OTHER_BUILD), APPRAISER)
    with pytest.raises(Refused, match=r"the joiner's evidence does not verify: spec\[resolver-v1\]\.measurements\.0"):
        holder.grant(joiner.request(holder.challenge()), NOW)
    assert sealed == []


def _request_with(request: bytes, **changes: object) -> bytes:
    decoded = KeyRequest.decode(request)
    envelope = Envelope.decode(decoded.evidence)
    envelope = Envelope(**{**envelope.__dict__, **changes})  # type: ignore[arg-type]
    return KeyRequest(decoded.challenge, decoded.nonce, envelope.encode()).encode()


def test_evidence_for_another_key_is_refused() -> None:
    """An attacker keeps a genuine request's evidence and puts its own key beside it: the binding fails."""
    holder = holder_of(SoftwareEnclave())
    request = Joiner(SoftwareEnclave(), APPRAISER).request(holder.challenge())
    attacker = spki(ec.generate_private_key(ec.SECP256R1()).public_key())
    with pytest.raises(Refused, match="report_data"):
        holder.grant(_request_with(request, ike_key=attacker), NOW)


def test_a_clients_evidence_does_not_pass_for_a_request() -> None:
    """Evidence from GET /evidence (the IKE key, a nonce of the caller's choice) binds another purpose."""
    holder = holder_of(SoftwareEnclave())
    challenge = holder.challenge()
    victim = SoftwareEnclave()  # a genuine replica's evidence endpoint, asked for the challenge as a nonce
    client_evidence = attest(victim, challenge).encode()
    request = KeyRequest(challenge, os.urandom(32), client_evidence).encode()
    with pytest.raises(Refused, match=r"report_data: expected .* 'enclave-ike key request v1'"):
        holder.grant(request, NOW)


def test_evidence_for_another_challenge_is_refused() -> None:
    holder = holder_of(SoftwareEnclave())
    first, second = holder.challenge(), holder.challenge()
    request = Joiner(SoftwareEnclave(), APPRAISER).request(first)
    decoded = KeyRequest.decode(request)
    with pytest.raises(Refused, match="nonce"):
        holder.grant(KeyRequest(second, decoded.nonce, decoded.evidence).encode(), NOW)


def test_a_key_the_suite_cannot_seal_to_is_refused() -> None:
    """Genuine evidence binding a P-384 key: HPKE's KEM here is P-256, so nothing is sealed."""
    holder = holder_of(SoftwareEnclave())
    challenge = holder.challenge()
    p384 = spki(ec.generate_private_key(ec.SECP384R1()).public_key())
    evidence = attest(SoftwareEnclave(), challenge, label=KEY_REQUEST_LABEL, key_spki=p384).encode()
    with pytest.raises(Refused, match=r"cannot seal the key to the joiner's: .*P-256"):
        holder.grant(KeyRequest(challenge, os.urandom(32), evidence).encode(), NOW)


def test_a_flood_of_challenges_evicts_nobodys() -> None:
    """Challenges are not stored until used: a joiner's still works after 100,000 more were handed out."""
    holder = holder_of(SoftwareEnclave())
    joiner = Joiner(SoftwareEnclave(), APPRAISER)
    request = joiner.request(holder.challenge())
    for _ in range(100_000):
        holder.challenge()
    joiner.accept(holder.grant(request, NOW).grant, NOW)


def test_used_challenges_are_forgotten_once_stale() -> None:
    clock = Clock()
    enclave = SoftwareEnclave()
    holder = Holder(enclave, APPRAISER, envelopes(enclave), monotonic=clock)
    for _ in range(3):
        with pytest.raises(Refused):
            holder.grant(KeyRequest(holder.challenge(), os.urandom(16), b"x").encode(), NOW)
    assert len(holder._used) == 3
    clock.now += CHALLENGE_TTL_S + 1
    with pytest.raises(Refused):
        holder.grant(KeyRequest(holder.challenge(), os.urandom(16), b"x").encode(), NOW)
    assert len(holder._used) == 1


# --- a joiner refuses ---------------------------------------------------------------------------------------------


def _exchange(holder_enclave: Enclave) -> tuple[Joiner, SoftwareEnclave, KeyGrant]:
    holder = holder_of(holder_enclave)
    joiner_enclave = SoftwareEnclave()
    joiner = Joiner(joiner_enclave, APPRAISER)
    grant = KeyGrant.decode(holder.grant(joiner.request(holder.challenge()), NOW).grant)
    return joiner, joiner_enclave, grant


def test_a_holder_with_another_measurement_is_refused() -> None:
    joiner, enclave, grant = _exchange(SoftwareEnclave(registers=OTHER_BUILD))
    before = identity(enclave)
    with pytest.raises(Refused, match=r"the holder's evidence does not verify: spec\[resolver-v1\]\.measurements"):
        joiner.accept(grant.encode(), NOW)
    assert identity(enclave) == before


@pytest.mark.parametrize("damage", ["truncated", "flipped", "enc", "empty-ct"])
def test_a_truncated_or_tampered_sealed_key_is_refused(damage: str) -> None:
    joiner, enclave, grant = _exchange(SoftwareEnclave())
    before = identity(enclave)
    sealed = {"truncated": grant.sealed[:-1], "flipped": grant.sealed[:-5] + bytes([grant.sealed[-5] ^ 1])
              + grant.sealed[-4:], "enc": bytes([grant.sealed[0]]) + os.urandom(64) + grant.sealed[65:],
              "empty-ct": grant.sealed[:66]}[damage]
    with pytest.raises(Refused, match="the holder's sealed key: the sealed key does not open"):
        joiner.accept(KeyGrant(grant.evidence, sealed).encode(), NOW)
    assert identity(enclave) == before


def test_a_grant_for_another_request_is_refused() -> None:
    """A holder's genuine grant to one joiner, sent to another: its evidence binds the other joiner's nonce."""
    holder = holder_of(SoftwareEnclave())
    first, second = Joiner(SoftwareEnclave(), APPRAISER), Joiner(enclave := SoftwareEnclave(), APPRAISER)
    grant = holder.grant(first.request(holder.challenge()), NOW).grant
    second.request(holder.challenge())
    before = identity(enclave)
    with pytest.raises(Refused, match=r"the holder's evidence does not verify: .*nonce"):
        second.accept(grant, NOW)
    assert identity(enclave) == before


def test_a_sealed_key_that_is_not_the_attested_key_is_refused() -> None:
    """A genuine holder's evidence with another key sealed under it (a holder that lies about its key)."""
    joiner, _, grant = _exchange(SoftwareEnclave())
    request = joiner._request
    assert request is not None
    other = SoftwareEnclave()
    recipient = Envelope.decode(KeyRequest.decode(request).evidence).ike_key
    attested = Envelope.decode(grant.evidence).ike_key
    forged = other.seal_identity(recipient, seal_info(request, attested))
    with pytest.raises(Refused, match="not the key the holder's evidence attests"):
        joiner.accept(KeyGrant(grant.evidence, forged).encode(), NOW)


def test_a_grant_without_a_request_is_refused() -> None:
    _, _, grant = _exchange(SoftwareEnclave())
    with pytest.raises(Refused, match="before any request"):
        Joiner(SoftwareEnclave(), APPRAISER).accept(grant.encode(), NOW)


def test_a_seal_to_a_non_key_is_an_error() -> None:
    with pytest.raises(SealError, match="not a public key"):
        SoftwareEnclave().seal_identity(b"\x30\x00", b"info")


# --- messages -----------------------------------------------------------------------------------------------------


def test_messages_round_trip_and_are_strict() -> None:
    request = KeyRequest(os.urandom(32), os.urandom(16), b"{}")
    assert KeyRequest.decode(request.encode()) == request
    members = json.loads(request.encode())
    for broken, match in [({**members, "extra": 1}, "unknown member extra"),
                          ({k: v for k, v in members.items() if k != "nonce"}, "missing nonce"),
                          ({**members, "type": "enclave-ike key grant v1"}, "request.type"),
                          ({**members, "challenge": "AB" * 32}, "lower-case hex"),
                          ({**members, "nonce": "00" * 8}, "16 to 64 bytes"),
                          ({**members, "evidence": "e30="}, "base64url without padding"),
                          ({**members, "evidence": ""}, "1 to")]:
        with pytest.raises(MessageError, match=match):
            KeyRequest.decode(json.dumps(broken).encode())
    with pytest.raises(MessageError, match="not strict JSON: duplicate"):
        KeyRequest.decode(b'{"type": "a", "type": "b"}')
    evidence = base64.urlsafe_b64encode(b"x").rstrip(b"=").decode()
    with pytest.raises(MessageError, match="grant: missing sealed"):
        KeyGrant.decode(json.dumps({"type": "enclave-ike key grant v1", "evidence": evidence}).encode())


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600) | st.builds(lambda d: json.dumps(d).encode(), st.dictionaries(
    st.sampled_from(["type", "challenge", "nonce", "evidence", "sealed", "x"]),
    st.one_of(st.text(max_size=80), st.integers(), st.none(), st.sampled_from(
        ["enclave-ike key request v1", "enclave-ike key grant v1", "00" * 32, "AAAA"])))))
def test_any_bytes_decode_or_give_a_message_error(data: bytes) -> None:
    for kind in (KeyRequest, KeyGrant):
        try:
            kind.decode(data)
        except MessageError as exc:
            assert str(exc) and "\n" not in str(exc)


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=400))
def test_any_request_body_is_refused_or_fails_cleanly(body: bytes) -> None:
    """Garbage at the holder: MessageError or Refused, never anything else, never a grant."""
    holder = holder_of(SoftwareEnclave())
    with pytest.raises((MessageError, Refused)):
        holder.grant(body, NOW)


def test_private_key_never_in_a_grant_in_the_clear() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    holder = holder_of(SoftwareEnclave(key))
    grant = holder.grant(Joiner(SoftwareEnclave(), APPRAISER).request(holder.challenge()), NOW).grant
    secret = key.private_numbers().private_value.to_bytes(32, "big")
    pkcs8 = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    decoded = KeyGrant.decode(grant)
    for blob in (grant, decoded.sealed, decoded.evidence):
        assert secret not in blob and pkcs8 not in blob
