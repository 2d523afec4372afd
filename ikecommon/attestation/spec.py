"""Measurement specs: the register values a client expects, in the JSON list format of Flashbots'
cvm-reverse-proxy (BuilderNet).

    [{"measurement_id": "dcap-tdx-example-02",
      "attestation_type": "dcap-tdx",
      "measurements": {"0": {"expected": "5d56...d2"}, "1": {"expected": "4216...87"}}}]

Each entry is one acceptable measurement; evidence passes when every register one entry lists equals the evidence's
(registers an entry does not list are not checked). Registers by attestation type:

    dcap-tdx  0 MRTD, 1-4 RTMR0-3 (48 bytes each)     tdx evidence
    sev-snp   0 MEASUREMENT (48 bytes)                sev-snp evidence
    sim       0-15 the sim report's registers (48)    sim evidence (NOT SECURE)

Entries of other types (that format's `azure-tdx`, for one) are accepted, so a shared spec file still loads, but never
match. A spec comes from a file or inline, as gzip then base64url (proposed for the userinfo of a
resolver URL; its own example uses the standard base64 alphabet, which is accepted too). Decoding is strict: unknown
fields, wrong types, bad hex, a register of the wrong size or index for its type, duplicate ids, and anything over
the size limits are SpecFormatErrors naming the field.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import strictjson
from .envelope import EvidenceKind
from .errors import AttestationError, Mismatch

MAX_SPEC = 64 * 1024    # JSON bytes, after decompression
MAX_INLINE = 16 * 1024  # characters of gzip+base64url
MAX_ENTRIES = 64
MAX_REGISTER_INDEX = 63
MAX_REGISTER_SIZE = 64
MAX_ID = 128
_ENTRY_FIELDS = {"measurement_id", "attestation_type", "measurements"}
_TYPE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_INDEX = re.compile(r"0|[1-9][0-9]{0,1}")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")
_INLINE = re.compile(r"[A-Za-z0-9_+/-]+={0,2}")
_GZIP_MAGIC = b"\x1f\x8b"


class SpecFormatError(AttestationError):
    """A measurement spec that does not parse; `field` names where (`spec[0].measurements.4.expected`)."""

    def __init__(self, field: str, detail: str) -> None:
        self.field, self.detail = field, detail
        super().__init__(f"{field}: {detail}")


@dataclass(frozen=True)
class RegisterLayout:
    kind: EvidenceKind
    size: int
    names: tuple[str, ...]  # by index

    def name(self, index: int) -> str:
        return self.names[index] if index < len(self.names) else f"register {index}"


ATTESTATION_TYPES: Mapping[str, RegisterLayout] = {
    "dcap-tdx": RegisterLayout(EvidenceKind.TDX, 48, ("MRTD", "RTMR0", "RTMR1", "RTMR2", "RTMR3")),
    "sev-snp": RegisterLayout(EvidenceKind.SEV_SNP, 48, ("MEASUREMENT",)),
    "sim": RegisterLayout(EvidenceKind.SIM, 48, tuple(f"SIM{index}" for index in range(16))),
}
ATTESTATION_TYPE_OF: Mapping[EvidenceKind, str] = {layout.kind: name for name, layout in ATTESTATION_TYPES.items()}


@dataclass(frozen=True)
class MeasurementEntry:
    measurement_id: str
    attestation_type: str
    expected: tuple[tuple[int, bytes], ...]  # (register index, value), ascending by index

    def to_json(self) -> dict[str, Any]:
        return {"measurement_id": self.measurement_id, "attestation_type": self.attestation_type,
                "measurements": {str(index): {"expected": value.hex()} for index, value in self.expected}}


@dataclass(frozen=True)
class SpecMatch:
    """The entry that matched, or None and every mismatch of every candidate entry."""

    measurement_id: str | None
    mismatches: tuple[Mismatch, ...]


@dataclass(frozen=True)
class MeasurementSpec:
    entries: tuple[MeasurementEntry, ...]

    @classmethod
    def decode(cls, data: bytes) -> MeasurementSpec:
        if len(data) > MAX_SPEC:
            raise SpecFormatError("spec", f"{len(data)} bytes, more than the {MAX_SPEC} allowed")
        try:
            document = strictjson.loads(data)
        except strictjson.JsonError as exc:
            if exc.member is not None:
                raise SpecFormatError(f"spec.{_label(exc.member)}", "duplicate field") from None
            raise SpecFormatError("spec", exc.detail) from None
        if not isinstance(document, list) or not document:
            raise SpecFormatError("spec", "expected a non-empty JSON list of measurement entries")
        if len(document) > MAX_ENTRIES:
            raise SpecFormatError("spec", f"{len(document)} entries, more than the {MAX_ENTRIES} allowed")
        entries = tuple(_entry(entry, f"spec[{position}]") for position, entry in enumerate(document))
        seen: set[str] = set()
        for position, entry in enumerate(entries):
            if entry.measurement_id in seen:
                raise SpecFormatError(f"spec[{position}].measurement_id", f"duplicate id {entry.measurement_id!r}")
            seen.add(entry.measurement_id)
        return cls(entries)

    def encode(self) -> bytes:
        encoded = json.dumps([entry.to_json() for entry in self.entries], indent=4).encode("ascii") + b"\n"
        MeasurementSpec.decode(encoded)  # refuse to write what cannot be read back
        return encoded

    @classmethod
    def load(cls, path: Path) -> MeasurementSpec:
        """From a file; an unreadable file is a SpecFormatError naming it."""
        try:
            with path.open("rb") as file:
                data = file.read(MAX_SPEC + 1)
        except OSError as exc:
            raise SpecFormatError(str(path), exc.strerror or str(exc)) from None
        return cls.decode(data)

    @classmethod
    def from_inline(cls, text: str) -> MeasurementSpec:
        """From gzip + base64url (or standard base64, padded or not), as in a resolver URL's userinfo."""
        if len(text) > MAX_INLINE:
            raise SpecFormatError("spec.inline", f"{len(text)} characters, more than the {MAX_INLINE} allowed")
        if not _INLINE.fullmatch(text):
            raise SpecFormatError("spec.inline", "not base64url")
        unpadded = text.rstrip("=").replace("+", "-").replace("/", "_")
        if len(unpadded) % 4 == 1:
            raise SpecFormatError("spec.inline", "not base64url (truncated)")
        try:
            compressed = base64.urlsafe_b64decode(unpadded + "=" * (-len(unpadded) % 4))
        except (binascii.Error, ValueError):
            raise SpecFormatError("spec.inline", "not base64url") from None
        if not compressed.startswith(_GZIP_MAGIC):
            raise SpecFormatError("spec.inline", "not gzip (a governance feed reference is not supported yet)")
        return cls.decode(_gunzip(compressed))

    def to_inline(self) -> str:
        compressed = gzip.compress(self.encode(), compresslevel=9, mtime=0)
        return base64.urlsafe_b64encode(compressed).rstrip(b"=").decode("ascii")

    def match(self, kind: EvidenceKind, registers: Mapping[int, bytes]) -> SpecMatch:
        """The first entry for this kind of evidence whose every register matches; otherwise all mismatches."""
        candidates = [entry for entry in self.entries
                      if entry.attestation_type in ATTESTATION_TYPES
                      and ATTESTATION_TYPES[entry.attestation_type].kind == kind]
        if not candidates:
            types = sorted({entry.attestation_type for entry in self.entries})
            return SpecMatch(None, (Mismatch("spec.attestation_type",
                                             f"an entry of type {ATTESTATION_TYPE_OF[kind]} for {kind} evidence",
                                             f"entries of type {', '.join(types)}"),))
        found: list[Mismatch] = []
        for entry in candidates:
            mismatches = _entry_mismatches(entry, registers)
            if not mismatches:
                return SpecMatch(entry.measurement_id, ())
            found += mismatches
        return SpecMatch(None, tuple(found))


