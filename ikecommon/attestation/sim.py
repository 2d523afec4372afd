"""The `sim` evidence type: a report shaped like the real ones, signed by a simulated root. NOT SECURE.

It exists so that tests, the lab and demos run the whole attestation path (nonce, key binding, envelope,
measurement spec, pinning) on machines without TDX or SEV-SNP. It proves nothing about what runs: the root's private
key is derived from a public string (`sim_root_key`), so anyone can make sim evidence with any measurements. A
client must opt in to the sim root explicitly (`TrustAnchors.simulated()`); nothing trusts it by default.

The report, integers little-endian like the vendors' reports:

    offset  size       field
    0       8          magic "EIKE-SIM"
    8       2          version (1)
    10      2          register count n (1..16)
    12      64         report data
    76      48 * n     registers 0..n-1 (SHA-384-sized, like MRTD, RTMRs and MEASUREMENT)
    76+48n  64         signature: ECDSA P-256 with SHA-256 by the sim root over bytes 0..76+48n, r then s,
                       32 bytes each, big-endian (Intel's encoding)

The root certificate ships as `data/sim-root-NOT-SECURE.pem`; `build_sim_root_certificate` makes it again, byte for
byte (deterministic ECDSA), which a test checks.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from importlib import resources

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from . import ecdsa
from .certs import pem_chain
from .errors import EvidenceFormatError, Mismatch
from .outcome import Check, CheckKind, Verification
from .times import aware, iso
from .wire import Reader, le

SIM_ROOT_NAME = "enclave-ike SIMULATED attestation root - NOT SECURE"
_SIM_ROOT_SEED = b"enclave-ike SIMULATED attestation root - NOT SECURE - this private key is public\0"
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
SIM_ROOT_FILE = "data/sim-root-NOT-SECURE.pem"

MAGIC = b"EIKE-SIM"
VERSION = 1
REGISTER_SIZE = 48
MAX_REGISTERS = 16
REPORT_DATA_SIZE = 64
SIGNATURE_SIZE = 64
HEADER_SIZE = 8 + 2 + 2 + REPORT_DATA_SIZE

# What the sim and software enclaves report when not told otherwise: one register naming the simulation.
DEFAULT_REGISTERS = (hashlib.sha384(b"enclave-ike simulated enclave v1\0").digest(),)


def sim_root_key() -> ec.EllipticCurvePrivateKey:
    """The sim root's private key. Public by construction: a hash of a published string, reduced into P-256's
    scalar range. Whoever holds this module can sign sim evidence, which is the point: it is a simulator."""
    scalar = int.from_bytes(hashlib.sha512(_SIM_ROOT_SEED).digest(), "big") % (_P256_ORDER - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP256R1())


def build_sim_root_certificate() -> x509.Certificate:
    """The self-signed sim root certificate, reproducibly: fixed names, serial and validity, RFC 6979 signature."""
    key = sim_root_key()
    name = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, SIM_ROOT_NAME),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "enclave-ike"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "simulation only - its private key is public"),
    ])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime(2025, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC))  # RFC 5280: no defined expiry
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256(), ecdsa_deterministic=True)
    )


@cache
def sim_root_certificate() -> x509.Certificate:
    """The sim root as shipped with the project."""
    pem = resources.files(__package__).joinpath(SIM_ROOT_FILE).read_bytes()
    return pem_chain(pem, "sim_root")[0]


@dataclass(frozen=True)
class SimReport:
    report_data: bytes
    registers: tuple[bytes, ...]
    signature: bytes = field(repr=False)
    version: int = VERSION

    @classmethod
    def decode(cls, data: bytes) -> SimReport:
        r = Reader(data, "sim_report")
        magic = r.take(8, "magic")
        if magic != MAGIC:
            raise r.fail("magic", f"expected {MAGIC!r}, got {magic!r}", 0)
        version = r.uint(2, "version")
        if version != VERSION:
            raise r.unsupported("version", f"sim report version {version}", str(VERSION), 8)
        count = r.uint(2, "register_count")
        if not 1 <= count <= MAX_REGISTERS:
            raise r.fail("register_count", f"must be 1 to {MAX_REGISTERS}, got {count}", 10)
        report_data = r.take(REPORT_DATA_SIZE, "report_data")
        registers = tuple(r.take(REGISTER_SIZE, f"registers[{index}]") for index in range(count))
        signature = r.take(SIGNATURE_SIZE, "signature")
        r.done("signature")
        return cls(report_data, registers, signature, version)

    @property
    def signed_bytes(self) -> bytes:
        _check_shape(self.report_data, self.registers)
        return MAGIC + le(self.version, 2) + le(len(self.registers), 2) + self.report_data + b"".join(self.registers)

    def encode(self) -> bytes:
        if len(self.signature) != SIGNATURE_SIZE:
            raise EvidenceFormatError("sim_report.signature", None, f"must be {SIGNATURE_SIZE} bytes")
        return self.signed_bytes + self.signature


def _check_shape(report_data: bytes, registers: tuple[bytes, ...]) -> None:
    if len(report_data) != REPORT_DATA_SIZE:
        raise EvidenceFormatError("sim_report.report_data", None, f"must be {REPORT_DATA_SIZE} bytes")
    if not 1 <= len(registers) <= MAX_REGISTERS:
        raise EvidenceFormatError("sim_report.register_count", None, f"must be 1 to {MAX_REGISTERS}")
    for index, register in enumerate(registers):
        if len(register) != REGISTER_SIZE:
            raise EvidenceFormatError(f"sim_report.registers[{index}]", None, f"must be {REGISTER_SIZE} bytes")


def make_sim_report(report_data: bytes, registers: tuple[bytes, ...] = DEFAULT_REGISTERS,
                    key: ec.EllipticCurvePrivateKey | None = None) -> SimReport:
    """A sim report signed by `key` (the sim root unless a test passes another key)."""
    unsigned = SimReport(report_data, tuple(registers), bytes(SIGNATURE_SIZE))
    der = (key or sim_root_key()).sign(unsigned.signed_bytes, ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return SimReport(report_data, tuple(registers), r.to_bytes(32, "big") + s.to_bytes(32, "big"))


@dataclass(frozen=True)
class SimVerification(Verification):
    report: SimReport = field(repr=False)

    @property
    def report_data(self) -> bytes:
        return self.report.report_data

    @property
    def registers(self) -> tuple[bytes, ...]:
        return self.report.registers


def verify_sim_report(evidence: bytes | SimReport, *, root: x509.Certificate, at: datetime) -> SimVerification:
    """Every check on a sim report; raises only EvidenceFormatError (the report does not parse) and
    UnsupportedEvidence (a version other than 1)."""
    at = aware(at)
    report = evidence if isinstance(evidence, SimReport) else SimReport.decode(evidence)
    checks = (
        Check.of("report signature", CheckKind.SIGNATURE, _report_signature(report, root)),
        Check.of("sim root", CheckKind.CERTIFICATES, _root(root, at)),
    )
    return SimVerification(checks, report)


def _report_signature(report: SimReport, root: x509.Certificate) -> list[Mismatch]:
    if not ecdsa.verify_p256_raw(root.public_key(), report.signature, report.signed_bytes):
        return [Mismatch("sim_report.signature", "a valid ECDSA P-256 signature by the sim root over the report",
                         "invalid")]
    return []


def _root(root: x509.Certificate, at: datetime) -> list[Mismatch]:
    found = []
    if root.not_valid_before_utc > at:
        found.append(Mismatch("sim_root.not_before", f"at or before {iso(at)}", iso(root.not_valid_before_utc)))
    if root.not_valid_after_utc < at:
        found.append(Mismatch("sim_root.not_after", f"at or after {iso(at)}", iso(root.not_valid_after_utc)))
    try:
        root.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        found.append(Mismatch("sim_root.signature", "a self-signed root", "not self-signed"))
    return found
