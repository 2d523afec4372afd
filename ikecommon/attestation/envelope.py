"""The evidence envelope: what enclave-ike hands a client to prove which key its TEE holds.

The envelope is a JSON CMW collection (RATS Conceptual Message Wrapper, draft-ietf-rats-msg-wrap): a JSON object
whose `__cmwc_t` names the collection type and whose other members are CMW records `[media type, base64url value]`
or `[media type, base64url value, indicator]`. Values are base64url without padding, as CMW requires; the indicator
is CMW's bitmap (4 = evidence, 2 = endorsements). Labels and media types:

    label                  media type                                        ind  carries
    evidence               application/vnd.enclave-ike.tdx-quote              4    the TDX quote (v4, v5)
                           application/vnd.enclave-ike.sev-snp-report         4    the SEV-SNP report (1184 bytes)
                           application/vnd.enclave-ike.sim-report             4    the sim report (NOT SECURE)
    ike-key                application/vnd.enclave-ike.spki+der               -    SubjectPublicKeyInfo, canonical DER
    nonce                  application/vnd.enclave-ike.nonce                  -    the client's nonce, 16-64 bytes
    certificates           application/pem-certificate-chain (RFC 8555)       2    sev-snp: VCEK, ASK[, ARK]
    tdx-tcb-info           application/vnd.enclave-ike.tdx-tcb-info+json      2    Intel's TCB info document
    tdx-qe-identity        application/vnd.enclave-ike.tdx-qe-identity+json   2    Intel's QE identity document
    tdx-tcb-signing-chain  application/pem-certificate-chain                  2    the TCB signing chain
    crl-1 .. crl-8         application/pkix-crl (RFC 2585, DER)               2    CRLs (tdx: PCK CA and root)

The vnd.enclave-ike types are not registered with IANA. Decoding is strict: any unknown member, wrong type, bad
base64url, a value over its size limit, a member the evidence type does not use, or a duplicate key is an
EnvelopeFormatError naming the member; evidence of another media type, or an IKE key of a type IKE here does not
sign with (Ed25519, another curve), is an UnsupportedEvidence. Nothing here judges the evidence; `verify.py` does.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .. import strictjson
from .binding import NONCE_MAX, NONCE_MIN
from .certs import pem_chain
from .errors import EvidenceFormatError, UnsupportedEvidence

ENVELOPE_TYPE = "tag:enclave-ike,2026:evidence-envelope/v1"
COLLECTION_TYPE_KEY = "__cmwc_t"
MAX_ENVELOPE = 256 * 1024
MAX_CRLS = 8

IND_ENDORSEMENTS, IND_EVIDENCE = 2, 4  # CMW cm-type bits 1 and 2
PEM_CHAIN = "application/pem-certificate-chain"
PKIX_CRL = "application/pkix-crl"


class EvidenceKind(StrEnum):
    TDX = "tdx"
    SEV_SNP = "sev-snp"
    SIM = "sim"


EVIDENCE_MEDIA_TYPES: Mapping[EvidenceKind, str] = {
    EvidenceKind.TDX: "application/vnd.enclave-ike.tdx-quote",
    EvidenceKind.SEV_SNP: "application/vnd.enclave-ike.sev-snp-report",
    EvidenceKind.SIM: "application/vnd.enclave-ike.sim-report",
}
_KIND_BY_MEDIA_TYPE = {media_type: kind for kind, media_type in EVIDENCE_MEDIA_TYPES.items()}


class EnvelopeFormatError(EvidenceFormatError):
    """The envelope is not a well-formed evidence envelope; `field` names the member (`envelope.nonce`, ...)."""


@dataclass(frozen=True)
class Evidence:
    """What a TEE backend produces for one report data: the evidence, and the certificates the platform hands out
    with it (SEV-SNP: VCEK, ASK, ARK from the host's certificate table), DER, leaf first."""

    kind: EvidenceKind
    data: bytes
    certificates: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class Collateral:
    """Vendor documents a verifier needs beside the evidence, as served by the vendor (their own signatures are
    what makes them trustworthy, not the envelope)."""

    tdx_tcb_info: bytes | None = None
    tdx_qe_identity: bytes | None = None
    tdx_tcb_signing_chain: bytes | None = None
    crls: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class _Member:
    media_type: str | None  # None: chosen by the evidence kind
    ind: int | None
    max_size: int
    kinds: frozenset[EvidenceKind]


_ALL = frozenset(EvidenceKind)
_TDX = frozenset({EvidenceKind.TDX})
_MEMBERS: Mapping[str, _Member] = {
    "evidence": _Member(None, IND_EVIDENCE, 32 * 1024, _ALL),  # configfs-tsm's outblob limit
    "ike-key": _Member("application/vnd.enclave-ike.spki+der", None, 2048, _ALL),
    "nonce": _Member("application/vnd.enclave-ike.nonce", None, NONCE_MAX, _ALL),
    "certificates": _Member(PEM_CHAIN, IND_ENDORSEMENTS, 32 * 1024, frozenset({EvidenceKind.SEV_SNP})),
    "tdx-tcb-info": _Member("application/vnd.enclave-ike.tdx-tcb-info+json", IND_ENDORSEMENTS, 64 * 1024, _TDX),
    "tdx-qe-identity": _Member("application/vnd.enclave-ike.tdx-qe-identity+json", IND_ENDORSEMENTS, 16 * 1024,
                               _TDX),
    "tdx-tcb-signing-chain": _Member(PEM_CHAIN, IND_ENDORSEMENTS, 16 * 1024, _TDX),
    **{f"crl-{n}": _Member(PKIX_CRL, IND_ENDORSEMENTS, 64 * 1024, frozenset({EvidenceKind.TDX, EvidenceKind.SEV_SNP}))
       for n in range(1, MAX_CRLS + 1)},
}
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
_IKE_KEYS = "ECDSA P-256, P-384 or P-521, or RSA"


@dataclass(frozen=True)
class Envelope:
    evidence: Evidence
    ike_key: bytes  # SubjectPublicKeyInfo DER, canonical
    nonce: bytes
    collateral: Collateral = Collateral()

    def encode(self) -> bytes:
        """The envelope as compact JSON, members in a fixed order. Raises EnvelopeFormatError for an envelope that
        decode() would refuse, so nothing is sent that a client cannot read."""
        members: dict[str, Any] = {COLLECTION_TYPE_KEY: ENVELOPE_TYPE}
        for label, value in self._values().items():
            spec = _MEMBERS[label]
            media_type = spec.media_type or EVIDENCE_MEDIA_TYPES[self.evidence.kind]
            members[label] = [media_type, _b64(value)] + ([spec.ind] if spec.ind is not None else [])
        encoded = json.dumps(members, separators=(",", ":")).encode("ascii")
        Envelope.decode(encoded)  # the same strict checks both ways
        return encoded

    @classmethod
    def decode(cls, data: bytes) -> Envelope:
        """An envelope from its JSON bytes, validated member by member; any problem is an EnvelopeFormatError."""
        return _decode(data)

    def _values(self) -> dict[str, bytes]:
        values = {"evidence": self.evidence.data, "ike-key": self.ike_key, "nonce": self.nonce}
        if self.evidence.certificates:
            values["certificates"] = _pem(self.evidence.certificates)
        optional = {"tdx-tcb-info": self.collateral.tdx_tcb_info, "tdx-qe-identity": self.collateral.tdx_qe_identity,
                    "tdx-tcb-signing-chain": self.collateral.tdx_tcb_signing_chain}
        values.update({label: value for label, value in optional.items() if value is not None})
        values.update({f"crl-{n}": crl for n, crl in enumerate(self.collateral.crls, start=1)})
        return values


def _decode(data: bytes) -> Envelope:
    if len(data) > MAX_ENVELOPE:
        raise EnvelopeFormatError("envelope", None, f"{len(data)} bytes, more than the {MAX_ENVELOPE} allowed")
    document = _json_object(data)
    collection_type = document.pop(COLLECTION_TYPE_KEY, None)
    if collection_type != ENVELOPE_TYPE:
        raise EnvelopeFormatError(f"envelope.{COLLECTION_TYPE_KEY}", None,
                                  f"expected {ENVELOPE_TYPE!r}, got {_show(collection_type)}")
    unknown = sorted(set(document) - set(_MEMBERS))
    if unknown:
        raise EnvelopeFormatError(f"envelope.{_label(unknown[0])}", None, "unknown member")
    for label in ("evidence", "ike-key", "nonce"):
        if label not in document:
            raise EnvelopeFormatError(f"envelope.{label}", None, "missing")
    evidence_type = _record(document["evidence"], "evidence")[0]
    kind = _KIND_BY_MEDIA_TYPE.get(evidence_type)
    if kind is None:
        raise UnsupportedEvidence("envelope.evidence[0]", None, f"evidence media type {evidence_type!r}",
                                  ", ".join(EVIDENCE_MEDIA_TYPES.values()))
    values = {label: _value(label, record, kind) for label, record in document.items()}
    crls = [label for label in values if label.startswith("crl-")]
    if sorted(crls, key=lambda label: int(label[4:])) != [f"crl-{n}" for n in range(1, len(crls) + 1)]:
        raise EnvelopeFormatError("envelope.crl-1", None, f"CRLs must be numbered from crl-1 without gaps, got "
                                  f"{', '.join(sorted(crls))}")
    certificates: tuple[bytes, ...] = ()
    if "certificates" in values:
        certificates = _der_chain(values["certificates"], "envelope.certificates")
    if "tdx-tcb-signing-chain" in values:
        _der_chain(values["tdx-tcb-signing-chain"], "envelope.tdx-tcb-signing-chain")
    return Envelope(
        evidence=Evidence(kind, values["evidence"], certificates),
        ike_key=_spki(values["ike-key"]),
        nonce=_nonce(values["nonce"]),
        collateral=Collateral(values.get("tdx-tcb-info"), values.get("tdx-qe-identity"),
                              values.get("tdx-tcb-signing-chain"),
                              tuple(values[f"crl-{n}"] for n in range(1, len(crls) + 1))),
    )


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        document = strictjson.loads(data)
    except strictjson.JsonError as exc:
        where = "envelope" if exc.member is None else f"envelope.{_label(exc.member)}"
        raise EnvelopeFormatError(where, exc.offset, exc.detail) from None
    if not isinstance(document, dict):
        raise EnvelopeFormatError("envelope", None, f"expected a JSON object (a CMW collection), got {_show(document)}")
    return document


def _record(record: object, label: str) -> tuple[str, str, int | None]:
    """A CMW JSON record: [media type, base64url value] or [media type, base64url value, ind]."""
    where = f"envelope.{label}"
    if not isinstance(record, list) or len(record) not in (2, 3):
        raise EnvelopeFormatError(where, None, f"expected a CMW record [type, value(, ind)], got {_show(record)}")
    media_type, value = record[0], record[1]
    if not isinstance(media_type, str):
        raise EnvelopeFormatError(f"{where}[0]", None, f"expected a media type string, got {_show(media_type)}")
    if not isinstance(value, str):
        raise EnvelopeFormatError(f"{where}[1]", None, f"expected a base64url string, got {_show(value)}")
    if len(record) == 2:
        return media_type, value, None
    ind = record[2]
    if not isinstance(ind, int) or isinstance(ind, bool):
        raise EnvelopeFormatError(f"{where}[2]", None, f"expected an integer indicator, got {_show(ind)}")
    return media_type, value, ind


def _value(label: str, record: object, kind: EvidenceKind) -> bytes:
    spec, where = _MEMBERS[label], f"envelope.{label}"
    media_type, text, ind = _record(record, label)
    if kind not in spec.kinds:
        raise EnvelopeFormatError(where, None, f"not used with {kind} evidence")
    expected_type = spec.media_type or EVIDENCE_MEDIA_TYPES[kind]
    if media_type != expected_type:
        raise EnvelopeFormatError(f"{where}[0]", None, f"expected {expected_type!r}, got {media_type!r}")
    if ind is not None and ind != spec.ind:
        raise EnvelopeFormatError(f"{where}[2]", None, f"expected {spec.ind if spec.ind is not None else 'none'}, "
                                  f"got {ind}")
    if len(text) > (spec.max_size * 4 + 2) // 3:
        raise EnvelopeFormatError(f"{where}[1]", None, f"longer than the {spec.max_size} bytes allowed")
    value = _unb64(text, f"{where}[1]")
    if not value:
        raise EnvelopeFormatError(f"{where}[1]", None, "empty")
    return value


def _b64(value: bytes) -> str:
    return base64.urlsafe_b64encode(value).rstrip(b"=").decode("ascii")


def _unb64(text: str, where: str) -> bytes:
    """Base64url without padding, canonical (the unused bits of the last character are zero)."""
    if not _BASE64URL.fullmatch(text) or len(text) % 4 == 1:
        raise EnvelopeFormatError(where, None, "not base64url without padding")
    try:
        value = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise EnvelopeFormatError(where, None, "not base64url without padding") from None
    if _b64(value) != text:
        raise EnvelopeFormatError(where, None, "not canonical base64url (nonzero trailing bits)")
    return value


def _spki(der: bytes) -> bytes:
    """A key enclave-ike can sign with (ECDSA P-256/384/521 or RSA), in canonical DER: the binding hashes these
    exact bytes, so one key must have one encoding."""
    where = "envelope.ike-key[1]"
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise EnvelopeFormatError(where, None, f"not a SubjectPublicKeyInfo: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise UnsupportedEvidence(where, None, f"IKE key of type {type(key).__name__}", _IKE_KEYS)
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name not in ("secp256r1", "secp384r1", "secp521r1"):
        raise UnsupportedEvidence(where, None, f"IKE key ECDSA on {key.curve.name}", _IKE_KEYS)
    canonical = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if canonical != der:
        raise EnvelopeFormatError(where, None, "not canonical DER (compressed point or non-minimal encoding)")
    return der


def _nonce(nonce: bytes) -> bytes:
    if not NONCE_MIN <= len(nonce) <= NONCE_MAX:
        raise EnvelopeFormatError("envelope.nonce[1]", None, f"must be {NONCE_MIN} to {NONCE_MAX} bytes, "
                                  f"got {len(nonce)}")
    return nonce


def _der_chain(pem: bytes, where: str) -> tuple[bytes, ...]:
    try:
        chain = pem_chain(pem, where)
    except EvidenceFormatError as exc:
        raise EnvelopeFormatError(exc.field, None, exc.detail) from None
    return tuple(cert.public_bytes(serialization.Encoding.DER) for cert in chain)


def _pem(ders: tuple[bytes, ...]) -> bytes:
    """PEM as RFC 7468 writes it: 64 characters a line."""
    blocks = []
    for der in ders:
        text = base64.b64encode(der)
        lines = b"".join(text[at:at + 64] + b"\n" for at in range(0, len(text), 64))
        blocks.append(b"-----BEGIN CERTIFICATE-----\n" + lines + b"-----END CERTIFICATE-----\n")
    return b"".join(blocks)


def _label(key: str) -> str:
    """A member name fit for an error message: escaped, and cut short."""
    text = json.dumps(key)[1:-1]
    return text if len(text) <= 40 else text[:37] + "..."


def _show(value: object) -> str:
    text = json.dumps(value) if not isinstance(value, bytes) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."

