"""The IKEv2 crypto suite, on `cryptography` only.

- PRF and prf+ (RFC 7296 2.13) over HMAC-SHA2 (RFC 4868), and HMAC-SHA1 for interoperability and vectors;
- SKEYSEED and the seven IKE SA keys (2.14), the rekeyed SKEYSEED (2.18) and Child SA KEYMAT (2.17);
- Diffie-Hellman for groups 14 (MODP-2048, RFC 3526), 19/20/21 (NIST curves, RFC 5903: public value x | y, shared
  secret x) and 31 (X25519, RFC 8031) behind one interface whose private key is injected;
- the Encrypted (SK) payload with ENCR_AES_GCM_16 (RFC 5282) or AES-CBC with HMAC-SHA2 integrity (RFC 7296 3.14);
- the AUTH payload: signed octets (2.15), shared-key and NULL (RFC 7619) authentication, and RFC 7427 digital
  signatures made by an abstract `Signer` that never hands out its private key.

Nothing here draws randomness on its own: IVs and DH private values come from the caller (a `RandomSource` such as
`os.urandom` at the edge, a seeded source in tests).
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.exceptions import UnsupportedAlgorithm as CryptographyUnsupported
from cryptography.hazmat.primitives import constant_time, hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import dh, ec, padding, rsa, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.utils import CryptographyDeprecationWarning

from .constants import (
    AuthMethod,
    CertEncoding,
    DhGroup,
    EncrId,
    EsnId,
    HashAlgorithm,
    IntegId,
    PrfId,
    ProtocolId,
    TransformType,
)
from .errors import (
    AuthenticationFailed,
    DecodeError,
    IntegrityError,
    InvalidKeyExchange,
    LocalProtocolError,
    NoProposalChosen,
    UnsupportedAlgorithm,
)
from .payloads import (
    Authentication,
    Encrypted,
    IkeHeader,
    Message,
    Payload,
    Proposal,
    Transform,
    decode_payloads,
    encode_payloads,
)
from .wire import Reader

RandomSource = Callable[[int], bytes]
"""Returns n random octets. `os.urandom` in production; a seeded generator in tests."""

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


# --- PRF and integrity ---

_PRF_HASHES: dict[int, hashes.HashAlgorithm] = {
    PrfId.PRF_HMAC_SHA1: hashes.SHA1(),  # noqa: S303 (HMAC-SHA1 is still a sound PRF; kept for vectors and peers)
    PrfId.PRF_HMAC_SHA2_256: hashes.SHA256(),
    PrfId.PRF_HMAC_SHA2_384: hashes.SHA384(),
    PrfId.PRF_HMAC_SHA2_512: hashes.SHA512(),
}


def _hmac(hash_algorithm: hashes.HashAlgorithm, key: bytes, data: bytes) -> bytes:
    h = hmac.HMAC(key, hash_algorithm)
    h.update(data)
    return h.finalize()


@dataclass(frozen=True)
class Prf:
    """An HMAC PRF. Its preferred key length (the length of SK_d, SK_pi, SK_pr) is its output length (RFC 4868)."""

    id: int

    def __post_init__(self) -> None:
        if self.id not in _PRF_HASHES:
            raise UnsupportedAlgorithm(f"PRF {self.id} is not implemented")

    @property
    def size(self) -> int:
        return _PRF_HASHES[self.id].digest_size

    @property
    def key_size(self) -> int:
        return self.size

    def __call__(self, key: bytes, data: bytes) -> bytes:
        return _hmac(_PRF_HASHES[self.id], key, data)

    def plus(self, key: bytes, seed: bytes, length: int) -> bytes:
        """prf+ (RFC 7296 2.13): T1 = prf(K, S | 0x01), Tn = prf(K, Tn-1 | S | n), at most 255 blocks."""
        if length > 255 * self.size:
            raise LocalProtocolError(f"prf+: {length} octets is more than 255 blocks of {self.size}")
        out = bytearray()
        block = b""
        counter = 1
        while len(out) < length:
            block = self(key, block + seed + bytes([counter]))
            out += block
            counter += 1
        return bytes(out[:length])


_INTEG: dict[int, tuple[hashes.HashAlgorithm, int]] = {  # id -> (hash, ICV length); key = digest size
    IntegId.AUTH_HMAC_SHA2_256_128: (hashes.SHA256(), 16),
    IntegId.AUTH_HMAC_SHA2_384_192: (hashes.SHA384(), 24),
    IntegId.AUTH_HMAC_SHA2_512_256: (hashes.SHA512(), 32),
}


@dataclass(frozen=True)
class Integrity:
    """An HMAC-SHA2 integrity transform (RFC 4868): key as long as the digest, ICV truncated to half."""

    id: int

    def __post_init__(self) -> None:
        if self.id not in _INTEG:
            raise UnsupportedAlgorithm(f"integrity algorithm {self.id} is not implemented")

    @property
    def key_size(self) -> int:
        return _INTEG[self.id][0].digest_size

    @property
    def icv_size(self) -> int:
        return _INTEG[self.id][1]

    def mac(self, key: bytes, data: bytes) -> bytes:
        return _hmac(_INTEG[self.id][0], key, data)[:self.icv_size]


# --- encryption ---

_AES_KEY_BITS = (128, 192, 256)
GCM_SALT_SIZE = 4  # RFC 5282 (IKE) and RFC 4106 (ESP): the last 4 octets of the key material
GCM_IV_SIZE = 8
GCM_ICV_SIZE = 16
AES_BLOCK = 16


@dataclass(frozen=True)
class Encryption:
    """An encryption transform with its key length in bits: ENCR_AES_CBC or ENCR_AES_GCM_16."""

    id: int
    key_length: int

    def __post_init__(self) -> None:
        if self.id not in (EncrId.ENCR_AES_CBC, EncrId.ENCR_AES_GCM_16):
            raise UnsupportedAlgorithm(f"encryption algorithm {self.id} is not implemented")
        if self.key_length not in _AES_KEY_BITS:
            raise UnsupportedAlgorithm(f"encryption algorithm {self.id}: key length {self.key_length} bits")

    @property
    def aead(self) -> bool:
        return self.id == EncrId.ENCR_AES_GCM_16

    @property
    def key_size(self) -> int:
        """Octets of keying material: the AES key, plus the 4-octet salt for GCM."""
        return self.key_length // 8 + (GCM_SALT_SIZE if self.aead else 0)

    @property
    def iv_size(self) -> int:
        return GCM_IV_SIZE if self.aead else AES_BLOCK

    @property
    def block_size(self) -> int:
        """What the payloads, padding and pad length must add up to a multiple of."""
        return 1 if self.aead else AES_BLOCK


# --- suites and keys ---

@dataclass(frozen=True)
class IkeSuite:
    """The algorithms of one IKE SA. AEAD ciphers have no integrity transform (IntegId.NONE)."""

    encr_id: int
    key_length: int
    prf_id: int
    integ_id: int
    dh_group: int

    def __post_init__(self) -> None:
        encryption = self.encryption  # validates
        Prf(self.prf_id)
        if encryption.aead and self.integ_id != IntegId.NONE:
            raise UnsupportedAlgorithm("an AEAD cipher takes no integrity algorithm")
        if not encryption.aead:
            Integrity(self.integ_id)
        dh_public_size(self.dh_group)

    @property
    def encryption(self) -> Encryption:
        return Encryption(self.encr_id, self.key_length)

    @property
    def prf(self) -> Prf:
        return Prf(self.prf_id)

    @property
    def integrity(self) -> Integrity | None:
        return None if self.integ_id == IntegId.NONE else Integrity(self.integ_id)

    def transforms(self) -> tuple[Transform, ...]:
        """The transforms of a proposal for this suite."""
        out = [Transform.create(TransformType.ENCR, self.encr_id, self.key_length),
               Transform.create(TransformType.PRF, self.prf_id)]
        if self.integ_id != IntegId.NONE:
            out.append(Transform.create(TransformType.INTEG, self.integ_id))
        out.append(Transform.create(TransformType.DH, self.dh_group))
        return tuple(out)

    @classmethod
    def from_proposal(cls, proposal: Proposal) -> IkeSuite:
        """The suite a chosen IKE proposal names: exactly one transform of each type (a response, or one of our
        own selections). Anything else is NO_PROPOSAL_CHOSEN."""
        pick = _Picker(proposal, ProtocolId.IKE)
        encr, prf, group = pick.one(TransformType.ENCR), pick.one(TransformType.PRF), pick.one(TransformType.DH)
        integ = pick.optional(TransformType.INTEG)
        try:
            return cls(encr.id, encr.key_length or 0, prf.id, integ.id if integ else IntegId.NONE, group.id)
        except UnsupportedAlgorithm as exc:
            raise NoProposalChosen(f"proposal {proposal.number}: {exc}") from None


class _Picker:
    """Reads the single transform of each type out of a chosen proposal."""

    def __init__(self, proposal: Proposal, protocol: int) -> None:
        if proposal.protocol != protocol:
            raise NoProposalChosen(f"proposal {proposal.number}: protocol {proposal.protocol}, expected {protocol}")
        self.proposal = proposal

    def optional(self, transform_type: int) -> Transform | None:
        found = self.proposal.transforms_of(transform_type)
        if len(found) > 1:
            raise NoProposalChosen(f"proposal {self.proposal.number}: {len(found)} transforms of type "
                                   f"{transform_type}, expected one")
        return found[0] if found else None

    def one(self, transform_type: int) -> Transform:
        found = self.optional(transform_type)
        if found is None:
            raise NoProposalChosen(f"proposal {self.proposal.number}: no transform of type {transform_type}")
        return found


@dataclass(frozen=True)
class ChildSuite:
    """The algorithms of an ESP Child SA: ciphers for its keying material (RFC 7296 2.17; GCM keys carry the
    RFC 4106 salt), ESN, and the DH group of a CREATE_CHILD_SA with PFS (DhGroup.NONE without)."""

    encr_id: int
    key_length: int
    integ_id: int = IntegId.NONE
    esn: bool = False
    dh_group: int = DhGroup.NONE

    def __post_init__(self) -> None:
        encryption = self.encryption
        if encryption.aead and self.integ_id != IntegId.NONE:
            raise UnsupportedAlgorithm("an AEAD cipher takes no integrity algorithm")
        if not encryption.aead:
            Integrity(self.integ_id)
        if self.dh_group != DhGroup.NONE:
            dh_public_size(self.dh_group)

    @property
    def encryption(self) -> Encryption:
        return Encryption(self.encr_id, self.key_length)

    @property
    def integrity(self) -> Integrity | None:
        return None if self.integ_id == IntegId.NONE else Integrity(self.integ_id)

    def transforms(self) -> tuple[Transform, ...]:
        """The transforms of an ESP proposal for this suite."""
        out = [Transform.create(TransformType.ENCR, self.encr_id, self.key_length)]
        if self.integ_id != IntegId.NONE:
            out.append(Transform.create(TransformType.INTEG, self.integ_id))
        if self.dh_group != DhGroup.NONE:
            out.append(Transform.create(TransformType.DH, self.dh_group))
        out.append(Transform.create(TransformType.ESN, EsnId.ESN if self.esn else EsnId.NO_ESN))
        return tuple(out)

    @classmethod
    def from_proposal(cls, proposal: Proposal) -> ChildSuite:
        """The suite a chosen ESP proposal names (RFC 7296 3.3.3: ENCR and ESN mandatory, INTEG and DH optional).
        Anything else is NO_PROPOSAL_CHOSEN."""
        pick = _Picker(proposal, ProtocolId.ESP)
        encr, esn = pick.one(TransformType.ENCR), pick.one(TransformType.ESN)
        integ, group = pick.optional(TransformType.INTEG), pick.optional(TransformType.DH)
        if esn.id not in (EsnId.NO_ESN, EsnId.ESN):
            raise NoProposalChosen(f"proposal {proposal.number}: ESN transform {esn.id}")
        try:
            return cls(encr.id, encr.key_length or 0, integ.id if integ else IntegId.NONE, esn.id == EsnId.ESN,
                       group.id if group else DhGroup.NONE)
        except UnsupportedAlgorithm as exc:
            raise NoProposalChosen(f"proposal {proposal.number}: {exc}") from None


@dataclass(frozen=True)
class IkeKeys:
    """The seven keys of RFC 7296 2.14. AEAD suites have empty SK_ai / SK_ar. Never printed."""

    sk_d: bytes = field(repr=False)
    sk_ai: bytes = field(repr=False)
    sk_ar: bytes = field(repr=False)
    sk_ei: bytes = field(repr=False)
    sk_er: bytes = field(repr=False)
    sk_pi: bytes = field(repr=False)
    sk_pr: bytes = field(repr=False)


@dataclass(frozen=True)
class ChildKeys:
    """ESP keys of one Child SA: initiator-to-responder first, as KEYMAT orders them. Never printed."""

    encr_i: bytes = field(repr=False)
    integ_i: bytes = field(repr=False)
    encr_r: bytes = field(repr=False)
    integ_r: bytes = field(repr=False)


def skeyseed(prf: Prf, ni: bytes, nr: bytes, shared_secret: bytes) -> bytes:
    """SKEYSEED = prf(Ni | Nr, g^ir) (RFC 7296 2.14)."""
    return prf(ni + nr, shared_secret)


def rekey_skeyseed(prf: Prf, old_sk_d: bytes, shared_secret: bytes, ni: bytes, nr: bytes) -> bytes:
    """SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr) for an IKE SA rekey (RFC 7296 2.18), with the prf of the
    old SA."""
    return prf(old_sk_d, shared_secret + ni + nr)


def derive_ike_keys(suite: IkeSuite, seed: bytes, ni: bytes, nr: bytes, spi_i: bytes, spi_r: bytes) -> IkeKeys:
    """{SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr)."""
    prf = suite.prf
    integ = suite.integrity
    sizes = (prf.key_size, integ.key_size if integ else 0, integ.key_size if integ else 0,
             suite.encryption.key_size, suite.encryption.key_size, prf.key_size, prf.key_size)
    stream = prf.plus(seed, ni + nr + spi_i + spi_r, sum(sizes))
    keys, offset = [], 0
    for size in sizes:
        keys.append(stream[offset:offset + size])
        offset += size
    return IkeKeys(*keys)


def derive_child_keys(prf: Prf, sk_d: bytes, suite: ChildSuite, ni: bytes, nr: bytes,
                      shared_secret: bytes | None = None) -> ChildKeys:
    """KEYMAT = prf+(SK_d, Ni | Nr), or prf+(SK_d, g^ir (new) | Ni | Nr) with PFS (RFC 7296 2.17). Ni and Nr are
    the nonces of the exchange that creates the Child SA."""
    integ = suite.integrity
    encr_size, integ_size = suite.encryption.key_size, integ.key_size if integ else 0
    seed = (shared_secret or b"") + ni + nr
    keymat = prf.plus(sk_d, seed, 2 * (encr_size + integ_size))
    cut = encr_size + integ_size
    return ChildKeys(keymat[:encr_size], keymat[encr_size:cut],
                     keymat[cut:cut + encr_size], keymat[cut + encr_size:])


# --- Diffie-Hellman ---

MODP_2048_PRIME = int(
    "FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1 29024E08 8A67CC74 020BBEA6 3B139B22 514A0879 8E3404DD"
    " EF9519B3 CD3A431B 302B0A6D F25F1437 4FE1356D 6D51C245 E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED"
    " EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE45B3D C2007CB8 A163BF05 98DA4836 1C55D39A 69163FA8 FD24CF5F"
    " 83655D23 DCA3AD96 1C62F356 208552BB 9ED52907 7096966D 670C354E 4ABC9804 F1746C08 CA18217C 32905E46 2E36CE3B"
    " E39E772C 180E8603 9B2783A2 EC07A28F B5C55DF0 6F4C52C9 DE2BCBF6 95581718 3995497C EA956AE5 15D22618 98FA0510"
    " 15728E5A 8AACAA68 FFFFFFFF FFFFFFFF".replace(" ", ""), 16)
"""RFC 3526 section 3, the 2048-bit MODP group (IKE group 14); generator 2."""
MODP_GENERATOR = 2
MODP_EXPONENT_SIZE = 32  # 256-bit private exponents: more than twice the ~110-bit strength of the group

_CURVES: dict[int, tuple[type[ec.EllipticCurve], int, int]] = {  # group -> (curve, coordinate size, order n)
    DhGroup.ECP_256: (ec.SECP256R1, 32,
                      0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551),
    DhGroup.ECP_384: (ec.SECP384R1, 48,
                      0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973),
    DhGroup.ECP_521: (ec.SECP521R1, 66, int(
        "01FF" + "FFFFFFFF" * 7 + "FFFFFFFA51868783BF2F966B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409", 16)),
}


def dh_public_size(group: int) -> int:
    """The length of the Key Exchange Data for a group (RFC 7296 3.4, RFC 5903 section 7, RFC 8031)."""
    if group == DhGroup.MODP_2048:
        return 256
    if group in _CURVES:
        return 2 * _CURVES[group][1]
    if group == DhGroup.CURVE25519:
        return 32
    raise UnsupportedAlgorithm(f"Diffie-Hellman group {group} is not implemented")


def dh_private_size(group: int) -> int:
    """The length of the private value `DiffieHellman.from_private` takes for a group."""
    dh_public_size(group)
    if group == DhGroup.MODP_2048:
        return MODP_EXPONENT_SIZE
    if group in _CURVES:
        return _CURVES[group][1]
    return 32


class DiffieHellman(ABC):
    """One side of a key exchange in one group. Build it with `generate` (fresh randomness from the caller) or
    `from_private` (a given private value, for tests and vectors)."""

    group: int

    @property
    @abstractmethod
    def public_key(self) -> bytes:
        """Our Key Exchange Data, as the KE payload carries it."""

    @abstractmethod
    def shared_secret(self, peer_public: bytes) -> bytes:
        """g^ir from the peer's Key Exchange Data. A value that is not an element of the group raises
        InvalidKeyExchange (INVALID_SYNTAX)."""

    @staticmethod
    def from_private(group: int, private: bytes) -> DiffieHellman:
        size = dh_private_size(group)
        if len(private) != size:
            raise LocalProtocolError(f"group {group}: private value must be {size} octets, not {len(private)}")
        if group == DhGroup.MODP_2048:
            return _ModpDh(group, int.from_bytes(private, "big"))
        if group in _CURVES:
            return _EcpDh(group, int.from_bytes(private, "big"))
        return _X25519Dh(group, private)

    @staticmethod
    def generate(group: int, random: RandomSource) -> DiffieHellman:
        size = dh_private_size(group)
        if group == DhGroup.MODP_2048:
            bound = MODP_2048_PRIME - 1
        elif group in _CURVES:
            bound = _CURVES[group][2]
        else:
            return _X25519Dh(group, random(size))
        mask = (1 << bound.bit_length()) - 1
        while True:  # rejection sampling: uniform in [2, bound - 1]
            value = int.from_bytes(random(size), "big") & mask
            if 1 < value < bound:
                return DiffieHellman.from_private(group, value.to_bytes(size, "big"))


def _check_peer_size(group: int, peer: bytes) -> None:
    expected = dh_public_size(group)
    if len(peer) != expected:
        raise InvalidKeyExchange(f"KE: group {group} public value is {len(peer)} octets, must be {expected}")


@contextmanager
def _ffdh() -> Iterator[None]:
    """cryptography deprecates finite-field DH, but group 14 is still needed to interoperate (RFC 8247 keeps it a
    MUST). Silence exactly that warning around our own calls. (catch_warnings swaps process-wide state: the IKE
    core runs on one thread.)"""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Diffie-Hellman over finite fields",
                                category=CryptographyDeprecationWarning)
        yield


class _ModpDh(DiffieHellman):
    def __init__(self, group: int, exponent: int) -> None:
        if not 1 < exponent < MODP_2048_PRIME - 1:
            raise LocalProtocolError("MODP private exponent out of range")
        self.group = group
        public = pow(MODP_GENERATOR, exponent, MODP_2048_PRIME)
        with _ffdh():
            self._numbers = dh.DHParameterNumbers(MODP_2048_PRIME, MODP_GENERATOR)
            self._key = dh.DHPrivateNumbers(exponent, dh.DHPublicNumbers(public, self._numbers)).private_key()
        self._public = public.to_bytes(256, "big")

    @property
    def public_key(self) -> bytes:
        return self._public

    def shared_secret(self, peer_public: bytes) -> bytes:
        _check_peer_size(self.group, peer_public)
        value = int.from_bytes(peer_public, "big")
        if not 1 < value < MODP_2048_PRIME - 1:  # RFC 6989: enough for a safe-prime group
            raise InvalidKeyExchange("KE: MODP public value out of range")
        try:
            with _ffdh():
                secret = self._key.exchange(dh.DHPublicNumbers(value, self._numbers).public_key())
        except ValueError:
            raise InvalidKeyExchange("KE: MODP public value refused") from None
        return secret.rjust(256, b"\0")  # g^ir is as long as the modulus (RFC 7296 2.14)


class _EcpDh(DiffieHellman):
    def __init__(self, group: int, scalar: int) -> None:
        curve, self._size, order = _CURVES[group]
        if not 1 <= scalar < order:
            raise LocalProtocolError(f"group {group}: private scalar out of range")
        self.group = group
        self._curve = curve()
        self._key = ec.derive_private_key(scalar, self._curve)
        numbers = self._key.public_key().public_numbers()
        self._public = numbers.x.to_bytes(self._size, "big") + numbers.y.to_bytes(self._size, "big")

    @property
    def public_key(self) -> bytes:
        return self._public

    def shared_secret(self, peer_public: bytes) -> bytes:
        _check_peer_size(self.group, peer_public)
        try:
            peer = ec.EllipticCurvePublicKey.from_encoded_point(self._curve, b"\x04" + peer_public)
            return self._key.exchange(ec.ECDH(), peer)
        except ValueError:
            raise InvalidKeyExchange(f"KE: group {self.group} public value is not a point on the curve") from None


class _X25519Dh(DiffieHellman):
    def __init__(self, group: int, private: bytes) -> None:
        self.group = group
        self._key = x25519.X25519PrivateKey.from_private_bytes(private)
        self._public = self._key.public_key().public_bytes_raw()

    @property
    def public_key(self) -> bytes:
        return self._public

    def shared_secret(self, peer_public: bytes) -> bytes:
        _check_peer_size(self.group, peer_public)
        try:  # cryptography refuses an all-zero result, which RFC 8031 requires us to check
            return self._key.exchange(x25519.X25519PublicKey.from_public_bytes(peer_public))
        except ValueError:
            raise InvalidKeyExchange("KE: Curve25519 public value gives an all-zero secret") from None


# --- the Encrypted payload ---

class SkCipher:
    """Protection of SK payloads in one direction (SK_ei/SK_ai from the initiator, SK_er/SK_ar from the
    responder). The payload is IV | ciphertext | ICV, the plaintext payloads | padding | pad length.

    `aad` is every octet of the message before the IV: the IKE header, any payload before SK, and the SK generic
    header. AES-GCM authenticates it as associated data (RFC 5282); AES-CBC's HMAC covers it, the IV and the
    ciphertext (RFC 7296 3.14)."""

    def __init__(self, encryption: Encryption, key: bytes, integrity: Integrity | None = None,
                 integ_key: bytes = b"") -> None:
        if len(key) != encryption.key_size:
            raise LocalProtocolError(f"encryption key must be {encryption.key_size} octets, not {len(key)}")
        if encryption.aead != (integrity is None):
            raise LocalProtocolError("AES-GCM takes no integrity algorithm; AES-CBC needs one")
        if integrity is not None and len(integ_key) != integrity.key_size:
            raise LocalProtocolError(f"integrity key must be {integrity.key_size} octets, not {len(integ_key)}")
        self.encryption, self.integrity = encryption, integrity
        self._key, self._integ_key = key, integ_key

    @classmethod
    def for_sender(cls, suite: IkeSuite, keys: IkeKeys, initiator: bool) -> SkCipher:
        """The cipher of messages sent by the initiator (`initiator=True`) or by the responder."""
        encr_key, integ_key = (keys.sk_ei, keys.sk_ai) if initiator else (keys.sk_er, keys.sk_ar)
        return cls(suite.encryption, encr_key, suite.integrity, integ_key)

    @property
    def iv_size(self) -> int:
        return self.encryption.iv_size

    @property
    def icv_size(self) -> int:
        return GCM_ICV_SIZE if self.integrity is None else self.integrity.icv_size

    def padding_size(self, plaintext_size: int) -> int:
        """The fewest padding octets that align payloads | padding | pad length to the block size."""
        return -(plaintext_size + 1) % self.encryption.block_size

    def sealed_size(self, plaintext_size: int) -> int:
        """Length of the SK payload body for `plaintext_size` octets of inner payloads (minimal padding)."""
        return self.iv_size + plaintext_size + self.padding_size(plaintext_size) + 1 + self.icv_size

    def seal(self, aad: bytes, iv: bytes, plaintext: bytes, padding: bytes | None = None) -> bytes:
        """IV | ciphertext | ICV for the inner payload chain `plaintext`. `padding` defaults to the fewest zero
        octets that align the block; the sender may choose any content and any aligned length up to 255."""
        if len(iv) != self.iv_size:
            raise LocalProtocolError(f"IV must be {self.iv_size} octets, not {len(iv)}")
        pad = bytes(self.padding_size(len(plaintext))) if padding is None else padding
        if len(pad) > 255 or (len(plaintext) + len(pad) + 1) % self.encryption.block_size:
            raise LocalProtocolError(f"{len(pad)} octets of padding do not align {len(plaintext)} octets")
        data = plaintext + pad + bytes([len(pad)])
        if self.integrity is None:
            aes_key, salt = self._key[:-GCM_SALT_SIZE], self._key[-GCM_SALT_SIZE:]
            return iv + AESGCM(aes_key).encrypt(salt + iv, data, aad)
        encryptor = Cipher(algorithms.AES(self._key), modes.CBC(iv)).encryptor()
        ciphertext = encryptor.update(data) + encryptor.finalize()
        return iv + ciphertext + self.integrity.mac(self._integ_key, aad + iv + ciphertext)

    def open(self, aad: bytes, sealed: bytes) -> bytes:
        """The inner payload chain from IV | ciphertext | ICV. A wrong ICV raises IntegrityError; a structure
        that cannot come from a correct sender raises DecodeError."""
        if len(sealed) < self.iv_size + self.icv_size:
            raise DecodeError("SK", "encrypted data", f"{len(sealed)} octets cannot hold the IV and the ICV")
        iv = sealed[:self.iv_size]
        body, icv = sealed[self.iv_size:len(sealed) - self.icv_size], sealed[len(sealed) - self.icv_size:]
        if self.integrity is None:
            aes_key, salt = self._key[:-GCM_SALT_SIZE], self._key[-GCM_SALT_SIZE:]
            try:
                data = AESGCM(aes_key).decrypt(salt + iv, body + icv, aad)
            except InvalidTag:
                raise IntegrityError("SK: the AES-GCM tag does not verify") from None
        else:
            expected = self.integrity.mac(self._integ_key, aad + iv + body)
            if not constant_time.bytes_eq(expected, icv):
                raise IntegrityError("SK: the integrity checksum does not verify")
            if not body or len(body) % AES_BLOCK:
                raise DecodeError("SK", "encrypted data", f"{len(body)} octets of AES-CBC ciphertext")
            decryptor = Cipher(algorithms.AES(self._key), modes.CBC(iv)).decryptor()
            data = decryptor.update(body) + decryptor.finalize()
        if not data:
            raise DecodeError("SK", "pad length", "the plaintext has no pad length octet")
        pad_length = data[-1]
        if pad_length + 1 > len(data):
            raise DecodeError("SK", "pad length", f"{pad_length} octets of padding in {len(data)} of plaintext")
        return data[:len(data) - pad_length - 1]


def encrypt_message(cipher: SkCipher, header: IkeHeader, payloads: Sequence[Payload], iv: bytes,
                    *, before: Sequence[Payload] = ()) -> bytes:
    """A whole message whose `payloads` travel inside an SK payload (after the unencrypted `before`, if any)."""
    first, plaintext = encode_payloads(payloads)
    placeholder = Encrypted(first, bytes(cipher.sealed_size(len(plaintext))))
    draft = Message(header, (*before, placeholder)).encode()
    aad = draft[:len(draft) - len(placeholder.data)]
    return aad + cipher.seal(aad, iv, plaintext)


def decrypt_message(cipher: SkCipher, data: bytes) -> tuple[Message, tuple[Payload, ...]]:
    """Decode a message and open its SK payload: (the message as received, the payloads inside SK)."""
    message = Message.decode(data)
    sk = message.payloads[-1] if message.payloads else None
    if not isinstance(sk, Encrypted):
        raise DecodeError("SK", "next payload", "the message has no Encrypted payload")
    plaintext = cipher.open(data[:len(data) - len(sk.data)], sk.data)
    return message, decode_payloads(Reader(plaintext, payload="SK"), sk.first_payload, inner=True)


# --- AUTH (RFC 7296 2.15, RFC 7619, RFC 7427) ---

KEY_PAD = b"Key Pad for IKEv2"


def signed_octets(prf: Prf, real_message: bytes, peer_nonce: bytes, sk_p: bytes, id_payload: bytes) -> bytes:
    """InitiatorSignedOctets = RealMessage1 | NonceRData | prf(SK_pi, RestOfInitIDPayload), and symmetrically for
    the responder (RealMessage2 | NonceIData | prf(SK_pr, RestOfRespIDPayload)). `real_message` is our first
    message as sent, `peer_nonce` the other side's nonce data, `id_payload` our ID payload body
    (`IdentificationInitiator.encode()`)."""
    return real_message + peer_nonce + prf(sk_p, id_payload)


def shared_key_auth(prf: Prf, secret: bytes, octets: bytes) -> bytes:
    """AUTH = prf(prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>) (RFC 7296 2.15)."""
    return prf(prf(secret, KEY_PAD), octets)


def null_auth(prf: Prf, sk_p: bytes, octets: bytes) -> bytes:
    """NULL authentication (RFC 7619): the shared-key computation with SK_pi or SK_pr as the secret."""
    return shared_key_auth(prf, sk_p, octets)


def verify_mac_auth(expected: bytes, received: Authentication, method: int) -> None:
    """Check a shared-key or NULL AUTH payload against the value we computed."""
    if received.method != method:
        raise AuthenticationFailed(f"AUTH: method {received.method}, expected {method}")
    if not constant_time.bytes_eq(expected, received.data):
        raise AuthenticationFailed("AUTH: the authentication data does not verify")


def _der(tag: int, content: bytes) -> bytes:
    if len(content) >= 0x80:
        raise LocalProtocolError("DER: long-form lengths are not needed for algorithm identifiers")
    return bytes([tag, len(content)]) + content


def _der_oid(dotted: str) -> bytes:
    arcs = [int(part) for part in dotted.split(".")]
    out = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        rest = arc >> 7
        while rest:
            chunk.append(0x80 | (rest & 0x7F))
            rest >>= 7
        out += bytes(reversed(chunk))
    return _der(0x06, bytes(out))


_SEQUENCE, _NULL, _INTEGER = 0x30, b"\x05\x00", 0x02
_OID_ECDSA = {256: "1.2.840.10045.4.3.2", 384: "1.2.840.10045.4.3.3", 512: "1.2.840.10045.4.3.4"}
_OID_RSASSA_PSS, _OID_MGF1 = "1.2.840.113549.1.1.10", "1.2.840.113549.1.1.8"
_OID_SHA2 = {256: "2.16.840.1.101.3.4.2.1", 384: "2.16.840.1.101.3.4.2.2", 512: "2.16.840.1.101.3.4.2.3"}


def _pss_identifier(bits: int, trailer: bool) -> bytes:
    """RSASSA-PSS-params (RFC 4055): hashAlgorithm SHA-`bits`, MGF1 with the same hash, saltLength = the digest
    length, and (RFC 7427 A.4.3 spells it out) trailerField 1."""
    digest = _der(_SEQUENCE, _der_oid(_OID_SHA2[bits]) + _NULL)
    params = (_der(0xA0, digest) + _der(0xA1, _der(_SEQUENCE, _der_oid(_OID_MGF1) + digest))
              + _der(0xA2, _der(_INTEGER, bytes([bits // 8]))))
    if trailer:
        params += _der(0xA3, _der(_INTEGER, b"\x01"))
    return _der(_SEQUENCE, _der_oid(_OID_RSASSA_PSS) + _der(_SEQUENCE, params))


@dataclass(frozen=True)
class SignatureScheme:
    """An RFC 7427 signature algorithm: its ASN.1 AlgorithmIdentifier (DER) and its hash."""

    name: str
    identifier: bytes = field(repr=False)
    hash_algorithm: HashAlgorithm
    kind: Literal["ecdsa", "rsa-pss"]

    def hasher(self) -> hashes.HashAlgorithm:
        return _SIGNATURE_HASHES[self.hash_algorithm]


_SIGNATURE_HASHES: dict[int, hashes.HashAlgorithm] = {
    HashAlgorithm.SHA2_256: hashes.SHA256(), HashAlgorithm.SHA2_384: hashes.SHA384(),
    HashAlgorithm.SHA2_512: hashes.SHA512(),
}


ECDSA_SHA256 = SignatureScheme("ecdsa-with-SHA256", _der(_SEQUENCE, _der_oid(_OID_ECDSA[256])),
                               HashAlgorithm.SHA2_256, "ecdsa")
ECDSA_SHA384 = SignatureScheme("ecdsa-with-SHA384", _der(_SEQUENCE, _der_oid(_OID_ECDSA[384])),
                               HashAlgorithm.SHA2_384, "ecdsa")
ECDSA_SHA512 = SignatureScheme("ecdsa-with-SHA512", _der(_SEQUENCE, _der_oid(_OID_ECDSA[512])),
                               HashAlgorithm.SHA2_512, "ecdsa")
RSA_PSS_SHA256 = SignatureScheme("RSASSA-PSS-SHA256", _pss_identifier(256, trailer=True),
                                 HashAlgorithm.SHA2_256, "rsa-pss")
"""RFC 7427 A.4.3 spells the PSS parameters with an explicit trailerField; that is what we send."""
RSA_PSS_SHA384 = SignatureScheme("RSASSA-PSS-SHA384", _pss_identifier(384, trailer=True),
                                 HashAlgorithm.SHA2_384, "rsa-pss")
RSA_PSS_SHA512 = SignatureScheme("RSASSA-PSS-SHA512", _pss_identifier(512, trailer=True),
                                 HashAlgorithm.SHA2_512, "rsa-pss")

SIGNATURE_SCHEMES = (ECDSA_SHA256, ECDSA_SHA384, ECDSA_SHA512, RSA_PSS_SHA256, RSA_PSS_SHA384, RSA_PSS_SHA512)
_BY_IDENTIFIER = {scheme.identifier: scheme for scheme in SIGNATURE_SCHEMES}
for _pss, _bits in ((RSA_PSS_SHA256, 256), (RSA_PSS_SHA384, 384), (RSA_PSS_SHA512, 512)):
    _BY_IDENTIFIER[_pss_identifier(_bits, trailer=False)] = _pss  # the same parameters in strict DER

_ECDSA_BY_CURVE = {"secp256r1": ECDSA_SHA256, "secp384r1": ECDSA_SHA384, "secp521r1": ECDSA_SHA512}


def _own_hash_first(natural: SignatureScheme, kind: Literal["ecdsa", "rsa-pss"]) -> tuple[SignatureScheme, ...]:
    """A key's schemes in order of preference: the hash that matches the key's strength first (a longer hash adds
    nothing: ECDSA truncates the digest to the curve's order), then the other SHA-2 hashes, strongest first."""
    others = sorted((s for s in SIGNATURE_SCHEMES if s.kind == kind and s != natural),
                    key=lambda s: s.hash_algorithm, reverse=True)
    return (natural, *others)


def ecdsa_schemes(curve: str) -> tuple[SignatureScheme, ...]:
    """What an ECDSA key on `curve` (a `cryptography` curve name) signs with, preferred first. RFC 7427's
    ecdsa-with-SHA256/384/512 identifiers name no curve, so every curve may use every hash."""
    natural = _ECDSA_BY_CURVE.get(curve)
    if natural is None:
        raise UnsupportedAlgorithm(f"ECDSA on {curve} is not implemented")
    return _own_hash_first(natural, "ecdsa")


RSA_PSS_SCHEMES = _own_hash_first(RSA_PSS_SHA256, "rsa-pss")
"""What an RSA key signs with, preferred first: RSASSA-PSS with MGF1 of the same hash and a salt of the digest's
length. PKCS#1 v1.5 is not implemented."""


def hash_name(algorithm: int) -> str:
    """SHA2_256, IDENTITY, ... or `hash 9` for a number RFC 7427's registry does not name here."""
    try:
        return HashAlgorithm(algorithm).name
    except ValueError:
        return f"hash {algorithm}"


def _verify_with(scheme: SignatureScheme, key: PublicKey, signature: bytes, data: bytes) -> None:
    """Raises InvalidSignature, or AuthenticationFailed when the key cannot make this kind of signature."""
    if scheme.kind == "ecdsa" and isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, data, ec.ECDSA(scheme.hasher()))
    elif scheme.kind == "rsa-pss" and isinstance(key, rsa.RSAPublicKey):
        digest = scheme.hasher()
        key.verify(signature, data, padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size), digest)
    else:
        raise AuthenticationFailed(f"AUTH: a {scheme.name} signature cannot come from a {type(key).__name__}")


