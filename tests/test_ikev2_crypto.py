"""The IKEv2 crypto suite against published vectors (files under tests/vectors/ikev2/, named after their source)
and against independent recomputations with the standard library's hmac and hashlib."""

import hashlib
import hmac as std_hmac
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave_ike.ikev2 import crypto as c
from enclave_ike.ikev2.constants import (
    AuthMethod,
    DhGroup,
    EncrId,
    ExchangeType,
    HeaderFlag,
    IdType,
    IntegId,
    NotifyType,
    PrfId,
    ProtocolId,
    TransformType,
)
from enclave_ike.ikev2.errors import (
    AuthenticationFailed,
    DecodeError,
    IntegrityError,
    InvalidKeyExchange,
    LocalProtocolError,
    NoProposalChosen,
    UnsupportedAlgorithm,
)
from enclave_ike.ikev2.payloads import (
    Authentication,
    Delete,
    IdentificationInitiator,
    IkeHeader,
    Message,
    Nonce,
    Notify,
    Proposal,
    TrafficSelector,
    TrafficSelectorsInitiator,
    Transform,
)
from fuzz.generators import seeded

VECTORS = Path(__file__).parent / "vectors" / "ikev2"


def load(name: str) -> list[dict[str, str]]:
    """Sections of a vector file: `[title]` then `key = value` lines; hex values lose their spaces."""
    sections: list[dict[str, str]] = []
    for line in (VECTORS / name).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("["):
            sections.append({"title": line.strip("[]")})
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        sections[-1][key] = value
    return sections


def unhex(value: str) -> bytes:
    return bytes.fromhex(value.replace(" ", ""))


HASHLIB = {PrfId.PRF_HMAC_SHA1: "sha1", PrfId.PRF_HMAC_SHA2_256: "sha256", PrfId.PRF_HMAC_SHA2_384: "sha384",
           PrfId.PRF_HMAC_SHA2_512: "sha512"}


def ref_prf(prf_id: int, key: bytes, data: bytes) -> bytes:
    return std_hmac.new(key, data, HASHLIB[prf_id]).digest()


def ref_prf_plus(prf_id: int, key: bytes, seed: bytes, length: int) -> bytes:
    out, block = b"", b""
    for n in range(1, 256):
        block = ref_prf(prf_id, key, block + seed + bytes([n]))
        out += block
        if len(out) >= length:
            return out[:length]
    raise AssertionError("prf+ ran out of blocks")


# --- PRF and integrity: RFC 4868 ---

@pytest.mark.parametrize("case", [s for s in load("rfc4868-prf-hmac-sha2.txt") if "prf" in s],
                         ids=lambda s: f"{s['title']}-{s['prf']}")
def test_prf_matches_rfc4868(case):
    prf = c.Prf(PrfId[case["prf"]])
    assert prf(unhex(case["key"]), unhex(case["data"])) == unhex(case["output"])


def test_integrity_matches_rfc4868_auth256():
    (case,) = [s for s in load("rfc4868-prf-hmac-sha2.txt") if "integ" in s]
    integ = c.Integrity(IntegId[case["integ"]])
    assert (integ.key_size, integ.icv_size) == (32, 16)
    assert integ.mac(unhex(case["key"]), unhex(case["data"])) == unhex(case["output"])


def test_prf_plus_spelled_out():
    """RFC 7296 2.13: prf+ (K,S) = T1 | T2 | T3 | ... with T1 = prf (K, S | 0x01), Tn = prf (K, Tn-1 | S | n)."""
    prf, key, seed = c.Prf(PrfId.PRF_HMAC_SHA2_256), b"K" * 32, b"Ni|Nr|SPIi|SPIr"
    t1 = ref_prf(prf.id, key, seed + b"\x01")
    t2 = ref_prf(prf.id, key, t1 + seed + b"\x02")
    t3 = ref_prf(prf.id, key, t2 + seed + b"\x03")
    assert prf.plus(key, seed, 80) == (t1 + t2 + t3)[:80]


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(list(HASHLIB)), st.binary(max_size=80), st.binary(max_size=120), st.integers(0, 600))
def test_prf_plus_agrees_with_stdlib_recomputation(prf_id, key, seed, length):
    assert c.Prf(prf_id).plus(key, seed, length) == ref_prf_plus(prf_id, key, seed, length)


def test_prf_plus_stops_at_255_blocks():
    prf = c.Prf(PrfId.PRF_HMAC_SHA2_256)
    assert len(prf.plus(b"k", b"s", 255 * 32)) == 255 * 32
    with pytest.raises(LocalProtocolError):
        prf.plus(b"k", b"s", 255 * 32 + 1)


# --- key derivation ---

