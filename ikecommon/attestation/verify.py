"""The client's one question: does this envelope prove that a TEE running an expected measurement holds this IKE
key, and that it said so just now, for the nonce we sent?

`verify_envelope` answers with a `Verified` (the key to pin, the measurement entry that matched, the registers) or
raises VerificationFailed carrying every mismatch found. `appraise` runs the same checks and returns them all
without raising, for callers that show the details (`ikectl trust verify`). The steps:

1. the evidence's own verifier (tdx, sev-snp or sim) against the caller's trust anchors, at the caller's time;
2. the binding: report data = SHA-512 over the label, the nonce *sent* and the envelope's key (binding.py), and the
   envelope's nonce is the nonce sent;
3. the registers against the measurement spec.

Evidence that does not parse raises EvidenceFormatError (an envelope that does not, EnvelopeFormatError); evidence
of a version, type or signing key not handled raises UnsupportedEvidence.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .binding import LABEL, binding_mismatches
from .certs import der_certificate, der_crl
from .envelope import Collateral, Envelope, EnvelopeFormatError, EvidenceKind
from .errors import Mismatch, VerificationFailed
from .outcome import Check, CheckKind, Verification
from .roots import amd_arks, intel_sgx_root
from .sim import SimReport, sim_root_certificate, verify_sim_report
from .snp import SnpPolicy, SnpReport, load_vcek, verify_report
from .spec import MeasurementSpec
from .tdx import TdxCollateral, TdxPolicy, TdxQuote, verify_quote

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


@dataclass(frozen=True)
class TrustAnchors:
    """The roots a client trusts. A kind of evidence whose root is missing here does not verify."""

    intel_root: x509.Certificate | None = None      # Intel SGX Root CA, for tdx
    amd_arks: tuple[x509.Certificate, ...] = ()     # AMD root keys (Milan, Genoa, ...), for sev-snp
    sim_root: x509.Certificate | None = None        # the simulated root: trusting it proves nothing

    @classmethod
    def shipped(cls) -> TrustAnchors:
        """Trust the vendors' roots that ship with the package (roots.py): the Intel SGX Root CA and AMD's ARKs."""
        return cls(intel_root=intel_sgx_root(), amd_arks=amd_arks())

    @classmethod
    def simulated(cls) -> TrustAnchors:
        """Trust the shipped sim root and nothing else. NOT SECURE: for tests, the lab and demos."""
        return cls(sim_root=sim_root_certificate())


@dataclass(frozen=True)
class Verified:
    """What a client may pin: the key, and why (the evidence kind, the spec entry that matched, the registers)."""

    kind: EvidenceKind
    ike_key: bytes  # SubjectPublicKeyInfo DER
    measurement_id: str
    registers: Mapping[int, bytes]
    evidence: Verification = field(repr=False)

    def public_key(self) -> PublicKey:
        key = serialization.load_der_public_key(self.ike_key)
        if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise EnvelopeFormatError("envelope.ike-key[1]", None, "not an ECDSA or RSA key")
        return key


@dataclass(frozen=True)
class Appraisal:
    kind: EvidenceKind
    ike_key: bytes
    evidence: Verification  # the evidence verifier's own checks
    binding: Check
    measurements: Check
    measurement_id: str | None
    registers: Mapping[int, bytes]

    @property
    def checks(self) -> tuple[Check, ...]:
        return (*self.evidence.checks, self.binding, self.measurements)

    @property
    def mismatches(self) -> tuple[Mismatch, ...]:
        return tuple(dict.fromkeys(m for check in self.checks for m in check.mismatches))

    @property
    def ok(self) -> bool:
        return all(check.passed for check in self.checks)

    def require(self) -> Verified:
        if not self.ok or self.measurement_id is None:
            raise VerificationFailed(self.mismatches)
        return Verified(self.kind, self.ike_key, self.measurement_id, self.registers, self.evidence)


def verify_envelope(envelope: Envelope | bytes, nonce: bytes, spec: MeasurementSpec, anchors: TrustAnchors,
                    at: datetime, *, tdx_policy: TdxPolicy | None = None, snp_policy: SnpPolicy | None = None,
                    tdx_collateral: TdxCollateral | None = None, label: bytes = LABEL) -> Verified:
    """The key to pin, or VerificationFailed with every mismatch."""
    return appraise(envelope, nonce, spec, anchors, at, tdx_policy=tdx_policy, snp_policy=snp_policy,
                    tdx_collateral=tdx_collateral, label=label).require()


def appraise(envelope: Envelope | bytes, nonce: bytes, spec: MeasurementSpec, anchors: TrustAnchors, at: datetime,
             *, tdx_policy: TdxPolicy | None = None, snp_policy: SnpPolicy | None = None,
             tdx_collateral: TdxCollateral | None = None, label: bytes = LABEL) -> Appraisal:
    """Every check, none skipped because another failed. `tdx_collateral` replaces the envelope's. `label` is the
    purpose the report data must bind (binding.py): a client's IKE key by default, or a key release's."""
    if isinstance(envelope, bytes):
        envelope = Envelope.decode(envelope)
    kind = envelope.evidence.kind
    if kind == EvidenceKind.TDX:
        evidence, report_data, registers = _tdx(envelope, anchors, at, tdx_policy, tdx_collateral)
    elif kind == EvidenceKind.SEV_SNP:
        evidence, report_data, registers = _snp(envelope, anchors, at, snp_policy)
    else:
        evidence, report_data, registers = _sim(envelope, anchors, at)
    replayed = [] if envelope.nonce == nonce else [Mismatch("nonce", f"{nonce.hex()} (the nonce sent)",
                                                            envelope.nonce.hex())]
    binding = Check.of("key and nonce binding", CheckKind.BINDING,
                       binding_mismatches(report_data, nonce, envelope.ike_key, label) + replayed)
    matched = spec.match(kind, registers)
    measurements = Check.of("measurements", CheckKind.POLICY, matched.mismatches)
    return Appraisal(kind, envelope.ike_key, evidence, binding, measurements, matched.measurement_id, registers)


def _not_verified(missing: list[Mismatch]) -> Verification:
    """Without a root or collateral nothing about the evidence is known: a failed signature check says so."""
    return Verification((Check.of("evidence not verified", CheckKind.SIGNATURE, missing),))


def _tdx(envelope: Envelope, anchors: TrustAnchors, at: datetime, policy: TdxPolicy | None,
         collateral: TdxCollateral | None) -> tuple[Verification, bytes, dict[int, bytes]]:
    quote = TdxQuote.parse(envelope.evidence.data)
    registers = {0: quote.body.mr_td, **{index + 1: rtmr for index, rtmr in enumerate(quote.body.rtmrs)}}
    missing: list[Mismatch] = []
    if collateral is None:
        collateral, missing = _shipped_collateral(envelope.collateral)
    if anchors.intel_root is None:
        missing.append(Mismatch("trust_anchors.intel_root", "the Intel SGX Root CA", "none given"))
    if anchors.intel_root is None or collateral is None:
        return _not_verified(missing), quote.body.report_data, registers
    return (verify_quote(quote, root=anchors.intel_root, collateral=collateral, at=at, policy=policy),
            quote.body.report_data, registers)


def _shipped_collateral(shipped: Collateral) -> tuple[TdxCollateral | None, list[Mismatch]]:
    documents = {"tdx-tcb-info": shipped.tdx_tcb_info, "tdx-qe-identity": shipped.tdx_qe_identity,
                 "tdx-tcb-signing-chain": shipped.tdx_tcb_signing_chain}
    absent = [Mismatch(f"collateral.{name}", "Intel's collateral, in the envelope or given", "absent")
              for name, value in documents.items() if value is None]
    if shipped.tdx_tcb_info is None or shipped.tdx_qe_identity is None or shipped.tdx_tcb_signing_chain is None:
        return None, absent
    return TdxCollateral.load(tcb_info=shipped.tdx_tcb_info, qe_identity=shipped.tdx_qe_identity,
                              tcb_signing_chain=shipped.tdx_tcb_signing_chain, crls=shipped.crls), []


def _snp(envelope: Envelope, anchors: TrustAnchors, at: datetime,
         policy: SnpPolicy | None) -> tuple[Verification, bytes, dict[int, bytes]]:
    report = SnpReport.parse(envelope.evidence.data)
    registers = {0: report.measurement}
    certificates = envelope.evidence.certificates
    missing = []
    if len(certificates) < 2:
        missing.append(Mismatch("certificates", "the VCEK and the ASK", f"{len(certificates)} certificates"))
    if not anchors.amd_arks:
        missing.append(Mismatch("trust_anchors.amd_arks", "an AMD root key (ARK)", "none given"))
    if missing:
        return _not_verified(missing), report.report_data, registers
    vcek = load_vcek(certificates[0])
    ask = der_certificate(certificates[1], "certificates[1]")
    # The ARK that issued this ASK; with none, the first one, and the chain check names both issuers.
    ark = next((ark for ark in anchors.amd_arks if ark.subject == ask.issuer), anchors.amd_arks[0])
    crls = tuple(der_crl(crl, f"crl-{n}") for n, crl in enumerate(envelope.collateral.crls, start=1))
    return (verify_report(report, vcek=vcek, ask=ask, ark=ark, at=at, policy=policy, crls=crls),
            report.report_data, registers)


def _sim(envelope: Envelope, anchors: TrustAnchors,
         at: datetime) -> tuple[Verification, bytes, dict[int, bytes]]:
    report = SimReport.decode(envelope.evidence.data)
    registers = dict(enumerate(report.registers))
    if anchors.sim_root is None:
        return (_not_verified([Mismatch("trust_anchors.sim_root", "the simulated root, trusted explicitly "
                                        "(NOT SECURE: tests and demos only)", "not trusted")]),
                report.report_data, registers)
    return verify_sim_report(report, root=anchors.sim_root, at=at), report.report_data, registers
