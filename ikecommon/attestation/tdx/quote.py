"""The Intel TDX quote, versions 4 and 5, as frozen dataclasses that decode from and encode to the exact bytes.

Layout (Intel TDX DCAP Quoting Library API, appendix "Quote Format", all integers little-endian):

    header            48 bytes                 signed by the attestation key
    version 4: TD report body 584 bytes        signed by the attestation key
    version 5: body descriptor                 signed by the attestation key, all of it:
        body type (u16): 2 = TD report 1.0 (584 bytes), 3 = TD report 1.5 (648 bytes: the 1.0 fields, then
                         TEE_TCB_SVN2 (16) and MRSERVICETD (48)); 1 = SGX enclave report, not handled
        body size (u32): must be the type's size
        body
    signature data length (u32), then signature data:
        quote signature (ECDSA P-256 r||s, 64) and attestation key (P-256 x||y, 64)
        certification data type 6 (u16), size (u32):
            QE report (SGX report body, 384)   signed by the PCK key
            QE report signature (64)
            QE auth data: size (u16), bytes
            certification data type 5 (u16), size (u32): the PCK certificate chain, PEM

Reserved fields are kept, so encoding a parsed quote gives back the bytes that were signed. Bytes after the
signature data are not signed; they are kept as `trailing` (go-tdx-guest's sample quote carries 39 of them).
A well-formed quote of another TEE type (SGX), version, v5 body type, attestation key type or certification data
type is an UnsupportedEvidence; a truncated or inconsistent one (a v5 body size that is not its type's) an
EvidenceFormatError. go-tdx-guest's abi package reads v5 the same way (layout and sizes), and its verifier signs
header + descriptor + body.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

from ..wire import Reader, check_sizes, le

QUOTE_VERSION = 4
QUOTE_VERSION_5 = 5
SUPPORTED_VERSIONS = (QUOTE_VERSION, QUOTE_VERSION_5)
# Quote v5 body types (DCAP Quoting Library API, "Quote Body Descriptor")
BODY_SGX_ENCLAVE_REPORT, BODY_TD_REPORT_10, BODY_TD_REPORT_15 = 1, 2, 3
_BODY_TYPES = {1: "SGX enclave report", 2: "TD report 1.0", 3: "TD report 1.5"}
ATTESTATION_KEY_ECDSA_P256, ATTESTATION_KEY_ECDSA_P384 = 2, 3
TEE_TYPE_SGX, TEE_TYPE_TDX = 0x00, 0x81
CERTIFICATION_QE_REPORT = 6
CERTIFICATION_PCK_CHAIN = 5
# Intel's certification data types (DCAP Quoting Library API, "Certification Data"), for messages
_CERTIFICATION_TYPES = {1: "PPID in clear text", 2: "PPID RSA-2048 encrypted", 3: "PPID RSA-3072 encrypted",
                        4: "PCK leaf certificate", 5: "PCK certificate chain", 6: "QE report certification data",
                        7: "platform manifest"}
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")


@dataclass(frozen=True)
class QuoteHeader:
    version: int
    attestation_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes

    SIZE: ClassVar[int] = 48

    def __post_init__(self) -> None:
        check_sizes("header", {"qe_vendor_id": (self.qe_vendor_id, 16), "user_data": (self.user_data, 20)})

    @classmethod
    def read(cls, r: Reader) -> QuoteHeader:
        return cls(r.uint(2, "header.version"), r.uint(2, "header.attestation_key_type"),
                   r.uint(4, "header.tee_type"), r.uint(2, "header.qe_svn"), r.uint(2, "header.pce_svn"),
                   r.take(16, "header.qe_vendor_id"), r.take(20, "header.user_data"))

    def to_bytes(self) -> bytes:
        return (le(self.version, 2) + le(self.attestation_key_type, 2) + le(self.tee_type, 4) + le(self.qe_svn, 2)
                + le(self.pce_svn, 2) + self.qe_vendor_id + self.user_data)


@dataclass(frozen=True)
class TdReportBody:
    """The TD's measurements and attributes, as the TDX module reported them (TD quote body v4)."""

    tee_tcb_svn: bytes       # 16: TDX module SVN (minor, major), late microcode patch, ...
    mr_seam: bytes           # 48: TDX module measurement
    mr_signer_seam: bytes    # 48: zero for Intel's module
    seam_attributes: bytes   # 8
    td_attributes: bytes     # 8: bit 0 is DEBUG
    xfam: bytes              # 8
    mr_td: bytes             # 48: the initial TD image
    mr_config_id: bytes      # 48
    mr_owner: bytes          # 48
    mr_owner_config: bytes   # 48
    rtmrs: tuple[bytes, bytes, bytes, bytes]  # 48 each: runtime-extended measurements
    report_data: bytes       # 64: chosen by the TD

    SIZE: ClassVar[int] = 584

    def __post_init__(self) -> None:
        check_sizes("body", {
            "tee_tcb_svn": (self.tee_tcb_svn, 16), "mr_seam": (self.mr_seam, 48),
            "mr_signer_seam": (self.mr_signer_seam, 48), "seam_attributes": (self.seam_attributes, 8),
            "td_attributes": (self.td_attributes, 8), "xfam": (self.xfam, 8), "mr_td": (self.mr_td, 48),
            "mr_config_id": (self.mr_config_id, 48), "mr_owner": (self.mr_owner, 48),
            "mr_owner_config": (self.mr_owner_config, 48), "report_data": (self.report_data, 64),
            **{f"rtmr{i}": (rtmr, 48) for i, rtmr in enumerate(self.rtmrs)}})

    @classmethod
    def read(cls, r: Reader) -> TdReportBody:
        def take(size: int, name: str) -> bytes:
            return r.take(size, f"body.{name}")

        return cls(
            tee_tcb_svn=take(16, "tee_tcb_svn"), mr_seam=take(48, "mr_seam"),
            mr_signer_seam=take(48, "mr_signer_seam"), seam_attributes=take(8, "seam_attributes"),
            td_attributes=take(8, "td_attributes"), xfam=take(8, "xfam"), mr_td=take(48, "mr_td"),
            mr_config_id=take(48, "mr_config_id"), mr_owner=take(48, "mr_owner"),
            mr_owner_config=take(48, "mr_owner_config"),
            rtmrs=(take(48, "rtmr0"), take(48, "rtmr1"), take(48, "rtmr2"), take(48, "rtmr3")),
            report_data=take(64, "report_data"))

    def to_bytes(self) -> bytes:
        return b"".join((self.tee_tcb_svn, self.mr_seam, self.mr_signer_seam, self.seam_attributes,
                         self.td_attributes, self.xfam, self.mr_td, self.mr_config_id, self.mr_owner,
                         self.mr_owner_config, *self.rtmrs, self.report_data))