def test_kdf_matches_libreswan_cavs_vector():
    (v,) = load("libreswan-cavs-ikev2-kdf-sha1.txt")
    prf = c.Prf(PrfId[v["prf"]])
    ni, nr, gir, gir_new = unhex(v["Ni"]), unhex(v["Nr"]), unhex(v["g^ir"]), unhex(v["g^ir (new)"])
    seed = c.skeyseed(prf, ni, nr, gir)
    assert seed == unhex(v["SKEYSEED"])
    dkm = prf.plus(seed, ni + nr + unhex(v["SPIi"]) + unhex(v["SPIr"]), len(unhex(v["DKM"])))
    assert dkm == unhex(v["DKM"])
    sk_d = dkm[:prf.key_size]
    assert prf.plus(sk_d, ni + nr, 132) == unhex(v["DKM(Child SA)"])
    assert prf.plus(sk_d, gir_new + ni + nr, 132) == unhex(v["DKM(Child SA D-H)"])
    assert c.rekey_skeyseed(prf, sk_d, gir_new, ni, nr) == unhex(v["SKEYSEED(Rekey)"])
    # the Child SA helpers cut the same streams: AES-GCM-128 takes 20 octets each way (key | salt), no integrity
    child = c.derive_child_keys(prf, sk_d, c.ChildSuite(EncrId.ENCR_AES_GCM_16, 128), ni, nr)
    assert (child.encr_i, child.integ_i, child.encr_r, child.integ_r) == (
        unhex(v["DKM(Child SA)"])[:20], b"", unhex(v["DKM(Child SA)"])[20:40], b"")
    pfs = c.derive_child_keys(prf, sk_d, c.ChildSuite(EncrId.ENCR_AES_GCM_16, 128), ni, nr, gir_new)
    assert pfs.encr_i + pfs.encr_r == unhex(v["DKM(Child SA D-H)"])[:40]


# (suite, expected lengths of SK_d, SK_ai, SK_ar, SK_ei, SK_er, SK_pi, SK_pr)
SUITES = {
    "gcm128-sha256": (c.IkeSuite(EncrId.ENCR_AES_GCM_16, 128, PrfId.PRF_HMAC_SHA2_256, IntegId.NONE, 19),
                      (32, 0, 0, 20, 20, 32, 32)),
    "gcm256-sha384": (c.IkeSuite(EncrId.ENCR_AES_GCM_16, 256, PrfId.PRF_HMAC_SHA2_384, IntegId.NONE, 31),
                      (48, 0, 0, 36, 36, 48, 48)),
    "cbc128-sha256": (c.IkeSuite(EncrId.ENCR_AES_CBC, 128, PrfId.PRF_HMAC_SHA2_256,
                                 IntegId.AUTH_HMAC_SHA2_256_128, 14), (32, 32, 32, 16, 16, 32, 32)),
    "cbc256-sha512": (c.IkeSuite(EncrId.ENCR_AES_CBC, 256, PrfId.PRF_HMAC_SHA2_512,
                                 IntegId.AUTH_HMAC_SHA2_512_256, 21), (64, 64, 64, 32, 32, 64, 64)),
    "cbc192-sha384": (c.IkeSuite(EncrId.ENCR_AES_CBC, 192, PrfId.PRF_HMAC_SHA2_384,
                                 IntegId.AUTH_HMAC_SHA2_384_192, 20), (48, 48, 48, 24, 24, 48, 48)),
}


@pytest.mark.parametrize("name", sorted(SUITES))
def test_ike_keys_against_independent_recomputation(name):
    suite, sizes = SUITES[name]
    ni, nr, gir = b"\x01" * 32, b"\x02" * 24, b"\x03" * 64
    spi_i, spi_r = bytes.fromhex("0011223344556677"), bytes.fromhex("8899aabbccddeeff")
    seed = c.skeyseed(suite.prf, ni, nr, gir)
    assert seed == ref_prf(suite.prf_id, ni + nr, gir)
    keys = c.derive_ike_keys(suite, seed, ni, nr, spi_i, spi_r)
    stream = ref_prf_plus(suite.prf_id, seed, ni + nr + spi_i + spi_r, sum(sizes))
    expected, offset = [], 0
    for size in sizes:
        expected.append(stream[offset:offset + size])
        offset += size
    got = [keys.sk_d, keys.sk_ai, keys.sk_ar, keys.sk_ei, keys.sk_er, keys.sk_pi, keys.sk_pr]
    assert got == expected
    assert [len(k) for k in got] == list(sizes)
    assert keys.sk_d.hex() not in repr(keys)


