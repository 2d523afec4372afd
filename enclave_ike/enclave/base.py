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
