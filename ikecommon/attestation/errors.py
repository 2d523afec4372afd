"""Errors of attestation: evidence that does not parse, and evidence that parses but does not verify."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import Error


@dataclass(frozen=True)
class Mismatch:
    """One thing that did not verify: the field (a dotted path such as `pck_leaf.not_after`), what a valid
    piece of evidence has there, and what this one has."""

    field: str
    expected: str
    actual: str

    def __str__(self) -> str:
        return f"{self.field}: expected {self.expected}, got {self.actual}"


class AttestationError(Error):
    """Evidence could not be trusted."""


class EvidenceFormatError(AttestationError):
    """Evidence, a certificate or collateral is truncated or malformed; `field` and `offset` say where."""

    def __init__(self, field: str, offset: int | None, detail: str) -> None:
        self.field, self.offset, self.detail = field, offset, detail
        where = f" at offset {offset}" if offset is not None else ""
        super().__init__(f"{field}{where}: {detail}")


class VerificationFailed(AttestationError):
    """Evidence parsed but did not verify. `mismatches` holds every one found, not only the first."""

    def __init__(self, mismatches: Iterable[Mismatch]) -> None:
        self.mismatches = tuple(mismatches)
        shown = "; ".join(str(m) for m in self.mismatches)
        super().__init__(f"{len(self.mismatches)} mismatch{'es' if len(self.mismatches) != 1 else ''}: {shown}")