@pytest.mark.parametrize("suite, sizes", [
    (c.ChildSuite(EncrId.ENCR_AES_GCM_16, 256), (36, 0)),
    (c.ChildSuite(EncrId.ENCR_AES_CBC, 128, IntegId.AUTH_HMAC_SHA2_256_128), (16, 32)),
    (c.ChildSuite(EncrId.ENCR_AES_CBC, 256, IntegId.AUTH_HMAC_SHA2_512_256), (32, 64)),
])
@pytest.mark.parametrize("pfs", [None, b"\x07" * 32])
def test_child_keymat_against_independent_recomputation(suite, sizes, pfs):
    prf, sk_d, ni, nr = c.Prf(PrfId.PRF_HMAC_SHA2_256), b"\x05" * 32, b"\x0a" * 32, b"\x0b" * 32
    keys = c.derive_child_keys(prf, sk_d, suite, ni, nr, pfs)
    encr, integ = sizes
    keymat = ref_prf_plus(prf.id, sk_d, (pfs or b"") + ni + nr, 2 * (encr + integ))
    assert keys.encr_i == keymat[:encr]
    assert keys.integ_i == keymat[encr:encr + integ]
    assert keys.encr_r == keymat[encr + integ:2 * encr + integ]
    assert keys.integ_r == keymat[2 * encr + integ:]
    assert keys.encr_i.hex() not in repr(keys)


def test_suite_from_proposal():
    suite = SUITES["cbc128-sha256"][0]
    assert c.IkeSuite.from_proposal(Proposal(3, ProtocolId.IKE, b"", suite.transforms())) == suite
    gcm = SUITES["gcm256-sha384"][0]
    assert c.IkeSuite.from_proposal(Proposal(1, ProtocolId.IKE, b"", gcm.transforms())) == gcm


def test_child_suite_from_proposal():
    gcm = c.ChildSuite(EncrId.ENCR_AES_GCM_16, 256, dh_group=DhGroup.CURVE25519)
    assert c.ChildSuite.from_proposal(Proposal(2, ProtocolId.ESP, b"\x01\x02\x03\x04", gcm.transforms())) == gcm
    cbc = c.ChildSuite(EncrId.ENCR_AES_CBC, 128, IntegId.AUTH_HMAC_SHA2_256_128, esn=True)
    assert c.ChildSuite.from_proposal(Proposal(1, ProtocolId.ESP, b"\x01\x02\x03\x04", cbc.transforms())) == cbc
    without_esn = tuple(t for t in gcm.transforms() if t.type != TransformType.ESN)
    with pytest.raises(NoProposalChosen):
        c.ChildSuite.from_proposal(Proposal(1, ProtocolId.ESP, b"\x01\x02\x03\x04", without_esn))
    with pytest.raises(NoProposalChosen):  # an IKE proposal is not an ESP one, and the other way round
        c.ChildSuite.from_proposal(Proposal(1, ProtocolId.IKE, b"", gcm.transforms()))
    with pytest.raises(NoProposalChosen):
        ike_transforms = SUITES["gcm128-sha256"][0].transforms()
        c.IkeSuite.from_proposal(Proposal(1, ProtocolId.ESP, b"\x01\x02\x03\x04", ike_transforms))


@pytest.mark.parametrize("transforms", [
    (Transform.create(TransformType.ENCR, EncrId.ENCR_AES_CBC), Transform.create(TransformType.PRF, 5),
     Transform.create(TransformType.INTEG, 12), Transform.create(TransformType.DH, 19)),  # no key length
    (Transform.create(TransformType.ENCR, EncrId.ENCR_AES_GCM_16, 128), Transform.create(TransformType.PRF, 5),
     Transform.create(TransformType.PRF, 7), Transform.create(TransformType.DH, 19)),  # two PRFs: an offer
    (Transform.create(TransformType.ENCR, EncrId.ENCR_AES_GCM_16, 128), Transform.create(TransformType.PRF, 5),
     Transform.create(TransformType.INTEG, 12), Transform.create(TransformType.DH, 19)),  # AEAD with integrity
    (Transform.create(TransformType.ENCR, EncrId.ENCR_AES_GCM_16, 128), Transform.create(TransformType.PRF, 5)),
    (Transform.create(TransformType.ENCR, 3), Transform.create(TransformType.PRF, 5),  # 3DES
     Transform.create(TransformType.INTEG, 12), Transform.create(TransformType.DH, 19)),
    (Transform.create(TransformType.ENCR, EncrId.ENCR_AES_GCM_16, 128), Transform.create(TransformType.PRF, 5),
     Transform.create(TransformType.DH, 2)),  # MODP-1024
])
def test_unusable_proposals_are_no_proposal_chosen(transforms):
    with pytest.raises(NoProposalChosen) as caught:
        c.IkeSuite.from_proposal(Proposal(1, ProtocolId.IKE, b"", transforms))
    assert caught.value.notify == NotifyType.NO_PROPOSAL_CHOSEN == 14


def test_unimplemented_algorithms_are_local_errors():
    for build in (lambda: c.Prf(PrfId.PRF_AES128_XCBC), lambda: c.Integrity(IntegId.AUTH_HMAC_SHA1_96),
                  lambda: c.Encryption(EncrId.ENCR_AES_GCM_16, 100), lambda: c.dh_public_size(DhGroup.MODP_3072)):
        with pytest.raises(UnsupportedAlgorithm) as caught:
            build()
        assert isinstance(caught.value, LocalProtocolError)


