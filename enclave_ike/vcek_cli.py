"""`enclave-ike collateral import-vcek|fetch-vcek|snp-id`: the operator's side of the SEV-SNP certificates in the
collateral cache (snp_store.py), which the evidence endpoint serves when the host's certificate table is empty.

    enclave-ike collateral import-vcek FILE... [--chip-id HEX] [--tcb TCB]
        check each VCEK or VLEK among FILEs (DER or PEM) under its ASK or ASVK (among FILEs too, else the cached
        one) and the shipped ARK, and keep it under its product, chip ID (CSP ID) and TCB
    enclave-ike collateral fetch-vcek [--report FILE | --chip-id HEX --tcb TCB] [--product NAME] [--kds-url URL]
                                      [--timeout SECONDS] [--out DIR]
        get the VCEK and the product's cert_chain from AMD's KDS, check and keep them, or write them to DIR
    enclave-ike collateral snp-id [--report FILE]
        the product, chip ID and REPORTED_TCB of this machine's report: what fetch-vcek needs ("Milan <hex>
        bl2-tee0-snp5-ucode68"; "unknown" for a version 2 report, "VLEK" instead of a chip ID for a VLEK's)

Every command takes --config FILE, as the TDX ones do (collateral_cli.py). Without --report or --chip-id, the
report is the running server's own. Exit status 2 for bad input (an argument, a file that does not parse, a key
that is not the one asked for), 1 when a signature or issuer does not lead to the shipped ARK, KDS fails, or the
cache cannot be written; a failed command changes nothing. Expired certificates are kept, with a warning.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from cryptography import x509

from ikecommon.attestation.envelope import EvidenceKind
from ikecommon.attestation.errors import EvidenceFormatError, UnsupportedEvidence
from ikecommon.attestation.snp.products import Product, names
from ikecommon.attestation.snp.report import SnpReport
from ikecommon.attestation.snp.vcek import key_extensions
from ikecommon.attestation.snp.verify import SIGNING_KEY_VLEK

from . import collateral as co
from . import collateral_common as common
from . import collateral_store as store
from . import kds, pcs, snp_store
from . import snp_certs as sc

COMMANDS = ("import-vcek", "fetch-vcek", "snp-id")
Certificates = list[tuple[str, x509.Certificate]]  # (how errors name it, the certificate)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                 with_config: Callable[[argparse.ArgumentParser], None]) -> None:
    """The three commands; `with_config` adds the --config option the TDX commands have."""
    imported = sub.add_parser("import-vcek",
                              help="check AMD SEV-SNP VCEKs or VLEKs (with their ASK or ASVK) and keep them for "
                                   "reports whose host gives no certificates")
    imported.add_argument("files", type=Path, nargs="+", metavar="FILE",
                          help="a VCEK or VLEK (DER or PEM) and, unless the cache has it, the product's cert_chain "
                               "(PEM: ASK or ASVK, then ARK)")
    imported.add_argument("--chip-id", metavar="HEX", help="refuse a VCEK of another chip")
    imported.add_argument("--tcb", metavar="TCB", help="refuse a key of another TCB (bl2-tee0-snp5-ucode68, or 16 hex "
                                                       "digits)")
    fetch = sub.add_parser("fetch-vcek",
                           help="get a VCEK and its chain from AMD's KDS, check and keep it, or write it to --out DIR "
                                "for an import on a machine without internet")
    fetch.add_argument("--report", type=Path, metavar="FILE",
                       help="a SEV-SNP report (raw, or an envelope from enclave-ike evidence) to take the chip ID and "
                            "REPORTED_TCB from (default: the running server's)")
    fetch.add_argument("--chip-id", metavar="HEX",
                       help="the chip ID (64 bytes, or Turin's 8), with --tcb and --product")
    fetch.add_argument("--tcb", metavar="TCB", help="the TCB, as snp-id prints it (bl2-tee0-snp5-ucode68; Turin adds "
                                                    "-fmcN) or 16 hex digits")
    fetch.add_argument("--product", metavar="NAME", help=f"{names()} (default: the report's CPU)")
    fetch.add_argument("--kds-url", default=kds.DEFAULT_KDS_URL, metavar="URL",
                       help=f"AMD's KDS, or a mirror with the same paths (default {kds.DEFAULT_KDS_URL})")
    fetch.add_argument("--timeout", type=float, default=pcs.DEFAULT_TIMEOUT_S, metavar="SECONDS",
                       help=f"for each request, all of it, however slowly it comes (default {pcs.DEFAULT_TIMEOUT_S:g})")
    fetch.add_argument("--out", type=Path, metavar="DIR",
                       help=f"write {kds.VCEK_FILE} and {kds.CHAIN_FILE} to DIR (new or empty) instead of keeping them")
    snp_id = sub.add_parser("snp-id",
                            help="print this machine's SEV-SNP product, chip ID and REPORTED_TCB (for fetch-vcek)")
    snp_id.add_argument("--report", type=Path, metavar="FILE",
                        help="from this report (raw, or an envelope) instead of the running server's evidence")
    for parser in (imported, fetch, snp_id):
        with_config(parser)


def run(args: argparse.Namespace, now: datetime) -> int:
    if args.collateral_command == "import-vcek":
        return _import(args, now)
    if args.collateral_command == "fetch-vcek":
        return _fetch(args, now)
    return _snp_id(args)


def _import(args: argparse.Namespace, now: datetime) -> int:
    chip_id = sc.parse_chip_id(args.chip_id) if args.chip_id is not None else None
    cache = common.settings(args.config).collateral_dir
    keys: Certificates = []
    others: Certificates = []
    for path in args.files:
        certs = sc.read_certificates(common.evidence_file(path, "import-vcek", "a certificate file"), str(path))
        for index, cert in enumerate(certs):
            where = str(path) if len(certs) == 1 else f"{path} (certificate {index + 1})"
            (keys if sc.is_key(cert) else others).append((where, cert))
    if not keys:
        raise co.BadCollateral(f"{', '.join(map(str, args.files))}: no VCEK or VLEK among them (a cert_chain is kept "
                               "with the key it issued)")
    checked = [_checked(where, cert, others, cache) for where, cert in keys]
    for (where, _), key in zip(keys, checked, strict=True):
        _expected(key, where, chip_id, args.tcb)
    for key in checked:
        target = snp_store.install(cache, key)
        common.warn(key.warnings(now))
        print(f"imported the {key.describe()} into {target}")
    return 0


def _checked(where: str, cert: x509.Certificate, others: Certificates, cache: Path) -> sc.KeyCertificate:
    """The key checked under its issuer among the files, else under the cached chain of its product."""
    issuer = next(((w, c) for w, c in others if c.subject == cert.issuer), None)
    if issuer is not None:
        ark = next((c for _, c in others if c.subject == issuer[1].issuer and c.issuer == c.subject), None)
        return sc.check(cert, issuer[1], where=where, issuer_where=issuer[0], ark_given=ark)
    try:
        extensions = key_extensions(cert)
    except EvidenceFormatError as exc:
        raise co.BadCollateral(f"{where}: {exc}") from None
    product = extensions.product
    cached = snp_store.cached_chain(cache, product, extensions.kind) if product is not None else None
    if product is None or cached is None:
        named = product.name if product is not None else extensions.product_name
        given = f" (given: {', '.join(c.subject.rfc4514_string() for _, c in others)})" if others else ""
        raise co.BadCollateral(f"{where}: issued by {cert.issuer.rfc4514_string()}, which no file holds{given} and "
                               f"the cache has no {named} {sc.ISSUER[extensions.kind]}: give the product's "
                               f"cert_chain too (KDS: {extensions.kind.lower()}/v1/{named}/cert_chain)")
    issuer_file = str(snp_store.product_dir(cache, product) / sc.ISSUER_FILE[extensions.kind])
    issuer_cert, ark = (sc.read_certificates(pem, issuer_file)[0] for pem in cached)
    return sc.check(cert, issuer_cert, where=where, issuer_where=issuer_file, ark_given=ark)


def _expected(key: sc.KeyCertificate, where: str, chip_id: bytes | None, tcb_text: str | None) -> None:
    """BadCollateral when the key is not for the chip or TCB the operator named."""
    if chip_id is not None:
        if key.hw_id is None:
            raise co.BadCollateral(f"{where}: a VLEK, which belongs to no chip: --chip-id is for VCEKs")
        wanted = sc.hw_id_of(key.product, chip_id, "--chip-id")
        if key.hw_id != wanted:
            raise co.BadCollateral(f"{where}: hwID: expected {wanted.hex()} (--chip-id), got {key.hw_id.hex()}")
    if tcb_text is not None:
        wanted_tcb = sc.parse_tcb(tcb_text, key.product.tcb)
        if wanted_tcb != key.tcb:
            raise co.BadCollateral(f"{where}: SPLs: expected {sc.tcb_name(wanted_tcb)} (--tcb), got "
                                   f"{sc.tcb_name(key.tcb)}")


def _fetch(args: argparse.Namespace, now: datetime) -> int:
    if args.report is not None and args.chip_id is not None:
        raise co.BadCollateral("--report and --chip-id: give one (the report names its chip ID)")
    if (args.chip_id is None) != (args.tcb is None) or (args.report is not None and args.tcb is not None):
        raise co.BadCollateral("--chip-id and --tcb go together, without --report")
    if args.timeout <= 0:
        raise co.BadCollateral(f"--timeout {args.timeout:g}: must be more than 0")
    if args.chip_id is not None:
        if args.product is None:
            raise co.BadCollateral(f"--chip-id: give --product too ({names()})")
        product = sc.product_named(args.product)
        hw_id = sc.hw_id_of(product, sc.parse_chip_id(args.chip_id), "--chip-id")
        tcb = sc.parse_tcb(args.tcb, product.tcb)
    else:
        report = _report(args.report, args.config)
        product = _product(report, args.product)
        hw_id = sc.hw_id_of(product, report.chip_id, "the report's CHIP_ID")
        tcb = report.reported_tcb.with_layout(product.tcb)
    cache = common.settings(args.config).collateral_dir if args.out is None else None
    if cache is None:
        common.check_out(args.out, (kds.VCEK_FILE, kds.CHAIN_FILE), "a fetched VCEK")
    fetched = kds.fetch_vcek(product, hw_id, tcb, kds_url=args.kds_url, timeout=args.timeout)
    if cache is None:
        store.install(fetched.documents, args.out, keep_replaced=False)
        common.warn(fetched.key.warnings(now))
        print(f"wrote the {fetched.key.describe()} to {args.out} (import it with `enclave-ike collateral import-vcek "
              f"{args.out / kds.VCEK_FILE} {args.out / kds.CHAIN_FILE}`)")
        return 0
    target = snp_store.install(cache, fetched.key)
    common.warn(fetched.key.warnings(now))
    print(f"fetched the {fetched.key.describe()} into {target}")
    return 0


def _snp_id(args: argparse.Namespace) -> int:
    report = _report(args.report, args.config)
    product = report.product
    if report.signing_key == SIGNING_KEY_VLEK:
        print("enclave-ike: note: signed by a VLEK, which belongs to a cloud provider, not to the chip: KDS has none "
              "to fetch; import the provider's with import-vcek", file=sys.stderr)
        tcb = report.reported_tcb.with_layout(product.tcb) if product is not None else report.reported_tcb
        print(f"{product.name if product is not None else 'unknown'} VLEK {sc.tcb_name(tcb)}")
        return 0
    if product is None:
        print("enclave-ike: note: a version 2 report does not name its CPU: the TCB is read as Milan's and Genoa's; "
              "give fetch-vcek --product", file=sys.stderr)
        print(f"unknown {report.chip_id.hex()} {sc.tcb_name(report.reported_tcb)}")
        return 0
    hw_id = sc.hw_id_of(product, report.chip_id, "the report's CHIP_ID")
    print(f"{product.name} {hw_id.hex()} {sc.tcb_name(report.reported_tcb.with_layout(product.tcb))}")
    return 0


def _product(report: SnpReport, named: str | None) -> Product:
    """The report's product; --product for a report that does not say (version 2), and must agree with one that
    does."""
    given = sc.product_named(named) if named is not None else None
    if report.product is None:
        if given is None:
            raise co.BadCollateral("the report (version 2) does not name its CPU: give --product Milan or Genoa")
        return given
    if given is not None and given != report.product:
        raise co.BadCollateral(f"--product {named}: the report is from a {report.product.name} CPU")
    return report.product


def _report(path: Path | None, config_path: Path | None) -> SnpReport:
    where = str(path) if path is not None else "the running server's evidence"
    data = (common.evidence_file(path, "--report", "a report") if path is not None
            else common.server_evidence(config_path, "to read the report from; give --report or --chip-id"))
    try:
        return SnpReport.parse(common.unwrap(data, EvidenceKind.SEV_SNP, where, "not a SEV-SNP report: TDX needs "
                                             "`enclave-ike collateral fetch` instead"))
    except (EvidenceFormatError, UnsupportedEvidence) as exc:
        if common.parses_as(data, EvidenceKind.TDX):
            raise co.BadCollateral(f"{where}: a TDX quote, not an SEV-SNP report: use `enclave-ike collateral fmspc "
                                   f"--quote {where}` (and fetch)") from None
        raise co.BadCollateral(f"{where}: {exc}") from None
