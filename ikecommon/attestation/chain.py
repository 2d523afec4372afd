"""A certificate chain up to a root the caller trusts, checked at a time the caller gives.

The chain is explicit (leaf first, each certificate issued by the next, the last one by the anchor); nothing is
searched for. Each step checks the issuer's name, that the issuer may issue (CA, key usage, path length), the
signature, both validity periods and, against the CRLs given, revocation. Every failure is a Mismatch named after
the certificate (`pck_leaf.not_after`, `vcek.issuer`, `platform_ca_crl.signature`, ...); nothing stops early.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm

from .certs import serial_number
from .errors import Mismatch
from .times import aware, iso


@dataclass(frozen=True)
class Named:
    """A certificate and the name its mismatches carry."""

    name: str
    cert: x509.Certificate


def subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


def verify_chain(chain: Sequence[Named], anchor: Named, at: datetime,
                 crls: Sequence[x509.CertificateRevocationList] = (), require_crls: bool = False,
                 crl_grace: timedelta = timedelta(0)) -> list[Mismatch]:
    """Every mismatch on the way from chain[0] to the trusted `anchor`. With `require_crls`, a certificate
    whose issuer has no CRL among `crls` is a mismatch (fail closed); without, missing CRLs are not checked. A CRL
    is current until its nextUpdate plus `crl_grace` (the caller notes one used inside the grace)."""
    at = aware(at)
    found = _validity(anchor, at)
    if anchor.cert.issuer != anchor.cert.subject or not _signed_by(anchor.cert, anchor.cert):
        found.append(Mismatch(f"{anchor.name}.signature", "a self-signed root", "not self-signed"))
    issuers = [*chain[1:], anchor]
    for depth, (cert, issuer) in enumerate(zip(chain, issuers, strict=True)):
        found += _validity(cert, at)
        if cert.cert.issuer != issuer.cert.subject:
            found.append(Mismatch(f"{cert.name}.issuer", subject(issuer.cert), cert.cert.issuer.rfc4514_string()))
            continue
        found += _may_issue(issuer, intermediates_below=depth)
        if not _signed_by(cert.cert, issuer.cert):
            found.append(Mismatch(f"{cert.name}.signature", f"a valid signature by {subject(issuer.cert)}", "invalid"))
        found += _revocation(cert, issuer, at, crls, require_crls, crl_grace)
    return found


def _validity(named: Named, at: datetime) -> list[Mismatch]:
    found = []
    if named.cert.not_valid_before_utc > at:
        found.append(Mismatch(f"{named.name}.not_before", f"at or before {iso(at)}",
                              iso(named.cert.not_valid_before_utc)))
    if named.cert.not_valid_after_utc < at:
        found.append(Mismatch(f"{named.name}.not_after", f"at or after {iso(at)}", iso(named.cert.not_valid_after_utc)))
    return found


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def _extension(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.ExtensionType | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _may_issue(issuer: Named, intermediates_below: int) -> list[Mismatch]:
    found = []
    constraints = _extension(issuer.cert, x509.BasicConstraints)
    if not isinstance(constraints, x509.BasicConstraints) or not constraints.ca:
        found.append(Mismatch(f"{issuer.name}.basic_constraints", "CA:TRUE", "not a CA"))
    elif constraints.path_length is not None and intermediates_below > constraints.path_length:
        found.append(Mismatch(f"{issuer.name}.basic_constraints", f"pathlen >= {intermediates_below}",
                              f"pathlen {constraints.path_length}"))
    usage = _extension(issuer.cert, x509.KeyUsage)
    if isinstance(usage, x509.KeyUsage) and not usage.key_cert_sign:
        found.append(Mismatch(f"{issuer.name}.key_usage", "keyCertSign", "absent"))
    return found


def _revocation(cert: Named, issuer: Named, at: datetime, crls: Sequence[x509.CertificateRevocationList],
                require_crls: bool, grace: timedelta) -> list[Mismatch]:
    relevant = [crl for crl in crls if crl.issuer == issuer.cert.subject]
    if not relevant:
        if require_crls:
            return [Mismatch(f"{cert.name}.revocation", f"a CRL issued by {subject(issuer.cert)}", "none supplied")]
        return []
    found, crl_name = [], f"{issuer.name}_crl"
    usage = _extension(issuer.cert, x509.KeyUsage)
    if isinstance(usage, x509.KeyUsage) and not usage.crl_sign:
        found.append(Mismatch(f"{issuer.name}.key_usage", "cRLSign", "absent"))
    serial = serial_number(cert.cert)
    if serial <= 0:  # RFC 5280 4.1.2.2: a positive integer; no CRL can name another (cryptography refuses it)
        return [*found, Mismatch(f"{cert.name}.serial_number", "a positive integer", str(serial))]
    for crl in relevant:
        try:
            signed = crl.is_signature_valid(issuer.cert.public_key())  # type: ignore[arg-type]
        except (TypeError, ValueError, UnsupportedAlgorithm):
            signed = False
        if not signed:
            found.append(Mismatch(f"{crl_name}.signature", f"a valid signature by {subject(issuer.cert)}", "invalid"))
            continue  # an unsigned list says nothing about revocation
        if crl.last_update_utc > at:
            found.append(Mismatch(f"{crl_name}.last_update", f"at or before {iso(at)}", iso(crl.last_update_utc)))
        if crl.next_update_utc is None or crl.next_update_utc + grace < at:
            shown = "none" if crl.next_update_utc is None else iso(crl.next_update_utc)
            found.append(Mismatch(f"{crl_name}.next_update", f"at or after {iso(at - grace)}", shown))
        revoked = crl.get_revoked_certificate_by_serial_number(serial)
        if revoked is not None:
            found.append(Mismatch(f"{cert.name}.revocation", "not revoked",
                                  f"serial {serial:x} revoked on {iso(revoked.revocation_date_utc)} in {crl_name}"))
    return found
