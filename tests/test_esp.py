"""The userspace ESP core (enclave_ike/esp.py): published vectors byte for byte, round trips, every drop reason with
the window left as it was, sequence-number exhaustion, lifetimes, RFC 3948 framing, a property test over any
delivery order, and the fuzz target (fuzz/esp.py) with a small count."""

from __future__ import annotations

import hashlib
import hmac as std_hmac
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave_ike import esp
from enclave_ike.errors import EnclaveIkeError
from enclave_ike.esp import (
    MAX_SEQ,
    Direction,
    EspConfigError,
    EspError,
    EspSaParams,
    InboundSa,
    Lifetime,
    LifetimeState,
    OutboundSa,
    Udp4500Kind,
)
from enclave_ike.ikev2.constants import EncrId, IntegId
from enclave_ike.ikev2.crypto import ChildSuite
from fuzz import esp as fuzz_esp

h = bytes.fromhex
NOW = 1000.0

GCM128 = ChildSuite(EncrId.ENCR_AES_GCM_16, 128)
GCM192 = ChildSuite(EncrId.ENCR_AES_GCM_16, 192)
GCM256 = ChildSuite(EncrId.ENCR_AES_GCM_16, 256)
CBC128 = ChildSuite(EncrId.ENCR_AES_CBC, 128, IntegId.AUTH_HMAC_SHA2_256_128)
CBC256 = ChildSuite(EncrId.ENCR_AES_CBC, 256, IntegId.AUTH_HMAC_SHA2_256_128)
SUITES = {"aes-gcm-16-128": GCM128, "aes-gcm-16-256": GCM256, "aes-cbc-128/sha2-256": CBC128,
          "aes-cbc-256/sha2-256": CBC256}


def keys(suite: ChildSuite) -> tuple[bytes, bytes]:
    integrity = suite.integrity
    return (bytes(range(suite.encryption.key_size)),
            bytes(range(100, 100 + integrity.key_size)) if integrity else b"")


def params(suite: ChildSuite, direction: Direction, spi: int = 0x12345678, **kwargs: object) -> EspSaParams:
    encryption_key, integrity_key = keys(suite)
    return EspSaParams(spi, direction, suite, encryption_key, integrity_key, **kwargs)  # type: ignore[arg-type]


def pair(suite: ChildSuite, **kwargs: object) -> tuple[OutboundSa, InboundSa]:
    return (OutboundSa(params(suite, Direction.OUTBOUND, **kwargs), NOW, counter_random()),
            InboundSa(params(suite, Direction.INBOUND, **kwargs), NOW))


def counter_random() -> esp.RandomSource:
    """A deterministic RandomSource: different octets on every call."""
    state = iter(range(1, 2**62))
    return lambda n: hashlib.shake_128(next(state).to_bytes(8, "big")).digest(n)


def queued_random(*values: bytes) -> esp.RandomSource:
    """A RandomSource that hands out `values` in order (each call must ask for its length)."""
    queue: Iterator[bytes] = iter(values)

    def take(n: int) -> bytes:
        value = next(queue)
        assert len(value) == n
        return value
    return take


# --- published vectors ---

