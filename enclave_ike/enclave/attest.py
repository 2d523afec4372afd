"""An evidence envelope for a nonce: the one call `enclave-ike evidence`, the evidence endpoint and key release make."""

from __future__ import annotations

from collections.abc import Callable

from ikecommon.attestation.binding import LABEL, NONCE_MAX, NONCE_MIN, report_data
from ikecommon.attestation.envelope import Collateral, Envelope

from .base import Enclave
from .errors import NonceError
from .sealing import spki


def attest(enclave: Enclave, nonce: bytes, collateral: Collateral | None = None, label: bytes = LABEL,
           key_spki: bytes | None = None) -> Envelope:
    """Evidence binding `nonce` and the enclave's IKE key (or `key_spki`, a key release's ephemeral key) for
    `label`'s purpose, in an envelope with the key and the nonce."""
    if not NONCE_MIN <= len(nonce) <= NONCE_MAX:
        raise NonceError(f"nonce: must be {NONCE_MIN} to {NONCE_MAX} bytes, got {len(nonce)}")
    key = key_spki or spki(enclave.signer().public_key())
    evidence = enclave.evidence(report_data(nonce, key, label))
    return Envelope(evidence, key, nonce, collateral or Collateral())


MakeEnvelope = Callable[[bytes, bytes, "bytes | None"], Envelope]
"""(nonce, label, key SPKI or None for the IKE key) -> an envelope: `attest` for one enclave, or the evidence
endpoint's `envelope`, which adds the vendor collateral a verifier elsewhere needs."""


def envelopes(enclave: Enclave) -> MakeEnvelope:
    """`attest` for this enclave, with no collateral."""
    return lambda nonce, label, key_spki: attest(enclave, nonce, None, label, key_spki)
