"""JSON as the project reads every document another party hands it: UTF-8, no object member named twice, none of
the constants JSON does not have (NaN, Infinity), bounded nesting. A member named twice reads as its last value here
and possibly as its first in a second parser (another verifier, the operator's tools), so one document could say two
things: it is refused. Each reader turns `JsonError` into its own error, naming its own field."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class JsonError(ValueError):
    """`detail` says what is wrong (`not UTF-8`, `not JSON: ...`, `duplicate member`, `NaN is not JSON`, `nested too
    deeply`); `offset` is where, when known (a byte offset for UTF-8, a character offset for JSON syntax); `member`
    the name given twice."""

    def __init__(self, detail: str, offset: int | None = None, member: str | None = None) -> None:
        super().__init__(detail)
        self.detail, self.offset, self.member = detail, offset, member


class _Duplicate(Exception):
    def __init__(self, member: str) -> None:
        self.member = member


class _Constant(Exception):
    def __init__(self, name: str) -> None:
        self.name = name


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _Duplicate(key)
        result[key] = value
    return result


def _no_constant(name: str) -> None:
    raise _Constant(name)


def decoder() -> json.JSONDecoder:
    """A decoder with these rules, for readers that walk a document themselves (`raw_decode`); call it inside
    `translated()` so its refusals become JsonError."""
    return json.JSONDecoder(object_pairs_hook=_unique, parse_constant=_no_constant)


@contextmanager
def translated() -> Iterator[None]:
    """`with translated(): ...`: the strict decoder's refusals, and Python's own, raised as JsonError."""
    try:
        yield
    except _Duplicate as exc:
        raise JsonError("duplicate member", member=exc.member) from None
    except _Constant as exc:
        raise JsonError(f"{exc.name} is not JSON") from None
    except json.JSONDecodeError as exc:
        raise JsonError(f"not JSON: {exc.msg}", exc.pos) from None
    except RecursionError:
        raise JsonError("nested too deeply") from None
    except JsonError:
        raise
    except ValueError as exc:  # an integer too long to convert, for one
        raise JsonError(f"not JSON: {exc}") from None


def loads(data: bytes | str) -> Any:
    """The document, or JsonError."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonError("not UTF-8", exc.start) from None
    with translated():
        return decoder().decode(data)