# draft-mcgrew-gcm-test-01 ("Test Cases for the use of GCM and GMAC in IPsec ESP"), section 4. Each case gives the
# key and salt, SPI, sequence number, IV, the ESP plaintext (inner packet, padding, pad length, next header) and the
# ciphertext and tag; the ESP packet is SPI | seq | IV | ciphertext | tag. These three use 32-bit sequence numbers.
GCM_VECTORS = {
    "test case 2 (AES-128, SPI 0000a5f8)": dict(
        suite=GCM128, keymat=h("feffe9928665731c6d6a8f9467308308" "cafebabe"), spi=0x0000A5F8, seq=0x0A,
        packet=h("0000a5f8 0000000a facedbaddecaf888"
                 "deb22cd9b07c72c16e3a65beeb8df304a5a5897d33ae530f1ba76d5d114d2a5c"
                 "3de81827c10e9a4f51330d0eec416642cfbb85a5b47e48a4ec3b9ba95d918bd1"
                 "83b70d3aa8bc6ee4c309e9d85a41ad4a"),
        plaintext=h("4500003e698f000080114dccc0a80102c0a801010a980035002a2343b2d00100"
                    "0001000000000000037369700963796265726369747902646b00000100010001")),
    "test case 3 (AES-256, SPI 4a2cbfe3)": dict(
        suite=GCM256, keymat=h("abbccddef00112233445566778899aababbccddef00112233445566778899aab" "11223344"),
        spi=0x4A2CBFE3, seq=2,
        packet=h("4a2cbfe3 00000002 0102030405060708"
                 "ff425c9b724599df7a3bcd510194e00d6a78107f1b0b1cbf06efae9d65a5d763"
                 "748a637985771d347f0545659f14e99def842d8e"
                 "b335f4eecfdbf831824b4c4915956c96"),
        plaintext=h("4500003069a6400080062690c0a801029389155e0a9e008b2dc57ee000000000"
                    "7002400020bf0000020405b40101040201020201")),
    "test case 7 (AES-192, SPI 0000a5f8)": dict(
        suite=GCM192, keymat=h("feffe9928665731c6d6a8f9467308308feffe9928665731c" "cafebabe"), spi=0x0000A5F8,
        seq=0x0A,
        packet=h("0000a5f8 0000000a facedbaddecaf888"
                 "a5b1f8066029aea40e598b8122de02420938b3ab33f828e687b8858b5bfbdbd0315b27452144cc77"
                 "95457b9652037f5318027b5b4cd7a636"),
        plaintext=h("45000028a4ad4000400678800a01038f0a010612802306b8cb712602dd6bb03e501016d075680001")),
}


def trailer_split(plaintext: bytes) -> tuple[bytes, int]:
    pad_length, next_header = plaintext[-2], plaintext[-1]
    return plaintext[:len(plaintext) - 2 - pad_length], next_header


@pytest.mark.parametrize("name", GCM_VECTORS)
def test_gcm_vector_opens(name: str) -> None:
    v = GCM_VECTORS[name]
    sa = InboundSa(EspSaParams(v["spi"], Direction.INBOUND, v["suite"], v["keymat"]), NOW)
    assert sa.open(v["packet"], NOW) == trailer_split(v["plaintext"])
    assert sa.window.top == v["seq"]


@pytest.mark.parametrize("name", GCM_VECTORS)
def test_gcm_vector_seals(name: str) -> None:
    """The IV is base + sequence number: a RandomSource that returns the vector's IV minus its sequence number,
    and the packets before it sealed and thrown away, give the published packet."""
    v = GCM_VECTORS[name]
    iv = int.from_bytes(v["packet"][8:16], "big")
    base = (iv - v["seq"]).to_bytes(8, "big")
    sa = OutboundSa(EspSaParams(v["spi"], Direction.OUTBOUND, v["suite"], v["keymat"]), NOW, queued_random(base))
    inner, next_header = trailer_split(v["plaintext"])
    for _ in range(v["seq"] - 1):
        sa.seal(b"earlier", next_header, NOW)
    assert sa.seal(inner, next_header, NOW) == v["packet"]


