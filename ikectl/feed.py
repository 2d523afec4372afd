"""Governance feeds: a measurement spec fetched from an https URL, signed by a release key the client pins
([trust] release_key in ikectl.toml). Two resources, the document and its detached signature:

    URL        the document: JSON, UTF-8, at most 64 KiB
                 {"version": 1, "serial": 7, "expires": "2027-01-01T00:00:00Z", "spec": [<measurement spec entries>]}
    URL.sig    the signature: JSON
                 {"version": 1, "algorithm": "ed25519" | "ecdsa-p256-sha256",
                  "key_id": "<hex SHA-256 of the release key's SubjectPublicKeyInfo DER>",
                  "signature": "<base64url, no padding: 64 raw bytes (Ed25519) or DER (ECDSA)>"}

The signature covers  "enclave-ike governance feed v1" || 0x00 || the document's bytes exactly as served, so the
release key's signatures over anything else (a tarball, a tag) cannot be passed off as a feed. The signature is
verified before a byte of the document is parsed. Then the document: strict JSON with exactly these members, the
spec as attestation/spec.py reads it, `expires` in the future (a frozen feed stops being accepted), and `serial` at
least the highest one this client accepted for the pin (a rolled-back feed is refused: `trust.py` keeps the serial).

Fetching: https only (TLS verified against the system's CAs, or only the CA file given), no proxies, no redirects,
bounded size and time. Every refusal is a FeedError whose message starts with the field (`feed.signature.key_id`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from http.client import HTTPMessage
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from ikecommon import strictjson
from ikecommon.attestation.spec import MAX_SPEC, MeasurementSpec, SpecFormatError

from .errors import IkectlError, UsageError

LABEL = b"enclave-ike governance feed v1\0"
VERSION = 1
MAX_DOCUMENT = MAX_SPEC + 4096
MAX_SIGNATURE = 4096
MAX_URL = 2048
ED25519, ECDSA_P256 = "ed25519", "ecdsa-p256-sha256"
_DOCUMENT_FIELDS = {"version", "serial", "expires", "spec"}
_SIGNATURE_FIELDS = {"version", "algorithm", "key_id", "signature"}

ReleaseKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
SigningKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


class FeedError(IkectlError):
    """A governance feed that could not be fetched, is not signed by the release key, or does not parse."""


@dataclass(frozen=True)
class FeedDocument:
    serial: int
    expires: datetime
    spec: MeasurementSpec


def key_id(key: ReleaseKey) -> str:
    return hashlib.sha256(key.public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def load_release_key(path: Path) -> ReleaseKey:
    """The release key from a PEM public key file: Ed25519 or ECDSA P-256 (a bad one is a UsageError, exit 2)."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise UsageError(f"trust.release_key {path}: cannot read it ({exc.strerror})") from None
    except (ValueError, UnsupportedAlgorithm):
        raise UsageError(f"trust.release_key {path}: not a PEM public key") from None
    if isinstance(key, ed25519.Ed25519PublicKey) or (isinstance(key, ec.EllipticCurvePublicKey)
                                                     and key.curve.name == "secp256r1"):
        return key
    raise UsageError(f"trust.release_key {path}: an Ed25519 or ECDSA P-256 key, not {type(key).__name__}")


def sign(document: bytes, key: SigningKey) -> bytes:
    """The URL.sig file for `document` (a release tool's half; tests use it too)."""
    message = LABEL + document
    if isinstance(key, ed25519.Ed25519PrivateKey):
        algorithm, signature = ED25519, key.sign(message)
    else:
        algorithm, signature = ECDSA_P256, key.sign(message, ec.ECDSA(hashes.SHA256()))
    return json.dumps({"version": VERSION, "algorithm": algorithm, "key_id": key_id(key.public_key()),
                       "signature": base64.urlsafe_b64encode(signature).rstrip(b"=").decode()}, indent=1).encode()


def verify(document: bytes, signature_file: bytes | None, release_key: ReleaseKey, now: datetime) -> FeedDocument:
    """The signature first (FeedError naming the field), then the document."""
    if signature_file is None:
        raise FeedError("feed.signature: missing: the feed is not signed (no URL.sig); nothing is trusted from it")
    _check_signature(document, _signature(signature_file), release_key)
    return _document(document, now)


def _signature(raw: bytes) -> dict[str, Any]:
    data = _json(raw, "feed.signature", MAX_SIGNATURE)
    if not isinstance(data, dict) or set(data) != _SIGNATURE_FIELDS:
        raise FeedError(f"feed.signature: expected an object with exactly {', '.join(sorted(_SIGNATURE_FIELDS))}")
    if data["version"] != VERSION:
        raise FeedError(f"feed.signature.version: {data['version']!r} is not {VERSION}")
    return data


