"""Every mutation class of the negative corpus applied to every kind of real evidence: TDX quotes v4 and v5, SEV-SNP
reports signed by a VCEK and by a VLEK (Milan), by a Turin VCEK and by a Genoa VCEK. The table of classes, kinds and
expected errors is the docstring of tests/attestation_mutations.py; the ids here read `kind/class/variant`.

Each case runs twice: mutated, where it must be refused with the expected error (EvidenceFormatError or
UnsupportedEvidence naming the field) or fail the expected check with the expected mismatch fields; and its
control, the unmutated input through the same call, which must not. The TCB status each kind reports is at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import cache

import pytest
from attestation_mutations import (
    KINDS,
    SNP_OFFSETS,
    SNP_VCEK,
    SNP_VLEK,
    TDX_CRLS,
    FakeAmd,
    SnpKind,
    TdxKind,
    amd_chain,
    fields,
    flipped,
    impostor,
    intel_collateral,
    intel_root,
    key_flipped,
    pck_chain,
    signature_flipped,
    tdx_file,
    with_pck_chain,
    with_uint,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa

from ikecommon.attestation.errors import AttestationError, EvidenceFormatError, UnsupportedEvidence
from ikecommon.attestation.outcome import Verification
from ikecommon.attestation.snp import SnpReport, TcbVersion
from ikecommon.attestation.snp.report import REPORT_SIZE, SIGNED_SIZE
from ikecommon.attestation.tdx import TdxPolicy
from netns_tests.harness.fake_intel import QUOTE_SGX_SVNS, QUOTE_TDX_SVNS, FakeIntel, real_tcb_info, tcb_info_with

ANY_OFFSET = -1  # an offset is named, whichever


@dataclass(frozen=True)
class Refused:
    error: type[AttestationError]
    field: str
    offset: int | None = ANY_OFFSET  # None: the error names no offset (a certificate)
    words: str = ""  # in its message


def malformed(name: str, offset: int | None = ANY_OFFSET, words: str = "") -> Refused:
    return Refused(EvidenceFormatError, name, offset, words)


def unsupported(name: str, offset: int | None = ANY_OFFSET, words: str = "") -> Refused:
    return Refused(UnsupportedEvidence, name, offset, words)


@dataclass(frozen=True)
class Fails:
    """The checks that fail, by the mismatch fields the mutation adds; `exact`: no other field is added."""

    checks: Mapping[str, str]  # field -> the check that carries it
    exact: bool = True


@dataclass(frozen=True)
class Accepted:
    """The verifier ignores the change: the same mismatches as the control."""


ACCEPTED = Accepted()


@dataclass(frozen=True)
class Case:
    id: str
    run: Callable[[], Verification]
    expect: Refused | Fails | Accepted
    control: Callable[[], Verification] = field(repr=False, default=lambda: Verification(()))


def _case(kind: TdxKind | SnpKind, name: str, run: Callable[[], Verification], expect: Refused | Fails | Accepted,
          control: Callable[[], Verification] | None = None) -> Case:
    return Case(f"{kind.name}/{name}", run, expect, control or kind.verify)


# -- TDX ----------------------------------------------------------------------------------------------------------

QUOTE_SIGNATURE, QE_REPORT_SIGNATURE, KEY_BINDING = "quote signature", "QE report signature", "attestation key binding"
PCK_CHAIN, TCB_SIGNING_CHAIN = "PCK certificate chain", "TCB signing chain"
SIGNATURE = "signature_data.signature"
FAKE_AT = datetime(2023, 7, 1, tzinfo=UTC)  # inside the test PKIs' validity and their CRLs'


def _signature_only() -> Fails:
    return Fails({SIGNATURE: QUOTE_SIGNATURE})


def _tdx_bitflips(k: TdxKind) -> Iterator[tuple[str, int, int, Refused | Fails]]:
    """(name, offset, bit, expected) for one bit flipped in each region of the quote."""
    v = k.layout
    yield "header/user-data", 40, 0, _signature_only()
    yield "header/qe-vendor-id", 12, 0, Fails({SIGNATURE: QUOTE_SIGNATURE, "header.qe_vendor_id": "QE identity"})
    yield "body/tee-tcb-svn", v.body, 0, _signature_only()
    yield "body/mrtd", v.body + 16 + 48 + 48 + 8 + 8 + 8, 0, _signature_only()
    yield "body/rtmr3", v.body + 584 - 64 - 48, 0, _signature_only()
    yield "body/report-data", v.body + 584 - 1, 0, _signature_only()
    if v.descriptor is not None:
        yield "body/tee-tcb-svn2", v.body + 584, 0, _signature_only()
        yield "body/mrservicetd", v.body + 584 + 16, 0, _signature_only()
        yield "body/mrservicetd-last", v.body + 647, 0, _signature_only()
        descriptor_type, descriptor_size = "tdx_quote.body_descriptor.type", "tdx_quote.body_descriptor.size"
        yield "body-descriptor/type-3-to-2", v.descriptor, 0, malformed(descriptor_size, v.descriptor + 2)
        yield "body-descriptor/type-3-to-7", v.descriptor, 2, unsupported(descriptor_type, v.descriptor)
        yield "body-descriptor/type-high-byte", v.descriptor + 1, 0, unsupported(descriptor_type, v.descriptor)
        yield "body-descriptor/size-low-byte", v.descriptor + 2, 0, malformed(descriptor_size, v.descriptor + 2)
        yield "body-descriptor/size-high-byte", v.descriptor + 5, 7, malformed(descriptor_size, v.descriptor + 2)
    # The size's low bit: v4's is odd, so the span shrinks below its certification data; v5's grows past its end.
    inside = "signature_data" if v.descriptor is not None else "signature_data.certification.data"
    yield "signature-data-size", v.sig_data_size, 0, malformed(f"tdx_quote.{inside}")
    yield "signature/r", v.sig_data, 0, _signature_only()
    yield "signature/s", v.sig_data + 63, 0, _signature_only()
    yield "attestation-key", v.sig_data + 64, 0, Fails({"signature_data.attestation_key": QUOTE_SIGNATURE,
                                                        "qe_report.report_data": KEY_BINDING})
    qe_signature = {"qe_report_signature": QE_REPORT_SIGNATURE}
    yield "qe-report/mrenclave", v.qe_report + 64, 0, Fails(qe_signature)
    yield "qe-report/mrsigner", v.qe_report + 128, 0, Fails({**qe_signature, "qe_report.mr_signer": "QE identity"})
    yield "qe-report/report-data", v.qe_report + 320, 0, Fails({**qe_signature, "qe_report.report_data": KEY_BINDING})
    yield "reserved/qe-report-reserved1", v.qe_report + 20, 0, Fails(qe_signature)
    yield "reserved/qe-report-reserved4", v.qe_report + 260, 0, Fails(qe_signature)
    yield "qe-report-signature", v.qe_report_signature, 0, Fails(qe_signature)
    yield "qe-auth-data", v.qe_auth_data, 0, Fails({"qe_report.report_data": KEY_BINDING})


def _tdx_truncations(k: TdxKind) -> Iterator[tuple[int, str]]:
    v = k.layout
    yield 0, "header.version"
    yield 30, "header.user_data"
    if v.descriptor is not None:
        yield v.descriptor, "body_descriptor.type"
        yield v.descriptor + 1, "body_descriptor.type"
        yield v.descriptor + 2, "body_descriptor.size"
        yield v.descriptor + 5, "body_descriptor.size"
    yield v.body, "body.tee_tcb_svn"
    yield v.body + 150, "body.mr_td"
    yield v.body + 152, "body.mr_td"
    yield v.body + 583, "body.report_data"
    if v.descriptor is not None:
        yield v.body + 584, "body.tee_tcb_svn2"
        yield v.body + 600, "body.mr_service_td"
        yield v.body + 647, "body.mr_service_td"
    yield v.sig_data_size, "signature_data.size"
    yield v.sig_data, "signature_data"
    yield v.qe_report + 100, "signature_data"
    yield v.pck_chain + 100, "signature_data"
    yield v.signed_end - 1, "signature_data"


@cache
def _fake_intel() -> FakeIntel:
    return FakeIntel.instance()


def _fake_quote(k: TdxKind) -> bytes:
    return _fake_intel().quote(base=k.evidence)


def _fake_tdx(k: TdxKind, **collateral: object) -> Callable[[], Verification]:
    """The kind's quote re-signed by the test PKI, verified under its root with its collateral (changed)."""
    def run() -> Verification:
        pki = _fake_intel()
        return k.verify(_fake_quote(k), root=pki.root, collateral=pki.collateral(**collateral),  # type: ignore[arg-type]
                        at=FAKE_AT)
    return run


