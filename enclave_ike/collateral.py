"""Intel's TDX collateral for one platform (one FMSPC), as enclave-ike keeps it and serves it beside its quotes.

A set is the documents Intel's PCS serves, byte for byte, under these names (collateral_store.py keeps one set per
FMSPC in `<collateral_dir>/tdx/<fmspc>/`):

    tcb-info.json             the TCB info ({"tcbInfo": ..., "signature": ...}) for the FMSPC
    qe-identity.json          the TD_QE identity
    tcb-signing-chain.pem     the TCB-Info-Issuer-Chain: the TCB signing certificate, then the root
    pck-crl.der               the CRL of the PCK CA (platform or processor) that issued the platform's PCK certificate
    root-ca-crl.der           the Intel SGX Root CA's CRL
    pck-crl-issuer-chain.pem  optional: the SGX-PCK-CRL-Issuer-Chain (PCK CA, root), which `fetch` keeps

`check` accepts a set only if every document parses (`parse`) and everything leads to the root the operator trusts,
by signature (`verify`): both JSON documents signed by the chain's signer, the chain, the root CA's CRL and, with the
optional chain, the PCK CA's CRL issued under that root (without it, a warning says what was not checked). Times
are not judged here: collateral and Intel's old signing certificates expire, and an expired set is still the best
there is until a new one is fetched, so expiry is a warning (`warnings`), never a refusal and never silent. A client
trusts none of this: it checks everything again against its own root, so a server (or a cache) that lies can only
make verification fail. Pure: bytes in, a checked set or an error out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from ikecommon.attestation import ecdsa
from ikecommon.attestation.certs import der_crl, pem_chain
from ikecommon.attestation.chain import Named, subject, verify_chain
from ikecommon.attestation.envelope import Collateral
from ikecommon.attestation.errors import EvidenceFormatError, Mismatch
from ikecommon.attestation.tdx import QeIdentity, TcbInfo, TdxQuote, sgx_extensions
from ikecommon.attestation.tdx.verify import (
    QE_IDENTITY_ID,
    QE_IDENTITY_VERSION,
    TCB_INFO_ID,
    TCB_INFO_VERSION,
    tcb_signer_mismatches,
)
from ikecommon.attestation.times import aware, iso
from ikecommon.errors import UsageError

from .errors import EnclaveIkeError

TCB_INFO, QE_IDENTITY, SIGNING_CHAIN = "tcb-info.json", "qe-identity.json", "tcb-signing-chain.pem"
PCK_CRL, ROOT_CRL, PCK_CRL_CHAIN = "pck-crl.der", "root-ca-crl.der", "pck-crl-issuer-chain.pem"
REQUIRED = (TCB_INFO, QE_IDENTITY, SIGNING_CHAIN, PCK_CRL, ROOT_CRL)
FILES = (*REQUIRED, PCK_CRL_CHAIN)
# The envelope's own limits (attestation/envelope.py), so every set kept can be served.
MAX_SIZE = {TCB_INFO: 64 * 1024, QE_IDENTITY: 16 * 1024, SIGNING_CHAIN: 16 * 1024, PCK_CRL: 64 * 1024,
            ROOT_CRL: 64 * 1024, PCK_CRL_CHAIN: 16 * 1024}
PCK_CA_KINDS = ("platform", "processor")
_TIME_FIELDS = (".not_before", ".not_after", ".last_update", ".next_update")  # judged by `warnings` instead

T = TypeVar("T")


class CollateralError(EnclaveIkeError):
    """Collateral could not be kept or fetched (exit status 1)."""


class BadCollateral(CollateralError, UsageError):
    """A document is missing, too big or does not parse, or is not for the FMSPC expected (exit status 2)."""

    exit_code = 2


class UntrustedCollateral(CollateralError):
    """The documents parse but a signature or an issuer does not lead to the configured Intel root (exit status 1)."""


@dataclass(frozen=True)
class CollateralSet:
    """A checked set: the documents as served, and what was read from them."""

    fmspc: bytes
    documents: Mapping[str, bytes]
    tcb_info: TcbInfo
    qe_identity: QeIdentity
    signing_chain: tuple[x509.Certificate, ...]  # as shipped: the signer first, the root possibly last
    pck_crl: x509.CertificateRevocationList
    root_crl: x509.CertificateRevocationList
    pck_crl_chain: tuple[x509.Certificate, ...] | None = None  # the optional issuer chain: PCK CA, root
    notes: tuple[str, ...] = ()  # what was not checked, and why

    def collateral(self) -> Collateral:
        """The envelope's members: the documents exactly as Intel served them, PCK CA's CRL first."""
        return Collateral(self.documents[TCB_INFO], self.documents[QE_IDENTITY], self.documents[SIGNING_CHAIN],
                          (self.documents[PCK_CRL], self.documents[ROOT_CRL]))

    def deadlines(self) -> tuple[tuple[str, datetime], ...]:
        """(what, when it stops being current), for everything a client judges by time."""
        crls = ((PCK_CRL, self.pck_crl), (ROOT_CRL, self.root_crl))
        return ((f"{TCB_INFO} nextUpdate", self.tcb_info.next_update),
                (f"{QE_IDENTITY} nextUpdate", self.qe_identity.next_update),
                *((f"{name} nextUpdate", crl.next_update_utc) for name, crl in crls if crl.next_update_utc),
                *((f"{SIGNING_CHAIN}: {_cn(cert)} notAfter", cert.not_valid_after_utc)
                  for cert in self.signing_chain))

    def first_deadline(self) -> tuple[str, datetime]:
        return min(self.deadlines(), key=lambda item: item[1])

    def warnings(self, now: datetime) -> tuple[str, ...]:
        """One line for everything past its date (or not yet valid), and for what was not checked."""
        now = aware(now)
        found = [f"{what} {iso(when)}: {age(when, now)}" for what, when in self.deadlines() if when < now]
        issued = ((TCB_INFO, self.tcb_info.issue_date), (QE_IDENTITY, self.qe_identity.issue_date),
                  (PCK_CRL, self.pck_crl.last_update_utc), (ROOT_CRL, self.root_crl.last_update_utc))
        found += [f"{name} issued {iso(when)}, in the future (is this clock right?)" for name, when in issued
                  if when > now]
        return (*found, *self.notes)


@dataclass(frozen=True)
class Platform:
    """Who a quote's PCK certificate says the platform is: what its collateral is looked up by."""

    fmspc: bytes
    pck_ca: x509.Certificate
    pck_ca_kind: str | None  # "platform" or "processor", from the CA's name; None for a name that says neither


