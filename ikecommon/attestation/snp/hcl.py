"""Azure's HCL report: the SEV-SNP report of an Azure confidential VM, wrapped by its paravisor (the HCL), as the
guest reads it from the vTPM's NV index 0x01400001.

The layout (integers are little-endian u32), as Microsoft's OpenHCL writes it (`IgvmAttestRequest`) and Azure's
tools read it:

    0x000  header, 32 bytes: signature "HCLA", version (1 or 2), report_size, request_type (2: AK certificate),
           status, 12 reserved bytes
    0x020  the hardware report, 1184 bytes: the size of an SEV-SNP report (a TDX report fills its first 1024)
    0x4C0  request data, 20 bytes: data_size, version (1), report_type (2: SEV-SNP, 4: TDX), hash_type (1: SHA-256),
           variable_data_size
    0x4D4  the runtime data: variable_data_size bytes of JSON: "keys" (JWKs; "HCLAkPub" is the vTPM's attestation
           key), "vm-configuration", and "user-data" (hex) when the guest asked for some
    then   the rest of the NV index (zeros), which no size counts and nothing signs

report_size counts the header through the runtime data; data_size the request data and the runtime data. Nothing
but the hardware report is signed. The paravisor ties the rest to it through REPORT_DATA: its first 32 bytes are the
SHA-256 of the runtime data, the bytes exactly as they stand (not re-serialised JSON), and the other 32 are zero
(`binding_mismatches`). So the vTPM's AK, and any user data, are as authentic as the SEV-SNP report.

Only SEV-SNP reports with SHA-256 are read; another report type or hash type is an UnsupportedEvidence, anything
malformed an EvidenceFormatError naming the field and its offset.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ... import strictjson
from ..errors import EvidenceFormatError, Mismatch
from ..wire import Reader, check_sizes, le
from .report import REPORT_SIZE, SnpReport

SIGNATURE = b"HCLA"
HEADER_SIZE, REQUEST_DATA_SIZE = 0x20, 20
HW_REPORT_OFFSET = HEADER_SIZE
REQUEST_DATA_OFFSET = HW_REPORT_OFFSET + REPORT_SIZE  # 0x4C0
RUNTIME_DATA_OFFSET = REQUEST_DATA_OFFSET + REQUEST_DATA_SIZE  # 0x4D4
REPORT_TYPE_OFFSET, HASH_TYPE_OFFSET = REQUEST_DATA_OFFSET + 8, REQUEST_DATA_OFFSET + 12
HEADER_VERSIONS = (1, 2)      # both seen in real reports; the layout is the same
REQUEST_DATA_VERSION = 1      # version 2 puts an extension before the runtime data
SNP_REPORT_TYPE, SHA_256 = 2, 1
REPORT_TYPES = {1: "VBS", 2: "SEV-SNP", 3: "TVM", 4: "TDX"}
HASH_TYPES = {1: "SHA-256", 2: "SHA-384", 3: "SHA-512"}
REQUEST_TYPES = {1: "key release", 2: "AK certificate", 3: "wrapped key"}
MAX_SIZE = 0x10000             # the NV index is a few KiB
MAX_RUNTIME_DATA = 0x4000      # real runtime data is about 1 KiB
MAX_KEYS = 16
AK_KID = "HCLAkPub"
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})*")

JsonScalar = bool | int | float | str | None


@dataclass(frozen=True)
class HclHeader:
    version: int
    report_size: int
    request_type: int
    status: int
    reserved: bytes = bytes(12)

    def __post_init__(self) -> None:
        check_sizes("hcl_report.header", {"reserved": (self.reserved, 12)})


@dataclass(frozen=True)
class RequestData:
    data_size: int
    version: int
    report_type: int
    hash_type: int
    variable_data_size: int


@dataclass(frozen=True)
class HclKey:
    """One JWK of the runtime data. `spki` is the key as SubjectPublicKeyInfo DER, for an RSA key (kty "RSA"; the
    only type Azure writes); None for another type, which is kept but not read."""

    kid: str
    kty: str
    key_ops: tuple[str, ...]
    spki: bytes | None

    @property
    def sha256(self) -> bytes | None:
        """The fingerprint of the key: SHA-256 of its SubjectPublicKeyInfo DER."""
        return None if self.spki is None else hashlib.sha256(self.spki).digest()

    @property
    def bits(self) -> int | None:
        if self.spki is None:
            return None
        key = serialization.load_der_public_key(self.spki)
        return key.key_size if isinstance(key, rsa.RSAPublicKey) else None


@dataclass(frozen=True)
class RuntimeData:
    """The runtime data: `raw`, the bytes REPORT_DATA hashes, and what its JSON says."""

    raw: bytes
    keys: tuple[HclKey, ...]
    vm_configuration: tuple[tuple[str, JsonScalar], ...]  # in the order the JSON has them
    user_data: bytes | None  # "user-data", hex-decoded; None when absent

    @classmethod
    def parse(cls, raw: bytes, offset: int = RUNTIME_DATA_OFFSET) -> RuntimeData:
        where = "hcl_report.runtime_data"
        document = _json_object(raw, where, offset)
        keys = document.get("keys")
        if not isinstance(keys, list) or not 0 < len(keys) <= MAX_KEYS:
            raise EvidenceFormatError(f"{where}.keys", offset, f"expected a list of 1 to {MAX_KEYS} JWKs")
        config = document.get("vm-configuration")
        if not isinstance(config, dict):
            raise EvidenceFormatError(f"{where}.vm-configuration", offset, "expected a JSON object")
        for name, value in config.items():
            if isinstance(value, (dict, list)):
                raise EvidenceFormatError(f"{where}.vm-configuration.{name}", offset, "expected a JSON scalar")
        user_data = document.get("user-data")
        if user_data is not None and (not isinstance(user_data, str) or not _HEX.fullmatch(user_data)):
            raise EvidenceFormatError(f"{where}.user-data", offset, "expected a string of hex digit pairs")
        return cls(raw, tuple(_key(key, f"{where}.keys[{i}]", offset) for i, key in enumerate(keys)),
                   tuple(config.items()), None if user_data is None else bytes.fromhex(user_data))

    def key(self, kid: str) -> HclKey | None:
        return next((key for key in self.keys if key.kid == kid), None)

    @property
    def attestation_key(self) -> HclKey | None:
        """The vTPM's attestation key (kid "HCLAkPub"), which signs its TPM quotes."""
        return self.key(AK_KID)