# --- Diffie-Hellman ---

@pytest.mark.parametrize("v", load("rfc5903-ecp-groups.txt"), ids=lambda v: v["title"].split()[0])
def test_ecp_groups_match_rfc5903(v):
    group = int(v["group"])
    initiator = c.DiffieHellman.from_private(group, unhex(v["i"]))
    assert initiator.public_key == unhex(v["gix"]) + unhex(v["giy"])  # x | y, no 0x04 prefix
    assert initiator.shared_secret(unhex(v["grx"]) + unhex(v["gry"])) == unhex(v["girx"])
    if "r" in v:
        responder = c.DiffieHellman.from_private(group, unhex(v["r"]))
        assert responder.public_key == unhex(v["grx"]) + unhex(v["gry"])
        assert responder.shared_secret(initiator.public_key) == unhex(v["girx"])


def test_x25519_matches_rfc7748():
    (v,) = load("rfc7748-x25519.txt")
    alice = c.DiffieHellman.from_private(DhGroup.CURVE25519, unhex(v["a"]))
    bob = c.DiffieHellman.from_private(DhGroup.CURVE25519, unhex(v["b"]))
    assert alice.public_key == unhex(v["a_pub"]) and bob.public_key == unhex(v["b_pub"])
    assert alice.shared_secret(bob.public_key) == bob.shared_secret(alice.public_key) == unhex(v["k"])


def _arccot(x: int, unity: int) -> int:
    total = power = unity // x
    n, sign = 3, -1
    while True:
        power //= x * x
        term = power // n
        if not term:
            return total
        total += sign * term
        sign, n = -sign, n + 2


def test_modp_2048_prime_is_rfc3526_formula():
    """RFC 3526 section 3: p = 2^2048 - 2^1984 - 1 + 2^64 * { [2^1918 pi] + 124476 }, pi from Machin's formula."""
    guard = 64
    unity = 1 << (1918 + guard)
    pi_scaled = 4 * (4 * _arccot(5, unity) - _arccot(239, unity))
    p = 2**2048 - 2**1984 - 1 + 2**64 * ((pi_scaled >> guard) + 124476)
    assert p == c.MODP_2048_PRIME


def test_curve_orders_are_the_curves_own():
    """A scalar of n - 1 is a valid key, n is not: cryptography knows each curve's order."""
    for group, (curve, _size, order) in c._CURVES.items():
        ec.derive_private_key(order - 1, curve())
        with pytest.raises(ValueError):
            ec.derive_private_key(order, curve())
        assert c.dh_private_size(group) == (order.bit_length() + 7) // 8


@pytest.mark.parametrize("group", [DhGroup.MODP_2048, DhGroup.ECP_256, DhGroup.ECP_384, DhGroup.ECP_521,
                                   DhGroup.CURVE25519])
def test_both_sides_agree_and_injected_randomness_is_deterministic(group):
    a = c.DiffieHellman.generate(group, seeded(b"a"))
    b = c.DiffieHellman.generate(group, seeded(b"b"))
    assert len(a.public_key) == c.dh_public_size(group)
    assert a.shared_secret(b.public_key) == b.shared_secret(a.public_key)
    assert c.DiffieHellman.generate(group, seeded(b"a")).public_key == a.public_key
    if group == DhGroup.MODP_2048:
        assert len(a.shared_secret(b.public_key)) == 256


def test_generate_rejects_out_of_range_draws():
    """Draws outside [2, bound) (all ones, zero, one) are thrown away until one fits."""
    draws = iter([b"\xff" * 66, b"\x00" * 66, b"\x00" * 65 + b"\x05"])
    dh = c.DiffieHellman.generate(DhGroup.ECP_521, lambda n: next(draws)[:n])
    assert dh.public_key == c.DiffieHellman.from_private(DhGroup.ECP_521, (5).to_bytes(66, "big")).public_key
    draws = iter([(1).to_bytes(32, "big"), (5).to_bytes(32, "big")])  # exponent 1 would make g^x = g
    dh = c.DiffieHellman.generate(DhGroup.MODP_2048, lambda n: next(draws)[:n])
    assert dh.public_key == pow(2, 5, c.MODP_2048_PRIME).to_bytes(256, "big")


@pytest.mark.parametrize("group, peer", [
    (DhGroup.MODP_2048, (1).to_bytes(256, "big")),
    (DhGroup.MODP_2048, (c.MODP_2048_PRIME - 1).to_bytes(256, "big")),
    (DhGroup.MODP_2048, c.MODP_2048_PRIME.to_bytes(256, "big")),
    (DhGroup.MODP_2048, b"\x02" * 255),
    (DhGroup.ECP_256, b"\xaa" * 64),  # not on the curve
    (DhGroup.ECP_256, b"\x04" + b"\xaa" * 64),  # SEC 1 form is not the IKE form
    (DhGroup.ECP_384, bytes(96)),
    (DhGroup.CURVE25519, bytes(32)),  # low-order point: all-zero secret (RFC 8031)
    (DhGroup.CURVE25519, bytes(31)),
])
def test_invalid_peer_values_are_invalid_syntax(group, peer):
    ours = c.DiffieHellman.generate(group, seeded(b"x"))
    with pytest.raises(InvalidKeyExchange) as caught:
        ours.shared_secret(peer)
    assert caught.value.notify == NotifyType.INVALID_SYNTAX