@dataclass(frozen=True)
class TdReportBody15(TdReportBody):
    """A TD report 1.5 body (quote v5, body type 3): the 1.0 fields, then two the TDX module 1.5 added."""

    tee_tcb_svn2: bytes      # 16: the TDX module's TCB SVN after a TD-preserving update (else as TEE_TCB_SVN)
    mr_service_td: bytes     # 48: the service TDs bound to this TD (zero when none)

    SIZE: ClassVar[int] = 648

    def __post_init__(self) -> None:
        super().__post_init__()
        check_sizes("body", {"tee_tcb_svn2": (self.tee_tcb_svn2, 16), "mr_service_td": (self.mr_service_td, 48)})

    @classmethod
    def read(cls, r: Reader) -> TdReportBody15:
        base = TdReportBody.read(r)
        common: dict[str, Any] = {f.name: getattr(base, f.name) for f in fields(base)}
        return cls(**common,
                   tee_tcb_svn2=r.take(16, "body.tee_tcb_svn2"), mr_service_td=r.take(48, "body.mr_service_td"))

    def to_bytes(self) -> bytes:
        return super().to_bytes() + self.tee_tcb_svn2 + self.mr_service_td


@dataclass(frozen=True)
class EnclaveReport:
    """An SGX report body: here, the Quoting Enclave's own report, which the PCK key signs."""

    cpu_svn: bytes
    misc_select: int
    reserved1: bytes
    attributes: bytes
    mr_enclave: bytes
    reserved2: bytes
    mr_signer: bytes
    reserved3: bytes
    isv_prod_id: int
    isv_svn: int
    reserved4: bytes
    report_data: bytes

    SIZE: ClassVar[int] = 384

    def __post_init__(self) -> None:
        check_sizes("qe_report", {
            "cpu_svn": (self.cpu_svn, 16), "reserved1": (self.reserved1, 28), "attributes": (self.attributes, 16),
            "mr_enclave": (self.mr_enclave, 32), "reserved2": (self.reserved2, 32),
            "mr_signer": (self.mr_signer, 32), "reserved3": (self.reserved3, 96), "reserved4": (self.reserved4, 60),
            "report_data": (self.report_data, 64)})

    @classmethod
    def read(cls, r: Reader) -> EnclaveReport:
        return cls(r.take(16, "qe_report.cpu_svn"), r.uint(4, "qe_report.misc_select"),
                   r.take(28, "qe_report.reserved1"), r.take(16, "qe_report.attributes"),
                   r.take(32, "qe_report.mr_enclave"), r.take(32, "qe_report.reserved2"),
                   r.take(32, "qe_report.mr_signer"), r.take(96, "qe_report.reserved3"),
                   r.uint(2, "qe_report.isv_prod_id"), r.uint(2, "qe_report.isv_svn"),
                   r.take(60, "qe_report.reserved4"), r.take(64, "qe_report.report_data"))

    def to_bytes(self) -> bytes:
        return (self.cpu_svn + le(self.misc_select, 4) + self.reserved1 + self.attributes + self.mr_enclave
                + self.reserved2 + self.mr_signer + self.reserved3 + le(self.isv_prod_id, 2) + le(self.isv_svn, 2)
                + self.reserved4 + self.report_data)