# RFC 3602 section 4, cases #5 to #8: ESP packets (SPI | seq | IV | ciphertext) with AES-CBC-128 and no
# authentication. Our CBC suite always adds HMAC-SHA2-256-128 after the ciphertext (encrypt-then-MAC), so what it
# seals, less the last 16 octets, must be the published packet; those 16 are checked against an HMAC computed
# here by the standard library, and the published packet with that ICV appended must open.
CBC_VECTORS = {
    "case #5 (ICMP, transport, 64 octets)": dict(
        key=h("90d382b410eeba7ad938c46cec1a82bf"), spi=0x4321, seq=1, next_header=1,
        payload=h("08000ebda70a00008e9c083db95b070008090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
                  "202122232425262728292a2b2c2d2e2f3031323334353637"),
        packet=h("00004321 00000001 e96e8c08ab465763fd098d45dd3ff893"
                 "f663c25d325c18c6a9453e194e120849a4870b66cc6b9965330013b4898dc856"
                 "a4699e523a55db080b59ec3a8e4b7e52775b07d1db34ed9c538ab50c551b874a"
                 "a269add047ad2d5913ac19b7cfbad4a6")),
    "case #6 (ICMP, transport, 28 octets)": dict(
        key=h("90d382b410eeba7ad938c46cec1a82bf"), spi=0x4321, seq=8, next_header=1,
        payload=h("0800b5e8a80a0500a69c083d0b660e00777777777777777777777777"),
        packet=h("00004321 00000008 69d08df7d203329db093fc4924e5bd80"
                 "f51995881ec4e0c4488987ce742e8109689bb379d2d750c0d915dca346a89f75")),
    "case #7 (IPv4 in tunnel mode, 84 octets)": dict(
        key=h("0123456789abcdef0123456789abcdef"), spi=0x8765, seq=2, next_header=4,
        payload=h("45000054090400004001f988c0a87b03c0a87bc808009f76a90a0100b49c083d02a2040008090a0b"
                  "0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f3031323334353637"),
        packet=h("00008765 00000002 f4e765244f6407adf13dc1380f673f37"
                 "773b5241a4c449225e4f3ce5ed611b0c237ca96cf74a93013c1b0ea1a0cf70f8"
                 "e4ecaec78ac53aad7a0f022b859243c647752e94a859352b8a4d4d2decd136e5"
                 "c177f132ad3fbfb2201ac9904c74ee0a109e0ca1e4dfe9d5a100b842f1c22f0d")),
    "case #8 (IPv4 in tunnel mode, 68 octets)": dict(
        key=h("0123456789abcdef0123456789abcdef"), spi=0x8765, seq=5, next_header=4,
        payload=h("45000044090c00004001f990c0a87b03c0a87bc80800d63caa0a0200c69c083da3de0300ffffffff"
                  "ffffffffffffffffffffffffffffffffffffffffffffffffffffffff"),
        packet=h("00008765 00000005 85d47224b5f3dd5d2101d4ea8dffab22"
                 "15b92683819596a8047232cc00f7048fe45318e11f8a0f62ede3c3fc61203bb5"
                 "0f980a08c9843fd3a1b06d5c07ff9639b7eb7dfb3512e5de435e7207ed971ef3"
                 "d2726d9b5ef6affc6d17a0decbb13892")),
}
CBC_VECTOR_INTEG_KEY = bytes(range(0xA0, 0xC0))  # ours: RFC 3602 has no integrity


def rfc4868_icv(body: bytes) -> bytes:
    return std_hmac.new(CBC_VECTOR_INTEG_KEY, body, hashlib.sha256).digest()[:16]


@pytest.mark.parametrize("name", CBC_VECTORS)
def test_cbc_vector_seals(name: str) -> None:
    v = CBC_VECTORS[name]
    p = EspSaParams(v["spi"], Direction.OUTBOUND, CBC128, v["key"], CBC_VECTOR_INTEG_KEY)
    sa = OutboundSa(p, NOW, queued_random(*[bytes(16)] * (v["seq"] - 1), v["packet"][8:24]))
    for _ in range(v["seq"] - 1):
        sa.seal(b"earlier", v["next_header"], NOW)
    sealed = sa.seal(v["payload"], v["next_header"], NOW)
    assert sealed[:-16] == v["packet"]
    assert sealed[-16:] == rfc4868_icv(v["packet"])