def _tdx_cases(k: TdxKind) -> Iterator[Case]:
    v, quote = k.layout, k.evidence
    for name, offset, bit, expect in _tdx_bitflips(k):
        yield _case(k, f"bitflip/{name}", lambda o=offset, b=bit: k.verify(flipped(quote, o, b)), expect)
    leaf, ca, root = pck_chain(quote)
    yield _case(k, "bitflip/key-certificate-signature",
                lambda: k.verify(with_pck_chain(quote, [signature_flipped(leaf), ca, root])),
                Fails({"pck_leaf.signature": PCK_CHAIN}))
    yield _case(k, "bitflip/key-certificate-key",
                lambda: k.verify(with_pck_chain(quote, [key_flipped(leaf), ca, root])), malformed("pck_chain[0]", None))
    yield _case(k, "bitflip/intermediate-signature",
                lambda: k.verify(with_pck_chain(quote, [leaf, signature_flipped(ca), root])),
                Fails({"pck_ca.signature": PCK_CHAIN}))
    yield _case(k, "bitflip/root-signature", lambda: k.verify(root=signature_flipped(intel_root())),
                Fails({"intel_root.signature": PCK_CHAIN, "pck_chain.root": PCK_CHAIN,
                       "tcb_signing_chain.root": TCB_SIGNING_CHAIN}))
    tcb_info, qe_identity = tdx_file("tdx_tcbinfo_v3_fmspc_50806f000000.json"), tdx_file("tdx_qe_identity_v2.json")
    for name, documents, expected in [
        ("tcb-info-body", {"tcb_info": tcb_info.replace(b'"tcbEvaluationDataNumber":15',
                                                        b'"tcbEvaluationDataNumber":16')}, "tcb_info"),
        ("tcb-info-signature", {"tcb_info": tcb_info.replace(b'"signature":"f6', b'"signature":"f7')}, "tcb_info"),
        ("qe-identity-body", {"qe_identity": qe_identity.replace(b'"tcbEvaluationDataNumber":15',
                                                                 b'"tcbEvaluationDataNumber":14')}, "qe_identity"),
    ]:
        check = "TCB info signature" if expected == "tcb_info" else "QE identity signature"
        yield _case(k, f"bitflip/collateral/{name}",
                    lambda d=documents: k.verify(collateral=intel_collateral(**d)),  # type: ignore[arg-type]
                    Fails({f"{expected}.signature": check}))
    for cut, name in _tdx_truncations(k):
        yield _case(k, f"truncate/{cut}", lambda c=cut: k.verify(quote[:c]), malformed(f"tdx_quote.{name}"))
    lengths = [("signature-data-size", v.sig_data_size, len(quote), 4, malformed("tdx_quote.signature_data")),
               ("certification-size", v.certification + 2, 0xFFFFFF, 4,
                malformed("tdx_quote.signature_data.certification.data")),
               ("qe-auth-data-size", v.qe_auth_data - 2, 5000, 2, malformed("tdx_quote.qe_auth_data")),
               ("pck-certification-size", v.pck_certification + 2, 0xFFFFFF, 4,
                malformed("tdx_quote.pck_certification.data"))]
    if v.descriptor is not None:
        lengths += [(f"body-size-{size}", v.descriptor + 2, size, 4,
                     malformed("tdx_quote.body_descriptor.size", v.descriptor + 2,
                               f"body is 648 bytes, declares {size}"))
                    for size in (0, 584, 647, 649, 999, 0xFFFFFFFF)]
    for name, offset, value, size, expect in lengths:
        yield _case(k, f"length/{name}", lambda o=offset, n=value, s=size: k.verify(with_uint(quote, o, n, s)), expect)
    yield _case(k, "trailing/changed", lambda: k.verify(quote[:v.signed_end] + b"anything"), ACCEPTED)
    yield _case(k, "trailing/absent", lambda: k.verify(quote[:v.signed_end]), ACCEPTED)
    header = "tdx_quote.header"
    for name, offset, value, expect in [
        ("version/6", 0, 6, unsupported(f"{header}.version", 0, "TDX quote version 6 (supported: 4, 5)")),
        ("tee-type/sgx", 4, 0x00,
         unsupported(f"{header}.tee_type", 4, "quote TEE type 0x0 (SGX) (supported: 0x81, TDX)")),
        ("tee-type/0x7f", 4, 0x7F, unsupported(f"{header}.tee_type", 4, "quote TEE type 0x7f (supported: 0x81, TDX)")),
        ("key-type/p384", 2, 3, unsupported(f"{header}.attestation_key_type", 2,
                                            "TDX attestation key type 3 (ECDSA P-384) (supported: 2, ECDSA P-256)")),
        ("signing-key/certification-type-5", v.certification, 5,
         unsupported("tdx_quote.signature_data.certification.type", v.certification,
                     "TDX quote certification data type 5 (PCK certificate chain) (supported: 6, QE report "
                     "certification data)")),
        ("signing-key/pck-certification-type-4", v.pck_certification, 4,
         unsupported("tdx_quote.pck_certification.type", v.pck_certification,
                     "TDX PCK certification data type 4 (PCK leaf certificate)")),
    ] + [(f"body-type/{t}", v.descriptor, t,
          unsupported("tdx_quote.body_descriptor.type", v.descriptor, f"TDX quote v5 body type {t}{name} (supported: "
                      "2, TD report 1.0; 3, TD report 1.5)"))
         for t, name in ((1, " (SGX enclave report)"), (0, ""), (4, ""), (0xFFFF, "")) if v.descriptor is not None]:
        yield _case(k, f"unsupported/{name}", lambda o=offset, n=value: k.verify(with_uint(quote, o, n)), expect)
    yield _case(k, "unsupported/tee-type/sgx-before-version",
                lambda: k.verify(with_uint(with_uint(quote, 0, 3), 4, 0)),
                unsupported(f"{header}.tee_type", 4, "(SGX)"))
    yield _case(k, "chain/other-vendor", lambda: k.verify(root=amd_chain("amd_ask_ark_milan.pem")[1]),
                Fails({"pck_chain.root": PCK_CHAIN, "pck_ca.issuer": PCK_CHAIN,
                       "tcb_signing_chain.root": TCB_SIGNING_CHAIN, "tcb_signer.issuer": TCB_SIGNING_CHAIN}))
    yield _case(k, "chain/impostor-root", lambda: k.verify(root=_impostor_intel()),
                Fails({"pck_chain.root": PCK_CHAIN, "pck_ca.signature": PCK_CHAIN,
                       "tcb_signing_chain.root": TCB_SIGNING_CHAIN, "tcb_signer.signature": TCB_SIGNING_CHAIN,
                       "intel_root_crl.signature": PCK_CHAIN}))  # the root's CRL is signed by the real root
    yield _case(k, "chain/no-vendor-extensions", lambda: k.verify(with_pck_chain(quote, [ca, ca, root])),
                malformed("pck_leaf.sgx_extensions", None))
    expired, early = (datetime(2053, 7, 1, tzinfo=UTC), datetime(2018, 1, 1, tzinfo=UTC)) if k.version == 4 else \
        (datetime(2034, 1, 1, tzinfo=UTC), datetime(2023, 7, 1, tzinfo=UTC))
    yield _case(k, "time/expired", lambda: k.verify(at=expired),
                Fails({"pck_leaf.not_after": PCK_CHAIN, "pck_ca.not_after": PCK_CHAIN}, exact=False))
    yield _case(k, "time/not-yet-valid", lambda: k.verify(at=early),
                Fails({"pck_leaf.not_before": PCK_CHAIN}, exact=False))
    yield _case(k, "crl/missing", lambda: k.verify(collateral=intel_collateral(crls=())),
                Fails({"pck_leaf.revocation": PCK_CHAIN, "pck_ca.revocation": PCK_CHAIN,
                       "tcb_signer.revocation": TCB_SIGNING_CHAIN}))
    forged = [flipped(tdx_file(TDX_CRLS[0]), len(tdx_file(TDX_CRLS[0])) - 1), tdx_file(TDX_CRLS[1])]
    yield _case(k, "crl/forged", lambda: k.verify(collateral=intel_collateral(crls=forged)),
                Fails({"pck_ca_crl.signature": PCK_CHAIN}))
    pki = _fake_intel()
    yield _case(k, "crl/stale", _fake_tdx(k, crls=(pki.crl(pki.ca, next_update=datetime(2023, 6, 15, tzinfo=UTC)),
                                                   pki.crl(pki.root))),
                Fails({"pck_ca_crl.next_update": PCK_CHAIN}), control=_fake_tdx(k))
    if k.version == 4:
        yield _case(k, "crl/stale/real", lambda: k.verify(at=datetime(2023, 7, 10, tzinfo=UTC)),  # expired 07-08
                    Fails({"pck_ca_crl.next_update": PCK_CHAIN, "qe_identity.nextUpdate": "collateral freshness"}))
    yield _case(k, "crl/revoked/pck-leaf", _fake_tdx(k, crls=(pki.crl(pki.ca, revoked=(pki.leaf,)), pki.crl(pki.root))),
                Fails({"pck_leaf.revocation": PCK_CHAIN}), control=_fake_tdx(k))
    yield _case(k, "crl/revoked/pck-ca", _fake_tdx(k, crls=(pki.crl(pki.ca), pki.crl(pki.root, revoked=(pki.ca,)))),
                Fails({"pck_ca.revocation": PCK_CHAIN}), control=_fake_tdx(k))
    other = _real_tcb_info_for("00606a000000")
    yield _case(k, "collateral/other-platform", _fake_tdx(k, tcb_info=other), Fails({"tcb_info.fmspc": "TCB info"}),
                control=_fake_tdx(k))