def test_private_values_of_the_wrong_size_are_refused():
    with pytest.raises(LocalProtocolError):
        c.DiffieHellman.from_private(DhGroup.ECP_256, b"\x01" * 31)
    with pytest.raises(LocalProtocolError):
        c.DiffieHellman.from_private(DhGroup.ECP_256, bytes(32))  # zero scalar


# --- the SK payload ---

def _ciphers(name: str) -> tuple[c.IkeSuite, c.SkCipher, c.SkCipher]:
    suite = SUITES[name][0]
    keys = c.derive_ike_keys(suite, b"seed" * 8, b"\x01" * 32, b"\x02" * 32, b"\x03" * 8, b"\x04" * 8)
    return suite, c.SkCipher.for_sender(suite, keys, True), c.SkCipher.for_sender(suite, keys, False)


HEADER = IkeHeader(b"\x03" * 8, b"\x04" * 8, ExchangeType.IKE_AUTH, HeaderFlag.INITIATOR, 1)
INNER = (IdentificationInitiator(IdType.ID_NULL, b""), Notify(NotifyType.USE_TRANSPORT_MODE),
         TrafficSelectorsInitiator((TrafficSelector(IPv4Address("10.0.0.1"), IPv4Address("10.0.0.1"), 17, 53, 53),
                                    TrafficSelector(IPv6Address("::1"), IPv6Address("::1")))),
         Delete(ProtocolId.ESP, 4, (b"\x01\x02\x03\x04",)))


@pytest.mark.parametrize("name", sorted(SUITES))
@pytest.mark.parametrize("inner", [INNER, ()], ids=["payloads", "empty"])
def test_sk_round_trip(name, inner):
    _suite, initiator, _responder = _ciphers(name)
    iv = seeded(b"iv")(initiator.iv_size)
    wire = c.encrypt_message(initiator, HEADER, inner, iv)
    message, opened = c.decrypt_message(initiator, wire)
    assert opened == inner
    assert message.header == HEADER
    assert wire[28 + 4:28 + 4 + len(iv)] == iv
    assert len(wire) == 28 + 4 + initiator.sealed_size(len(c.encode_payloads(inner)[1]))
    if initiator.encryption.block_size > 1:
        assert (len(message.payloads[0].data) - initiator.iv_size - initiator.icv_size) % 16 == 0


