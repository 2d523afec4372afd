"""Attestation evidence: parsers and offline verifiers, one per evidence type (`tdx`, `snp`).

A verifier returns a Verification: every check it ran and the mismatches each found, so a caller can tell
"authentic but out of date" from "forged". `require_ok()` turns any mismatch into VerificationFailed. See
docs/attestation.md, "Verifiers".
"""

from .errors import AttestationError, EvidenceFormatError, Mismatch, VerificationFailed
from .outcome import Check, CheckKind, Verification

__all__ = [
    "AttestationError",
    "Check",
    "CheckKind",
    "EvidenceFormatError",
    "Mismatch",
    "Verification",
    "VerificationFailed",
]