@dataclass(frozen=True)
class HclReport:
    header: HclHeader
    hw_report: bytes  # the SEV-SNP report, as signed
    request_data: RequestData
    runtime_data: RuntimeData
    padding: bytes = b""  # after report_size: the rest of the NV index

    HW_REPORT_SIZE: ClassVar[int] = REPORT_SIZE

    def __post_init__(self) -> None:
        check_sizes("hcl_report", {"hw_report": (self.hw_report, REPORT_SIZE)})

    @classmethod
    def parse(cls, data: bytes) -> HclReport:
        if len(data) > MAX_SIZE:
            raise EvidenceFormatError("hcl_report", None, f"{len(data)} bytes, more than the {MAX_SIZE} allowed")
        r = Reader(data, "hcl_report")
        if r.take(4, "header.signature") != SIGNATURE:
            raise r.fail("header.signature", "expected \"HCLA\"", 0)
        version = r.uint(4, "header.version")
        if version not in HEADER_VERSIONS:
            raise r.unsupported("header.version", f"HCL report version {version}", "1, 2", 4)
        header = HclHeader(version, r.uint(4, "header.report_size"), r.uint(4, "header.request_type"),
                           r.uint(4, "header.status"), r.take(12, "header.reserved"))
        hw_report = r.take(REPORT_SIZE, "hw_report")
        data_size, request_version = r.uint(4, "request_data.data_size"), r.uint(4, "request_data.version")
        if request_version != REQUEST_DATA_VERSION:
            raise r.unsupported("request_data.version", f"HCL request data version {request_version}",
                                str(REQUEST_DATA_VERSION), REQUEST_DATA_OFFSET + 4)
        report_type = r.uint(4, "request_data.report_type")
        if report_type != SNP_REPORT_TYPE:
            name = REPORT_TYPES.get(report_type, "unknown")
            raise r.unsupported("request_data.report_type", f"HCL report type {report_type} ({name})",
                                f"{SNP_REPORT_TYPE} (SEV-SNP)", REPORT_TYPE_OFFSET)
        hash_type = r.uint(4, "request_data.hash_type")
        if hash_type != SHA_256:
            if hash_type not in HASH_TYPES:
                raise r.fail("request_data.hash_type", f"{hash_type} is no hash type (1 to 3)", HASH_TYPE_OFFSET)
            raise r.unsupported("request_data.hash_type", f"HCL report data hash type {hash_type} "
                                f"({HASH_TYPES[hash_type]})", f"{SHA_256} (SHA-256)", HASH_TYPE_OFFSET)
        size = r.uint(4, "request_data.variable_data_size")
        if size > MAX_RUNTIME_DATA:
            raise r.fail("request_data.variable_data_size", f"{size} bytes, more than the {MAX_RUNTIME_DATA} allowed")
        if data_size != REQUEST_DATA_SIZE + size:
            raise r.fail("request_data.data_size", f"{data_size}, but the request data and {size} bytes of runtime "
                         f"data are {REQUEST_DATA_SIZE + size}", REQUEST_DATA_OFFSET)
        runtime_data = RuntimeData.parse(r.take(size, "runtime_data"))
        if header.report_size != r.offset:
            raise r.fail("header.report_size", f"{header.report_size}, but the header, the hardware report, the "
                         f"request data and the runtime data are {r.offset} bytes", 8)
        return cls(header, hw_report, RequestData(data_size, request_version, report_type, hash_type, size),
                   runtime_data, r.rest())

    def to_bytes(self) -> bytes:
        h, q = self.header, self.request_data
        return b"".join((SIGNATURE, le(h.version, 4), le(h.report_size, 4), le(h.request_type, 4), le(h.status, 4),
                         h.reserved, self.hw_report, le(q.data_size, 4), le(q.version, 4), le(q.report_type, 4),
                         le(q.hash_type, 4), le(q.variable_data_size, 4), self.runtime_data.raw, self.padding))

    def snp_report(self) -> SnpReport:
        return SnpReport.parse(self.hw_report)

    def binding_mismatches(self) -> list[Mismatch]:
        """A report_data mismatch unless the SEV-SNP report binds this runtime data."""
        return binding_mismatches(self.snp_report().report_data, self.runtime_data.raw)


