"""Hostile bytes into the IKEv2 decoder: random and mutated messages raise IkeError subclasses and nothing else.

Mutations keep the IKE header's length field in step with the datagram most of the time, so they reach the payload
chain instead of stopping at the header check. The encrypted path (SK payloads opened with real keys) and the
RFC 7427 AUTH data parser get the same treatment. The generators are shared with the long fuzz target,
`python -m fuzz.ikev2` (fuzz/README.md), which runs them a million times."""

import contextlib
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_ikev2_codec import SAMPLES, messages

from enclave_ike.ikev2 import crypto as c
from enclave_ike.ikev2.constants import EncrId, ExchangeType, HeaderFlag, IdType, IntegId, PayloadType, PrfId
from enclave_ike.ikev2.errors import IkeError
from enclave_ike.ikev2.payloads import IdentificationInitiator, IkeHeader, Nonce, decode_payloads
from enclave_ike.ikev2.wire import Reader
from fuzz.generators import decode, mutate, with_length

# --- hypothesis: random bytes, random headers, mutated generated messages ---

@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes(data):
    decode(data)


@settings(max_examples=2000, deadline=None)
@given(st.binary(min_size=28, max_size=28), st.binary(max_size=300))
def test_random_payloads_behind_a_consistent_header(header, body):
    """A header whose length agrees and whose version is 2, so the chain parser sees every input."""
    data = header[:17] + b"\x20" + header[18:] + body
    decode(with_length(data))


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages(), st.randoms(use_true_random=False))
def test_mutated_generated_messages(message, rng):
    decode(mutate(rng, message.encode()))


@settings(max_examples=2000, deadline=None)
@given(st.sampled_from(list(range(256))), st.binary(max_size=200))
def test_random_inner_chains(first_type, plaintext):
    """What an SK payload could hold after decryption: any first type, any bytes."""
    with contextlib.suppress(IkeError):
        decode_payloads(Reader(plaintext, payload="SK"), first_type, inner=True)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=120))
def test_random_signature_auth_data(data):
    with contextlib.suppress(IkeError):
        c.decode_signature_auth(data)


# --- seeded loops: many more cheap examples over the hand-built samples ---

@pytest.mark.parametrize("seed", range(4))
def test_mutated_samples(seed):
    rng = random.Random(seed)
    decoded = 0
    for _ in range(5000):
        if decode(mutate(rng, rng.choice(SAMPLES))) is not None:
            decoded += 1
    assert decoded > 0  # some mutations (inside opaque data) still decode: the fuzzer is not only hitting the header


SUITES = [
    c.IkeSuite(EncrId.ENCR_AES_GCM_16, 256, PrfId.PRF_HMAC_SHA2_256, IntegId.NONE, 31),
    c.IkeSuite(EncrId.ENCR_AES_CBC, 128, PrfId.PRF_HMAC_SHA2_256, IntegId.AUTH_HMAC_SHA2_256_128, 19),
]


@pytest.mark.parametrize("suite", SUITES, ids=["gcm", "cbc"])
def test_mutated_encrypted_messages(suite):
    """Tampered SK messages fail with IntegrityError or DecodeError, never anything else, and never decrypt."""
    keys = c.derive_ike_keys(suite, b"s" * 32, b"\x01" * 32, b"\x02" * 32, b"\x03" * 8, b"\x04" * 8)
    cipher = c.SkCipher.for_sender(suite, keys, initiator=True)
    header = IkeHeader(b"\x03" * 8, b"\x04" * 8, ExchangeType.IKE_AUTH, HeaderFlag.INITIATOR, 1)
    inner = (IdentificationInitiator(IdType.ID_NULL, b""), Nonce(b"n" * 16))
    wire = c.encrypt_message(cipher, header, inner, bytes(cipher.iv_size))
    assert c.decrypt_message(cipher, wire)[1] == inner
    rng = random.Random(7)
    for _ in range(2000):
        mutated = mutate(rng, wire)
        if mutated == wire:
            continue
        try:
            c.decrypt_message(cipher, mutated)
        except IkeError:
            continue
        # a mutation may only succeed if it left the authenticated octets alone (e.g. it was undone)
        assert mutated[:len(wire)] == wire


def test_payload_type_numbers_cover_every_value():
    """Every next-payload value, with and without the critical bit, on an otherwise valid 8-octet body."""
    header = IkeHeader(b"\x01" * 8, bytes(8), ExchangeType.INFORMATIONAL, HeaderFlag.NONE, 0)
    for payload_type in range(256):
        for flags in (0x00, 0x80):
            body = bytes([0, flags, 0, 12]) + b"\x01\x00\x00\x00\x00\x00\x00\x00"
            decode(header.encode(payload_type, 28 + len(body)) + body)
    assert PayloadType.SK == 46
