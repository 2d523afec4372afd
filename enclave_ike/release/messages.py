"""The two messages of a key release, as JSON, and the HPKE context that ties the sealed key to its request.

    KeyRequest  {"type": "enclave-ike key request v1",
                 "challenge": HEX,      the holder's single-use nonce (POST /release/challenge)
                 "nonce": HEX,          the joiner's fresh nonce, for the holder's evidence
                 "evidence": B64URL,    an evidence envelope: ike-key = the joiner's ephemeral P-256 key, nonce =
                                        the challenge, report data bound under KEY_REQUEST_LABEL
                 "key": HEX}            optional: the key wanted, as SubjectPublicKeyInfo DER (a rotation's next
                                        key, or a current key whose switch the asker missed: release/rotation.py);
                                        without it, the holder's current key
    KeyGrant    {"type": "enclave-ike key grant v1",
                 "evidence": B64URL,    an evidence envelope: ike-key = the service's identity key, nonce = the
                                        joiner's nonce, report data bound under KEY_GRANT_LABEL
                 "sealed": B64URL,      the identity key, sealed to the ephemeral key (enclave/sealing.py) with
                                        info = seal_info(the request's bytes, the identity key, its role)
                 "switch_at": INT,      only for a next key: the Unix time every replica signs with it from
                 "since": INT}          only for a current key that a rotation made current: that switch time

B64URL is base64url without padding. Decoding is strict (strictjson: no duplicate members; no unknown member; sizes
bounded): a malformed message is a MessageError naming the member, before anything is verified.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ikecommon import strictjson
from ikecommon.attestation.binding import KEY_GRANT_LABEL, NONCE_MAX, NONCE_MIN
from ikecommon.attestation.envelope import MAX_ENVELOPE
from ikecommon.unixtime import is_unix_time

from ..enclave.sealing import MAX_SEALED
from .errors import MessageError

REQUEST_TYPE = "enclave-ike key request v1"
GRANT_TYPE = "enclave-ike key grant v1"
MAX_MESSAGE = MAX_ENVELOPE * 4 // 3 + MAX_SEALED * 4 // 3 + 1024
_HEX = re.compile(rf"(?:[0-9a-f]{{2}}){{{NONCE_MIN},{NONCE_MAX}}}")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
MAX_KEY = 2048  # an RSA-4096 SubjectPublicKeyInfo is 550 bytes
_KEY_HEX = re.compile(rf"(?:[0-9a-f]{{2}}){{1,{MAX_KEY}}}")


@dataclass(frozen=True)
class KeyRequest:
    challenge: bytes
    nonce: bytes
    evidence: bytes  # the envelope, as the joiner's enclave made it
    key: bytes | None = None  # the key wanted (its SPKI DER); None: the holder's current key

    def encode(self) -> bytes:
        members = {"type": REQUEST_TYPE, "challenge": self.challenge.hex(), "nonce": self.nonce.hex(),
                   "evidence": _b64(self.evidence)}
        if self.key is not None:
            members["key"] = self.key.hex()
        return _encode(members)

    @classmethod
    def decode(cls, data: bytes) -> KeyRequest:
        members = _members(data, "request", REQUEST_TYPE, ("challenge", "nonce", "evidence"), ("key",))
        key = members.get("key")
        if "key" in members and (not isinstance(key, str) or not _KEY_HEX.fullmatch(key)):
            raise MessageError("request.key", f"expected a public key (SubjectPublicKeyInfo DER) as lower-case hex, "
                                              f"at most {MAX_KEY} bytes")
        return cls(_nonce(members, "challenge", "request"), _nonce(members, "nonce", "request"),
                   _bytes(members, "evidence", "request", MAX_ENVELOPE), None if key is None else bytes.fromhex(key))


@dataclass(frozen=True)
class KeyGrant:
    evidence: bytes
    sealed: bytes
    switch_at: int | None = None  # a next key's switch time; None for the current key
    since: int = 0                # the current key's: when a rotation made it current (0: the service's first key)

    def encode(self) -> bytes:
        members: dict[str, str | int] = {"type": GRANT_TYPE, "evidence": _b64(self.evidence),
                                         "sealed": _b64(self.sealed)}
        if self.switch_at is not None:
            members["switch_at"] = self.switch_at
        if self.since:
            members["since"] = self.since
        return _encode(members)

    @classmethod
    def decode(cls, data: bytes) -> KeyGrant:
        members = _members(data, "grant", GRANT_TYPE, ("evidence", "sealed"), ("switch_at", "since"))
        for name in ("switch_at", "since"):
            value = members.get(name)
            if name in members and not is_unix_time(value):
                raise MessageError(f"grant.{name}", "expected a Unix time in whole seconds")
        if "switch_at" in members and "since" in members:
            raise MessageError("grant", "a key is either next (switch_at) or current (since), not both")
        return cls(_bytes(members, "evidence", "grant", MAX_ENVELOPE), _bytes(members, "sealed", "grant", MAX_SEALED),
                   members.get("switch_at"), members.get("since", 0))

    @property
    def role(self) -> bytes:
        return role(self.switch_at, self.since)


def role(switch_at: int | None, since: int) -> bytes:
    """The role a key is granted in, as bound into the HPKE context (seal_info): changed on the way, it does not
    open."""
    if switch_at is not None:
        return b"next@" + str(switch_at).encode("ascii")
    return b"current" if not since else b"current@" + str(since).encode("ascii")


def seal_info(request: bytes, identity_spki: bytes, role: bytes = b"current") -> bytes:
    """HPKE's info for the key granted to `request` (its exact bytes): a sealed key opens for that request only,
    only as the key the grant's evidence attests, and only in the role the grant says (KeyGrant.role: the current
    key, since when; or a next key, switched to when): a grant whose times were changed on the way does not open."""
    return (KEY_GRANT_LABEL + hashlib.sha256(request).digest() + hashlib.sha256(identity_spki).digest() + role)


def _encode(members: Mapping[str, str | int]) -> bytes:
    return json.dumps(members, separators=(",", ":")).encode("ascii")


def _members(data: bytes, what: str, type_: str, names: tuple[str, ...],
             optional: tuple[str, ...] = ()) -> dict[str, Any]:
    if len(data) > MAX_MESSAGE:
        raise MessageError(what, f"{len(data)} bytes, more than {MAX_MESSAGE}")
    try:
        members = strictjson.loads(data)
    except strictjson.JsonError as exc:
        raise MessageError(what, f"not strict JSON: {exc.detail}") from None
    if not isinstance(members, dict):
        raise MessageError(what, "not a JSON object")
    if members.get("type") != type_:
        raise MessageError(f"{what}.type", f"expected {type_!r}, got {str(members.get('type'))[:60]!r}")
    unknown = sorted(set(members) - {"type", *names, *optional})
    missing = [name for name in names if name not in members]
    if unknown or missing:
        raise MessageError(what, "; ".join(([f"unknown member {', '.join(unknown)}"] if unknown else [])
                                           + ([f"missing {', '.join(missing)}"] if missing else [])))
    return members


def _nonce(members: dict[str, Any], name: str, what: str) -> bytes:
    value = members[name]
    if not isinstance(value, str) or not _HEX.fullmatch(value):
        raise MessageError(f"{what}.{name}", f"expected {NONCE_MIN} to {NONCE_MAX} bytes as lower-case hex")
    return bytes.fromhex(value)


def _bytes(members: dict[str, Any], name: str, what: str, limit: int) -> bytes:
    value = members[name]
    if not isinstance(value, str) or not _BASE64URL.fullmatch(value) or len(value) % 4 == 1:
        raise MessageError(f"{what}.{name}", "expected base64url without padding")
    try:
        decoded = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise MessageError(f"{what}.{name}", "expected base64url without padding") from None
    if not decoded or len(decoded) > limit or _b64(decoded) != value:
        raise MessageError(f"{what}.{name}", f"expected 1 to {limit} bytes in canonical base64url")
    return decoded


def _b64(value: bytes) -> str:
    return base64.urlsafe_b64encode(value).rstrip(b"=").decode("ascii")