@cache
def _impostor_intel() -> x509.Certificate:
    return impostor(intel_root())


def _real_tcb_info_for(fmspc: str) -> dict[str, object]:
    return {**real_tcb_info(), "fmspc": fmspc}


# -- SEV-SNP ------------------------------------------------------------------------------------------------------

REPORT_SIGNATURE = "report signature"


def _snp_bitflips(k: SnpKind) -> Iterator[tuple[str, int, int, Fails | Accepted]]:
    o, binding = SNP_OFFSETS, f"{k.key_kind.upper()} binding"
    signature = {"signature": REPORT_SIGNATURE}
    for name, offset, bit in [("header/version", o["version"], 0), ("header/guest-svn", o["guest_svn"], 0),
                              ("header/policy", o["policy"], 0), ("header/family-id", o["family_id"], 0),
                              ("header/vmpl", o["vmpl"], 1), ("body/report-data", o["report_data"], 0),
                              ("body/measurement", o["measurement"], 0),
                              ("body/measurement-last-byte", o["measurement"] + 47, 0),
                              ("body/host-data", o["host_data"], 0), ("body/launch-tcb", o["launch_tcb"], 0),
                              ("body/last-signed-byte", SIGNED_SIZE - 1, 0), ("signature/r", o["signature_r"], 0),
                              ("signature/s", o["signature_s"], 0), ("reserved/reserved0", o["reserved0"], 0),
                              ("reserved/reserved4", o["reserved4"], 0)]:
        yield name, offset, bit, Fails(signature)
    first = next(name for name, byte in SnpReport.parse(k.evidence).reported_tcb.layout.svns if byte == 0)
    yield "body/reported-tcb", o["reported_tcb"], 0, Fails({**signature, f"reported_tcb.{first}": binding})
    chip = {"chip_id": binding} if k.key_kind == "vcek" else {}  # a VLEK is no chip's: no chip ID to compare
    yield "body/chip-id", o["chip_id"], 0, Fails({**signature, **chip})
    yield "body/signing-key", o["signer_info"], 2, Fails({**signature, "signer_info.signing_key": binding})
    yield "reserved/signature-reserved", o["signature_reserved"] + 56, 0, ACCEPTED