class Signer(ABC):
    """An identity key that signs AUTH payloads. Backends (software, the sim enclave, a TEE) implement it; no
    method returns private key material.

    `deferred`: `sign` waits on something outside this process (a socket, a device), so the responder does not call
    it inline: it asks with a SignatureRequested event and the server signs away from its event loop."""

    deferred: bool = False

    @property
    @abstractmethod
    def schemes(self) -> tuple[SignatureScheme, ...]:
        """Every RFC 7427 scheme this key can sign with, preferred first."""

    @property
    def algorithm(self) -> SignatureScheme:
        """The scheme this key signs with when the peer names no hashes (no SIGNATURE_HASH_ALGORITHMS)."""
        return self.schemes[0]

    @abstractmethod
    def sign(self, data: bytes, scheme: SignatureScheme) -> bytes:
        """The signature value of `data` under `scheme`, one of `schemes` (for ECDSA the DER Ecdsa-Sig-Value, for
        RSA-PSS the raw octets). Another scheme raises UnsupportedAlgorithm."""

    @abstractmethod
    def public_key(self) -> PublicKey:
        """The public half, as a `cryptography` public key."""


class SoftwareSigner(Signer):
    """A signer holding its key in this process: for tests and demos. ECDSA uses deterministic nonces (RFC 6979),
    so signatures are reproducible. Key types: ECDSA P-256/384/521 and RSA (PSS), each with SHA-256/384/512."""

    def __init__(self, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
        self._key = key
        if isinstance(key, ec.EllipticCurvePrivateKey):
            self._schemes = ecdsa_schemes(key.curve.name)
        else:
            self._schemes = RSA_PSS_SCHEMES

    @property
    def schemes(self) -> tuple[SignatureScheme, ...]:
        return self._schemes

    def sign(self, data: bytes, scheme: SignatureScheme) -> bytes:
        if scheme not in self._schemes:
            raise UnsupportedAlgorithm(f"this key does not sign with {scheme.name}")
        digest = scheme.hasher()
        if isinstance(self._key, ec.EllipticCurvePrivateKey):
            return self._key.sign(data, ec.ECDSA(digest, deterministic_signing=True))
        return self._key.sign(data, padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size), digest)

    def public_key(self) -> PublicKey:
        return self._key.public_key()


