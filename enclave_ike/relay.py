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

import functools
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
        if len(self.payload) > MAX_PAYLOAD:
            raise RelayError(f"a payload of {len(self.payload)} octets does not fit a UDP datagram")
        return b"".join((_header(self.local, self.peer), _PORT.pack(len(self.payload)), self.payload))


# A relay carries the datagrams of a few endpoints and of each client's: their parts of the frame are made once.

@functools.lru_cache(maxsize=4096)
def _header(local: Endpoint, peer: Endpoint) -> bytes:
    """A frame's octets up to the payload length."""
    if local.address.version != peer.address.version:
        raise RelayError(f"local {local} and peer {peer} are of different address families")
    return b"".join((_FIXED.pack(VERSION, local.address.version), local.address.packed, _PORT.pack(local.port),
                     peer.address.packed, _PORT.pack(peer.port)))


@functools.lru_cache(maxsize=4096)
def _endpoint(family: int, raw: bytes) -> Endpoint:
    """An endpoint as a frame holds it: the address's octets, then the port's."""
    address = IPv4Address(raw[:-_PORT.size]) if family == 4 else IPv6Address(raw[:-_PORT.size])
    return Endpoint(address, int.from_bytes(raw[-_PORT.size:], "big"))


@functools.lru_cache(maxsize=4096)
def socket_peer(host: str, port: int) -> Endpoint:
    """The peer of a datagram as asyncio gives it (host text, port; an IPv6 scope dropped), parsed once per address
    and port, not once per datagram."""
    return Endpoint.parse(str(host).split("%")[0], int(port))


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
        at, width = _FIXED.size, size + _PORT.size
        local = _endpoint(family, bytes(buffer[at:at + width]))
        peer = _endpoint(family, bytes(buffer[at + width:at + 2 * width]))
        payload = bytes(buffer[header:header + length])
        del buffer[:header + length]
        return Relayed(local, peer, payload)