def _forged_crl(issuer: x509.Certificate) -> x509.CertificateRevocationList:
    key = rsa.generate_private_key(65537, 2048)
    return (x509.CertificateRevocationListBuilder().issuer_name(issuer.subject)
            .last_update(datetime(2023, 6, 1, tzinfo=UTC)).next_update(datetime(2030, 1, 1, tzinfo=UTC))
            .sign(key, hashes.SHA384()))


def _other_kind(k: SnpKind) -> SnpKind:
    """A key of the other kind: a VLEK for a VCEK-signed report, a VCEK for a VLEK-signed one."""
    return SNP_VCEK if k.key_kind == "vlek" else SNP_VLEK


def _snp_cases(k: SnpKind) -> Iterator[Case]:
    report, name, issuer = k.evidence, k.key_kind, k.issuer
    chain_check, binding = f"{name.upper()} certificate chain", f"{name.upper()} binding"
    for variant, offset, bit, expect in _snp_bitflips(k):
        yield _case(k, f"bitflip/{variant}", lambda o=offset, b=bit: k.verify(flipped(report, o, b)), expect)
    ask, ark = k.chain
    yield _case(k, "bitflip/key-certificate-signature", lambda: k.verify(key=signature_flipped(k.key)),
                Fails({f"{name}.signature": chain_check}))
    yield _case(k, "bitflip/key-certificate-key", lambda: k.verify(key_der=key_flipped(k.key)), malformed(name, None))
    yield _case(k, "bitflip/intermediate-signature", lambda: k.verify(chain=(signature_flipped(ask), ark)),
                Fails({f"{issuer}.signature": chain_check}))
    yield _case(k, "bitflip/root-signature", lambda: k.verify(chain=(ask, signature_flipped(ark))),
                Fails({"ark.signature": chain_check}))
    for cut, where, offset in [(0, "version", 0), (4, "guest_svn", 4), (0x50, "report_data", 0x50),
                               (0xA0, "measurement", 0x90), (0x1A0, "chip_id", 0x1A0),
                               (SIGNED_SIZE, "signature_r", SIGNED_SIZE),
                               (REPORT_SIZE - 1, "signature_reserved", SIGNED_SIZE + 144)]:
        yield _case(k, f"truncate/{cut}", lambda c=cut: k.verify(report[:c]), malformed(f"snp_report.{where}", offset))
    yield _case(k, "trailing/one-byte", lambda: k.verify(report + b"\0"),
                malformed("snp_report", REPORT_SIZE, "1 bytes after the 1184-byte report"))
    version3 = with_uint(report, 0, 3, 4)  # a version 3 report says its CPU family (version 2 leaves it reserved)
    for variant, data, expect in [
        *((f"version/{n}", with_uint(report, 0, n, 4),
           unsupported("snp_report.version", 0, f"SEV-SNP report version {n} (supported: 2 to 5)"))
          for n in (0, 1, 6, 0xFFFFFFFF)),
        ("tee-type/cpu-family-0x17", version3[:0x188] + bytes([0x17, 0x01]) + version3[0x18A:],
         unsupported("snp_report.cpuid_fam_id", 0x188, "SEV-SNP report from CPU family 0x17 model 0x01")),
        ("tee-type/cpu-model-0x19-0x21", version3[:0x188] + bytes([0x19, 0x21]) + version3[0x18A:],
         unsupported("snp_report.cpuid_mod_id", 0x189, "CPU family 0x19 model 0x21")),  # a desktop Zen 3: no SNP
        ("key-type/signature-algo-3", flipped(report, 0x34, 1),
         unsupported("snp_report.signature_algo", 0x34,
                     "SEV-SNP signature algorithm 3 (supported: 1, ECDSA P-384 with SHA-384)")),
        *((f"signing-key/{n}", with_uint(report, 0x48, n << 2, 4),
           unsupported("snp_report.signer_info.signing_key", 0x48,
                       f"SEV-SNP report signed by signing key {n}{name} (supported: 0, a VCEK, and 1, a VLEK)"))
          for n, name in ((7, " (none)"), (3, ""), (2, ""))),
    ]:
        yield _case(k, f"unsupported/{variant}", lambda d=data: k.verify(d), expect)
    yield _case(k, "unsupported/product", lambda: _venice(k),
                unsupported(f"{name}.productName", None,
                            "SEV-SNP product 'Venice-A0' (supported: Milan, Genoa and Turin)"),
                control=lambda: FakeAmd.instance(k).verify())
    yield _case(k, "chain/other-vendor", lambda: k.verify(chain=(ask, intel_root())),
                Fails({f"{issuer}.issuer": chain_check, "ark.signature_algorithm": chain_check}))
    yield _case(k, "chain/impostor-root", lambda: k.verify(chain=(ask, impostor(ark))),
                Fails({f"{issuer}.signature": chain_check}))
    other_product = amd_chain(k.other_product)
    yield _case(k, "chain/other-product/chain", lambda: k.verify(chain=other_product),
                Fails({f"{name}.issuer": chain_check}))
    yield _case(k, "chain/other-product/ark", lambda: k.verify(chain=(ask, other_product[1])),
                Fails({f"{issuer}.issuer": chain_check}))
    other = _other_kind(k)
    other_binding = f"{other.key_kind.upper()} binding"
    yield _case(k, "chain/other-key-kind/key-and-chain", lambda: k.verify(key=other.key, chain=other.chain),
                Fails({"signature": REPORT_SIGNATURE, "signer_info.signing_key": other_binding,
                       "reported_tcb.snp": other_binding}, exact=False))  # the other key's SPLs differ too
    yield _case(k, "chain/other-key-kind/issuer", lambda: k.verify(chain=other.chain),
                Fails({f"{name}.issuer": chain_check}))
    yield _case(k, "chain/no-vendor-extensions", lambda: k.verify(key=ask),
                malformed(f"{name}.extensions.1.3.6.1.4.1.3704.1.3.1", None))
    expired, early = {"snp-vcek": (datetime(2030, 1, 1, tzinfo=UTC), datetime(2021, 1, 1, tzinfo=UTC)),
                      "snp-vlek": (datetime(2026, 1, 1, tzinfo=UTC), datetime(2024, 12, 1, tzinfo=UTC)),
                      "snp-turin": (datetime(2033, 1, 1, tzinfo=UTC), datetime(2025, 7, 1, tzinfo=UTC)),
                      "snp-genoa": (datetime(2032, 6, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC))}[k.name]
    yield _case(k, "time/expired", lambda: k.verify(at=expired), Fails({f"{name}.not_after": chain_check}))
    yield _case(k, "time/not-yet-valid", lambda: k.verify(at=early), Fails({f"{name}.not_before": chain_check}))
    amd = FakeAmd.instance(k)
    with_crl = lambda: amd.verify(crls=(amd.crl(),))  # noqa: E731
    yield _case(k, "crl/missing", lambda: amd.verify(crls=()), ACCEPTED, control=with_crl)
    yield _case(k, "crl/forged", lambda: k.verify(crls=(_forged_crl(ark),)), Fails({"ark_crl.signature": chain_check}))
    yield _case(k, "crl/stale", lambda: amd.verify(crls=(amd.crl(next_update=datetime(2023, 6, 15, tzinfo=UTC)),)),
                Fails({"ark_crl.next_update": chain_check}), control=with_crl)
    yield _case(k, "crl/revoked", lambda: amd.verify(crls=(amd.crl(revoked=(amd.ask,)),)),
                Fails({"ask.revocation" if name == "vcek" else "asvk.revocation": chain_check}), control=with_crl)
    del binding


