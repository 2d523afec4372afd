"""The `software` backend: the key in this process and sim evidence signed here. For unit tests only; the `sim`
backend is the one that keeps its key out of the caller's process."""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ikecommon.attestation.envelope import Evidence, EvidenceKind
from ikecommon.attestation.sim import DEFAULT_REGISTERS, make_sim_report

from .custody import Custody, HeldInProcess
from .errors import EnclaveError


class SoftwareEnclave(HeldInProcess):
    kind = EvidenceKind.SIM

    def __init__(self, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None, *,
                 registers: Sequence[bytes] = DEFAULT_REGISTERS) -> None:
        self._custody = Custody(key or ec.generate_private_key(ec.SECP256R1()))
        self._registers = tuple(registers)

    def evidence(self, report_data: bytes) -> Evidence:
        if len(report_data) != 64:
            raise EnclaveError(f"report data must be 64 bytes, got {len(report_data)}")
        return Evidence(EvidenceKind.SIM, make_sim_report(report_data, self._registers).encode())
