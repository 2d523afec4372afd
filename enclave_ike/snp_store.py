"""The SEV-SNP certificates in the collateral cache, beside the TDX sets (collateral_store.py), filled by
`enclave-ike collateral import-vcek|fetch-vcek` and read by the evidence endpoint when the host's certificate table
is empty:

    <collateral_dir>/snp/<product>/ask.pem                  the product's ASK, and its ARK (KDS's cert_chain, split)
                                  /ark.pem
                                  /asvk.pem                 the product's ASVK, for VLEKs
                                  /<hwID hex>/<tcb>/vcek.der        one chip's VCEK at one TCB (snp_certs.tcb_name)
                                  /vlek/<CSP ID>/<tcb>/vlek.der     a cloud provider's VLEK at one TCB

<product> is milan, genoa or turin; a hwID is 64 bytes, Turin's 8; a CSP ID ("CN=cc-us-east-2.amazonaws.com") is
percent-encoded where it has a character a file name cannot. Each key is a directory of its own, replaced whole by
collateral_store.install; the chain files are each replaced in one rename, before the key that needs them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import quote, unquote

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ikecommon.attestation import ecdsa
from ikecommon.attestation.errors import AttestationError
from ikecommon.attestation.snp.products import PRODUCTS, Product
from ikecommon.attestation.snp.report import SnpReport, TcbVersion
from ikecommon.attestation.snp.verify import SIGNING_KEY_VLEK
from ikecommon.attestation.times import iso

from . import collateral as co
from . import collateral_store as store
from . import snp_certs as sc

SNP = "snp"


def product_dir(cache: Path, product: Product) -> Path:
    return cache / SNP / product.name.lower()


def vcek_dir(cache: Path, product: Product, hw_id: bytes, tcb: TcbVersion) -> Path:
    return product_dir(cache, product) / hw_id.hex() / sc.tcb_name(tcb)


def vlek_dir(cache: Path, product: Product, csp_id: str, tcb: TcbVersion) -> Path:
    name = quote(csp_id, safe="=,@+:")
    return product_dir(cache, product) / "vlek" / ("%2E" + name[1:] if name.startswith(".") else name) / \
        sc.tcb_name(tcb)


def key_dir(cache: Path, key: sc.KeyCertificate) -> Path:
    if key.hw_id is not None:
        return vcek_dir(cache, key.product, key.hw_id, key.tcb)
    return vlek_dir(cache, key.product, str(key.csp_id), key.tcb)


def install(cache: Path, key: sc.KeyCertificate) -> Path:
    """Keep a checked key, its product's chain first; the directory it is kept in."""
    where = product_dir(cache, key.product)
    issuer, ark = key.chain_pem()
    chain = ((sc.ISSUER_FILE[key.kind], issuer), (sc.ARK_FILE, ark))
    stale = [(name, data) for name, data in chain if _read(where / name) != data]  # both read before either is written
    for name, data in stale:
        store.replace_file(data, where / name)
    target = key_dir(cache, key)
    store.install({sc.KEY_FILE[key.kind]: key.der()}, target)
    return target


def cached_chain(cache: Path, product: Product, kind: str) -> tuple[bytes, bytes] | None:
    """The product's ASK (ASVK) and ARK as PEM, if the cache has both."""
    where = product_dir(cache, product)
    issuer, ark = _read(where / sc.ISSUER_FILE[kind]), _read(where / sc.ARK_FILE)
    return (issuer, ark) if issuer is not None and ark is not None else None


def _read(path: Path) -> bytes | None:
    return store.read_file(path, sc.MAX_CERTIFICATE_FILE)


def _load(cache: Path, product: Product, directory: Path, kind: str) -> sc.KeyCertificate:
    """The key kept in `directory`, checked again under the cached chain; CollateralError saying what is wrong."""
    key_file = directory / sc.KEY_FILE[kind]
    der = _read(key_file)
    chain = cached_chain(cache, product, kind)
    if der is None:
        raise co.BadCollateral(f"{key_file}: missing")
    if chain is None:
        raise co.BadCollateral(f"{product_dir(cache, product) / sc.ISSUER_FILE[kind]} or {sc.ARK_FILE}: missing")
    issuer_file = str(product_dir(cache, product) / sc.ISSUER_FILE[kind])
    (cert,) = sc.read_certificates(der, str(key_file))
    issuer, ark = (sc.read_certificates(pem, issuer_file)[0] for pem in chain)
    key = sc.check(cert, issuer, where=str(key_file), issuer_where=issuer_file, ark_given=ark)
    if key_dir(cache, key) != directory or key.kind != kind:
        raise co.BadCollateral(f"{key_file}: a {key.describe()}, kept under another name")
    return key


def entries(cache: Path) -> list[tuple[Product, str, Path]]:
    """(product, kind, directory) of every key directory in the cache, in order."""
    found = []
    for product in PRODUCTS:
        base = product_dir(cache, product)
        for first in _listing(base):
            if first == "vlek":
                found += [(product, sc.VLEK, base / first / csp / tcb) for csp in _listing(base / first)
                          for tcb in _listing(base / first / csp)]
            elif len(first) == 2 * product.hw_id_size and all(c in "0123456789abcdef" for c in first):
                found += [(product, sc.VCEK, base / first / tcb) for tcb in _listing(base / first)]
    return found