def _venice(k: SnpKind) -> Verification:
    amd = FakeAmd.instance(k)
    venice = amd._cert(f"SEV-{k.key_kind.upper()}", amd.vcek_key, (amd.ask, amd.ask_key), ca=False,
                     extra=amd.amd_extensions(**{"1.3.6.1.4.1.3704.1.2": b"\x16\x09Venice-A0"}))
    return amd.verify(key=venice)


CASES = [case for kind in KINDS
         for case in (_tdx_cases(kind) if isinstance(kind, TdxKind) else _snp_cases(kind))]


def test_case_ids_are_unique():
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_mutation_is_refused(case: Case):
    control = case.control()  # the unmutated input through the same call: no error
    expect = case.expect
    if isinstance(expect, Refused):
        with pytest.raises(AttestationError) as caught:
            case.run()
        assert type(caught.value) is expect.error, caught.value
        error = caught.value
        assert isinstance(error, EvidenceFormatError | UnsupportedEvidence)
        assert error.field == expect.field, error
        if expect.offset != ANY_OFFSET:
            assert error.offset == expect.offset, error
        else:
            assert error.offset is not None, error
        assert expect.words in str(error)
        return
    result = case.run()
    if isinstance(expect, Accepted):
        assert fields(result) == fields(control)
        assert result.signatures_valid == control.signatures_valid
        return
    added = fields(result) - fields(control)
    assert set(expect.checks) <= added, added
    if expect.exact:
        assert added == set(expect.checks)
    for name, check in expect.checks.items():
        assert name in _in_check(result, check), (name, check)
        assert name not in _in_check(control, check)
    assert not result.ok


