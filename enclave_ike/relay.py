"""The framing between `enclave-ike forward` (outside the enclave) and `enclave-ike serve` (inside), sans-I/O.

The forwarder relays UDP datagrams of ports 500 and 4500 over one byte stream (a Unix socket here, vsock on AWS
Nitro): each datagram becomes one frame, in both directions, naming the local endpoint it arrived on (or must leave
from) and the peer it came from (or goes to):

    version (1) | family (1: 4 or 6) | local address (4 or 16) | local port (2) | peer address (4 or 16) |
    peer port (2) | payload length (2) | payload

all big-endian. The payload is the UDP payload as is (IKE, ESP, the non-ESP marker, keepalives): the forwarder never
looks into it and holds no key. A frame that breaks this layout is a `RelayError`; the stream is then closed (there
is no way to find the next frame boundary).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

from .errors import EnclaveIkeError
from .ikev2.config import Endpoint

VERSION = 1
_FIXED = struct.Struct("!BB")
_PORT = struct.Struct("!H")
_ADDRESS_SIZE = {4: 4, 6: 16}
MAX_PAYLOAD = 0xFFFF


UNIX_PATH_MAX = 107  # octets of a Unix socket's path on Linux (sun_path is 108 with its NUL)
LONGEST_SUFFIX = ".evidence"  # of the sockets made beside the relay's (.evidence, .metrics)


def socket_path_problem(relay: Path) -> str | None:
    """Why `relay` (and the sockets beside it) cannot be Unix sockets, or None."""
    raw = bytes(relay)
    if b"\x00" in raw:
        return "holds a NUL octet"
    if len(raw) + len(LONGEST_SUFFIX) > UNIX_PATH_MAX:
        return (f"is {len(raw)} octets: a Unix socket's path holds {UNIX_PATH_MAX}, and the evidence socket beside "
                f"it adds {len(LONGEST_SUFFIX)}")
    return None


def evidence_socket(relay: Path) -> Path:
    """Where the enclave's evidence endpoint listens behind the forwarder, which carries TCP port 4501 there as a
    plain byte stream (HTTP inside): beside the datagram socket, named after it."""
    return relay.with_name(relay.name + ".evidence")


class RelayError(EnclaveIkeError):
    """A frame on the forwarder's stream that breaks the layout."""


@dataclass(frozen=True)
class Relayed:
    """One UDP datagram crossing the forwarder."""

    local: Endpoint
    peer: Endpoint
    payload: bytes = field(repr=False)

    def encode(self) -> bytes:
        if self.local.address.version != self.peer.address.version:
            raise RelayError(f"local {self.local} and peer {self.peer} are of different address families")
        if len(self.payload) > MAX_PAYLOAD:
            raise RelayError(f"a payload of {len(self.payload)} octets does not fit a UDP datagram")
        return b"".join((_FIXED.pack(VERSION, self.local.address.version),
                         self.local.address.packed, _PORT.pack(self.local.port),
                         self.peer.address.packed, _PORT.pack(self.peer.port),
                         _PORT.pack(len(self.payload)), self.payload))


class FrameReader:
    """Frames out of a byte stream that arrives in pieces of any size."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Relayed]:
        """Every frame that `data` completes; a part of the next one stays buffered (at most one frame's size)."""
        self._buffer += data
        frames = []
        while (frame := self._next()) is not None:
            frames.append(frame)
        return frames

    @property
    def pending(self) -> int:
        """Octets of an incomplete frame held."""
        return len(self._buffer)

    def _next(self) -> Relayed | None:
        buffer = self._buffer
        if buffer and buffer[0] != VERSION:  # refused at its first octet: garbage is never waited for
            raise RelayError(f"frame version {buffer[0]}, expected {VERSION}")
        if len(buffer) < _FIXED.size:
            return None
        size = _ADDRESS_SIZE.get(buffer[1])
        if size is None:
            raise RelayError(f"address family {buffer[1]}: 4 or 6")
        family = buffer[1]
        header = _FIXED.size + 2 * (size + _PORT.size) + _PORT.size
        if len(buffer) < header:
            return None
        (length,) = _PORT.unpack_from(buffer, header - _PORT.size)
        if len(buffer) < header + length:
            return None
        address = IPv4Address if family == 4 else IPv6Address
        at = _FIXED.size
        local = Endpoint(address(bytes(buffer[at:at + size])), _PORT.unpack_from(buffer, at + size)[0])
        at += size + _PORT.size
        peer = Endpoint(address(bytes(buffer[at:at + size])), _PORT.unpack_from(buffer, at + size)[0])
        payload = bytes(buffer[header:header + length])
        del buffer[:header + length]
        return Relayed(local, peer, payload)