def encode_signature_auth(scheme: SignatureScheme, signature: bytes) -> bytes:
    """RFC 7427: ASN.1 length (1 octet) | AlgorithmIdentifier | signature value."""
    return bytes([len(scheme.identifier)]) + scheme.identifier + signature


def decode_signature_auth(data: bytes) -> tuple[SignatureScheme, bytes]:
    """Split RFC 7427 authentication data. An algorithm we do not implement is AUTHENTICATION_FAILED."""
    r = Reader(data, payload="AUTH")
    identifier = r.bytes(r.u8("asn.1 length"), "algorithm identifier")
    scheme = _BY_IDENTIFIER.get(identifier)
    if scheme is None:
        raise AuthenticationFailed(f"AUTH: signature algorithm {identifier.hex()} is not supported")
    signature = r.rest("signature value")
    if not signature:
        raise DecodeError("AUTH", "signature value", "empty")
    return scheme, signature


def choose_scheme(signer: Signer, peer_hashes: Sequence[int] | None) -> SignatureScheme:
    """The scheme of our AUTH (RFC 7427 section 4): without the peer's SIGNATURE_HASH_ALGORITHMS the key's own
    (`signer.algorithm`); with it, the first of `signer.schemes` whose hash the peer listed. No overlap is
    AuthenticationFailed: we cannot make an AUTH the peer would accept."""
    if peer_hashes is None:
        return signer.algorithm
    for scheme in signer.schemes:
        if scheme.hash_algorithm in peer_hashes:
            return scheme
    listed = ", ".join(hash_name(h) for h in peer_hashes) or "none"
    ours = ", ".join(hash_name(s.hash_algorithm) for s in signer.schemes)
    raise AuthenticationFailed(f"AUTH: the peer's SIGNATURE_HASH_ALGORITHMS lists {listed}; our key signs with "
                               f"{ours} only, so no AUTH we can make is acceptable to it")


