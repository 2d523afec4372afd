"""Errors of attestation, three kinds under AttestationError, so a caller can say which it met:

- UnsupportedEvidence: well-formed evidence of a version, TEE type, product or signing key this layer does not
  handle (yet), e.g. a TDX quote v6; it names the value and what is supported;
- EvidenceFormatError: malformed evidence (truncated, a length past its span, a certificate that does not decode);
  it names the field and, for binary evidence, the offset;
- VerificationFailed: evidence that parses but does not match (a signature, a chain, a binding, a measurement);
  it carries every Mismatch (field, expected, got).
"""

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


class UnsupportedEvidence(AttestationError):
    """Well-formed evidence this layer does not handle: `what` names the value ("TDX quote version 6"),
    `supported` what is handled instead ("4, 5"); `field` and `offset` say where it was read."""

    def __init__(self, field: str, offset: int | None, what: str, supported: str) -> None:
        self.field, self.offset, self.what, self.supported = field, offset, what, supported
        super().__init__(f"{what} (supported: {supported})")


class EvidenceFormatError(AttestationError):
    """Malformed evidence: it, a certificate or collateral is truncated or does not decode; `field` and `offset`
    say where."""

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
