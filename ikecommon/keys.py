"""Raw public keys as libreswan pins them (`rightecdsakey=0s...`, `rightrsasigkey=0s...`).

libreswan's raw ECDSA key is base64 of the point's x || y (no 0x04 prefix); its raw RSA key is RFC 3110
(exponent length, exponent, modulus). A pin is read from a PEM public key, from a bare `0s...` value, or
from a line as `ipsec showhostkey` / `enclave-ike identity --format libreswan` print it, and is always
checked: a point that is not on its curve or an RSA modulus under 2048 bits is refused.

`cryptography` is imported by the functions that check or convert a key, not with the module: config.py needs
this module, and a config without a pinned key (coffee-shop) then costs no ikectl command its import.
"""

# ruff: noqa: PLC0415 - cryptography is imported where a key is checked or converted (see above)

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UsageError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

ECDSA_SIZES = (64, 96, 132)  # raw x || y of P-256, P-384, P-521
MIN_RSA_BITS = 2048


class PinError(UsageError):
    """A public key that cannot be pinned."""


@dataclass(frozen=True)
class PinnedKey:
    kind: str  # "ecdsa" or "rsa"
    raw: bytes  # libreswan's raw form, decoded

    @property
    def libreswan(self) -> str:
        """The `0s...` value of a `rightecdsakey=` / `rightrsasigkey=` line."""
        return "0s" + base64.b64encode(self.raw).decode()

    @property
    def keyword(self) -> str:
        """The conn keyword that pins this key on the resolver's side (right)."""
        return "rightecdsakey" if self.kind == "ecdsa" else "rightrsasigkey"

    @property
    def auth(self) -> str:
        """libreswan's `rightauth=` value for this key."""
        return "ecdsa" if self.kind == "ecdsa" else "rsasig"


def from_public_key(key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> PinnedKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if isinstance(key, ec.EllipticCurvePublicKey):
        point = key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        return _checked(PinnedKey("ecdsa", point[1:]))
    numbers = key.public_numbers()
    exponent = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")
    modulus = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
    return _checked(PinnedKey("rsa", bytes([len(exponent)]) + exponent + modulus))


_LINE = re.compile(r"^\s*(?:(?:left|right)(ecdsakey|rsasigkey)\s*=\s*)?(0s[A-Za-z0-9+/=]+)\s*$")


def parse(text: str, kind: str | None = None, source: str = "key") -> PinnedKey:
    """A pin from PEM, a bare `0s...` value, or a `rightecdsakey=0s...` line. `kind` is needed for a bare
    value that could be either (it is guessed from the length otherwise)."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec, rsa

        try:
            key = serialization.load_pem_public_key(text.encode())
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise PinError(f"{source}: not a PEM public key ({exc})") from None
        if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise PinError(f"{source}: only ECDSA and RSA keys can be pinned, not {type(key).__name__}")
        return from_public_key(key)
    match = _LINE.match(text)
    if match is None:
        raise PinError(f"{source}: expected a PEM public key or a libreswan raw key (0s...)")
    keyword, value = match.groups()
    try:
        raw = base64.b64decode(value[2:], validate=True)
    except binascii.Error:
        raise PinError(f"{source}: the 0s value is not valid base64") from None
    if keyword:
        kind = "ecdsa" if keyword == "ecdsakey" else "rsa"
    if kind is None:
        kind = "ecdsa" if len(raw) in ECDSA_SIZES else "rsa"
    if kind not in ("ecdsa", "rsa"):
        raise PinError(f"{source}: key type must be ecdsa or rsa, not {kind!r}")
    return _checked(PinnedKey(kind, raw), source)


MAX_KEY_FILE = 64 * 1024


def load(path: Path, kind: str | None = None) -> PinnedKey:
    """A pin from a file: PEM, a libreswan raw key line, or a DER SubjectPublicKeyInfo (a binary file)."""
    try:
        with open(path, "rb") as key_file:
            data = key_file.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise PinError(f"{path}: cannot read the resolver's public key ({exc.strerror})") from None
    if len(data) > MAX_KEY_FILE:
        raise PinError(f"{path}: over {MAX_KEY_FILE} bytes, not a public key")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return _from_der(data, str(path))
    return parse(text, kind, source=str(path))


def _from_der(data: bytes, source: str) -> PinnedKey:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    try:
        key = serialization.load_der_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise PinError(f"{source}: a binary file that is not a DER public key (expected PEM, DER or a libreswan "
                       "raw key, 0s...)") from None
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise PinError(f"{source}: only ECDSA and RSA keys can be pinned, not {type(key).__name__}")
    return from_public_key(key)


def _checked(key: PinnedKey, source: str = "key") -> PinnedKey:
    if key.kind == "ecdsa":
        from cryptography.hazmat.primitives.asymmetric import ec

        curves: dict[int, ec.EllipticCurve] = {64: ec.SECP256R1(), 96: ec.SECP384R1(), 132: ec.SECP521R1()}
        curve = curves.get(len(key.raw))
        if curve is None:
            raise PinError(f"{source}: a raw ECDSA key is 64, 96 or 132 bytes (P-256/384/521), not {len(key.raw)}")
        try:
            ec.EllipticCurvePublicKey.from_encoded_point(curve, b"\x04" + key.raw)
        except ValueError:
            raise PinError(f"{source}: the ECDSA key is not a point on {curve.name}") from None
        return key
    if len(key.raw) < 3 or key.raw[0] == 0 or len(key.raw) < 1 + key.raw[0] + 1:
        raise PinError(f"{source}: not an RFC 3110 RSA key")
    modulus = int.from_bytes(key.raw[1 + key.raw[0]:], "big")
    if modulus.bit_length() < MIN_RSA_BITS:
        raise PinError(f"{source}: RSA modulus of {modulus.bit_length()} bits; at least {MIN_RSA_BITS} are needed")
    return key