def sign_auth(signer: Signer, octets: bytes, scheme: SignatureScheme | None = None) -> Authentication:
    """The AUTH payload (method DIGITAL_SIGNATURE) over our signed octets, under `scheme` (default: the key's own)."""
    chosen = signer.algorithm if scheme is None else scheme
    return Authentication(AuthMethod.DIGITAL_SIGNATURE, encode_signature_auth(chosen, signer.sign(octets, chosen)))


def verify_signature_auth(public_key: PublicKey, auth: Authentication, octets: bytes,
                          accept: Collection[SignatureScheme] = SIGNATURE_SCHEMES) -> SignatureScheme:
    """Verify the peer's AUTH payload (method DIGITAL_SIGNATURE) over its signed octets with its pinned public key;
    returns the scheme used. `accept` is what we verify; the hashes of its schemes are what we announced in
    SIGNATURE_HASH_ALGORITHMS, and a signature under another hash is refused by name. Any failure is
    AuthenticationFailed (or DecodeError for a truncated payload)."""
    if auth.method != AuthMethod.DIGITAL_SIGNATURE:
        raise AuthenticationFailed(f"AUTH: method {auth.method}, expected digital signature (14)")
    scheme, signature = decode_signature_auth(auth.data)
    announced = sorted({s.hash_algorithm for s in accept})
    if scheme.hash_algorithm not in announced:
        raise AuthenticationFailed(f"AUTH: signed with {scheme.name}, but {hash_name(scheme.hash_algorithm)} is not "
                                   f"among the hashes we announced ({', '.join(hash_name(h) for h in announced)})")
    if scheme not in accept:
        raise AuthenticationFailed(f"AUTH: {scheme.name} is not accepted here")
    try:
        _verify_with(scheme, public_key, signature, octets)
    except InvalidSignature:
        raise AuthenticationFailed(f"AUTH: the {scheme.name} signature does not verify") from None
    return scheme