@pytest.mark.parametrize("name", CBC_VECTORS)
def test_cbc_vector_opens(name: str) -> None:
    v = CBC_VECTORS[name]
    sa = InboundSa(EspSaParams(v["spi"], Direction.INBOUND, CBC128, v["key"], CBC_VECTOR_INTEG_KEY), NOW)
    assert sa.open(v["packet"] + rfc4868_icv(v["packet"]), NOW) == (v["payload"], v["next_header"])


# --- round trips ---

@pytest.mark.parametrize("name", SUITES)
def test_round_trip_every_suite(name: str) -> None:
    out, inb = pair(SUITES[name])
    for size in (0, 1, 13, 14, 15, 16, 17, 100, 1400):
        inner = bytes((size + i) % 256 for i in range(size))
        packet = out.seal(inner, 4, NOW)
        align = 4 if SUITES[name].encryption.aead else 16
        assert (len(packet) - out.overhead) % align == 0
        assert len(packet) - out.overhead - len(inner) - 2 < align  # the least padding that aligns
        assert inb.open(packet, NOW) == (inner, 4)
    assert out.packets == inb.packets == 9 and out.bytes == inb.bytes
    assert out.last_seq == inb.window.top == 9


def test_gcm_ivs_count_up_and_never_repeat() -> None:
    out = OutboundSa(params(GCM128, Direction.OUTBOUND), NOW, queued_random(b"\xff" * 7 + b"\xfe"))
    ivs = [out.seal(b"x", 17, NOW)[8:16] for _ in range(5)]
    assert ivs == [(2**64 - 2 + seq).to_bytes(9, "big")[1:] for seq in range(1, 6)]  # wraps modulo 2**64
    assert len(set(ivs)) == 5


def test_cbc_ivs_come_from_the_random_source() -> None:
    out = OutboundSa(params(CBC128, Direction.OUTBOUND), NOW, queued_random(b"A" * 16, b"B" * 16))
    assert out.seal(b"x", 17, NOW)[8:24] == b"A" * 16
    assert out.seal(b"x", 17, NOW)[8:24] == b"B" * 16


# --- drops: each with its reason, the window untouched ---

def refused(sa: InboundSa, packet: bytes, reason: str) -> None:
    before = (sa.window.state, sa.bytes, sa.packets)
    with pytest.raises(EspError) as caught:
        sa.open(packet, NOW)
    assert caught.value.reason == reason, caught.value
    assert isinstance(caught.value, EnclaveIkeError)
    assert (sa.window.state, sa.bytes, sa.packets) == before


@pytest.mark.parametrize("name", SUITES)
def test_replay_is_refused(name: str) -> None:
    out, inb = pair(SUITES[name])
    packet = out.seal(b"query", 17, NOW)
    inb.open(packet, NOW)
    refused(inb, packet, "replay")


@pytest.mark.parametrize("name", SUITES)
def test_reordered_within_the_window_is_accepted_once(name: str) -> None:
    out, inb = pair(SUITES[name])
    packets = [out.seal(bytes([i]), 17, NOW) for i in range(1, 9)]
    for i in (8, 3, 5, 1, 2, 7, 4, 6):
        assert inb.open(packets[i - 1], NOW) == (bytes([i]), 17)
    for packet in packets:
        refused(inb, packet, "replay")


@pytest.mark.parametrize("window", [32, 64, 1024])
def test_left_of_the_window_is_refused(window: int) -> None:
    out, inb = pair(GCM128, replay_window=window)
    packets = [out.seal(b"x", 17, NOW) for _ in range(window + 8)]
    inb.open(packets[-1], NOW)  # top = window + 8
    refused(inb, packets[7], "window")  # seq 8: top - 8 == window
    assert inb.open(packets[8], NOW) == (b"x", 17)  # seq 9: the window's last slot


def test_sequence_number_zero_is_left_of_the_window() -> None:
    out, inb = pair(GCM128)
    packet = out.seal(b"x", 17, NOW)
    refused(inb, packet[:4] + bytes(4) + packet[8:], "window")


