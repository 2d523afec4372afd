"""AMD's certificates for SEV-SNP reports, as enclave-ike keeps them (snp_store.py) and serves them when the host's
certificate table is empty: a VCEK, one chip's key at one TCB, signed by the product's ASK; or a VLEK, a cloud
provider's key at one TCB, signed by the product's ASVK. Both chains end at the product's ARK, which ships with the
package (ikecommon/attestation/roots.py); AMD's KDS serves the ASK (or ASVK) and the ARK as the product's cert_chain.

`check` accepts a key certificate only if it is one of a known product (productName, SPLs and a hwID or a CSP ID,
read by ikecommon.attestation.snp.vcek), its issuer is the certificate given as its ASK (ASVK), and that one was
issued by the product's shipped ARK: by issuer name, CA rights and signature. As with TDX collateral, validity
times are warnings (`KeyCertificate.warnings`), never refusals; a client judges them again at its own time.

The TCB a key is kept and fetched under is named after AMD KDS's parameters (blSPL, teeSPL, snpSPL, ucodeSPL and,
on Turin, fmcSPL): `bl2-tee0-snp5-ucode68`, `bl1-tee0-snp2-ucode71-fmc0`. Pure: bytes in, a checked key or an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ikecommon.attestation import roots
from ikecommon.attestation.certs import der_certificate, pem_chain
from ikecommon.attestation.chain import Named, subject, verify_chain
from ikecommon.attestation.errors import EvidenceFormatError
from ikecommon.attestation.snp.products import PRODUCTS, Product, TcbLayout, names
from ikecommon.attestation.snp.report import TcbVersion
from ikecommon.attestation.snp.vcek import AMD, VcekExtensions, key_extensions
from ikecommon.attestation.times import aware, iso

from . import collateral as co

VCEK, VLEK = "VCEK", "VLEK"
KEY_FILE = {VCEK: "vcek.der", VLEK: "vlek.der"}
ISSUER = {VCEK: "ASK", VLEK: "ASVK"}
ISSUER_FILE = {VCEK: "ask.pem", VLEK: "asvk.pem"}
ARK_FILE = "ark.pem"
MAX_CERTIFICATE_FILE = 64 * 1024  # a VCEK is about 1.3 KiB, a KDS cert_chain about 4.6 KiB
# KDS's parameter order; a layout without a component (Milan and Genoa have no FMC) leaves it out.
TCB_PARTS = (("bootloader", "bl"), ("tee", "tee"), ("snp", "snp"), ("microcode", "ucode"), ("fmc", "fmc"))
_TIME_FIELDS = (".not_before", ".not_after")
_HEX = re.compile(r"(?:0x)?([0-9a-fA-F]{16})")


@dataclass(frozen=True)
class KeyCertificate:
    """A checked VCEK or VLEK with the chain it was checked under."""

    kind: str                # VCEK or VLEK
    product: Product
    tcb: TcbVersion          # the SPLs, in the product's layout
    hw_id: bytes | None      # a VCEK's chip ID (8 bytes on Turin, 64 before)
    csp_id: str | None       # a VLEK's cloud provider
    cert: x509.Certificate
    issuer: x509.Certificate  # the ASK (ASVK)
    ark: x509.Certificate

    @property
    def owner(self) -> str:
        """Whose key it is: the chip ID in hex, or the CSP ID."""
        return self.hw_id.hex() if self.hw_id is not None else str(self.csp_id)

    def describe(self) -> str:
        whose = f"chip ID {self.owner}" if self.kind == VCEK else f"CSP {self.owner}"
        return f"{self.product.name} {self.kind} for {whose} at TCB {tcb_name(self.tcb)}"

    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    def chain_pem(self) -> tuple[bytes, bytes]:
        """The ASK (ASVK) and the ARK, as the cache keeps them."""
        return (self.issuer.public_bytes(serialization.Encoding.PEM),
                self.ark.public_bytes(serialization.Encoding.PEM))

    def warnings(self, now: datetime) -> tuple[str, ...]:
        """One line for each certificate not valid at `now`."""
        now = aware(now)
        found = []
        for name, cert in ((self.kind, self.cert), (ISSUER[self.kind], self.issuer), ("ARK", self.ark)):
            if cert.not_valid_after_utc < now:
                found.append(f"{name} {subject(cert)} notAfter {iso(cert.not_valid_after_utc)}: "
                             f"{co.age(cert.not_valid_after_utc, now)}")
            elif cert.not_valid_before_utc > now:
                found.append(f"{name} {subject(cert)} notBefore {iso(cert.not_valid_before_utc)}, in the future "
                             "(is this clock right?)")
        return tuple(found)


def tcb_name(tcb: TcbVersion) -> str:
    svns = tcb.components()
    return "-".join(f"{short}{svns[name]}" for name, short in TCB_PARTS if name in svns)


def parse_tcb(text: str, layout: TcbLayout, what: str = "--tcb") -> TcbVersion:
    """A TCB as `tcb_name` writes it (in any order), or a raw TCB_VERSION as 16 hex digits (0x4405000000000002), in
    `layout`; BadCollateral (exit 2) naming `what` otherwise."""
    if (raw := _HEX.fullmatch(text)) is not None:
        return TcbVersion(int(raw.group(1), 16), layout)
    shorts = {short: name for name, short in TCB_PARTS if name in layout.components}
    svns: dict[str, int] = {}
    for part in text.split("-"):
        found = re.fullmatch(r"([a-z]+)(\d{1,3})", part)
        if found is None or found.group(1) not in shorts or shorts[found.group(1)] in svns \
                or int(found.group(2)) > 0xFF:
            svns = {}
            break
        svns[shorts[found.group(1)]] = int(found.group(2))
    if set(svns) != set(layout.components):
        example = tcb_name(TcbVersion(0, layout))
        raise co.BadCollateral(f"{what} {text[:60]!r}: expected a {layout.name} TCB such as {example} (each SVN "
                               "0-255), or a TCB_VERSION as 16 hex digits")
    return TcbVersion.of(layout, **svns)


def product_named(text: str, what: str = "--product") -> Product:
    found = next((p for p in PRODUCTS if p.name.lower() == text.lower()), None)
    if found is None:
        raise co.BadCollateral(f"{what} {text[:40]!r}: expected {names()}")
    return found


def parse_chip_id(text: str, what: str = "--chip-id") -> bytes:
    """A chip ID in hex: the report's 64 bytes, or Turin's 8."""
    try:
        value = bytes.fromhex(text) if text.isascii() else b""
    except ValueError:
        value = b""
    if len(value) not in (8, 64):
        raise co.BadCollateral(f"{what} {text[:40]!r}{'...' if len(text) > 40 else ''}: expected a chip ID, 64 bytes "
                               "(128 hex digits) or Turin's 8 (16 hex digits)")
    return value


def hw_id_of(product: Product, chip_id: bytes, what: str = "chip ID") -> bytes:
    """The hwID a product's VCEK has for a report's CHIP_ID: all of it, or on Turin its first 8 bytes (the rest must
    be zero)."""
    hw_id, rest = chip_id[:product.hw_id_size], chip_id[product.hw_id_size:]
    if len(hw_id) != product.hw_id_size or rest.strip(b"\0"):
        raise co.BadCollateral(f"{what} {chip_id.hex()[:32]}...: not a {product.name} chip ID ({product.hw_id_size} "
                               f"bytes{', then zeros' if product.hw_id_size < 64 else ''})")
    return hw_id


def shipped_ark(product: Product) -> x509.Certificate:
    """The product's ARK as the package ships it; an altered installation is a CollateralError (exit 1)."""
    root = next(root for root in roots.SHIPPED if root.name == f"ARK-{product.name}")
    try:
        return roots.certificate(root)
    except roots.ShippedRootError as exc:
        raise co.CollateralError(f"the shipped ARK-{product.name}: {exc}") from None


