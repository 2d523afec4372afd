"""The channel between enclave-ike and its sim enclave process: length-prefixed frames over a stream socket.

    frame = uint32_be(length) || code (1 byte) || payload (length - 1 bytes),  1 <= length <= MAX_FRAME

A request's code is an Op, a reply's a Status. No answer contains private key material in the clear:

    PUBLIC_KEY  (no payload)         -> OK, SubjectPublicKeyInfo DER
    SIGN        (uint16_be(RFC 7427 hash number) || the data to sign)
                                     -> OK, the signature under that hash (RFC 7427 value: DER ECDSA-Sig-Value)
    EVIDENCE    (64 bytes)           -> OK, a sim report binding those bytes
    RECIPIENT   (no payload)         -> OK, a fresh ephemeral P-256 key's SubjectPublicKeyInfo DER (custody.py)
    SEAL        (field(recipient SPKI) || field(info) || field(key SPKI, or empty for the current key))
                                     -> OK, that held key sealed to the recipient key (HPKE, sealing.py)
    IMPORT      (field(info) || field(expected SPKI) || field(sealed key) || field(b"current" or b"next"))
                                     -> OK, the imported key's SubjectPublicKeyInfo DER
    NEXT        (no payload)         -> OK, the next key's SubjectPublicKeyInfo DER (made now if there is none)
    SWITCH      (no payload)         -> OK, the new current key's SubjectPublicKeyInfo DER (the next one; the old
                                        one is gone)
    anything else                    -> ERROR, a UTF-8 reason

where field(x) = uint16_be(len(x)) || x. SEAL hands the key out sealed to whatever public key enclave-ike names:
enclave-ike decides, after verifying that key's evidence (enclave_ike/release), as the code inside a real TEE would.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from enum import IntEnum

from .errors import ChannelError, ChannelIdle

MAX_FRAME = 64 * 1024
_LENGTH_SIZE = 4
HASH_SIZE = 2
"""The SIGN payload starts with the RFC 7427 hash number (SIGNATURE_HASH_ALGORITHMS' 16-bit values)."""


class Op(IntEnum):
    PUBLIC_KEY = 1
    SIGN = 2
    EVIDENCE = 3
    RECIPIENT = 4
    SEAL = 5
    IMPORT = 6
    NEXT = 7
    SWITCH = 8


class Status(IntEnum):
    OK = 0
    ERROR = 1


@dataclass(frozen=True)
class Frame:
    code: int
    payload: bytes = b""

    def encode(self) -> bytes:
        if not 0 <= self.code <= 0xFF:
            raise ChannelError(f"frame code {self.code} does not fit a byte")
        body = bytes([self.code]) + self.payload
        if len(body) > MAX_FRAME:
            raise ChannelError(f"frame of {len(body)} bytes, more than the {MAX_FRAME} allowed")
        return len(body).to_bytes(_LENGTH_SIZE, "big") + body

    @classmethod
    def decode(cls, body: bytes) -> Frame:
        if not body:
            raise ChannelError("empty frame")
        return cls(body[0], body[1:])


def fields(*values: bytes) -> bytes:
    """Values one after another, each after its uint16_be length (SEAL's and IMPORT's payloads)."""
    if any(len(value) > 0xFFFF for value in values):
        raise ChannelError("a field over 65535 bytes")
    return b"".join(len(value).to_bytes(2, "big") + value for value in values)


def split_fields(payload: bytes, count: int) -> tuple[bytes, ...] | None:
    """The `count` fields of a payload that holds exactly those, else None."""
    values, at = [], 0
    for _ in range(count):
        if at + 2 > len(payload):
            return None
        length = int.from_bytes(payload[at:at + 2], "big")
        at += 2
        if at + length > len(payload):
            return None
        values.append(payload[at:at + length])
        at += length
    return tuple(values) if at == len(payload) else None


def send(sock: socket.socket, frame: Frame) -> None:
    sock.sendall(frame.encode())


def receive(sock: socket.socket) -> Frame | None:
    """The next frame, or None when the peer closed the channel between frames. ChannelIdle when none begins
    within the socket's timeout (a timeout inside a frame is an OSError: the stream is out of step then)."""
    try:
        first = sock.recv(_LENGTH_SIZE)
    except TimeoutError:
        raise ChannelIdle("no frame within the timeout") from None
    if not first:
        return None
    length = int.from_bytes(first + _read_exact(sock, _LENGTH_SIZE - len(first)), "big")
    if not 1 <= length <= MAX_FRAME:
        raise ChannelError(f"frame length {length} outside 1..{MAX_FRAME}")
    return Frame.decode(_read_exact(sock, length))


def _read_exact(sock: socket.socket, size: int) -> bytes:
    chunks, remaining = [], size
    while remaining:
        chunk = sock.recv(remaining)
        if not chunk:
            raise ChannelError(f"channel closed inside a frame ({size - remaining} of {size} bytes read)")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
