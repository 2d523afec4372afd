"""The `tsm` backend: evidence from Linux configfs-tsm inside a TDX or SEV-SNP guest, the IKE key in the guest.

Real hardware was NOT available when this was written: it follows the documented kernel ABI
(Documentation/ABI/testing/configfs-tsm-report, Linux 6.7+) and is tested only against a fake configfs tree that
behaves as that document says. One report, per the ABI:

    mkdir  /sys/kernel/config/tsm/report/<name>       the kernel creates the attributes below
    read   provider      "tdx_guest" (outblob is a TDX quote) or "sev_guest" (an SEV-SNP report)
    read   generation    a counter of writes to the entry
    write  privlevel     optional: the SEV-SNP VMPL to report at (at least privlevel_floor)
    write  inblob        the 64 bytes of report data
    read   outblob       the quote or report, at most 32 KiB (TSM_OUTBLOB_MAX)
    read   auxblob       sev_guest: the host's certificate table (VCEK, ASK, ARK), possibly empty
    read   generation    must equal the first reading plus our writes, or another writer raced us
    rmdir  <name>

Each evidence() call uses an entry of its own, so concurrent callers do not share one. The guest is the TEE here:
the IKE key stays in this process, inside the confidential VM (and leaves it only sealed to another attested
enclave: custody.py).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from ikecommon.attestation.envelope import Evidence, EvidenceKind

from .cert_table import snp_certificates
from .custody import Custody, HeldInProcess
from .errors import EnclaveError, EnclaveUnavailable
from .sealing import IdentityKey

REPORTS = Path("/sys/kernel/config/tsm/report")
PROVIDERS = {"tdx_guest": EvidenceKind.TDX, "sev_guest": EvidenceKind.SEV_SNP}
INBLOB_SIZE = 64
OUTBLOB_MAX = 32 * 1024
AUXBLOB_MAX = 64 * 1024
ATTRIBUTE_MAX = 64  # provider, generation


class ConfigFs:
    """The file operations the backend makes on configfs; a test replaces them with a fake kernel."""

    def make_entry(self, path: Path) -> None:
        path.mkdir()

    def remove_entry(self, path: Path) -> None:
        path.rmdir()

    def write(self, path: Path, data: bytes) -> None:
        """One write of the whole value: configfs commits a binary attribute when the file is closed."""
        fd = os.open(path, os.O_WRONLY)
        try:
            written = os.write(fd, data)
        finally:
            os.close(fd)
        if written != len(data):
            raise OSError(f"short write: {written} of {len(data)} bytes")

    def read(self, path: Path, limit: int) -> bytes | None:
        """The whole attribute, None when it does not exist; more than `limit` bytes is an error."""
        try:
            with path.open("rb") as file:
                data = file.read(limit + 1)
        except FileNotFoundError:
            return None
        if len(data) > limit:
            raise OSError(f"more than {limit} bytes")
        return data


class TsmEnclave(HeldInProcess):
    def __init__(self, key: IdentityKey | None = None, *, reports: Path = REPORTS, privlevel: int | None = None,
                 fs: ConfigFs | None = None) -> None:
        if not reports.is_dir():
            raise EnclaveUnavailable(f"{reports}: no configfs-tsm here (not a TDX or SEV-SNP guest, a kernel "
                                     "before 6.7, or configfs not mounted)")
        self._custody = Custody(key or ec.generate_private_key(ec.SECP256R1()))
        self._reports, self._privlevel, self._fs = reports, privlevel, fs or ConfigFs()
        self._kind: EvidenceKind | None = None

    @property
    def kind(self) -> EvidenceKind:
        if self._kind is None:
            with self._entry() as entry:
                self._kind = self._provider(entry)
        return self._kind

    def evidence(self, report_data: bytes) -> Evidence:
        if len(report_data) != INBLOB_SIZE:
            raise EnclaveError(f"report data must be {INBLOB_SIZE} bytes, got {len(report_data)}")
        with self._entry() as entry:
            kind = self._provider(entry)
            before, writes = self._generation(entry), 0
            if self._privlevel is not None:
                self._write(entry / "privlevel", str(self._privlevel).encode())
                writes += 1
            self._write(entry / "inblob", report_data)
            writes += 1
            outblob = self._read(entry / "outblob", OUTBLOB_MAX)
            auxblob = self._read(entry / "auxblob", AUXBLOB_MAX, required=False)
            after = self._generation(entry)
        if not outblob:
            raise EnclaveError(f"{entry / 'outblob'}: empty")
        if after != before + writes:
            raise EnclaveError(f"{entry}: generation went from {before} to {after} over our {writes} writes: "
                               "another writer changed the report; try again")
        self._kind = kind
        certificates = snp_certificates(auxblob) if kind == EvidenceKind.SEV_SNP and auxblob else ()
        return Evidence(kind, outblob, certificates)

    @contextmanager
    def _entry(self) -> Iterator[Path]:
        entry = self._reports / f"enclave-ike-{os.getpid()}-{secrets.token_hex(6)}"
        try:
            self._fs.make_entry(entry)
        except OSError as exc:
            raise EnclaveUnavailable(f"{entry}: cannot create a report entry: {exc.strerror or exc}") from None
        try:
            yield entry
        finally:
            with suppress(OSError):  # a leftover entry is harmless; the error that got us here matters more
                self._fs.remove_entry(entry)

    def _provider(self, entry: Path) -> EvidenceKind:
        provider = (self._read(entry / "provider", ATTRIBUTE_MAX) or b"").decode("ascii", "replace").strip()
        if provider not in PROVIDERS:
            raise EnclaveUnavailable(f"{entry / 'provider'}: {provider!r} is not a provider enclave-ike knows "
                                     f"({', '.join(PROVIDERS)})")
        return PROVIDERS[provider]

    def _generation(self, entry: Path) -> int:
        text = (self._read(entry / "generation", ATTRIBUTE_MAX) or b"").strip()
        if not text.isdigit():
            raise EnclaveError(f"{entry / 'generation'}: not a number: {text!r}")
        return int(text)

    def _read(self, path: Path, limit: int, *, required: bool = True) -> bytes | None:
        try:
            data = self._fs.read(path, limit)
        except OSError as exc:
            raise EnclaveError(f"{path}: {exc.strerror or exc}") from None
        if data is None and required:
            raise EnclaveError(f"{path}: missing")
        return data

    def _write(self, path: Path, data: bytes) -> None:
        try:
            self._fs.write(path, data)
        except OSError as exc:
            raise EnclaveError(f"{path}: {exc.strerror or exc}") from None