def read_certificates(data: bytes, where: str) -> tuple[x509.Certificate, ...]:
    """The certificates of a file: PEM (one or more, as KDS's cert_chain) or one DER (as KDS's VCEK)."""
    try:
        if b"-----BEGIN" in data:
            return pem_chain(data, "certificate")
        return (der_certificate(data, "certificate"),)
    except EvidenceFormatError as exc:
        raise co.BadCollateral(f"{where}: {exc}") from None


def is_key(cert: x509.Certificate) -> bool:
    """Whether a certificate is a VCEK or VLEK (it has AMD's productName extension) rather than a CA's."""
    try:
        cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(f"{AMD}.2"))
    except x509.ExtensionNotFound:
        return False
    return True


def check(cert: x509.Certificate, issuer: x509.Certificate, *, where: str, issuer_where: str,
          ark_given: x509.Certificate | None = None) -> KeyCertificate:
    """The key certificate, if `issuer` issued it and the product's shipped ARK issued `issuer`; BadCollateral for a
    certificate that is not an AMD key certificate of a known product, UntrustedCollateral naming the first
    mismatch otherwise. `ark_given`, the ARK that came with the chain, must be the shipped one."""
    try:
        extensions = key_extensions(cert)
    except EvidenceFormatError as exc:
        raise co.BadCollateral(f"{where}: {exc}") from None
    product = extensions.product
    if product is None:
        raise co.BadCollateral(f"{where}: productName {extensions.product_name!r}: not a product of {names()}")
    ark = shipped_ark(product)
    kind, name = extensions.kind, extensions.kind.lower()
    chain = [Named(name, cert), Named(ISSUER[kind].lower(), issuer)]
    # Any moment does: times are said by KeyCertificate.warnings instead.
    found = [m for m in verify_chain(chain, Named("ark", ark), ark.not_valid_before_utc)
             if not m.field.endswith(_TIME_FIELDS)]
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        place = where if found[0].field.startswith(f"{name}.") else issuer_where
        raise co.UntrustedCollateral(f"{place}: {found[0]}{more}")
    if ark_given is not None and ark_given != ark:
        raise co.UntrustedCollateral(f"{issuer_where}: ARK: expected the shipped ARK-{product.name} (sha256 "
                                     f"{roots.fingerprint(ark)[:16]}...), got {subject(ark_given)} (sha256 "
                                     f"{roots.fingerprint(ark_given)[:16]}...)")
    if isinstance(extensions, VcekExtensions):
        return KeyCertificate(kind, product, extensions.tcb, extensions.hw_id, None, cert, issuer, ark)
    return KeyCertificate(kind, product, extensions.tcb, None, extensions.csp_id, cert, issuer, ark)
