"""Vendor collateral shaped `{"<body>": {...}, "signature": "<hex>"}`, where the signature covers the body's raw
bytes exactly as they appear in the document (Intel's TCB info and QE identity).

Re-serialising the parsed body would not reproduce those bytes, so the top-level object is scanned member by
member to keep each value's source text. Typed accessors then turn the parsed body into checked values; every
problem is an EvidenceFormatError naming the JSON path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .. import strictjson
from .errors import EvidenceFormatError
from .times import parse_iso

_WHITESPACE = " \t\r\n"
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")


@dataclass(frozen=True)
class SignedJson:
    body: Mapping[str, Any]
    signed: bytes      # the body's bytes as they appear in the document
    signature: bytes


def parse_signed(document: bytes, body_key: str, what: str) -> SignedJson:
    try:
        text = document.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EvidenceFormatError(what, exc.start, "not UTF-8") from None
    members = _members(text, what)
    if body_key not in members or "signature" not in members:
        raise EvidenceFormatError(what, None, f"expected members {body_key!r} and 'signature', "
                                  f"found {sorted(members)}")
    body, raw = members[body_key]
    return SignedJson(obj(body, f"{what}.{body_key}"), raw.encode("utf-8"),
                      hexbytes(members["signature"][0], f"{what}.signature", None))


def _members(text: str, what: str) -> dict[str, tuple[Any, str]]:
    """The top-level object's members, each with its value's source text."""
    decoder, members = strictjson.decoder(), {}
    at = _skip(text, 0)
    if not text.startswith("{", at):
        raise EvidenceFormatError(what, at, "expected a JSON object")
    at = _skip(text, at + 1)
    try:
        with strictjson.translated():
            while not text.startswith("}", at):
                key, at = decoder.raw_decode(text, at)
                at = _skip(text, at)
                if not isinstance(key, str) or not text.startswith(":", at):
                    raise EvidenceFormatError(what, at, "expected a member name and ':'")
                start = _skip(text, at + 1)
                value, at = decoder.raw_decode(text, start)
                if key in members:
                    raise EvidenceFormatError(f"{what}.{key}", start, "member appears twice")
                members[key] = (value, text[start:at])
                at = _skip(text, at)
                if text.startswith(",", at):
                    at = _skip(text, at + 1)
                elif not text.startswith("}", at):
                    raise EvidenceFormatError(what, at, "expected ',' or '}'")
    except strictjson.JsonError as exc:
        raise EvidenceFormatError(what if exc.member is None else f"{what}.{exc.member}", exc.offset,
                                  exc.detail) from None
    if _skip(text, at + 1) != len(text):
        raise EvidenceFormatError(what, at + 1, "text after the JSON object")
    return members


def _skip(text: str, at: int) -> int:
    while at < len(text) and text[at] in _WHITESPACE:
        at += 1
    return at


def obj(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise EvidenceFormatError(path, None, "expected an object")
    return value


def member(parent: Mapping[str, Any], key: str, path: str) -> Any:
    if key not in parent:
        raise EvidenceFormatError(f"{path}.{key}", None, "missing")
    return parent[key]


def integer(parent: Mapping[str, Any], key: str, path: str) -> int:
    value = member(parent, key, path)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise EvidenceFormatError(f"{path}.{key}", None, f"expected a non-negative integer, got {value!r}")
    return value


def string(parent: Mapping[str, Any], key: str, path: str) -> str:
    value = member(parent, key, path)
    if not isinstance(value, str):
        raise EvidenceFormatError(f"{path}.{key}", None, f"expected a string, got {value!r}")
    return value


def hexbytes(value: Any, path: str, size: int | None) -> bytes:
    raw = bytes.fromhex(value) if isinstance(value, str) and _HEX.fullmatch(value) else None
    if raw is None or (size is not None and len(raw) != size):
        wanted = f"{size} bytes of hex" if size is not None else "hex"
        raise EvidenceFormatError(path, None, f"expected {wanted}, got {value!r}")
    return raw


def hex_member(parent: Mapping[str, Any], key: str, path: str, size: int) -> bytes:
    return hexbytes(member(parent, key, path), f"{path}.{key}", size)


def time(parent: Mapping[str, Any], key: str, path: str) -> datetime:
    return parse_iso(string(parent, key, path), f"{path}.{key}")


def array(parent: Mapping[str, Any], key: str, path: str) -> Sequence[Any]:
    value = member(parent, key, path)
    if not isinstance(value, list):
        raise EvidenceFormatError(f"{path}.{key}", None, "expected an array")
    return value


def strings(parent: Mapping[str, Any], key: str, path: str) -> tuple[str, ...]:
    values = parent.get(key, [])
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise EvidenceFormatError(f"{path}.{key}", None, "expected an array of strings")
    return tuple(values)