def _in_check(result: Verification, name: str) -> set[str]:
    """The fields of the named check's mismatches; none where the result has no such check (a VLEK binding when a
    VCEK was given)."""
    return {m.field for check in result.checks if check.name == name for m in check.mismatches}


# -- TCB status, as each kind reports it ------------------------------------------------------------------------------

TDX_KINDS = [kind for kind in KINDS if isinstance(kind, TdxKind)]
SNP_KINDS = [kind for kind in KINDS if isinstance(kind, SnpKind)]


@pytest.mark.parametrize("kind", TDX_KINDS, ids=[kind.name for kind in TDX_KINDS])
def test_tdx_tcb_status_of_the_real_quote(kind: TdxKind):
    """Against the only TCB info shipped (FMSPC 50806f000000, 2023) neither real platform meets a level: no status,
    and the TCB level check says which components fall short; the QE meets its identity (UpToDate)."""
    result = kind.verify()
    assert result.tcb.status is None
    assert result.tcb.qe_status == "UpToDate"
    level = {m.field: m for m in result.check("TCB level").mismatches}
    assert "below every level" in level["tcb.level"].actual
    assert "tdx[2] 4 < 5" in level["tcb.level"].actual  # TEE_TCB_SVN[2] is 4 in both quotes
    if kind.version == 4:  # a TDX 1.0 module: its status is the tcbInfo's tdxModule
        assert result.tcb.module_status == "UpToDate" and set(level) == {"tcb.level"}
    else:  # TEE_TCB_SVN[1] = 1: a TDX 1.5 module, whose identity the 2023 TCB info does not list
        assert result.tcb.module_status is None
        assert set(level) == {"tcb.level", "tdx_module.identity"}
    assert result.signatures_valid == (kind.version == 4)  # v5: the 2023 CRLs are stale at 2026 (chain check)


