"""Bounded reading and checked writing of IKEv2 wire structures.

`Reader` never returns fewer octets than asked for: running past the end of the current span is a `DecodeError`
naming the payload and field being read. `restrict(n)` narrows the span to the next `n` octets (a payload, a
proposal, a transform) and fails if the code inside leaves any of them unread, so a length field and the structure
it announces can never disagree silently.

`Writer` checks every integer against its field width; a value that does not fit is our own mistake and raises
`LocalProtocolError`.

A `Layout` is a run of fixed-size fields (a header, a substructure's fixed part) read by `Reader.fields` or written by
`Layout.pack` in one precompiled `struct` call, with the same errors as field by field: a handshake reads and writes
several hundred such fields, and a call per field was the largest part of the codec's cost. The errors are worked
out only when a read or a write fails.
"""

from __future__ import annotations

import builtins
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .errors import DecodeError, LocalProtocolError


class Layout:
    """Named big-endian fields, each a `struct` code: "B", "H", "I" (integers), "8s" (octets, read only), "3x"
    (reserved octets: skipped when read, zeros when written)."""

    __slots__ = ("_fields", "_pack", "_readonly", "size", "unpack_from")

    def __init__(self, *fields: tuple[str, str]) -> None:
        compiled = struct.Struct(">" + "".join(code for _, code in fields))
        self.size = compiled.size
        self.unpack_from = compiled.unpack_from
        self._pack = compiled.pack
        offsets, offset = [], 0
        for name, code in fields:
            size = struct.calcsize(">" + code)
            offsets.append((name, code[-1], offset, size))
            offset += size
        self._fields: tuple[tuple[str, str, int, int], ...] = tuple(offsets)
        # `struct` pads or cuts octet strings to their width silently: writing them would hide a wrong length
        self._readonly = any(code == "s" for _, code, _, _ in offsets)

    def truncated(self, payload: str, left: int) -> DecodeError:
        """The error for a read with only `left` octets in the span: the first field that does not fit."""
        for name, _, offset, size in self._fields:
            if offset + size > left:
                return DecodeError(payload, name, f"truncated: needs {size} octets, {left - offset} left")
        raise AssertionError("a layout that fits is not truncated")

    def pack(self, *values: int) -> builtins.bytes:
        """The fields' octets (reserved ones take no value). A value that does not fit is `LocalProtocolError`."""
        if self._readonly:
            raise TypeError("a layout with octet-string fields is for reading only")
        try:
            return self._pack(*values)
        except struct.error:
            # find the field to name; if none misfits (a wrong number of values), struct's own error stands
            integers = [(name, size) for name, code, _, size in self._fields if code != "x"]
            for (name, size), value in zip(integers, values, strict=False):
                _check(value, 8 * size, name)
            raise