def _entry_mismatches(entry: MeasurementEntry, registers: Mapping[int, bytes]) -> list[Mismatch]:
    layout = ATTESTATION_TYPES[entry.attestation_type]
    found = []
    for index, expected in entry.expected:
        field = f"spec[{entry.measurement_id}].measurements.{index}"
        actual = registers.get(index)
        if actual is None:
            found.append(Mismatch(field, f"{expected.hex()} ({layout.name(index)})",
                                  f"absent (the evidence has {len(registers)} registers)"))
        elif actual != expected:
            found.append(Mismatch(field, f"{expected.hex()} ({layout.name(index)})", actual.hex()))
    return found


def _entry(entry: object, where: str) -> MeasurementEntry:
    if not isinstance(entry, dict):
        raise SpecFormatError(where, f"expected an object, got {_kind(entry)}")
    unknown = sorted(set(entry) - _ENTRY_FIELDS)
    if unknown:
        raise SpecFormatError(f"{where}.{_label(unknown[0])}", "unknown field")
    missing = sorted(_ENTRY_FIELDS - set(entry))
    if missing:
        raise SpecFormatError(f"{where}.{missing[0]}", "missing")
    measurement_id, attestation_type = entry["measurement_id"], entry["attestation_type"]
    if not isinstance(measurement_id, str) or not 0 < len(measurement_id) <= MAX_ID \
            or not measurement_id.isprintable():
        raise SpecFormatError(f"{where}.measurement_id", f"expected a printable string of 1 to {MAX_ID} characters")
    if not isinstance(attestation_type, str) or not _TYPE_NAME.fullmatch(attestation_type):
        raise SpecFormatError(f"{where}.attestation_type", "expected a lower-case type name such as 'dcap-tdx'")
    return MeasurementEntry(measurement_id, attestation_type,
                            _measurements(entry["measurements"], ATTESTATION_TYPES.get(attestation_type),
                                          f"{where}.measurements"))