def age(when: datetime, now: datetime) -> str:
    """'expired N days ago' or 'valid N more days', whole days, rounded down."""
    days = int(abs((when - now).total_seconds()) // 86400)
    return f"expired {days} day{'s' if days != 1 else ''} ago" if when < now else \
        f"valid {days} more day{'s' if days != 1 else ''}"


def parse_fmspc(text: str, what: str = "--fmspc") -> bytes:
    """Six bytes of hex, as the PCS and the TCB info spell an FMSPC; BadCollateral (exit 2) otherwise."""
    try:
        value = bytes.fromhex(text) if len(text) == 12 and text.isascii() else b""
    except ValueError:
        value = b""
    if len(value) != 6:
        raise BadCollateral(f"{what} {text[:40]!r}: expected an FMSPC, 6 bytes as 12 hex digits")
    return value


def platform_of(quote: bytes | TdxQuote) -> Platform:
    """The FMSPC and PCK CA of the platform that made a TDX quote (from the PCK chain it carries)."""
    parsed = quote if isinstance(quote, TdxQuote) else TdxQuote.parse(quote)
    chain = pem_chain(parsed.signature_data.certification.pck_chain_pem, "pck_chain")
    if len(chain) < 2:
        raise EvidenceFormatError("pck_chain", None, "expected the PCK certificate and its CA")
    name = _cn(chain[1]).lower()
    kind = next((kind for kind in PCK_CA_KINDS if kind in name), None)
    return Platform(sgx_extensions(chain[0]).fmspc, chain[1], kind)


def check(documents: Mapping[str, bytes], root: x509.Certificate, *, fmspc: bytes | None = None,
          names: Mapping[str, str] | None = None) -> CollateralSet:
    """The set, if it is one for `fmspc` (when given) under `root`; BadCollateral or UntrustedCollateral naming the
    first problem's document (as `names` calls it: a path, a URL) and field otherwise."""
    return verify(parse(documents, fmspc=fmspc, names=names), root, names=names)


def parse(documents: Mapping[str, bytes], *, fmspc: bytes | None = None,
          names: Mapping[str, str] | None = None) -> CollateralSet:
    """The set read, not yet judged: BadCollateral for a document that is missing, too big, does not parse, is not
    the TDX kind or the version clients take (TCB info 3, QE identity 2), or is for another FMSPC."""
    def where(name: str) -> str:
        return (names or {}).get(name, name)

    for name in REQUIRED:
        if name not in documents:
            raise BadCollateral(f"{where(name)}: missing (a set is {', '.join(REQUIRED)})")
    for name, data in documents.items():
        if name not in FILES:
            raise BadCollateral(f"{where(name)}: not a collateral document (expected {', '.join(FILES)})")
        if len(data) > MAX_SIZE[name]:
            raise BadCollateral(f"{where(name)}: {len(data)} bytes, more than the {MAX_SIZE[name]} a client accepts")
    tcb_info = _parsed(where(TCB_INFO), TcbInfo.parse, documents[TCB_INFO])
    qe_identity = _parsed(where(QE_IDENTITY), QeIdentity.parse, documents[QE_IDENTITY])
    chain = _parsed(where(SIGNING_CHAIN), lambda data: pem_chain(data, "tcb_signing_chain"), documents[SIGNING_CHAIN])
    pck_crl = _parsed(where(PCK_CRL), lambda data: der_crl(data, "pck_crl"), documents[PCK_CRL])
    root_crl = _parsed(where(ROOT_CRL), lambda data: der_crl(data, "root_ca_crl"), documents[ROOT_CRL])
    pck_crl_chain = None
    if PCK_CRL_CHAIN in documents:
        pck_crl_chain = _parsed(where(PCK_CRL_CHAIN), lambda data: pem_chain(data, "pck_crl_issuer_chain"),
                                documents[PCK_CRL_CHAIN])
    if tcb_info.id != TCB_INFO_ID:
        raise BadCollateral(f"{where(TCB_INFO)}: tcbInfo.id: expected {TCB_INFO_ID!r} (TDX), got {tcb_info.id!r}")
    if tcb_info.version != TCB_INFO_VERSION:  # what every client requires (ikecommon's verify_quote)
        raise BadCollateral(f"{where(TCB_INFO)}: tcbInfo.version: expected {TCB_INFO_VERSION}, got "
                            f"{tcb_info.version}")
    if qe_identity.id != QE_IDENTITY_ID:
        raise BadCollateral(f"{where(QE_IDENTITY)}: enclaveIdentity.id: expected {QE_IDENTITY_ID!r}, "
                            f"got {qe_identity.id!r}")
    if qe_identity.version != QE_IDENTITY_VERSION:
        raise BadCollateral(f"{where(QE_IDENTITY)}: enclaveIdentity.version: expected {QE_IDENTITY_VERSION}, got "
                            f"{qe_identity.version}")
    if fmspc is not None and tcb_info.fmspc != fmspc:
        raise BadCollateral(f"{where(TCB_INFO)}: tcbInfo.fmspc: expected {fmspc.hex()}, got {tcb_info.fmspc.hex()}")
    if pck_crl.issuer == root_crl.issuer:
        raise BadCollateral(f"{where(PCK_CRL)}: issuer: the root CA's, expected a PCK CA's (is it {ROOT_CRL}?)")
    return CollateralSet(tcb_info.fmspc, dict(documents), tcb_info, qe_identity, chain, pck_crl, root_crl,
                         pck_crl_chain)


def verify(found: CollateralSet, root: x509.Certificate, *, names: Mapping[str, str] | None = None) -> CollateralSet:
    """The set with its notes, if everything in it leads to `root` by signature; UntrustedCollateral otherwise."""
    def where(name: str) -> str:
        return (names or {}).get(name, name)

    signer = _under_root(found.signing_chain, "tcb_signer", root, found.root_crl, where(SIGNING_CHAIN),
                         where(ROOT_CRL))
    for mismatch in tcb_signer_mismatches(found.signing_chain, root):
        raise UntrustedCollateral(f"{where(SIGNING_CHAIN)}: {mismatch}")
    for name, document in ((TCB_INFO, found.tcb_info), (QE_IDENTITY, found.qe_identity)):
        if not ecdsa.verify_p256_raw(signer.public_key(), document.signature, document.signed):
            raise UntrustedCollateral(f"{where(name)}: signature: not made by the TCB signing key ({_cn(signer)} "
                                      f"in {where(SIGNING_CHAIN)})")
    return replace(found, notes=_pck_crl(found, root, where))


def pck_crl_mismatch(pck_crl: x509.CertificateRevocationList, pck_ca: x509.Certificate,
                     whose: str = "the quote's PCK CA") -> str | None:
    """Why `pck_crl` is not the CRL of this PCK CA, or None when it is."""
    if pck_crl.issuer != pck_ca.subject:
        return f"issuer: expected {whose} {subject(pck_ca)}, got {pck_crl.issuer.rfc4514_string()}"
    if not _crl_signed_by(pck_crl, pck_ca):
        return f"signature: not made by {whose} {subject(pck_ca)}"
    return None


def _parsed(where: str, parse: Callable[[bytes], T], data: bytes) -> T:
    try:
        return parse(data)
    except EvidenceFormatError as exc:
        raise BadCollateral(f"{where}: {exc}") from None


def _cn(cert: x509.Certificate) -> str:
    names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME) if isinstance(a.value, str)]
    return names[0] if names else subject(cert)


