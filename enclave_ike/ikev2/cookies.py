"""Stateless cookies for IKE_SA_INIT (RFC 7296 2.6).

    Cookie = <VersionIDofSecret> | Hash(Ni | IPi | SPIi | <secret>)

Here the hash is HMAC-SHA-256 keyed with the secret, and the version is one octet, so a cookie is 33 octets. The
secret is injected (drawn by the caller from its random source) and rotated by the caller: `rotate` keeps the
previous secret valid, so cookies handed out just before a rotation still work once. Nothing is stored per
initiator; the responder keeps no state for a request until its cookie verifies.

`cookie_and_nonce` reads what the check needs from a request without decoding it: a flood of requests without a
cookie then costs a walk over the generic payload headers, a MAC and a short answer each, not a full decode.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives import constant_time, hashes, hmac

from .constants import NotifyType, PayloadType
from .errors import DecodeError, PolicyError
from .payloads import IKE_HEADER_SIZE, NONCE_MAX, NONCE_MIN, PAYLOAD_HEADER_SIZE, Address
from .wire import Reader

COOKIE_SECRET_SIZE = 32
COOKIE_SIZE = 33
_NEXT_PAYLOAD_OFFSET = 16
_NOTIFY_FIXED = 4  # protocol id, SPI size, notify message type


@dataclass(frozen=True)
class CookieSecrets:
    """The current secret (with its one-octet version) and the one before it, if any."""

    secret: bytes = field(repr=False)
    version: int = 0
    previous: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) < 16 or (self.previous is not None and len(self.previous) < 16):
            raise PolicyError("cookie secrets must be at least 16 octets")
        if not 0 <= self.version <= 0xFF:
            raise PolicyError("cookie secret version is one octet")

    def rotate(self, secret: bytes) -> CookieSecrets:
        """A new current secret; the current one becomes the previous (version - 1 mod 256)."""
        return CookieSecrets(secret, (self.version + 1) & 0xFF, self.secret)


def _mac(secret: bytes, nonce: bytes, address: Address, spi_i: bytes) -> bytes:
    h = hmac.HMAC(secret, hashes.SHA256())
    h.update(len(nonce).to_bytes(2, "big") + nonce + address.packed + spi_i)
    return h.finalize()


def make_cookie(secrets: CookieSecrets, nonce: bytes, address: Address, spi_i: bytes) -> bytes:
    """The cookie for an initiator's Ni, IP address and SPIi under the current secret."""
    return bytes([secrets.version]) + _mac(secrets.secret, nonce, address, spi_i)


def verify_cookie(secrets: CookieSecrets, cookie: bytes, nonce: bytes, address: Address, spi_i: bytes) -> bool:
    """Whether `cookie` was made by `make_cookie` for these inputs with the current or the previous secret."""
    if len(cookie) != COOKIE_SIZE:
        return False
    if cookie[0] == secrets.version:
        secret: bytes | None = secrets.secret
    elif cookie[0] == (secrets.version - 1) & 0xFF:
        secret = secrets.previous
    else:
        secret = None
    if secret is None:
        return False
    return constant_time.bytes_eq(cookie[1:], _mac(secret, nonce, address, spi_i))


def cookie_and_nonce(data: bytes) -> tuple[bytes | None, bytes] | None:
    """From an IKE_SA_INIT request whose header has been checked: the data of the COOKIE notify if it is the first
    payload (RFC 7296 2.6), else None, and Ni. Only the generic payload headers are read (3.2), each span bounded;
    None when the chain is broken or has no Nonce payload of a valid size (2.10). The full decode comes after the
    cookie verifies."""
    r = Reader(data, payload="IKE_SA_INIT")
    try:
        r.skip(_NEXT_PAYLOAD_OFFSET, "IKE header")
        payload_type = r.u8("next payload")
        r.skip(IKE_HEADER_SIZE - _NEXT_PAYLOAD_OFFSET - 1, "IKE header")
        cookie: bytes | None = None
        nonce: bytes | None = None
        first = True
        while payload_type not in (PayloadType.NONE, PayloadType.SK, PayloadType.SKF):
            next_type = r.u8("next payload")
            r.skip(1, "critical")
            length = r.u16("payload length")
            if length < PAYLOAD_HEADER_SIZE:
                return None
            body = r.bytes(length - PAYLOAD_HEADER_SIZE, "payload data")
            if (first and payload_type == PayloadType.NOTIFY and len(body) >= _NOTIFY_FIXED
                    and int.from_bytes(body[2:4], "big") == NotifyType.COOKIE):
                cookie = body[_NOTIFY_FIXED + body[1]:]
            elif payload_type == PayloadType.NONCE and nonce is None:
                nonce = body
            first = False
            payload_type = next_type
    except DecodeError:
        return None
    if nonce is None or not NONCE_MIN <= len(nonce) <= NONCE_MAX:
        return None
    return cookie, nonce
