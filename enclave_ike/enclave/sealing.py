"""The identity key sealed to another enclave's ephemeral key: HPKE (RFC 9180) base mode, from `cryptography`.

    suite   DHKEM(P-256, HKDF-SHA256), HKDF-SHA256, AES-128-GCM   (RFC 9180 ids 0x0010, 0x0001, 0x0001)
    sealed  enc (65 bytes, the sender's ephemeral public key) || ciphertext of the PKCS#8 DER private key

Why HPKE, and `cryptography`'s: one authenticated encryption to a public key, with the context bound through
`info`, is exactly what handing a key to an attested enclave needs, and `cryptography` (the project's one crypto
library, OpenSSL underneath) implements it since 47.0. P-256 because the recipient's key travels in an evidence
envelope, whose `ike-key` member takes P-256; its 128-bit strength matches every identity key enclave-ike makes.

The holder passes `info` = what the exchange was (key_release.messages.seal_info): a sealed key opens only for the
request it answers. After opening, the recipient checks that the key is the one the holder's evidence attested:
decryption alone proves only that someone sealed *a* key to us.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .errors import EnclaveError

SUITE = hpke.Suite(hpke.KEM.P256, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM)
ENC_SIZE = 65  # an uncompressed P-256 point
MAX_SEALED = 8 * 1024  # an RSA-3072 PKCS#8 is under 1.8 KB

IdentityKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class SealError(EnclaveError):
    """A sealed key that does not open, or opens to another key than the one attested. Nothing is imported."""


def spki(public: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def new_recipient() -> ec.EllipticCurvePrivateKey:
    """An ephemeral key to receive one sealed identity key with; used for one request, then dropped."""
    return ec.generate_private_key(ec.SECP256R1())


def seal(key: IdentityKey, recipient_spki: bytes, info: bytes) -> bytes:
    """`key`, sealed to the P-256 public key `recipient_spki` (DER); SealError for any other recipient key."""
    try:
        recipient = serialization.load_der_public_key(recipient_spki)
    except (ValueError, UnsupportedAlgorithm):
        raise SealError("the recipient key is not a public key (SubjectPublicKeyInfo DER)") from None
    if not isinstance(recipient, ec.EllipticCurvePublicKey) or recipient.curve.name != "secp256r1":
        raise SealError(f"the recipient key must be ECDSA P-256 (the HPKE suite's KEM), not {_named(recipient)}")
    pkcs8 = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    return SUITE.encrypt(pkcs8, recipient, info=info)


def open_sealed(recipient: ec.EllipticCurvePrivateKey, sealed: bytes, info: bytes,
                expected_spki: bytes) -> IdentityKey:
    """The key sealed to `recipient` with this `info`, which must be the key `expected_spki` names."""
    if not ENC_SIZE < len(sealed) <= MAX_SEALED:
        raise SealError(f"sealed key of {len(sealed)} bytes: expected {ENC_SIZE + 1} to {MAX_SEALED}")
    try:
        pkcs8 = SUITE.decrypt(sealed, recipient, info=info)
    except (InvalidTag, ValueError):
        raise SealError("the sealed key does not open: truncated, tampered with, sealed to another key or for "
                        "another request") from None
    try:
        key = serialization.load_der_private_key(pkcs8, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise SealError("the sealed key opens, but not to a PKCS#8 private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise SealError(f"the sealed key is {_named(key)}: an identity key is ECDSA or RSA")
    if spki(key.public_key()) != expected_spki:
        raise SealError("the sealed key is not the key the holder's evidence attests")
    return key


def _named(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return f"ECDSA {key.curve.name}"
    return type(key).__name__.removeprefix("_")