@pytest.mark.parametrize("name", SUITES)
def test_truncated_and_wrong_spi(name: str) -> None:
    out, inb = pair(SUITES[name])
    packet = out.seal(b"query" * 4, 17, NOW)  # two CBC blocks
    for size in (0, 3, 7):
        refused(inb, packet[:size], "truncated")
    minimum = inb.overhead + (2 if SUITES[name].encryption.aead else 16)
    refused(inb, packet[:minimum - 1], "truncated")
    refused(inb, b"\x12\x34\x56\x79" + packet[4:], "spi")
    refused(inb, packet[:-1], "length" if not SUITES[name].encryption.aead else "icv")
    assert inb.open(packet, NOW) == (b"query" * 4, 17)


@pytest.mark.parametrize("name", SUITES)
def test_bad_icv_is_refused_and_the_genuine_packet_still_opens(name: str) -> None:
    out, inb = pair(SUITES[name])
    packet = out.seal(b"query", 17, NOW)
    for index in (4, 6, 8, 20, len(packet) - 17, len(packet) - 1):  # seq (twice), IV, ciphertext, ICV
        forged = bytearray(packet)
        forged[index] ^= 0x01
        refused(inb, bytes(forged), "icv")
    assert inb.open(packet, NOW) == (b"query", 17)


def forge(suite: ChildSuite, seq: int, plaintext: bytes) -> bytes:
    """An authentic packet around any plaintext (padding included), built here with `cryptography` directly."""
    encryption_key, integrity_key = keys(suite)
    header = (0x12345678).to_bytes(4, "big") + seq.to_bytes(4, "big")
    if suite.encryption.aead:
        iv = b"\x00" * 7 + bytes([seq])
        return header + iv + AESGCM(encryption_key[:-4]).encrypt(encryption_key[-4:] + iv, plaintext, header)
    iv = bytes(16)
    encryptor = Cipher(algorithms.AES(encryption_key), modes.CBC(iv)).encryptor()
    body = header + iv + encryptor.update(plaintext) + encryptor.finalize()
    return body + std_hmac.new(integrity_key, body, hashlib.sha256).digest()[:16]


@pytest.mark.parametrize("name", SUITES)
def test_bad_padding_is_refused(name: str) -> None:
    suite = SUITES[name]
    _, inb = pair(suite)
    size = 16 if not suite.encryption.aead else 8
    cases = [b"x" * (size - 4) + b"\x01\x03" + b"\x02\x11",  # padding 1, 3
             b"x" * (size - 4) + b"\x00\x00" + b"\x02\x11",  # padding 0, 0
             b"x" * (size - 2) + bytes([size - 1, 0x11])]  # pad length past the start
    for seq, plaintext in enumerate(cases, start=1):
        refused(inb, forge(suite, seq, plaintext), "padding")
    assert inb.open(forge(suite, 1, b"x" * (size - 4) + b"\x01\x02\x02\x11"), NOW) == (b"x" * (size - 4), 0x11)


# --- sequence numbers and lifetimes ---

@pytest.mark.parametrize("name", SUITES)
def test_sequence_number_exhaustion(name: str) -> None:
    out, inb = pair(SUITES[name])
    out._last_seq = MAX_SEQ - 1  # four billion packets later
    last = out.seal(b"last", 17, NOW)
    assert last[4:8] == b"\xff\xff\xff\xff"
    with pytest.raises(esp.SequenceExhausted) as caught:
        out.seal(b"one too many", 17, NOW)
    assert caught.value.reason == "exhausted"
    assert out.last_seq == MAX_SEQ
    assert inb.open(last, NOW) == (b"last", 17)