@dataclass(frozen=True)
class QeCertification:
    """Certification data type 6: the QE report that vouches for the attestation key, and the PCK chain."""

    qe_report: EnclaveReport
    qe_report_signature: bytes  # ECDSA P-256 r||s by the PCK key
    qe_auth_data: bytes
    pck_chain_pem: bytes        # certification data type 5

    def __post_init__(self) -> None:
        check_sizes("qe_certification", {"qe_report_signature": (self.qe_report_signature, 64)})

    @classmethod
    def read(cls, r: Reader) -> QeCertification:
        qe_report = EnclaveReport.read(r)
        signature = r.take(64, "qe_report_signature")
        auth_data = r.take(r.uint(2, "qe_auth_data.size"), "qe_auth_data")
        kind_at = r.offset
        kind = r.uint(2, "pck_certification.type")
        if kind != CERTIFICATION_PCK_CHAIN:
            raise r.unsupported("pck_certification.type", f"TDX PCK certification data type {kind}"
                                f"{_certification_name(kind)}", "5, a PEM PCK chain: the only type verified offline",
                                kind_at)
        inner = r.sub(r.uint(4, "pck_certification.size"), "pck_certification.data")
        return cls(qe_report, signature, auth_data, inner.rest())

    def to_bytes(self) -> bytes:
        return (self.qe_report.to_bytes() + self.qe_report_signature + le(len(self.qe_auth_data), 2)
                + self.qe_auth_data + le(CERTIFICATION_PCK_CHAIN, 2) + le(len(self.pck_chain_pem), 4)
                + self.pck_chain_pem)


@dataclass(frozen=True)
class QuoteSignatureData:
    signature: bytes        # ECDSA P-256 r||s over header + body
    attestation_key: bytes  # P-256 x||y
    certification: QeCertification

    def __post_init__(self) -> None:
        check_sizes("signature_data", {"signature": (self.signature, 64),
                                       "attestation_key": (self.attestation_key, 64)})

    @classmethod
    def read(cls, r: Reader) -> QuoteSignatureData:
        signature = r.take(64, "signature_data.signature")
        key = r.take(64, "signature_data.attestation_key")
        kind_at = r.offset
        kind = r.uint(2, "signature_data.certification.type")
        if kind != CERTIFICATION_QE_REPORT:
            raise r.unsupported("signature_data.certification.type", f"TDX quote certification data type {kind}"
                                f"{_certification_name(kind)}", "6, QE report certification data", kind_at)
        inner = r.sub(r.uint(4, "signature_data.certification.size"), "signature_data.certification.data")
        certification = QeCertification.read(inner)
        inner.done("signature_data.certification.data")
        return cls(signature, key, certification)

    def to_bytes(self) -> bytes:
        certification = self.certification.to_bytes()
        return (self.signature + self.attestation_key + le(CERTIFICATION_QE_REPORT, 2)
                + le(len(certification), 4) + certification)


