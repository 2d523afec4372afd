"""Bounded little-endian reads for fixed-layout evidence (TDX quotes, SEV-SNP reports).

Every read names its field. Reading past the end of the span is an EvidenceFormatError that says which field
and at which offset, never a short read; a value the parser does not handle is an UnsupportedEvidence. `sub`
restricts a nested structure to its declared length, and `done` fails if that span was not consumed.
"""

from __future__ import annotations

from collections.abc import Mapping

from .errors import EvidenceFormatError, UnsupportedEvidence


class Reader:
    def __init__(self, data: bytes, what: str, start: int = 0, end: int | None = None) -> None:
        self._data, self._what = data, what
        self._offset, self._end = start, len(data) if end is None else end

    @property
    def offset(self) -> int:
        return self._offset

    @property
    def remaining(self) -> int:
        return self._end - self._offset

    def take(self, size: int, field: str) -> bytes:
        if size > self.remaining:
            raise EvidenceFormatError(f"{self._what}.{field}", self._offset,
                                      f"needs {size} bytes, {self.remaining} remain")
        start, self._offset = self._offset, self._offset + size
        return self._data[start:self._offset]

    def uint(self, size: int, field: str) -> int:
        return int.from_bytes(self.take(size, field), "little")

    def sub(self, size: int, field: str) -> Reader:
        """A reader over the next `size` bytes (a structure of declared length); this reader skips them."""
        if size > self.remaining:
            raise EvidenceFormatError(f"{self._what}.{field}", self._offset,
                                      f"declares {size} bytes, {self.remaining} remain")
        inner = Reader(self._data, self._what, self._offset, self._offset + size)
        self._offset += size
        return inner

    def rest(self) -> bytes:
        return self.take(self.remaining, "rest")

    def done(self, field: str) -> None:
        if self.remaining:
            raise EvidenceFormatError(f"{self._what}.{field}", self._offset,
                                      f"{self.remaining} bytes left over inside its declared length")

    def fail(self, field: str, detail: str, offset: int | None = None) -> EvidenceFormatError:
        return EvidenceFormatError(f"{self._what}.{field}", self._offset if offset is None else offset, detail)

    def unsupported(self, field: str, what: str, supported: str, offset: int) -> UnsupportedEvidence:
        """A well-formed value this parser does not handle (a version, a type), read at `offset`."""
        return UnsupportedEvidence(f"{self._what}.{field}", offset, what, supported)


def le(value: int, size: int) -> bytes:
    return value.to_bytes(size, "little")


def check_sizes(what: str, fields: Mapping[str, tuple[bytes, int]]) -> None:
    """Fixed-size byte fields of a structure being built: a wrong length would encode as different evidence."""
    for name, (value, size) in fields.items():
        if len(value) != size:
            raise EvidenceFormatError(f"{what}.{name}", None, f"must be {size} bytes, got {len(value)}")