def test_lifetime_by_bytes() -> None:
    lifetime = Lifetime(soft_bytes=100, hard_bytes=150)
    out, inb = pair(GCM128, lifetime=lifetime)
    packets = [out.seal(b"x" * 50, 17, NOW) for _ in range(2)]
    assert out.lifetime_state(NOW) is LifetimeState.SOFT_EXPIRED  # 100: rekey now, still working
    with pytest.raises(esp.Expired):
        out.seal(b"x" * 51, 17, NOW)  # would pass 150
    packets.append(out.seal(b"x" * 50, 17, NOW))
    assert out.lifetime_state(NOW) is LifetimeState.HARD_EXPIRED
    with pytest.raises(esp.Expired) as caught:
        out.seal(b"", 17, NOW)
    assert caught.value.reason == "expired"
    assert inb.lifetime_state(NOW) is LifetimeState.LIVE
    inb.open(packets[0], NOW)
    inb.open(packets[1], NOW)
    assert inb.lifetime_state(NOW) is LifetimeState.SOFT_EXPIRED
    inb.open(packets[2], NOW)
    assert inb.lifetime_state(NOW) is LifetimeState.HARD_EXPIRED
    late = OutboundSa(params(GCM128, Direction.OUTBOUND, lifetime=lifetime), NOW).seal(b"x", 17, NOW)
    refused(inb, late, "expired")


def test_inbound_refuses_a_packet_that_would_pass_the_hard_byte_limit() -> None:
    out, inb = pair(CBC128, lifetime=Lifetime(hard_bytes=60))
    inb.open(out.seal(b"x" * 50, 17, NOW), NOW)
    big = OutboundSa(params(CBC128, Direction.OUTBOUND), NOW, counter_random())
    big.seal(b"", 17, NOW)
    refused(inb, big.seal(b"x" * 11, 17, NOW), "expired")  # authentic, but 61 octets in all


@pytest.mark.parametrize("direction", ["out", "in"])
def test_lifetime_by_time(direction: str) -> None:
    out, inb = pair(GCM256, lifetime=Lifetime(soft_seconds=30, hard_seconds=60))
    sa = out if direction == "out" else inb
    assert sa.lifetime_state(NOW + 29.9) is LifetimeState.LIVE
    assert sa.lifetime_state(NOW + 30) is LifetimeState.SOFT_EXPIRED
    packet = out.seal(b"x", 17, NOW + 59)
    assert inb.open(packet, NOW + 59.9) == (b"x", 17)
    assert sa.lifetime_state(NOW + 60) is LifetimeState.HARD_EXPIRED
    if direction == "out":
        with pytest.raises(esp.Expired):
            out.seal(b"x", 17, NOW + 60)
    else:
        before = inb.window.state
        with pytest.raises(esp.Expired):
            inb.open(out.seal(b"y", 17, NOW), NOW + 60)
        assert inb.window.state == before


# --- parameters ---

def test_bad_parameters_are_config_errors() -> None:
    encryption_key, integrity_key = keys(CBC128)
    bad = [lambda: EspSaParams(0, Direction.INBOUND, GCM128, keys(GCM128)[0]),
           lambda: EspSaParams(2**32, Direction.INBOUND, GCM128, keys(GCM128)[0]),
           lambda: EspSaParams(1, Direction.INBOUND, GCM128, keys(GCM128)[0][:-1]),
           lambda: EspSaParams(1, Direction.INBOUND, GCM128, keys(GCM128)[0], b"x"),
           lambda: EspSaParams(1, Direction.INBOUND, CBC128, encryption_key, integrity_key[:-1]),
           lambda: EspSaParams(1, Direction.INBOUND, ChildSuite(EncrId.ENCR_AES_GCM_16, 128, esn=True),
                               keys(GCM128)[0]),
           lambda: params(GCM128, Direction.INBOUND, replay_window=31),
           lambda: params(GCM128, Direction.INBOUND, replay_window=1025),
           lambda: Lifetime(soft_bytes=10, hard_bytes=5),
           lambda: Lifetime(soft_seconds=-1),
           lambda: InboundSa(params(GCM128, Direction.OUTBOUND), NOW),
           lambda: OutboundSa(params(GCM128, Direction.INBOUND), NOW),
           lambda: OutboundSa(params(GCM128, Direction.OUTBOUND), NOW).seal(b"", 256, NOW)]
    for make in bad:
        with pytest.raises(EspConfigError) as caught:
            make()
        assert caught.value.exit_code == 2


