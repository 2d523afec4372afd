"""The report data that binds a client's fresh nonce and enclave-ike's IKE public key into TEE evidence.

    report_data = SHA-512( "enclave-ike attestation v1" || 0x00
                           || uint16_be(len(nonce)) || nonce
                           || SubjectPublicKeyInfo DER of the IKE key )

That is 64 bytes: the size of TDX REPORTDATA, SEV-SNP REPORT_DATA and the sim report's report data, so the whole
digest is quoted and nothing is truncated. The label (NUL included) keeps these 64 bytes from meaning anything in
another protocol that hashes a nonce and a key. The nonce carries its length because it varies (16 to 64 bytes);
the SPKI comes last and is self-delimiting DER. The key is hashed exactly as the envelope carries it, which the
envelope decoder requires to be canonical DER, so one key has one report data per nonce.

A verifier recomputes the digest from the nonce *it* sent and the key the envelope offers. Evidence made for an
earlier nonce (a replay) or for another key then differs in `report_data`; the digest cannot say which of the two.

The label says what the key is for, so evidence made for one purpose never passes for another:

    LABEL              "enclave-ike attestation v1"         the IKE identity key, for a client (GET /evidence)
    KEY_REQUEST_LABEL  "enclave-ike key request v1"         a replica's ephemeral HPKE key, asking a holder for the
                                                            service's identity key (enclave_ike/release)
    KEY_GRANT_LABEL    "enclave-ike key grant v1"           the identity key, as a holder proves it to that replica

Without the last two, anyone could ask a resolver's evidence endpoint for evidence binding a nonce of its choice
and present it as a grant.
"""

from __future__ import annotations

import hashlib

from .errors import Mismatch

LABEL = b"enclave-ike attestation v1\0"
KEY_REQUEST_LABEL = b"enclave-ike key request v1\0"
KEY_GRANT_LABEL = b"enclave-ike key grant v1\0"
REPORT_DATA_SIZE = 64
NONCE_MIN, NONCE_MAX = 16, 64  # at least 128 bits of freshness; at most one TEE report data's worth


def report_data(nonce: bytes, ike_key_spki: bytes, label: bytes = LABEL) -> bytes:
    """The 64 bytes an enclave puts in its evidence for this nonce and key. Raises ValueError for a nonce of a
    length outside NONCE_MIN..NONCE_MAX, a programming error on the enclave's side."""
    if not NONCE_MIN <= len(nonce) <= NONCE_MAX:
        raise ValueError(f"nonce must be {NONCE_MIN} to {NONCE_MAX} bytes, got {len(nonce)}")
    return hashlib.sha512(label + len(nonce).to_bytes(2, "big") + nonce + ike_key_spki).digest()


def binding_mismatches(quoted: bytes, nonce: bytes, ike_key_spki: bytes, label: bytes = LABEL) -> list[Mismatch]:
    """A `report_data` mismatch unless the evidence's report data binds exactly this nonce and key, for `label`'s
    purpose."""
    if not NONCE_MIN <= len(nonce) <= NONCE_MAX:
        return [Mismatch("nonce", f"{NONCE_MIN} to {NONCE_MAX} bytes", f"{len(nonce)} bytes")]
    expected = report_data(nonce, ike_key_spki, label)
    if quoted != expected:
        purpose = label.rstrip(b"\0").decode()
        return [Mismatch("report_data", f"{expected.hex()} (SHA-512 of the label {purpose!r}, the nonce sent and "
                                        "the key)", quoted.hex())]
    return []
