"""Times in and out of verification: the caller's clock must be timezone-aware, and every time shown in a mismatch
is UTC ISO 8601, as in the vendors' collateral."""

from __future__ import annotations

from datetime import UTC, datetime

from .errors import EvidenceFormatError


def aware(at: datetime) -> datetime:
    if at.tzinfo is None:
        raise ValueError("verification time must be timezone-aware (e.g. datetime.now(UTC))")
    return at.astimezone(UTC)


def iso(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str, field: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise EvidenceFormatError(field, None, f"not an ISO 8601 time: {text!r}") from None
    if parsed.tzinfo is None:
        raise EvidenceFormatError(field, None, f"time without a timezone: {text!r}")
    return parsed.astimezone(UTC)
