"""ECDSA as the vendors encode it: raw (r, s) integers rather than DER, and raw P-256 points rather than
SubjectPublicKeyInfo. The arithmetic is cryptography's; only the encodings are converted here."""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature


def p256_point(raw: bytes) -> ec.EllipticCurvePublicKey | None:
    """A P-256 public key from 64 bytes x||y, or None when that is not a point on the curve."""
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw)
    except ValueError:
        return None


def verify(key: PublicKeyTypes, curve: type[ec.EllipticCurve], r: int, s: int, data: bytes,
           digest: hashes.HashAlgorithm) -> bool:
    """True only for a valid signature by an EC key on `curve`."""
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, curve):
        return False
    try:
        key.verify(encode_dss_signature(r, s), data, ec.ECDSA(digest))
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_p256_raw(key: PublicKeyTypes, signature: bytes, data: bytes) -> bool:
    """Intel's encoding: 64 bytes, r then s, each 32 bytes big-endian; SHA-256."""
    if len(signature) != 64:
        return False
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    return verify(key, ec.SECP256R1, r, s, data, hashes.SHA256())
