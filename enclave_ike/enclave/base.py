"""The interface every TEE backend offers: a signer whose private key stays inside, and evidence on demand.

Backends: `software` (a key in this process, for unit tests), `sim` (a key in a separate process that only signs,
with simulated evidence; NOT SECURE evidence), `tsm` (Linux configfs-tsm in a TDX or SEV-SNP guest).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ikecommon.attestation.envelope import Evidence, EvidenceKind

from ..ikev2.crypto import Signer


@runtime_checkable
class Enclave(Protocol):
    @property
    def kind(self) -> EvidenceKind:
        """The kind of evidence this backend produces."""
        ...

    def signer(self) -> Signer:
        """The IKE identity key, for signing only: no method of it returns private key material."""
        ...

    def evidence(self, report_data: bytes) -> Evidence:
        """Evidence whose report data is exactly these 64 bytes (see attestation/binding.py)."""
        ...

    # Key release between replicas (enclave_ike/release): the identity key leaves only sealed to another enclave's
    # ephemeral key, and comes in only sealed to ours.

    def release_recipient(self) -> bytes:
        """A fresh ephemeral P-256 public key (SubjectPublicKeyInfo DER), kept inside, to receive a sealed key with."""
        ...

    def seal_identity(self, recipient_spki: bytes, info: bytes, key_spki: bytes | None = None) -> bytes:
        """The key `key_spki` names (the current key by default; or the next one) sealed (HPKE, enclave/sealing.py)
        to that recipient key, with that context. SealError for a key this enclave does not hold."""
        ...

    def import_identity(self, sealed: bytes, info: bytes, expected_spki: bytes, *, as_next: bool = False) -> None:
        """Make the sealed key (which must be the key `expected_spki` names) the identity key, whose signer
        `signer()` is from now on (or, `as_next`, the next key). SealError, and nothing changed, otherwise."""
        ...

    # Rotation (enclave_ike/release/rotation.py): a next key made inside, which signs only after `switch`.

    def make_next(self) -> bytes:
        """A next key of the current one's kind, made inside (asked again: the same one); its SPKI DER."""
        ...

    def switch(self) -> bytes:
        """The next key becomes the one `signer()` signs with, the old one is dropped; the new key's SPKI DER.
        EnclaveError when there is no next key."""
        ...