def _measurements(measurements: object, layout: RegisterLayout | None, where: str) -> tuple[tuple[int, bytes], ...]:
    if not isinstance(measurements, dict) or not measurements:
        raise SpecFormatError(where, "expected a non-empty object of register index -> {\"expected\": hex}")
    expected = []
    for key, value in measurements.items():
        field = f"{where}.{_label(key)}"
        if not _INDEX.fullmatch(key) or int(key) > MAX_REGISTER_INDEX:
            raise SpecFormatError(field, f"a register index is a decimal number from 0 to {MAX_REGISTER_INDEX}")
        index = int(key)
        if layout is not None and index >= len(layout.names):
            raise SpecFormatError(field, f"no such register: indices 0 to {len(layout.names) - 1} "
                                  f"({', '.join(layout.names)})")
        if not isinstance(value, dict) or set(value) != {"expected"}:
            raise SpecFormatError(field, "expected an object with exactly one field, \"expected\"")
        text = value["expected"]
        if not isinstance(text, str) or len(text) > 2 * MAX_REGISTER_SIZE or not _HEX.fullmatch(text):
            raise SpecFormatError(f"{field}.expected", f"expected hex of 1 to {MAX_REGISTER_SIZE} bytes")
        register = bytes.fromhex(text)
        if layout is not None and len(register) != layout.size:
            raise SpecFormatError(f"{field}.expected", f"{layout.name(index)} is {layout.size} bytes, "
                                  f"got {len(register)}")
        expected.append((index, register))
    return tuple(sorted(expected))


def _gunzip(compressed: bytes) -> bytes:
    """One gzip member, inflated to at most MAX_SPEC bytes (a small input must not become a large one)."""
    inflater = zlib.decompressobj(wbits=31)
    try:
        data = inflater.decompress(compressed, MAX_SPEC + 1)
    except zlib.error as exc:
        raise SpecFormatError("spec.inline", f"not gzip: {exc}") from None
    if len(data) > MAX_SPEC:
        raise SpecFormatError("spec.inline", f"inflates to more than {MAX_SPEC} bytes")
    if not inflater.eof:
        raise SpecFormatError("spec.inline", "truncated gzip")
    if inflater.unused_data:
        raise SpecFormatError("spec.inline", "data after the gzip member")
    return data


def _label(key: str) -> str:
    text = json.dumps(key)[1:-1]
    return text if len(text) <= 40 else text[:37] + "..."


def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")