def _fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _crl_signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    try:
        return bool(crl.is_signature_valid(issuer.public_key()))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _root_crl(crl: x509.CertificateRevocationList, root: x509.Certificate, where: str) -> None:
    if crl.issuer != root.subject:
        raise UntrustedCollateral(f"{where}: issuer: expected the configured root {subject(root)}, got "
                                  f"{crl.issuer.rfc4514_string()}")
    if not _crl_signed_by(crl, root):
        raise UntrustedCollateral(f"{where}: signature: not made by the configured root {subject(root)}")


def _under_root(chain: tuple[x509.Certificate, ...], name: str, root: x509.Certificate,
                root_crl: x509.CertificateRevocationList, where: str, where_root_crl: str) -> x509.Certificate:
    """The chain's first certificate, once the chain leads to `root` by issuer names, CA constraints, signatures and
    the root's CRL (times aside). A root shipped at the end must be `root` itself."""
    certs = list(chain)
    if len(certs) > 1 and certs[-1].subject == certs[-1].issuer:
        shipped = certs.pop()
        if _fingerprint(shipped) != _fingerprint(root):
            raise UntrustedCollateral(f"{where}: root: expected the configured root {subject(root)} (sha256 "
                                      f"{_fingerprint(root)[:16]}...), got {subject(shipped)} (sha256 "
                                      f"{_fingerprint(shipped)[:16]}...)")
    _root_crl(root_crl, root, where_root_crl)
    named = [Named(name if i == 0 else f"{name}_ca{i}", cert) for i, cert in enumerate(certs)]
    # Any moment does: the time-dependent mismatches are dropped here and said by CollateralSet.warnings.
    found = [m for m in verify_chain(named, Named("intel_root", root), root.not_valid_before_utc, [root_crl],
                                     require_crls=True) if not m.field.endswith(_TIME_FIELDS)]
    if found:
        raise UntrustedCollateral(_first(found, where, where_root_crl))
    return certs[0]


def _first(found: list[Mismatch], where: str, where_root_crl: str) -> str:
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    return f"{where_root_crl if found[0].field.startswith('intel_root_crl') else where}: {found[0]}{more}"


def _pck_crl(found: CollateralSet, root: x509.Certificate, where: Callable[[str], str]) -> tuple[str, ...]:
    if found.pck_crl_chain is None:
        # The issuer chain travels in a PCS header, not in the five files: the quote's own PCK CA checks it when
        # the set is served (evidence_endpoint.py), and every client does.
        return (f"{PCK_CRL}: signature not checked ({PCK_CRL_CHAIN} absent): checked against the quote's PCK CA "
                f"when served",)
    pck_ca = _under_root(found.pck_crl_chain, "pck_ca", root, found.root_crl, where(PCK_CRL_CHAIN), where(ROOT_CRL))
    problem = pck_crl_mismatch(found.pck_crl, pck_ca, f"the PCK CA of {where(PCK_CRL_CHAIN)}")
    if problem is not None:
        raise UntrustedCollateral(f"{where(PCK_CRL)}: {problem}")
    return ()
