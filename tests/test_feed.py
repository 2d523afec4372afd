"""Governance feeds: a spec from an https URL, signed by the pinned release key. The signature is checked before the
document is parsed; unsigned, badly signed, wrongly keyed, stale, malformed, redirected and untrusted-TLS feeds are
each refused with the field named. The TLS server runs on 127.0.0.1 with a throwaway CA made for the test."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from trust_servers import https_server, make_ca, sim_spec

from ikectl import feed
from ikectl.errors import UsageError

NOW = datetime.now(UTC)
KEY = ed25519.Ed25519PrivateKey.generate()


def document(serial: int = 3, expires: datetime | None = None, **extra: object) -> bytes:
    body = {"version": 1, "serial": serial, "expires": (expires or NOW + timedelta(days=30)).isoformat(),
            "spec": json.loads(sim_spec().encode()), **extra}
    return json.dumps(body, indent=1).encode()


def refused(doc: bytes, signature: bytes | None, field: str, key: feed.ReleaseKey | None = None) -> None:
    with pytest.raises(feed.FeedError, match="^" + re.escape(field)):
        feed.verify(doc, signature, key or KEY.public_key(), NOW)


def test_a_document_signed_by_the_release_key_gives_its_spec_and_serial():
    doc = document()
    verified = feed.verify(doc, feed.sign(doc, KEY), KEY.public_key(), NOW)
    assert verified.spec == sim_spec() and verified.serial == 3


def test_ecdsa_p256_release_keys_work_too():
    key = ec.generate_private_key(ec.SECP256R1())
    doc = document()
    assert feed.verify(doc, feed.sign(doc, key), key.public_key(), NOW).spec == sim_spec()
    refused(doc, feed.sign(doc, key), "feed.signature.algorithm")  # an Ed25519 release key was pinned


def test_an_unsigned_feed_is_refused():
    refused(document(), None, "feed.signature: missing")


def test_a_changed_document_is_refused():
    doc = document()
    signature = feed.sign(doc, KEY)
    refused(doc.replace(b'"serial": 3', b'"serial": 4'), signature, "feed.signature.signature: does not verify")
    refused(doc + b" ", signature, "feed.signature.signature")  # the bytes as served, not their meaning


def test_a_feed_signed_by_another_key_is_refused_even_if_it_claims_the_release_key():
    doc = document()
    other = ed25519.Ed25519PrivateKey.generate()
    refused(doc, feed.sign(doc, other), "feed.signature.key_id")
    forged = json.loads(feed.sign(doc, other))
    forged["key_id"] = feed.key_id(KEY.public_key())
    refused(doc, json.dumps(forged).encode(), "feed.signature.signature")


def test_the_release_keys_signature_over_the_bare_document_is_not_a_feed_signature():
    doc = document()
    signature = json.loads(feed.sign(doc, KEY))
    bare = KEY.sign(doc)  # no domain label: a signature made for another purpose
    signature["signature"] = base64.urlsafe_b64encode(bare).rstrip(b"=").decode()
    refused(doc, json.dumps(signature).encode(), "feed.signature.signature")


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda s: {**s, "version": 2}, "feed.signature.version"),
    (lambda s: {**s, "extra": 1}, "feed.signature: expected an object"),
    (lambda s: {k: v for k, v in s.items() if k != "signature"}, "feed.signature: expected an object"),
    (lambda s: {**s, "signature": s["signature"] + "="}, "feed.signature.signature: not base64url"),
    (lambda s: {**s, "signature": 7}, "feed.signature.signature: not base64url"),
    (lambda s: {**s, "algorithm": "rsa"}, "feed.signature.algorithm"),
])
def test_malformed_signatures_are_refused(mutate, field):
    doc = document()
    refused(doc, json.dumps(mutate(json.loads(feed.sign(doc, KEY)))).encode(), field)
    refused(doc, b"not json", "feed.signature: not JSON")
    refused(doc, b'{"version": 1, "version": 1}', "feed.signature: member 'version' appears twice")


@pytest.mark.parametrize(("doc", "field"), [
    (document(expires=NOW - timedelta(seconds=1)), "feed.expires: "),
    (document(expires=datetime(2030, 1, 1)), "feed.expires: '2030-01-01T00:00:00' is not an ISO 8601 time with a zone"),
    (document(serial=-1), "feed.serial"),
    (document(serial=True), "feed.serial"),
    (document(extra=1), "feed.extra: unknown field"),
    (json.dumps({"version": 1, "serial": 1, "expires": "2999-01-01T00:00:00Z"}).encode(), "feed.spec: missing"),
    (json.dumps({"version": 2, "serial": 1, "expires": "2999-01-01T00:00:00Z", "spec": []}).encode(),
     "feed.version"),
    (json.dumps({"version": 1, "serial": 1, "expires": "2999-01-01T00:00:00Z", "spec": [{"x": 1}]}).encode(),
     "feed.spec[0].x: unknown field"),
    (b'{"version": 1, "version": 1}', "feed: member 'version' appears twice"),
    (b"[1, NaN]", "feed: NaN is not JSON"),
    (b"\xff", "feed: not UTF-8"),
    (b" " * (feed.MAX_DOCUMENT + 1), "feed: 69633 bytes, more than the 69632 allowed"),
])
def test_a_signed_document_must_still_be_a_good_one(doc, field):
    refused(doc, feed.sign(doc, KEY), field)


def test_release_keys_are_ed25519_or_p256_pem(tmp_path):
    path = tmp_path / "release.pem"
    path.write_bytes(KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo))
    assert feed.key_id(feed.load_release_key(path)) == feed.key_id(KEY.public_key())
    others = (rsa.generate_private_key(public_exponent=65537, key_size=2048), ec.generate_private_key(ec.SECP384R1()))
    for key in others:
        path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo))
        with pytest.raises(UsageError, match="an Ed25519 or ECDSA P-256 key"):
            feed.load_release_key(path)
    path.write_text("junk")
    with pytest.raises(UsageError, match="not a PEM public key"):
        feed.load_release_key(path)
    with pytest.raises(UsageError, match="cannot read it"):
        feed.load_release_key(tmp_path / "absent.pem")


@pytest.mark.parametrize("url", ["http://127.0.0.1/spec.json", "https://user:pw@host/spec", "https:///x",
                                 "ftp://host/x", "https://host/x#frag", "https://h/" + "a" * 3000])
def test_only_https_urls_without_credentials(url):
    with pytest.raises(UsageError, match="an https URL"):
        feed.fetch(url, KEY.public_key(), NOW)


# --- over TLS ---

def served(tmp_path: Path, files: dict[str, bytes | tuple[int, dict[str, str]]]):
    return https_server(tmp_path, files)


def test_fetch_over_tls_with_the_ca_file(tmp_path):
    doc = document()
    with served(tmp_path, {"/spec.json": doc, "/spec.json.sig": feed.sign(doc, KEY)}) as base:
        got = feed.fetch(f"{base}/spec.json", KEY.public_key(), NOW, cafile=tmp_path / "ca.pem", timeout=5)
    assert got.spec == sim_spec()


def test_fetch_refuses_an_unsigned_or_badly_signed_feed(tmp_path):
    doc = document()
    other = ed25519.Ed25519PrivateKey.generate()
    files: dict[str, bytes | tuple[int, dict[str, str]]] = {"/unsigned.json": doc, "/other.json": doc,
                                                           "/other.json.sig": feed.sign(doc, other)}
    with served(tmp_path, files) as base:
        for name, field in (("unsigned", "feed.signature: missing"), ("other", "feed.signature.key_id")):
            with pytest.raises(feed.FeedError, match=re.escape(field)):
                feed.fetch(f"{base}/{name}.json", KEY.public_key(), NOW, cafile=tmp_path / "ca.pem", timeout=5)
        with pytest.raises(feed.FeedError, match=r"^feed: .* answered 404"):
            feed.fetch(f"{base}/absent.json", KEY.public_key(), NOW, cafile=tmp_path / "ca.pem", timeout=5)


def test_fetch_refuses_a_server_the_ca_does_not_vouch_for(tmp_path):
    doc = document()
    other_ca = tmp_path / "other"
    other_ca.mkdir()
    wrong, _, _ = make_ca(other_ca)
    with served(tmp_path, {"/spec.json": doc, "/spec.json.sig": feed.sign(doc, KEY)}) as base:
        for cafile in (wrong, None):  # another CA; the system's CAs (which do not know the test CA)
            with pytest.raises(feed.FeedError, match="CERTIFICATE_VERIFY_FAILED"):
                feed.fetch(f"{base}/spec.json", KEY.public_key(), NOW, cafile=cafile, timeout=5)


def test_fetch_does_not_follow_redirects(tmp_path):
    doc = document()
    files: dict[str, bytes | tuple[int, dict[str, str]]] = {
        "/moved.json": (302, {"Location": "http://127.0.0.1:1/spec.json"}),
        "/spec.json": doc, "/spec.json.sig": feed.sign(doc, KEY)}
    with served(tmp_path, files) as base, pytest.raises(feed.FeedError, match=r"302 redirect to .* refused"):
        feed.fetch(f"{base}/moved.json", KEY.public_key(), NOW, cafile=tmp_path / "ca.pem", timeout=5)


def test_fetch_bounds_the_size(tmp_path):
    big = b"{" + b" " * (feed.MAX_DOCUMENT + 10) + b"}"
    with served(tmp_path, {"/big.json": big}) as base, pytest.raises(feed.FeedError, match="more than"):
        feed.fetch(f"{base}/big.json", KEY.public_key(), NOW, cafile=tmp_path / "ca.pem", timeout=5)


def test_a_bad_ca_file_is_a_usage_error(tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("nope")
    with pytest.raises(UsageError, match=r"trust\.feed_ca_file"):
        feed.fetch("https://127.0.0.1:1/x", KEY.public_key(), NOW, cafile=bad)


def test_ecdsa_signature_is_der_over_the_labelled_document():
    key = ec.generate_private_key(ec.SECP256R1())
    doc = document()
    signature = json.loads(feed.sign(doc, key))
    raw = base64.urlsafe_b64decode(signature["signature"] + "=" * (-len(signature["signature"]) % 4))
    key.public_key().verify(raw, feed.LABEL + doc, ec.ECDSA(hashes.SHA256()))
