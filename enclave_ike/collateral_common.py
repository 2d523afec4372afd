"""What the collateral commands (collateral_cli.py for TDX, vcek_cli.py for SEV-SNP) share: the config's [evidence]
settings, evidence read from a file or asked of the running server, and warning lines."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

from ikecommon import evidence_client
from ikecommon.attestation.envelope import Envelope, EvidenceKind
from ikecommon.attestation.errors import EvidenceFormatError, UnsupportedEvidence
from ikecommon.attestation.snp import SnpReport
from ikecommon.attestation.tdx import TdxQuote

from . import collateral as co
from . import config as config_module
from .evidence_endpoint import endpoint_address

MAX_EVIDENCE_FILE = 1 << 20


def settings(path: Path | None) -> config_module.EvidenceConfig:
    """[evidence] of `path`, else of the default config when there is one, else the defaults."""
    if path is None and not config_module.DEFAULT_PATH.exists():
        return config_module.EvidenceConfig()
    return config_module.load(path or config_module.DEFAULT_PATH).evidence


def evidence_file(path: Path, option: str, what: str) -> bytes:
    """The bytes of a quote or report file (`option` names it in errors), bounded so a wrong file stops early."""
    try:
        with open(path, "rb", opener=lambda name, flags: os.open(name, flags | os.O_NONBLOCK)) as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):  # a FIFO or a device: not read, not waited on
                raise co.BadCollateral(f"{option} {path}: not a regular file")
            data = file.read(MAX_EVIDENCE_FILE + 1)
    except IsADirectoryError:
        raise co.BadCollateral(f"{option} {path}: not a regular file") from None
    except OSError as exc:
        raise co.BadCollateral(f"{option} {path}: cannot read it ({exc.strerror})") from None
    if len(data) > MAX_EVIDENCE_FILE:
        raise co.BadCollateral(f"{option} {path}: over {MAX_EVIDENCE_FILE} bytes, not {what}")
    return data


def server_evidence(config_path: Path | None, need: str) -> bytes:
    """The envelope the running server makes for a fresh nonce; `need` ends the error when it serves none ("to take
    the FMSPC from; give --fmspc or --quote")."""
    config = config_module.load(config_path or config_module.DEFAULT_PATH)
    if config.identity.auth is config_module.Auth.NULL or not config.evidence.enabled:
        raise co.BadCollateral(f"{config.path}: the server serves no evidence {need}")
    return evidence_client.fetch_evidence(endpoint_address(config), config.evidence.port, os.urandom(32))


def unwrap(data: bytes, kind: EvidenceKind, where: str, other: str) -> bytes:
    """The evidence in `data`: itself when raw, the envelope's when it is one (as `enclave-ike evidence` prints it);
    evidence of another kind is BadCollateral ending with `other` ("not a TDX quote: ...")."""
    if not data.lstrip().startswith(b"{"):
        return data
    envelope = Envelope.decode(data.strip())
    if envelope.evidence.kind is not kind:
        raise co.BadCollateral(f"{where}: {envelope.evidence.kind} evidence, {other}")
    return envelope.evidence.data


def parses_as(data: bytes, kind: EvidenceKind) -> bool:
    """Whether raw `data` is well-formed evidence of `kind` (a TDX quote or a SEV-SNP report), to say so when it was
    given where the other kind was expected."""
    parse = {EvidenceKind.TDX: TdxQuote.parse, EvidenceKind.SEV_SNP: SnpReport.parse}.get(kind)
    if parse is None:
        return False
    try:
        parse(data)
    except (EvidenceFormatError, UnsupportedEvidence):
        return False
    return True


def check_out(out: Path, names: tuple[str, ...], what: str) -> None:
    """`--out DIR` must be new, empty, or hold only `names` (a former --out of the same kind)."""
    if out.exists() and not out.is_dir():
        raise co.BadCollateral(f"--out {out}: not a directory")
    if out.is_dir():
        others = sorted(set(os.listdir(out)) - set(names))
        if others:
            raise co.BadCollateral(f"--out {out}: holds {others[0]!r}, not {what}; give a new or empty directory")


def warn(lines: tuple[str, ...]) -> None:
    for line in lines:
        print(f"enclave-ike: warning: {line}", file=sys.stderr)