def _listing(directory: Path) -> list[str]:
    try:
        return sorted(name for name in os.listdir(directory)
                      if not name.startswith(".") and (directory / name).is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise co.CollateralError(f"{directory}: cannot read it ({exc.strerror})") from None


def show(cache: Path, now: datetime) -> tuple[list[str], bool]:
    """The lines `enclave-ike collateral show` prints for SEV-SNP, and whether every key there is usable."""
    lines, usable = [], True
    for product, kind, directory in entries(cache):
        whose = directory.parent.name if kind == sc.VCEK else unquote(directory.parent.name)
        head = f"{product.name} {kind} {whose} {directory.name}"
        try:
            key = _load(cache, product, directory, kind)
        except co.CollateralError as exc:
            lines.append(f"{head}  unusable: {exc}")
            usable = False
            continue
        until = key.cert.not_valid_after_utc
        lines.append(f"{head}  notAfter {iso(until)}  {co.age(until, now)}")
    if not lines:
        lines.append(f"no SEV-SNP certificates in {cache / SNP} (enclave-ike collateral import-vcek FILE..., or "
                     "fetch-vcek)")
    return lines, usable


@dataclass(frozen=True)
class Served:
    """What the cache has for one report: the envelope's certificates (key, ASK or ASVK, ARK; () for none), and the
    one line the operator should read, or None when all is well."""

    certificates: tuple[bytes, ...]
    problem: str | None


@dataclass(frozen=True)
class ServedCertificates:
    """The cache as the evidence endpoint reads it, for a report that came without the host's certificates: files
    are read per request (a few small ones), so an import is served from the next request on. What is kept is served
    as it is, for the client to judge: it was checked when it was imported."""

    collateral_dir: Path

    def for_report(self, data: bytes) -> Served:
        try:
            report = SnpReport.parse(data)
        except AttestationError as exc:
            return Served((), f"SEV-SNP report that does not parse ({exc}): serving it without certificates")
        products = (report.product,) if report.product is not None else PRODUCTS
        vlek = report.signing_key == SIGNING_KEY_VLEK
        if report.mask_chip_id and not vlek:
            return Served((), "SEV-SNP report with MASK_CHIP_ID set: no VCEK can be looked up for it; serving it "
                              "without certificates, which clients refuse")
        try:
            found = self._vlek(report, products) if vlek else self._vcek(report, products)
        except (co.CollateralError, AttestationError, OSError) as exc:
            return Served((), f"SEV-SNP certificates in {self.collateral_dir / SNP} unusable ({exc}): serving "
                              "reports without them, which clients refuse")
        if found is not None:
            return Served(found, None)
        return Served((), self._missing(report, products, vlek))

    def _vcek(self, report: SnpReport, products: tuple[Product, ...]) -> tuple[bytes, ...] | None:
        for product in products:
            try:
                hw_id = sc.hw_id_of(product, report.chip_id)
            except co.BadCollateral:
                continue
            directory = vcek_dir(self.collateral_dir, product, hw_id, report.reported_tcb.with_layout(product.tcb))
            der = _read(directory / sc.KEY_FILE[sc.VCEK])
            if der is not None:
                return self._with_chain(der, product, sc.VCEK)
        return None

    def _vlek(self, report: SnpReport, products: tuple[Product, ...]) -> tuple[bytes, ...] | None:
        """The cached VLEK at the report's TCB whose key signed it (the report names no provider)."""
        r, s = report.signature
        for product in products:
            tcb = sc.tcb_name(report.reported_tcb.with_layout(product.tcb))
            base = product_dir(self.collateral_dir, product) / "vlek"
            for csp in _listing(base):
                der = _read(base / csp / tcb / sc.KEY_FILE[sc.VLEK])
                if der is None:
                    continue
                (cert,) = sc.read_certificates(der, str(base / csp / tcb / sc.KEY_FILE[sc.VLEK]))
                if ecdsa.verify(cert.public_key(), ec.SECP384R1, r, s, report.signed_bytes, hashes.SHA384()):
                    return self._with_chain(der, product, sc.VLEK)
        return None

    def _with_chain(self, der: bytes, product: Product, kind: str) -> tuple[bytes, ...]:
        chain = cached_chain(self.collateral_dir, product, kind)
        if chain is None:
            raise co.BadCollateral(f"{product_dir(self.collateral_dir, product) / sc.ISSUER_FILE[kind]}: missing")
        where = str(product_dir(self.collateral_dir, product))
        return der, *(sc.read_certificates(pem, where)[0].public_bytes(serialization.Encoding.DER) for pem in chain)

    def _missing(self, report: SnpReport, products: tuple[Product, ...], vlek: bool) -> str:
        product = products[0] if len(products) == 1 else None
        layout = (product or products[0]).tcb
        tcb = sc.tcb_name(report.reported_tcb.with_layout(layout))
        named = product.name if product else "Milan|Genoa (the report does not say)"
        if vlek:
            return (f"no {named} VLEK at TCB {tcb} that signed this report in {self.collateral_dir / SNP}: serving "
                    "SEV-SNP reports without certificates, which clients refuse; get the VLEK from the cloud provider "
                    "and run `enclave-ike collateral import-vcek VLEK ASVK-CHAIN`")
        chip = report.chip_id[:product.hw_id_size] if product else report.chip_id
        return (f"no VCEK for chip ID {chip.hex()} at TCB {tcb} in {self.collateral_dir / SNP}: serving SEV-SNP "
                f"reports without certificates, which clients refuse; run `enclave-ike collateral fetch-vcek "
                f"--product {named if product else 'Milan|Genoa'} --chip-id {chip.hex()} --tcb {tcb}` (or fetch "
                "elsewhere with --out DIR and `enclave-ike collateral import-vcek DIR/vcek.der DIR/cert_chain.pem` "
                "here)")
