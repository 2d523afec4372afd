"""Bounded reading and checked writing of IKEv2 wire structures.

`Reader` never returns fewer octets than asked for: running past the end of the current span is a `DecodeError`
naming the payload and field being read. `restrict(n)` narrows the span to the next `n` octets (a payload, a
proposal, a transform) and fails if the code inside leaves any of them unread, so a length field and the structure
it announces can never disagree silently.

`Writer` checks every integer against its field width; a value that does not fit is our own mistake and raises
`LocalProtocolError`.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import DecodeError, LocalProtocolError


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
        if n < 0:
            raise DecodeError(self.payload, field, f"negative length {n}")
        if n > self._end - self._pos:
            raise DecodeError(self.payload, field,
                              f"truncated: needs {n} octets, {self._end - self._pos} left")
        start = self._pos
        self._pos += n
        return self._data[start:self._pos]

    def u8(self, field: str) -> int:
        return self.bytes(1, field)[0]

    def u16(self, field: str) -> int:
        return int.from_bytes(self.bytes(2, field), "big")

    def u32(self, field: str) -> int:
        return int.from_bytes(self.bytes(4, field), "big")

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