def expected_report_data(runtime_data: bytes) -> bytes:
    """The REPORT_DATA the paravisor asks for: SHA-256 of the runtime data, then 32 zero bytes."""
    return hashlib.sha256(runtime_data).digest() + bytes(32)


def binding_mismatches(report_data: bytes, runtime_data: bytes) -> list[Mismatch]:
    expected = expected_report_data(runtime_data)
    if report_data == expected:
        return []
    return [Mismatch("report_data", f"{expected.hex()} (SHA-256 of the HCL runtime data, then 32 zero bytes)",
                     report_data.hex())]


def _json_object(raw: bytes, where: str, offset: int) -> dict[str, Any]:
    try:
        document = strictjson.loads(raw)
    except strictjson.JsonError as exc:
        field = where if exc.member is None else f"{where}.{exc.member[:40]}"
        raise EvidenceFormatError(field, offset + (exc.offset or 0), exc.detail) from None
    if not isinstance(document, dict):
        raise EvidenceFormatError(where, offset, "expected a JSON object")
    return document


def _key(jwk: object, where: str, offset: int) -> HclKey:
    if not isinstance(jwk, dict):
        raise EvidenceFormatError(where, offset, "expected a JWK (a JSON object)")
    kid, kty, key_ops = jwk.get("kid"), jwk.get("kty"), jwk.get("key_ops", [])
    if not isinstance(kid, str) or not isinstance(kty, str):
        raise EvidenceFormatError(where, offset, "expected the strings \"kid\" and \"kty\"")
    if not isinstance(key_ops, list) or not all(isinstance(op, str) for op in key_ops):
        raise EvidenceFormatError(f"{where}.key_ops", offset, "expected a list of strings")
    spki = _rsa_spki(jwk, where, offset) if kty == "RSA" else None
    return HclKey(kid, kty, tuple(key_ops), spki)


def _rsa_spki(jwk: dict[str, Any], where: str, offset: int) -> bytes:
    n, e = (int.from_bytes(_unb64(jwk.get(name), f"{where}.{name}", offset), "big") for name in ("n", "e"))
    try:
        key = rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError as exc:
        raise EvidenceFormatError(f"{where}.n", offset, f"not an RSA public key: {exc}") from None
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _unb64(value: object, where: str, offset: int) -> bytes:
    """Base64url without padding, as JWK (RFC 7518) writes n and e."""
    if not isinstance(value, str) or not value or not _BASE64URL.fullmatch(value) or len(value) % 4 == 1:
        raise EvidenceFormatError(where, offset, "expected base64url without padding")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise EvidenceFormatError(where, offset, "expected base64url without padding") from None
