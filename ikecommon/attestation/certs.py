"""Certificates and CRLs from evidence and collateral, loaded once and checked for what the verifiers use.

Anything cryptography cannot parse becomes an EvidenceFormatError naming the input. Extensions and the public
key are decoded here, eagerly, so a malformed certificate fails now and not halfway through a verification.

AMD issues VCEKs with serial number 0, which RFC 5280 forbids and cryptography warns about on every load and
every read of the serial. The serial plays no part in SEV-SNP verification (it matters only for CRL lookups), so
that one warning is silenced here instead of being printed to every user; the day cryptography refuses such
certificates, loading fails with an EvidenceFormatError.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.utils import CryptographyDeprecationWarning

from .errors import EvidenceFormatError

T = TypeVar("T")
_NON_POSITIVE_SERIAL = "Parsed a serial number which wasn't positive"
# cryptography raises all of these for malformed input (TypeError, for instance, for a BIT STRING in a name)
_UNDECODABLE = (ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion, x509.DuplicateExtension,
                x509.UnsupportedGeneralNameType)


def _quietly(load: Callable[[], T]) -> T:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_NON_POSITIVE_SERIAL, category=CryptographyDeprecationWarning)
        return load()


def _touch_certificate(cert: x509.Certificate) -> None:
    """cryptography decodes most parts lazily: read every part a verifier will use."""
    _ = (cert.subject, cert.issuer, cert.not_valid_before_utc, cert.not_valid_after_utc, cert.extensions,
         cert.signature_hash_algorithm, cert.signature_algorithm_parameters, cert.tbs_certificate_bytes)
    cert.public_key()
    serial_number(cert)


def _touch_crl(crl: x509.CertificateRevocationList) -> None:
    _ = (crl.issuer, crl.last_update_utc, crl.next_update_utc, crl.extensions, crl.signature_hash_algorithm)
    _ = [(entry.serial_number, entry.revocation_date_utc) for entry in crl]


def _checked(cert: x509.Certificate, what: str) -> x509.Certificate:
    try:
        _touch_certificate(cert)
    except _UNDECODABLE as exc:
        raise EvidenceFormatError(what, None, f"certificate does not decode: {exc}") from None
    return cert


def pem_chain(data: bytes, what: str) -> tuple[x509.Certificate, ...]:
    """Every PEM certificate in `data`, in order; at least one."""
    try:
        certs = _quietly(lambda: x509.load_pem_x509_certificates(data.rstrip(b"\0")))
    except _UNDECODABLE as exc:
        raise EvidenceFormatError(what, None, f"not a PEM certificate chain: {exc}") from None
    return tuple(_checked(cert, f"{what}[{index}]") for index, cert in enumerate(certs))


def der_certificate(data: bytes, what: str) -> x509.Certificate:
    try:
        cert = _quietly(lambda: x509.load_der_x509_certificate(data))
    except _UNDECODABLE as exc:
        raise EvidenceFormatError(what, None, f"not a DER certificate: {exc}") from None
    return _checked(cert, what)


def der_crl(data: bytes, what: str) -> x509.CertificateRevocationList:
    try:
        crl = x509.load_der_x509_crl(data)
        _touch_crl(crl)
    except _UNDECODABLE as exc:
        raise EvidenceFormatError(what, None, f"not a DER CRL: {exc}") from None
    return crl


def serial_number(cert: x509.Certificate) -> int:
    return _quietly(lambda: cert.serial_number)