@dataclass(frozen=True)
class TdxQuote:
    header: QuoteHeader
    body: TdReportBody      # a TdReportBody15 for a v5 quote of body type 3
    signature_data: QuoteSignatureData
    trailing: bytes = b""   # after the signature data: not signed, not used
    body_type: int | None = None  # v5 only: 2 (TD report 1.0) or 3 (TD report 1.5); None for v4

    @classmethod
    def parse(cls, data: bytes) -> TdxQuote:
        r = Reader(data, "tdx_quote")
        header = QuoteHeader.read(r)
        if header.tee_type != TEE_TYPE_TDX:  # first: an SGX quote is one, whatever its version says
            raise r.unsupported("header.tee_type", f"quote TEE type 0x{header.tee_type:x}"
                                f"{' (SGX)' if header.tee_type == TEE_TYPE_SGX else ''}", "0x81, TDX", 4)
        if header.version not in SUPPORTED_VERSIONS:
            raise r.unsupported("header.version", f"TDX quote version {header.version}",
                                ", ".join(map(str, SUPPORTED_VERSIONS)), 0)
        if header.attestation_key_type != ATTESTATION_KEY_ECDSA_P256:
            name = " (ECDSA P-384)" if header.attestation_key_type == ATTESTATION_KEY_ECDSA_P384 else ""
            raise r.unsupported("header.attestation_key_type", f"TDX attestation key type "
                                f"{header.attestation_key_type}{name}", "2, ECDSA P-256", 2)
        body_type = None
        if header.version == QUOTE_VERSION:
            body = TdReportBody.read(r)
        else:
            body_type, body = _read_v5_body(r)
        signature_reader = r.sub(r.uint(4, "signature_data.size"), "signature_data")
        signature_data = QuoteSignatureData.read(signature_reader)
        signature_reader.done("signature_data")
        return cls(header, body, signature_data, r.rest(), body_type)

    @property
    def is_td_report_15(self) -> bool:
        return isinstance(self.body, TdReportBody15)

    @property
    def signed_bytes(self) -> bytes:
        """What the attestation key signed: header and body; for v5 header, body descriptor and body."""
        if self.body_type is None:
            return self.header.to_bytes() + self.body.to_bytes()
        body = self.body.to_bytes()
        return self.header.to_bytes() + le(self.body_type, 2) + le(len(body), 4) + body

    def to_bytes(self) -> bytes:
        signature_data = self.signature_data.to_bytes()
        return self.signed_bytes + le(len(signature_data), 4) + signature_data + self.trailing


def _read_v5_body(r: Reader) -> tuple[int, TdReportBody]:
    """The v5 body descriptor: type, size, then a body of that type (and exactly that type's size)."""
    type_at = r.offset
    body_type = r.uint(2, "body_descriptor.type")
    bodies: dict[int, type[TdReportBody]] = {BODY_TD_REPORT_10: TdReportBody, BODY_TD_REPORT_15: TdReportBody15}
    body_class = bodies.get(body_type)
    if body_class is None:
        name = _BODY_TYPES.get(body_type)
        raise r.unsupported("body_descriptor.type", f"TDX quote v5 body type {body_type}"
                            f"{f' ({name})' if name else ''}", "2, TD report 1.0; 3, TD report 1.5", type_at)
    size_at = r.offset
    size = r.uint(4, "body_descriptor.size")
    if size != body_class.SIZE:
        raise r.fail("body_descriptor.size", f"a {_BODY_TYPES[body_type]} body is {body_class.SIZE} bytes, "
                     f"declares {size}", size_at)
    return body_type, body_class.read(r)


def _certification_name(kind: int) -> str:
    name = _CERTIFICATION_TYPES.get(kind)
    return f" ({name})" if name else ""