@pytest.mark.parametrize("name", sorted(SUITES))
def test_sk_bad_icv_is_integrity_error(name):
    _suite, initiator, responder = _ciphers(name)
    wire = c.encrypt_message(initiator, HEADER, INNER, bytes(initiator.iv_size))
    for position in (5, 20, 30, 28 + 4 + 1, len(wire) // 2 + 10, len(wire) - 1):  # header, SK header, IV, body, ICV
        broken = bytearray(wire)
        broken[position] ^= 0x01
        with pytest.raises((IntegrityError, DecodeError)) as caught:
            c.decrypt_message(initiator, bytes(broken))
        if position != 30:  # flipping the SK length breaks the structure before any crypto
            assert isinstance(caught.value, IntegrityError)
            assert caught.value.notify is None  # dropped, never answered
    with pytest.raises(IntegrityError):
        c.decrypt_message(responder, wire)  # the other direction's keys


def test_sk_too_short_for_iv_and_icv_is_decode_error():
    _suite, initiator, _ = _ciphers("gcm128-sha256")
    with pytest.raises(DecodeError) as caught:
        initiator.open(b"aad", b"\x00" * 23)
    assert (caught.value.payload, caught.value.field) == ("SK", "encrypted data")


def test_sk_pad_length_beyond_plaintext_is_decode_error():
    key = bytes(range(20))  # AES-128 key | salt
    cipher = c.SkCipher(c.Encryption(EncrId.ENCR_AES_GCM_16, 128), key)
    iv = b"\x09" * 8
    sealed = iv + AESGCM(key[:16]).encrypt(key[16:] + iv, b"ab\x05", b"aad")  # pad length 5 in 3 octets
    with pytest.raises(DecodeError) as caught:
        cipher.open(b"aad", sealed)
    assert caught.value.field == "pad length"


def test_sk_cbc_ciphertext_not_block_aligned_is_decode_error():
    integ = c.Integrity(IntegId.AUTH_HMAC_SHA2_256_128)
    cipher = c.SkCipher(c.Encryption(EncrId.ENCR_AES_CBC, 128), b"k" * 16, integ, b"i" * 32)
    iv, body = b"\x00" * 16, b"\x11" * 15
    sealed = iv + body + integ.mac(b"i" * 32, b"aad" + iv + body)
    with pytest.raises(DecodeError):
        cipher.open(b"aad", sealed)


@pytest.mark.parametrize("v", load("gcm-spec-aes-gcm.txt"), ids=lambda v: v["title"])
def test_sk_aes_gcm_matches_gcm_spec(v):
    """RFC 5282: nonce = salt (last 4 octets of the key material) | the payload's 8-octet IV; the AAD is every
    octet before the IV."""
    key, gcm_iv, pt = unhex(v["key"]), unhex(v["iv"]), unhex(v["pt"])
    cipher = c.SkCipher(c.Encryption(EncrId.ENCR_AES_GCM_16, len(key) * 8), key + gcm_iv[:4])
    sealed = gcm_iv[4:] + unhex(v["ct"]) + unhex(v["tag"])
    pad_length = pt[-1]
    payloads, pad = pt[:len(pt) - pad_length - 1], pt[len(pt) - pad_length - 1:-1]
    assert cipher.open(unhex(v["aad"]), sealed) == payloads
    assert cipher.seal(unhex(v["aad"]), gcm_iv[4:], payloads, pad) == sealed
    with pytest.raises(IntegrityError):
        cipher.open(unhex(v["aad"])[:-1], sealed)


def test_sk_aes_cbc_matches_sp800_38a():
    (v,) = load("sp800-38a-aes-cbc.txt")
    integ = c.Integrity(IntegId.AUTH_HMAC_SHA2_256_128)
    integ_key, aad = b"\x42" * 32, b"IKE header | SK header"
    cipher = c.SkCipher(c.Encryption(EncrId.ENCR_AES_CBC, 128), unhex(v["key"]), integ, integ_key)
    iv, pt, ct = unhex(v["iv"]), unhex(v["pt"]), unhex(v["ct"])
    icv = std_hmac.new(integ_key, aad + iv + ct, "sha256").digest()[:16]  # RFC 7296 3.14: covers IV and ciphertext
    assert cipher.open(aad, iv + ct + icv) == pt[:len(pt) - pt[-1] - 1]
    assert cipher.seal(aad, iv, pt[:47], pt[47:63]) == iv + ct + icv


def test_sk_default_padding_is_minimal_and_checked():
    _suite, cbc, _ = _ciphers("cbc128-sha256")
    assert [cbc.padding_size(n) for n in (0, 14, 15, 16, 31)] == [15, 1, 0, 15, 0]
    _suite, gcm, _ = _ciphers("gcm128-sha256")
    assert [gcm.padding_size(n) for n in (0, 7, 100)] == [0, 0, 0]
    with pytest.raises(LocalProtocolError):
        cbc.seal(b"", bytes(16), b"x" * 10, b"\0" * 4)  # 10 + 4 + 1 is not a block
    with pytest.raises(LocalProtocolError):
        cbc.seal(b"", bytes(8), b"x" * 15)  # wrong IV size


def test_sk_cipher_refuses_wrong_keys():
    gcm = c.Encryption(EncrId.ENCR_AES_GCM_16, 256)
    with pytest.raises(LocalProtocolError):
        c.SkCipher(gcm, b"k" * 32)  # the salt is missing
    with pytest.raises(LocalProtocolError):
        c.SkCipher(gcm, b"k" * 36, c.Integrity(IntegId.AUTH_HMAC_SHA2_256_128), b"i" * 32)
    with pytest.raises(LocalProtocolError):
        c.SkCipher(c.Encryption(EncrId.ENCR_AES_CBC, 128), b"k" * 16)


def test_decrypt_message_without_sk_is_decode_error():
    _suite, initiator, _ = _ciphers("gcm128-sha256")
    plain = Message(HEADER, (Nonce(b"n" * 16),)).encode()
    with pytest.raises(DecodeError):
        c.decrypt_message(initiator, plain)


# --- AUTH: signed octets, shared key and NULL ---

def test_signed_octets_and_null_auth_recomputed():
    """RFC 7296 2.15 and RFC 7619: AUTH = prf(prf(SK_pi, "Key Pad for IKEv2"), RealMessage1 | NonceRData |
    prf(SK_pi, RestOfInitIDPayload))."""
    prf = c.Prf(PrfId.PRF_HMAC_SHA2_256)
    real_message, nonce_r, sk_pi = b"IKE_SA_INIT request as sent", b"\x77" * 32, b"\x55" * 32
    idi = IdentificationInitiator(IdType.ID_NULL, b"")
    octets = c.signed_octets(prf, real_message, nonce_r, sk_pi, idi.encode())
    maced_id = std_hmac.new(sk_pi, b"\x0d\x00\x00\x00", "sha256").digest()
    assert octets == real_message + nonce_r + maced_id
    expected = std_hmac.new(std_hmac.new(sk_pi, b"Key Pad for IKEv2", "sha256").digest(), octets, "sha256").digest()
    assert c.null_auth(prf, sk_pi, octets) == expected
    assert c.shared_key_auth(prf, sk_pi, octets) == expected
    c.verify_mac_auth(expected, Authentication(AuthMethod.NULL, expected), AuthMethod.NULL)
    with pytest.raises(AuthenticationFailed) as caught:
        c.verify_mac_auth(expected, Authentication(AuthMethod.NULL, expected[:-1] + b"\0"), AuthMethod.NULL)
    assert caught.value.notify == NotifyType.AUTHENTICATION_FAILED == 24
    with pytest.raises(AuthenticationFailed):
        c.verify_mac_auth(expected, Authentication(AuthMethod.SHARED_KEY_MIC, expected), AuthMethod.NULL)


# --- RFC 7427 digital signatures ---

IDENTIFIERS = {v["title"]: v for v in load("rfc7427-algorithm-identifiers.txt")}


def test_algorithm_identifiers_are_rfc7427_appendix_a():
    assert c.ECDSA_SHA256.identifier == unhex(IDENTIFIERS["A.3.1"]["der"])
    assert c.ECDSA_SHA384.identifier == unhex(IDENTIFIERS["A.3.2"]["der"])
    assert c.ECDSA_SHA512.identifier == unhex(IDENTIFIERS["A.3.3"]["der"])
    assert c.RSA_PSS_SHA256.identifier == unhex(IDENTIFIERS["A.4.3"]["der"])
    for v in IDENTIFIERS.values():
        scheme, signature = c.decode_signature_auth(bytes([len(unhex(v["der"]))]) + unhex(v["der"]) + b"sig")
        assert scheme.name == v["name"] and signature == b"sig"


def _self_signed(key, algorithm, rsa_padding=None) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "enclave-ike test")])
    now = datetime(2026, 1, 1, tzinfo=UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(1).not_valid_before(now).not_valid_after(now + timedelta(days=1)))
    return builder.sign(key, algorithm, rsa_padding=rsa_padding).tbs_certificate_bytes


