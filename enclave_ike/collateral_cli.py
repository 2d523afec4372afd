"""`enclave-ike collateral import|fetch|show|fmspc`: the operator's side of the collateral cache (collateral_store.py).
The SEV-SNP commands (import-vcek, fetch-vcek, snp-id) are in vcek_cli.py; `show` lists both.

    enclave-ike collateral import DIR [--fmspc HEX]           check DIR's documents, make them the set for their FMSPC
    enclave-ike collateral fetch [--fmspc HEX | --quote FILE] [--pck-ca platform|processor] [--pcs-url URL]
                                 [--root-crl-url URL] [--timeout SECONDS] [--out DIR]
    enclave-ike collateral show                               every FMSPC in the cache, its dates and what expires
                                                              first; every SEV-SNP key kept
    enclave-ike collateral fmspc [--quote FILE]               the FMSPC and PCK CA of this platform

Every command takes --config FILE; without it, the default config when there is one, else the defaults
(`[evidence] collateral_dir` /var/lib/enclave-ike/collateral, the shipped Intel root). The FMSPC, when not given,
comes from a TDX quote: --quote FILE (a raw quote, or an envelope `enclave-ike evidence` printed), else the
running server's own evidence (its quote carries the PCK certificate, whose SGX extension names the FMSPC).
Exit status 2 for bad input (an argument, a file that is missing or does not parse, another FMSPC), 1 when a
signature or an issuer does not lead to the Intel root, the PCS fails, or the cache cannot be written. Nothing is
changed by a command that fails. Warnings (expired documents, what was not checked) go to stderr; the set is kept.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

from ikecommon.attestation.envelope import EvidenceKind
from ikecommon.attestation.errors import EvidenceFormatError, UnsupportedEvidence

from . import collateral as co
from . import collateral_common as common
from . import collateral_store as store
from . import config as config_module
from . import pcs, snp_store, vcek_cli


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser], help_text: str) -> None:
    collateral = commands.add_parser("collateral", help=help_text)
    sub = collateral.add_subparsers(dest="collateral_command", metavar="COMMAND", required=True)
    imported = sub.add_parser("import", help="check a directory of collateral documents and make it the set for "
                                             "its FMSPC (atomically; a refused set changes nothing)")
    imported.add_argument("directory", type=Path, metavar="DIR",
                          help=f"holds {', '.join(co.REQUIRED)} (and optionally {co.PCK_CRL_CHAIN})")
    imported.add_argument("--fmspc", metavar="HEX", help="refuse documents for another FMSPC (default: DIR's name "
                                                         "when it is an FMSPC)")
    _config(imported)
    fetch = sub.add_parser("fetch", help="get a set from Intel's PCS (API v4), check it and import it, or write it "
                                         "to --out DIR for an import on a machine without internet")
    fetch.add_argument("--fmspc", metavar="HEX", help="the platform's FMSPC (default: from --quote, else from the "
                                                      "running server's evidence)")
    fetch.add_argument("--quote", type=Path, metavar="FILE", help="a TDX quote (raw, or an envelope from enclave-ike "
                                                                  "evidence) to take the FMSPC and PCK CA from")
    fetch.add_argument("--pck-ca", choices=co.PCK_CA_KINDS,
                       help="whose PCK CRL: the CA that issued the platform's PCK certificate (default: the quote's, "
                            "else platform)")
    fetch.add_argument("--pcs-url", default=pcs.DEFAULT_PCS_URL, metavar="URL",
                       help=f"the PCS (or a PCCS with the same API; default {pcs.DEFAULT_PCS_URL})")
    fetch.add_argument("--root-crl-url", default=pcs.DEFAULT_ROOT_CRL_URL, metavar="URL",
                       help="the Intel SGX Root CA's CRL (default: Intel's, IntelSGXRootCA.der on "
                            "certificates.trustedservices.intel.com)")
    fetch.add_argument("--timeout", type=float, default=pcs.DEFAULT_TIMEOUT_S, metavar="SECONDS",
                       help=f"for each request, all of it, however slowly it comes (default {pcs.DEFAULT_TIMEOUT_S:g})")
    fetch.add_argument("--out", type=Path, metavar="DIR", help="write the checked set to DIR (new or empty) instead "
                                                               "of importing it")
    _config(fetch)
    show = sub.add_parser("show", help="list the cached sets: dates, tcbEvaluationDataNumber, what expires first")
    _config(show)
    fmspc = sub.add_parser("fmspc", help="print this platform's FMSPC and PCK CA (platform or processor)")
    fmspc.add_argument("--quote", type=Path, metavar="FILE", help="from this TDX quote (raw, or an envelope) "
                                                                  "instead of the running server's evidence")
    _config(fmspc)
    vcek_cli.add_commands(sub, _config)


def _config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE", help="the server's config, for [evidence] "
                        f"collateral_dir and intel_root (default {config_module.DEFAULT_PATH} when it exists)")


def run(args: argparse.Namespace) -> int:
    """One collateral command; CollateralError (or ConfigError) for anything that stops it."""
    now = datetime.now(UTC)
    if args.collateral_command == "import":
        return _import(args, now)
    if args.collateral_command == "fetch":
        return _fetch(args, now)
    if args.collateral_command == "show":
        return _show(args, now)
    if args.collateral_command in vcek_cli.COMMANDS:
        return vcek_cli.run(args, now)
    return _fmspc(args)


def _import(args: argparse.Namespace, now: datetime) -> int:
    expected = co.parse_fmspc(args.fmspc) if args.fmspc is not None else _fmspc_named(args.directory)
    settings = common.settings(args.config)
    root = store.intel_root(settings.intel_root)
    documents = store.read_documents(args.directory)
    found = co.check(documents, root, fmspc=expected, names=store.names_in(args.directory))
    target = store.set_dir(settings.collateral_dir, found.fmspc)
    store.install(documents, target)
    common.warn(found.warnings(now))
    print(_summary(f"imported FMSPC {found.fmspc.hex()} into {target}", found, now))
    return 0


def _fetch(args: argparse.Namespace, now: datetime) -> int:
    if args.fmspc is not None and args.quote is not None:
        raise co.BadCollateral("--fmspc and --quote: give one (the quote names its FMSPC)")
    if args.timeout <= 0:
        raise co.BadCollateral(f"--timeout {args.timeout:g}: must be more than 0")
    settings = common.settings(args.config) if args.out is None or args.config is not None else None
    root = store.intel_root(settings.intel_root if settings else None)
    if args.out is not None:
        common.check_out(args.out, co.FILES, "a collateral set")
    if args.fmspc is not None:
        fmspc, kind = co.parse_fmspc(args.fmspc), None
    else:
        platform = _platform(args.quote, args.config)
        fmspc, kind = platform.fmspc, platform.pck_ca_kind
    documents, sources = pcs.fetch(fmspc, args.pck_ca or kind or "platform", pcs_url=args.pcs_url,
                                   root_crl_url=args.root_crl_url, timeout=args.timeout)
    try:
        found = co.check(documents, root, fmspc=fmspc, names=sources)
    except co.BadCollateral as exc:  # the PCS's answer, not the operator's input
        raise pcs.FetchError(str(exc)) from None
    if args.out is not None:
        store.install(documents, args.out, keep_replaced=False)
        common.warn(found.warnings(now))
        print(_summary(f"wrote FMSPC {fmspc.hex()} to {args.out} (import it with `enclave-ike collateral import "
                       f"{args.out}`)", found, now))
        return 0
    target = store.set_dir((settings or config_module.EvidenceConfig()).collateral_dir, fmspc)
    store.install(documents, target)
    common.warn(found.warnings(now))
    print(_summary(f"fetched FMSPC {fmspc.hex()} into {target}", found, now))
    return 0


def _show(args: argparse.Namespace, now: datetime) -> int:
    settings = common.settings(args.config)
    lines, usable = store.show(settings.collateral_dir, store.intel_root(settings.intel_root), now)
    snp_lines, snp_usable = snp_store.show(settings.collateral_dir, now)
    print("\n".join(lines + snp_lines))
    return 0 if usable and snp_usable else 1


def _fmspc(args: argparse.Namespace) -> int:
    platform = _platform(args.quote, args.config)
    print(f"{platform.fmspc.hex()} {platform.pck_ca_kind or 'unknown'}")
    return 0


def _fmspc_named(directory: Path) -> bytes | None:
    """The FMSPC a directory is named after (as in the cache, or as a copy of a cache directory), if any."""
    name = directory.resolve().name
    try:
        return co.parse_fmspc(name, "directory name")
    except co.BadCollateral:
        return None


def _platform(quote_file: Path | None, config_path: Path | None) -> co.Platform:
    where = str(quote_file) if quote_file is not None else "the running server's evidence"
    data = (common.evidence_file(quote_file, "--quote", "a quote") if quote_file is not None
            else common.server_evidence(config_path, "to take the FMSPC from; give --fmspc or --quote"))
    try:
        quote = common.unwrap(data, EvidenceKind.TDX, where, "not a TDX quote: it needs no Intel collateral")
        return co.platform_of(quote)
    except (EvidenceFormatError, UnsupportedEvidence) as exc:
        if common.parses_as(data, EvidenceKind.SEV_SNP):
            raise co.BadCollateral(f"{where}: an SEV-SNP report, not a TDX quote: use `enclave-ike collateral snp-id "
                                   f"--report {where}` (and fetch-vcek)") from None
        raise co.BadCollateral(f"{where}: {exc}") from None


def _summary(head: str, found: co.CollateralSet, now: datetime) -> str:
    what, when = found.first_deadline()
    return (f"{head}: tcbEvaluationDataNumber {found.tcb_info.tcb_evaluation_data_number}; first to expire: {what} "
            f"{when:%Y-%m-%d}, {co.age(when, now)}")