def test_keys_are_not_printed() -> None:
    p = params(CBC128, Direction.INBOUND)
    assert p.encryption_key.hex() not in repr(p) and p.integrity_key.hex() not in repr(p)


# --- RFC 3948 ---

def test_udp4500_framing() -> None:
    assert esp.classify_udp4500(b"\xff") == (Udp4500Kind.KEEPALIVE, b"")
    ike = b"\x11" * 28
    assert esp.classify_udp4500(esp.frame_ike_udp4500(ike)) == (Udp4500Kind.IKE, ike)
    packet = OutboundSa(params(GCM128, Direction.OUTBOUND), NOW).seal(b"x", 17, NOW)
    assert esp.classify_udp4500(packet) == (Udp4500Kind.ESP, packet)
    for short in (b"", b"\x01", b"\x01\x02\x03\x04\x05\x06\x07"):
        with pytest.raises(esp.Truncated):
            esp.classify_udp4500(short)


# --- any delivery order ---

@settings(max_examples=150, deadline=None)
@given(st.sampled_from(sorted(SUITES)), st.sampled_from([32, 64]), st.integers(1, 120),
       st.lists(st.integers(0, 119), max_size=300))
def test_any_delivery_is_accepted_at_most_once_and_never_left_of_the_window(
        name: str, window: int, count: int, deliveries: list[int]) -> None:
    """Drops (indices never drawn), duplicates and any order: a packet is accepted exactly when it is new and not
    left of the window, at most once, and a refusal never moves the window."""
    out, inb = pair(SUITES[name], replay_window=window)
    packets = [out.seal(seq.to_bytes(2, "big"), 17, NOW) for seq in range(1, count + 1)]
    accepted: set[int] = set()
    for index in deliveries:
        if index >= count:
            continue
        seq = index + 1
        top = inb.window.top
        before = inb.window.state
        try:
            inner, _ = inb.open(packets[index], NOW)
        except (esp.Replayed, esp.LeftOfWindow) as exc:
            assert inb.window.state == before
            assert seq in accepted or seq <= top - window
            assert exc.reason == ("window" if seq <= top - window else "replay")
            continue
        assert inner == seq.to_bytes(2, "big")
        assert seq not in accepted
        assert seq > top - window
        accepted.add(seq)
    assert inb.packets == len(accepted)


# --- the fuzz target ---

def test_fuzz_target_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert fuzz_esp.main(["--inputs", "3000", "--seed", "7", "--progress", "1000"]) == 0
    out = capsys.readouterr().out
    assert "fuzz esp: 3000 inputs" in out and "other exceptions 0" in out and "property violations 0" in out
    assert out.count("failures 0") == 3


def test_fuzz_target_saves_and_replays_a_failing_input(tmp_path, monkeypatch, capsys) -> None:
    def broken(self: InboundSa, packet: bytes, now: float) -> tuple[bytes, int]:
        raise KeyError("boom")
    monkeypatch.setattr(InboundSa, "open", broken)
    assert fuzz_esp.main(["--inputs", "50", "--crash-dir", str(tmp_path)]) == 1
    saved = list(tmp_path.glob("esp-seed1-*.json"))
    assert len(saved) == 1 and "KeyError" in capsys.readouterr().err
    assert fuzz_esp.main(["--replay", str(saved[0])]) == 1
    monkeypatch.undo()
    assert fuzz_esp.main(["--replay", str(saved[0])]) == 0