def test_identifiers_match_what_cryptography_writes_in_certificates():
    """An independent DER encoder (cryptography's X.509 builder) writes the same AlgorithmIdentifiers; for PSS it
    writes the strict form without the default trailerField, which we accept."""
    assert c.ECDSA_SHA256.identifier in _self_signed(EC_KEY, hashes.SHA256())
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    assert unhex(IDENTIFIERS["pss-sha256-strict"]["der"]) in _self_signed(RSA_KEY, hashes.SHA256(), pss)
    for scheme, digest in ((c.RSA_PSS_SHA384, hashes.SHA384()), (c.RSA_PSS_SHA512, hashes.SHA512())):
        pss = padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
        written = _self_signed(RSA_KEY, digest, pss)
        assert c._pss_identifier(digest.digest_size * 8, trailer=False) in written
        strict = c._pss_identifier(digest.digest_size * 8, trailer=False)
        assert c.decode_signature_auth(bytes([len(strict)]) + strict + b"s")[0] == scheme
    # ecdsa-with-SHA384/512 name no curve: a P-256 key may sign under either (RFC 7427 A.3.2, A.3.3)
    assert c.ECDSA_SHA384.identifier in _self_signed(EC_KEY, hashes.SHA384())
    assert c.ECDSA_SHA512.identifier in _self_signed(EC_KEY, hashes.SHA512())


