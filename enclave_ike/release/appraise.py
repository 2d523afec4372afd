"""What each side of a key release requires of the other's evidence: the service's measurement spec, the trust
anchors, and the vendors' policies, the same verifiers and spec format `ikectl trust` uses (ikecommon.attestation)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ikecommon.attestation.errors import EvidenceFormatError, UnsupportedEvidence, VerificationFailed
from ikecommon.attestation.snp import SnpPolicy
from ikecommon.attestation.spec import MeasurementSpec
from ikecommon.attestation.tdx import TdxPolicy
from ikecommon.attestation.verify import TrustAnchors, Verified, verify_envelope

from .errors import Refused

MAX_SHOWN = 3  # mismatches named in a refusal's one line; the rest are counted


@dataclass(frozen=True)
class Appraiser:
    spec: MeasurementSpec
    anchors: TrustAnchors
    tdx_policy: TdxPolicy | None = None
    snp_policy: SnpPolicy | None = None

    def verify(self, envelope: bytes, nonce: bytes, label: bytes, at: datetime, whose: str) -> Verified:
        """The verified envelope; Refused naming `whose` evidence and what did not match."""
        try:
            return verify_envelope(envelope, nonce, self.spec, self.anchors, at, tdx_policy=self.tdx_policy,
                                   snp_policy=self.snp_policy, label=label)
        except VerificationFailed as exc:
            shown = "; ".join(str(m) for m in exc.mismatches[:MAX_SHOWN])
            more = len(exc.mismatches) - MAX_SHOWN
            raise Refused(f"{whose} evidence does not verify: {shown}"
                          + (f" (and {more} more)" if more > 0 else "")) from None
        except (EvidenceFormatError, UnsupportedEvidence) as exc:
            raise Refused(f"{whose} evidence is unusable: {exc}") from None