def _check_signature(document: bytes, data: dict[str, Any], release_key: ReleaseKey) -> None:
    algorithm = data["algorithm"]
    wanted = ED25519 if isinstance(release_key, ed25519.Ed25519PublicKey) else ECDSA_P256
    if algorithm != wanted:
        raise FeedError(f"feed.signature.algorithm: {algorithm!r}, but the release key is {wanted}")
    if data["key_id"] != key_id(release_key):
        raise FeedError(f"feed.signature.key_id: signed by key {str(data['key_id'])[:64]!r}, not by the release key "
                        f"{key_id(release_key)}")
    text = data["signature"]
    try:
        if not isinstance(text, str) or "=" in text:
            raise ValueError
        signature = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, binascii.Error):
        raise FeedError("feed.signature.signature: not base64url without padding") from None
    try:
        if isinstance(release_key, ed25519.Ed25519PublicKey):
            release_key.verify(signature, LABEL + document)
        else:
            release_key.verify(signature, LABEL + document, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        raise FeedError("feed.signature.signature: does not verify with the release key over the document as "
                        "served (changed, or signed over other bytes)") from None


def _document(raw: bytes, now: datetime) -> FeedDocument:
    data = _json(raw, "feed", MAX_DOCUMENT)
    if not isinstance(data, dict):
        raise FeedError("feed: expected a JSON object")
    unknown, missing = sorted(set(data) - _DOCUMENT_FIELDS), sorted(_DOCUMENT_FIELDS - set(data))
    if unknown or missing:
        raise FeedError(f"feed.{(unknown or missing)[0]}: {'unknown field' if unknown else 'missing'}")
    if data["version"] != VERSION:
        raise FeedError(f"feed.version: {data['version']!r} is not {VERSION}")
    serial = data["serial"]
    if not isinstance(serial, int) or isinstance(serial, bool) or not 0 <= serial < 2**53:
        raise FeedError(f"feed.serial: {serial!r} is not a whole number from 0 to 2^53")
    expires = _time(data["expires"], "feed.expires")
    if expires <= now:
        raise FeedError(f"feed.expires: {data['expires']} has passed: the feed is stale (a frozen or replayed feed)")
    try:
        spec = MeasurementSpec.decode(json.dumps(data["spec"]).encode())
    except SpecFormatError as exc:
        raise FeedError(f"feed.{exc}") from None
    return FeedDocument(serial, expires, spec)


def _json(raw: bytes, field: str, limit: int) -> Any:
    if len(raw) > limit:
        raise FeedError(f"{field}: {len(raw)} bytes, more than the {limit} allowed")
    try:
        return strictjson.loads(raw)
    except strictjson.JsonError as exc:
        if exc.member is not None:
            raise FeedError(f"{field}: member {exc.member[:40]!r} appears twice") from None
        raise FeedError(f"{field}: {exc.detail}") from None


def _time(value: object, field: str) -> datetime:
    try:
        if not isinstance(value, str):
            raise ValueError
        when = datetime.fromisoformat(value)
        if when.tzinfo is None:
            raise ValueError
    except ValueError:
        raise FeedError(f"{field}: {value!r} is not an ISO 8601 time with a zone, such as 2027-01-01T00:00:00Z") \
            from None
    return when.astimezone(UTC)


# --- fetching ---

def check_url(url: str, where: str = "--spec") -> str:
    """An https URL without credentials (a UsageError, exit 2, otherwise)."""
    parts = urlsplit(url)
    if len(url) > MAX_URL or parts.scheme != "https" or not parts.hostname or parts.username or parts.password \
            or parts.fragment:
        raise UsageError(f"{where} {url[:80]!r}: a governance feed is an https URL without credentials or fragment")
    return url


def fetch(url: str, release_key: ReleaseKey, now: datetime, *, cafile: Path | None = None,
          timeout: float = 10.0) -> FeedDocument:
    check_url(url)
    try:
        context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"trust.feed_ca_file {cafile}: not a CA file ({exc})") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context),
                                         _NoRedirects())
    document = _get(opener, url, timeout, MAX_DOCUMENT, "feed")
    if document is None:
        raise FeedError(f"feed: {url} answered 404 Not Found")
    return verify(document, _get(opener, url + ".sig", timeout, MAX_SIGNATURE, "feed.signature"), release_key, now)


def _get(opener: urllib.request.OpenerDirector, url: str, timeout: float, limit: int, field: str) -> bytes | None:
    """The body of a 200 answer; None for 404 (absent); FeedError for anything else."""
    try:
        with opener.open(url, timeout=timeout) as answer:
            body: bytes = answer.read(limit + 1)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise FeedError(f"{field}: {url} answered {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason.strerror if isinstance(exc.reason, OSError) and exc.reason.strerror else exc.reason
        raise FeedError(f"{field}: cannot fetch {url}: {reason}") from None
    except (OSError, ValueError) as exc:
        raise FeedError(f"{field}: cannot fetch {url}: {exc}") from None
    if len(body) > limit:
        raise FeedError(f"{field}: {url} is more than {limit} bytes")
    return body


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A feed is fetched from where it was pinned: a redirect (possibly to http) is an error, not followed."""

    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                         headers: HTTPMessage, newurl: str) -> urllib.request.Request | None:
        raise urllib.error.HTTPError(req.full_url, code, f"redirect to {newurl[:80]} refused", headers, fp)