EC_KEY = ec.derive_private_key(0x1234_5678_9ABC_DEF0_1234_5678_9ABC_DEF0, ec.SECP256R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.mark.parametrize("key", [EC_KEY, RSA_KEY, ec.derive_private_key(7, ec.SECP384R1())],
                         ids=["ecdsa-p256", "rsa-pss", "ecdsa-p384"])
def test_signature_auth_sign_and_verify(key):
    signer = c.SoftwareSigner(key)
    octets = b"ResponderSignedOctets" * 10
    auth = c.sign_auth(signer, octets)
    assert auth.method == AuthMethod.DIGITAL_SIGNATURE
    identifier = signer.algorithm.identifier
    assert auth.data[0] == len(identifier) and auth.data[1:1 + len(identifier)] == identifier
    assert c.verify_signature_auth(signer.public_key(), auth, octets) == signer.algorithm
    with pytest.raises(AuthenticationFailed):
        c.verify_signature_auth(signer.public_key(), auth, octets + b"!")
    tampered = Authentication(auth.method, auth.data[:-1] + bytes([auth.data[-1] ^ 1]))
    with pytest.raises(AuthenticationFailed):
        c.verify_signature_auth(signer.public_key(), tampered, octets)
    with pytest.raises(AuthenticationFailed):
        c.verify_signature_auth(signer.public_key(), auth, octets, accept=())


@pytest.mark.parametrize("key, schemes", [
    (EC_KEY, (c.ECDSA_SHA256, c.ECDSA_SHA512, c.ECDSA_SHA384)),
    (ec.derive_private_key(7, ec.SECP384R1()), (c.ECDSA_SHA384, c.ECDSA_SHA512, c.ECDSA_SHA256)),
    (RSA_KEY, (c.RSA_PSS_SHA256, c.RSA_PSS_SHA512, c.RSA_PSS_SHA384)),
], ids=["p256", "p384", "rsa"])
def test_every_scheme_of_a_key_signs_and_verifies(key, schemes):
    """The key's own hash first, then the others strongest first; each signature verifies under its hash."""
    signer = c.SoftwareSigner(key)
    assert signer.schemes == schemes and signer.algorithm == schemes[0]
    for scheme in schemes:
        auth = c.sign_auth(signer, b"octets", scheme)
        assert auth.data[1:1 + auth.data[0]] == scheme.identifier
        assert c.verify_signature_auth(signer.public_key(), auth, b"octets") == scheme


def test_ecdsa_signature_value_is_der_and_deterministic():
    signer = c.SoftwareSigner(EC_KEY)
    signature = signer.sign(b"data", c.ECDSA_SHA256)
    r, s = decode_dss_signature(signature)  # DER Ecdsa-Sig-Value, not RFC 4754's r | s
    assert r > 0 and s > 0
    assert signer.sign(b"data", c.ECDSA_SHA256) == signature


def test_strict_der_pss_identifier_is_accepted():
    signer = c.SoftwareSigner(RSA_KEY)
    octets = b"octets"
    strict = unhex(IDENTIFIERS["pss-sha256-strict"]["der"])
    signature = signer.sign(octets, c.RSA_PSS_SHA256)
    auth = Authentication(AuthMethod.DIGITAL_SIGNATURE, bytes([len(strict)]) + strict + signature)
    assert c.verify_signature_auth(signer.public_key(), auth, octets) == c.RSA_PSS_SHA256


@pytest.mark.parametrize("data", [
    bytes([9]) + bytes.fromhex("300d06092a864886f70d01010b0500") + b"sig",  # sha256WithRSAEncryption: not ours
    bytes([12]) + bytes.fromhex("300a06082a8648ce3d040301") + b"sig",  # an OID we do not know
])
def test_unknown_signature_algorithms_fail_authentication(data):
    with pytest.raises(AuthenticationFailed):
        c.verify_signature_auth(EC_KEY.public_key(), Authentication(AuthMethod.DIGITAL_SIGNATURE, data), b"x")


@pytest.mark.parametrize("data", [b"", b"\x0c\x30\x0a", bytes([12]) + c.ECDSA_SHA256.identifier])
def test_truncated_signature_auth_is_decode_error(data):
    with pytest.raises(DecodeError):
        c.decode_signature_auth(data)


def test_signature_from_the_wrong_key_type_fails():
    rsa_auth = c.sign_auth(c.SoftwareSigner(RSA_KEY), b"x")
    with pytest.raises(AuthenticationFailed):
        c.verify_signature_auth(EC_KEY.public_key(), rsa_auth, b"x")
    with pytest.raises(AuthenticationFailed):
        c.verify_signature_auth(EC_KEY.public_key(), Authentication(AuthMethod.NULL, b"x"), b"x")


def test_signer_interface_has_no_way_to_the_private_key():
    public = {name for name in dir(c.SoftwareSigner(EC_KEY)) if not name.startswith("_")}
    assert public == {"algorithm", "deferred", "schemes", "sign", "public_key"}
    assert c.Signer.__abstractmethods__ == {"schemes", "sign", "public_key"}


# --- NAT detection ---

@pytest.mark.parametrize("address", [IPv4Address("192.0.2.1"), IPv6Address("2001:db8::1")])
def test_nat_detection_hash(address):
    spi_i, spi_r = b"\x01" * 8, bytes(8)
    expected = hashlib.sha1(spi_i + spi_r + address.packed + (500).to_bytes(2, "big")).digest()
    assert c.nat_detection_hash(spi_i, spi_r, address, 500) == expected


# --- keys into ciphers: the two directions use their own keys ---

def test_for_sender_uses_the_senders_keys():
    suite = SUITES["cbc128-sha256"][0]
    keys = c.derive_ike_keys(suite, b"s" * 32, b"\x01" * 32, b"\x02" * 32, b"\x03" * 8, b"\x04" * 8)
    by_hand = c.SkCipher(suite.encryption, keys.sk_er, suite.integrity, keys.sk_ar)
    responder = c.SkCipher.for_sender(suite, keys, initiator=False)
    wire = c.encrypt_message(by_hand, HEADER, INNER, b"\x01" * 16)
    assert c.decrypt_message(responder, wire)[1] == INNER