def _tcb_info_met_at(level: int) -> dict[str, object]:
    """The real TCB info with level `level` lowered to the quotes' SVNs, and TDX module 1.5 identities (TDX_01,
    SVN 11 UpToDate) for the v5 quote's module."""
    info = tcb_info_with({level: {"sgx": QUOTE_SGX_SVNS, "tdx": QUOTE_TDX_SVNS}})  # the test PKI's PCK has v4's SVNs
    info["tdxModuleIdentities"] = [{"id": "TDX_01", "mrsigner": "00" * 48, "attributes": "00" * 8,
                                    "attributesMask": "FF" * 8,
                                    "tcbLevels": [{"tcb": {"isvsvn": 11}, "tcbDate": "2023-06-01T00:00:00Z",
                                                   "tcbStatus": "UpToDate"}]}]
    return info


@pytest.mark.parametrize("kind", TDX_KINDS, ids=[kind.name for kind in TDX_KINDS])
def test_tdx_tcb_status_and_advisories_are_reported(kind: TdxKind):
    """The kind's quote under the test PKI, with a TCB info whose levels its platform meets: the top level gives
    UpToDate; the second gives OutOfDate with its advisories, refused by default and noted when accepted."""
    up_to_date = _fake_tdx(kind, tcb_info=_tcb_info_met_at(0))()
    assert isinstance(up_to_date, type(kind.verify()))
    assert (up_to_date.tcb.status, up_to_date.tcb.module_status, up_to_date.tcb.qe_status) == \
        ("UpToDate", "UpToDate", "UpToDate")
    assert up_to_date.ok
    out_of_date = _fake_tdx(kind, tcb_info=_tcb_info_met_at(1))()
    assert out_of_date.tcb.status == "OutOfDate"
    assert out_of_date.tcb.advisory_ids[:2] == ("INTEL-SA-00106", "INTEL-SA-00115")
    (status,) = out_of_date.check("TCB level").mismatches
    assert (status.field, status.expected) == ("tcb.status", "one of UpToDate")
    assert status.actual.startswith("OutOfDate (INTEL-SA-00106, INTEL-SA-00115")
    assert fields(out_of_date) == {"tcb.status"} and out_of_date.signatures_valid
    pki = _fake_intel()
    accepted = kind.verify(_fake_quote(kind), root=pki.root, collateral=pki.collateral(tcb_info=_tcb_info_met_at(1)),
                           at=FAKE_AT, policy=TdxPolicy(accepted_tcb_statuses=frozenset({"UpToDate", "OutOfDate"})))
    assert accepted.ok
    assert any(note.startswith("TCB status OutOfDate (INTEL-SA-00106") for note in accepted.check("TCB level").notes)


