"""Unix times as the rotation of a service key carries them (enclave_ike/release, ikectl's pins): whole seconds, and
how a log line or a report shows one."""

from __future__ import annotations

from datetime import UTC, datetime

MAX_TIME = 2**40  # Unix seconds, past any real date


def is_unix_time(value: object) -> bool:
    """A whole number of seconds after 1970 and before MAX_TIME (a JSON bool is not one)."""
    return type(value) is int and 0 < value < MAX_TIME


def utc(unix: int) -> str:
    """`2026-12-07 19:00:00 UTC`; a time no calendar can show, as `Unix time N`."""
    try:
        return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return f"Unix time {unix}"
