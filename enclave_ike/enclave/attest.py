"""An evidence envelope for a client's nonce: the one call `enclave-ike evidence` and the evidence endpoint make."""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization

from ikecommon.attestation.binding import NONCE_MAX, NONCE_MIN, report_data
from ikecommon.attestation.envelope import Collateral, Envelope

from .base import Enclave
from .errors import NonceError


def attest(enclave: Enclave, nonce: bytes, collateral: Collateral | None = None) -> Envelope:
    """Evidence binding `nonce` and the enclave's IKE key, in an envelope with the key and the nonce."""
    if not NONCE_MIN <= len(nonce) <= NONCE_MAX:
        raise NonceError(f"nonce: must be {NONCE_MIN} to {NONCE_MAX} bytes, got {len(nonce)}")
    spki = enclave.signer().public_key().public_bytes(serialization.Encoding.DER,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)
    evidence = enclave.evidence(report_data(nonce, spki))
    return Envelope(evidence, spki, nonce, collateral or Collateral())