def _snp_svn_higher(tcb: TcbVersion) -> TcbVersion:
    """The same TCB with an SNP firmware SVN one higher, in its product's layout."""
    return TcbVersion.of(tcb.layout, **{**tcb.components(), "snp": tcb.snp + 1})


@pytest.mark.parametrize("kind", SNP_KINDS, ids=[kind.name for kind in SNP_KINDS])
def test_snp_tcb_is_reported_against_the_keys_spls(kind: SnpKind):
    """SEV-SNP has no TCB status (AMD publishes no TCB levels to rank a platform by): what the verification reports
    is the report's TCB_VERSIONs and the SPLs its key was issued for, which the binding check compares, and the
    caller's minimum (SnpPolicy.minimum_tcb) in the policy check."""
    result = kind.verify()
    reported = result.report.reported_tcb
    assert reported.raw == {"snp-vcek": 0x4405000000000002, "snp-vlek": 0xD918000000000004,  # SOURCES.md
                            "snp-turin": 0x4700000002000100, "snp-genoa": 0x541700000000000A}[kind.name]
    assert result.key.tcb.components() == reported.components()
    assert result.check(f"{kind.key_kind.upper()} binding").passed
    assert {"current_tcb", "committed_tcb", "launch_tcb"} <= set(SNP_OFFSETS)
    for name in ("current_tcb", "committed_tcb", "launch_tcb"):  # the platform's own, reported as read
        assert getattr(result.report, name).snp == reported.snp
    above = _snp_svn_higher(reported)
    assert above.snp == reported.snp + 1
    demanding = kind.verify(policy=replace(kind.policy, minimum_tcb=above))
    (minimum,) = demanding.check("guest policy").mismatches
    assert (minimum.field, minimum.expected, minimum.actual) == \
        ("reported_tcb.snp", f"at least {reported.snp + 1}", str(reported.snp))
    assert demanding.signatures_valid


@pytest.mark.parametrize("kind", SNP_KINDS, ids=[kind.name for kind in SNP_KINDS])
def test_snp_report_of_another_tcb_than_its_keys(kind: SnpKind):
    """A report (re-signed by the test PKI) whose REPORTED_TCB is not the TCB its key was issued for."""
    amd = FakeAmd.instance(kind)
    reported = SnpReport.parse(kind.evidence).reported_tcb
    assert amd.verify().ok
    result = amd.verify(amd.report(reported_tcb=_snp_svn_higher(reported)))
    (tcb,) = result.mismatches
    assert (tcb.field, tcb.expected, tcb.actual) == \
        ("reported_tcb.snp", f"{reported.snp} (the {kind.key_kind.upper()}'s SPL)", str(reported.snp + 1))
    assert not result.check(f"{kind.key_kind.upper()} binding").passed