@dataclass(frozen=True)
class PresentedKey:
    """The public key an initiator sent in its first CERT payload (RFC 7296 3.6: the one whose key verifies AUTH):
    from a raw public key (RFC 7670, encoding 15: a DER SubjectPublicKeyInfo) or an X.509 certificate (encoding 4,
    DER). The certificate is not validated: it only carries the key. `sha256` is the SHA-256 of the key's DER
    SubjectPublicKeyInfo; `subject` (RFC 4514) and `self_signed` describe a certificate."""

    encoding: int
    public_key: PublicKey = field(repr=False)
    sha256: bytes
    subject: str = ""
    self_signed: bool = False


MAX_PRESENTED_RSA_BITS = 8192
"""Anyone may send a key: this bounds what verifying its signature costs us."""


def key_sha256(public_key: PublicKey) -> bytes:
    """SHA-256 of the key's DER SubjectPublicKeyInfo: the fingerprint logs and configs show."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(der)
    return digest.finalize()


def presented_key(encoding: int, data: bytes) -> PresentedKey:
    """The key of a CERT payload's data. An encoding other than 4 and 15, data that does not parse, or a key that is
    neither ECDSA nor RSA is AuthenticationFailed, naming what was wrong."""
    subject, self_signed = "", False
    if encoding == CertEncoding.RAW_PUBLIC_KEY:
        try:
            key = serialization.load_der_public_key(data)
        except (ValueError, TypeError, CryptographyUnsupported):
            raise AuthenticationFailed("CERT: the raw public key (RFC 7670) is not a DER SubjectPublicKeyInfo") \
                from None
        what = "raw public key"
    elif encoding == CertEncoding.X509_SIGNATURE:
        # A peer's certificate may be one cryptography warns about (a serial number of 0): Python would print that
        # warning outside the enclave, at the moment this peer came.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            try:
                cert = x509.load_der_x509_certificate(data)
                key = cert.public_key()
                subject = cert.subject.rfc4514_string()
            except (ValueError, TypeError, CryptographyUnsupported):
                raise AuthenticationFailed("CERT: the X.509 certificate does not parse (DER)") from None
            self_signed = _self_signed(cert)
        what = "certificate"
    else:
        raise AuthenticationFailed(f"CERT: encoding {encoding} is not accepted here (only X.509 certificate, 4, and "
                                   "raw public key, 15)")
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise AuthenticationFailed(f"CERT: the {what} holds a {type(key).__name__}; only ECDSA and RSA keys sign "
                                   "here")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size > MAX_PRESENTED_RSA_BITS:
        raise AuthenticationFailed(f"CERT: the {what} holds an RSA key of {key.key_size} bits; at most "
                                   f"{MAX_PRESENTED_RSA_BITS} here")
    return PresentedKey(encoding, key, key_sha256(key), subject, self_signed)


def _self_signed(cert: x509.Certificate) -> bool:
    """Issuer is subject and the signature verifies under the certificate's own key."""
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature, CryptographyUnsupported):
        return False
    return True


# --- NAT detection (RFC 7296 2.23) ---

def nat_detection_hash(spi_i: bytes, spi_r: bytes, address: IPv4Address | IPv6Address, port: int) -> bytes:
    """SHA-1(SPIi | SPIr | IP | Port): the data of NAT_DETECTION_SOURCE_IP / _DESTINATION_IP. In IKE_SA_INIT's
    request SPIr is all zero."""
    digest = hashes.Hash(hashes.SHA1())  # noqa: S303 (the RFC's hash, not a security choice)
    digest.update(spi_i + spi_r + address.packed + port.to_bytes(2, "big"))
    return digest.finalize()