class Reader:
    """Reads big-endian fields from `data`, bounded by the innermost `restrict` span."""

    __slots__ = ("_data", "_end", "_pos", "payload")

    def __init__(self, data: builtins.bytes, *, payload: str = "message") -> None:
        self._data = builtins.bytes(data)
        self._pos = 0
        self._end = len(self._data)
        self.payload = payload  # what is being read, for error messages

    @property
    def position(self) -> int:
        """Offset of the next octet from the start of the whole buffer."""
        return self._pos

    @property
    def remaining(self) -> int:
        """Octets left in the current span."""
        return self._end - self._pos

    def at_end(self) -> bool:
        return self._pos == self._end

    def bytes(self, n: int, field: str) -> builtins.bytes:
        start = self._pos
        if n < 0 or n > self._end - start:
            raise self._short(n, field)
        self._pos = start + n
        return self._data[start:start + n]

    def _short(self, n: int, field: str) -> DecodeError:
        if n < 0:
            return DecodeError(self.payload, field, f"negative length {n}")
        return DecodeError(self.payload, field, f"truncated: needs {n} octets, {self._end - self._pos} left")

    # u8 and u16 index the buffer themselves: going through `bytes` doubled their cost
    def u8(self, field: str) -> int:
        pos = self._pos
        if pos >= self._end:
            raise self._short(1, field)
        self._pos = pos + 1
        return self._data[pos]

    def u16(self, field: str) -> int:
        pos = self._pos
        if pos + 2 > self._end:
            raise self._short(2, field)
        self._pos = pos + 2
        data = self._data
        return data[pos] << 8 | data[pos + 1]

    def u32(self, field: str) -> int:
        return int.from_bytes(self.bytes(4, field), "big")

    def fields(self, layout: Layout, *, payload: str | None = None) -> tuple[Any, ...]:
        """Read `layout`'s fields (reserved ones give no value). `payload` names what is read, for the error."""
        pos = self._pos
        if layout.size > self._end - pos:
            raise layout.truncated(payload or self.payload, self._end - pos)
        self._pos = pos + layout.size
        return layout.unpack_from(self._data, pos)

    def rest(self, field: str) -> builtins.bytes:
        """Everything left in the current span (possibly nothing)."""
        return self.bytes(self._end - self._pos, field)

    def skip(self, n: int, field: str) -> None:
        self.bytes(n, field)

    @contextmanager
    def naming(self, payload: str) -> Iterator[None]:
        """Name what is being read, for error messages, until the end of the block."""
        saved, self.payload = self.payload, payload
        try:
            yield
        finally:
            self.payload = saved

    def restrict(self, n: int, field: str, *, payload: str | None = None) -> _Span:
        """Bound reads to the next `n` octets (announced by `field`); they must all be read by the end of the block.
        `payload` renames what is being read inside the span, for error messages."""
        if n < 0 or n > self._end - self._pos:
            raise DecodeError(payload or self.payload, field,
                              f"length {n} runs past the end of its container ({self._end - self._pos} octets left)")
        return _Span(self, n, field, payload)


class _Span:
    """`Reader.restrict`'s block: a class, not a generator-based context manager, since a handshake opens about a
    hundred of them (the generator's cost was a tenth of decoding)."""

    __slots__ = ("_field", "_n", "_payload", "_reader", "_saved_end", "_saved_payload")

    def __init__(self, reader: Reader, n: int, field: str, payload: str | None) -> None:
        self._reader, self._n, self._field, self._payload = reader, n, field, payload
        self._saved_end, self._saved_payload = reader._end, reader.payload

    def __enter__(self) -> None:
        reader = self._reader
        reader._end = reader._pos + self._n
        if self._payload is not None:
            reader.payload = self._payload

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        reader = self._reader
        try:
            if kind is None and reader._pos != reader._end:
                raise DecodeError(reader.payload, self._field, f"{reader._end - reader._pos} octets left unread")
        finally:
            reader._end, reader.payload = self._saved_end, self._saved_payload


def _check(value: int, bits: int, field: str) -> int:
    if not 0 <= value < 1 << bits:
        raise LocalProtocolError(f"{field}: {value} does not fit in {bits} bits")
    return value


class Writer:
    """Appends big-endian fields, checking each integer against its width."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def __len__(self) -> int:
        return len(self._buf)

    def u8(self, value: int, field: str) -> Writer:
        self._buf += _check(value, 8, field).to_bytes(1, "big")
        return self

    def u16(self, value: int, field: str) -> Writer:
        self._buf += _check(value, 16, field).to_bytes(2, "big")
        return self

    def u32(self, value: int, field: str) -> Writer:
        self._buf += _check(value, 32, field).to_bytes(4, "big")
        return self

    def bytes(self, data: builtins.bytes, field: str, *, size: int | None = None) -> Writer:
        """Append `data`; with `size`, it must be exactly that long."""
        if size is not None and len(data) != size:
            raise LocalProtocolError(f"{field}: must be {size} octets, not {len(data)}")
        self._buf += data
        return self

    def getvalue(self) -> builtins.bytes:
        return builtins.bytes(self._buf)
