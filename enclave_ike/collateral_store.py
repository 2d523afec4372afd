"""The collateral cache on disk: `<collateral_dir>/tdx/<fmspc>/`, one complete set per FMSPC (collateral.py names
the files), filled by `enclave-ike collateral import|fetch` and read by the evidence endpoint.

A set is replaced whole: the new one is written to a temporary directory beside it and swapped in with one
rename(2) (renameat2 RENAME_EXCHANGE where the filesystem has it, so the path never goes missing), and a failure
before the swap leaves the old set as it was. The set replaced is kept beside it (`.<name>.replaced-set`) until
the next install, so a reader that opened it a moment before still finds every file. Readers open the set's directory
once and read every file through it, so a swap in the middle of a read cannot mix two sets; a read that finds a
file gone from a directory no longer at the path (two installs during one read) reads again from the path.
`ServedCollateral` keeps the last set it read per FMSPC and reads again only when a file's inode, size or mtime
changes, so an import needs no restart.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from cryptography import x509

from ikecommon.attestation import roots
from ikecommon.attestation.certs import pem_chain
from ikecommon.attestation.errors import EvidenceFormatError
from ikecommon.attestation.times import iso

from . import collateral as co
from .config import ConfigError

TDX = "tdx"
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2
_READ_ATTEMPTS = 3


def set_dir(collateral_dir: Path, fmspc: bytes) -> Path:
    return collateral_dir / TDX / fmspc.hex()


def intel_root(path: Path | None) -> x509.Certificate:
    """The Intel SGX Root CA collateral must chain to: the file `[evidence] intel_root` names, or the one shipped
    with the package (ikecommon/attestation/roots.py). ConfigError (exit status 2) for a file that is not one PEM
    certificate."""
    if path is None:
        return _shipped_root()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"evidence.intel_root: {path}: cannot read it ({exc.strerror})") from None
    try:
        certs = pem_chain(data, str(path))
    except EvidenceFormatError as exc:
        raise ConfigError(f"evidence.intel_root: {exc}") from None
    if len(certs) != 1 or certs[0].subject != certs[0].issuer:
        raise ConfigError(f"evidence.intel_root: {path}: expected one self-signed root certificate, "
                          f"got {len(certs)} certificates")
    return certs[0]


def _shipped_root() -> x509.Certificate:
    try:
        return roots.intel_sgx_root()
    except roots.ShippedRootError as exc:  # an altered installation: nothing falls back to trusting it
        raise co.CollateralError(f"evidence.intel_root: the shipped root: {exc}") from None


def read_documents(directory: Path) -> dict[str, bytes]:
    """The collateral files in `directory` (the optional one only when present), read through one directory
    handle. BadCollateral (exit 2) naming the file for one that is missing, not a regular file or too big. When
    that directory was replaced during the read (and the set it held removed by a later install), the set now at
    the path is read instead, a few times at most."""
    attempts = _READ_ATTEMPTS
    while True:
        fd = _open_dir(directory)
        try:
            return {name: data for name in co.FILES if (data := _read(fd, directory, name)) is not None}
        except co.BadCollateral:
            attempts -= 1
            if attempts == 0 or not _replaced(fd, directory):
                raise
        finally:
            os.close(fd)


def _open_dir(directory: Path) -> int:
    try:
        return os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        raise co.BadCollateral(f"{directory}: no such directory") from None
    except OSError as exc:
        raise co.BadCollateral(f"{directory}: cannot read it ({exc.strerror})") from None


def _replaced(dir_fd: int, directory: Path) -> bool:
    """Whether the directory open as `dir_fd` is no longer the one at `directory`."""
    opened = os.fstat(dir_fd)
    try:
        now = os.stat(directory)
    except OSError:
        return True
    return (opened.st_dev, opened.st_ino) != (now.st_dev, now.st_ino)


def _read(dir_fd: int, directory: Path, name: str) -> bytes | None:
    data = read_file(Path(name), co.MAX_SIZE[name], dir_fd=dir_fd, where=directory / name)
    if data is None and name in co.REQUIRED:
        raise co.BadCollateral(f"{directory / name}: missing (a set is {', '.join(co.REQUIRED)})")
    return data


def read_file(path: Path, limit: int, *, dir_fd: int | None = None, where: Path | None = None) -> bytes | None:
    """A regular file's bytes; None when it is not there. BadCollateral (exit 2) naming `where` (default: the path)
    when it is not a regular file, cannot be read or is over `limit` bytes."""
    where = where or path
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK, dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise co.BadCollateral(f"{where}: cannot read it ({exc.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a directory, a FIFO, a device: before any read
            raise co.BadCollateral(f"{where}: not a regular file")
        chunks, size = [], 0
        while size <= limit and (chunk := os.read(fd, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
        data = b"".join(chunks)
    except OSError as exc:
        raise co.BadCollateral(f"{where}: cannot read it ({exc.strerror})") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise co.BadCollateral(f"{where}: more than the {limit} bytes a client accepts")
    return data


def names_in(directory: Path) -> dict[str, str]:
    """How errors name each file of a set read from `directory`: by its path."""
    return {name: str(directory / name) for name in co.FILES}


def install(documents: Mapping[str, bytes], target: Path, *, keep_replaced: bool = True) -> None:
    """Make `target` a directory holding exactly these documents, in one step; on failure nothing changed. The set
    it replaces is kept (`keep_replaced`, for readers: see the module's docstring) until the next install, which
    removes it. CollateralError (exit 1) when the directory cannot be written."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as exc:
        raise co.CollateralError(f"{target.parent}: cannot write there ({exc.strerror})") from None
    try:
        for name, data in documents.items():
            with open(staging / name, "xb") as file:
                _write_out(file, data)
            os.chmod(staging / name, 0o644)
        os.chmod(staging, 0o755)  # noqa: S103 - Intel's public documents, for whichever user serves them
        _swap_in(staging, target)
        _fsync_dir(target.parent)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)  # the new set's leftovers
        raise co.CollateralError(f"{target}: cannot write the set ({exc.strerror or exc})") from None
    _retire(staging, target, keep_replaced)


def _retire(old: Path, target: Path, keep: bool) -> None:
    """After a swap: remove the set kept from the install before, and keep the one just replaced (now at `old`, if
    there was one) in its place; or remove it at once. Best effort: the new set is in, whatever happens here."""
    kept = replaced_dir(target)
    shutil.rmtree(kept, ignore_errors=True)
    if keep and os.path.isdir(old):
        with contextlib.suppress(OSError):
            os.rename(old, kept)
    shutil.rmtree(old, ignore_errors=True)


def replaced_dir(target: Path) -> Path:
    """Where the set `target` held before the last install is kept until the next one."""
    return target.with_name(f".{target.name}.replaced-set")  # not a staging name: mkdtemp adds 8 characters


def replace_file(data: bytes, target: Path) -> None:
    """Make `target` a file holding `data`, in one rename; on failure nothing changed. CollateralError (exit 1) when
    it cannot be written."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    except OSError as exc:
        raise co.CollateralError(f"{target.parent}: cannot write there ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as file:
            _write_out(file, data)
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
        _fsync_dir(target.parent)
    except OSError as exc:
        raise co.CollateralError(f"{target}: cannot write it ({exc.strerror or exc})") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def _write_out(file: BinaryIO, data: bytes) -> None:
    file.write(data)
    file.flush()
    os.fsync(file.fileno())


def _swap_in(staging: Path, target: Path) -> None:
    """Put `staging` at `target`; the old `target`, if any, ends up at `staging`."""
    if not target.is_dir():
        if target.exists() or target.is_symlink():
            raise OSError(errno.ENOTDIR, f"{target} is not a directory")
        os.rename(staging, target)
        return
    if _exchange(staging, target):
        return
    # No exchange here: move the old set aside first, so there is a moment without one, never a mixed one.
    aside = staging.with_name(staging.name + ".old")
    os.rename(target, aside)
    try:
        os.rename(staging, target)
    except OSError:
        os.rename(aside, target)
        raise
    os.rename(aside, staging)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where libc or the filesystem lacks it."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fmspcs(collateral_dir: Path) -> Iterator[tuple[bytes, Path]]:
    """Every FMSPC the cache has a directory for, in order (temporary directories and other names skipped)."""
    try:
        entries = sorted(os.listdir(collateral_dir / TDX))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise co.CollateralError(f"{collateral_dir / TDX}: cannot read it ({exc.strerror})") from None
    for name in entries:
        if len(name) == 12 and all(c in "0123456789abcdef" for c in name):
            yield bytes.fromhex(name), collateral_dir / TDX / name


def show(collateral_dir: Path, root: x509.Certificate, now: datetime) -> tuple[list[str], bool]:
    """The lines `enclave-ike collateral show` prints, and whether every set there is usable."""
    lines, usable = [], True
    for fmspc, directory in fmspcs(collateral_dir):
        try:
            found = co.check(read_documents(directory), root, fmspc=fmspc, names=names_in(directory))
        except co.CollateralError as exc:
            lines.append(f"{fmspc.hex()}  unusable: {exc}")
            usable = False
            continue
        info, identity = found.tcb_info, found.qe_identity
        lines.append(f"{fmspc.hex()}  tcbEvaluationDataNumber {info.tcb_evaluation_data_number}")
        rows = ((co.TCB_INFO, info.issue_date, info.next_update),
                (co.QE_IDENTITY, identity.issue_date, identity.next_update),
                (co.PCK_CRL, found.pck_crl.last_update_utc, found.pck_crl.next_update_utc),
                (co.ROOT_CRL, found.root_crl.last_update_utc, found.root_crl.next_update_utc))
        for name, issued, next_update in rows:
            until = f"nextUpdate {iso(next_update)}  {co.age(next_update, now)}" if next_update else "no nextUpdate"
            lines.append(f"  {name:<17} issueDate {iso(issued)}  {until}")
        what, when = found.first_deadline()
        lines.append(f"  first to expire:  {what} {iso(when)}: {co.age(when, now)}")
    if not lines:
        lines.append(f"no TDX collateral in {collateral_dir / TDX} (enclave-ike collateral import DIR, or fetch)")
    return lines, usable


Stamp = tuple[tuple[int, int, int], ...]


@dataclass(frozen=True)
class Found:
    """What the cache has for one quote: the envelope's collateral (None: serve the quote without), and the one
    line the operator should read, or None when all is well."""

    collateral: co.CollateralSet | None
    problem: str | None


@dataclass(frozen=True)
class _Loaded:
    found: co.CollateralSet | None  # None: nothing that parses
    problem: str | None             # why it does not parse, or does not verify under the root


@dataclass
class ServedCollateral:
    """The cache as the evidence endpoint reads it: `for_platform` is called in worker threads, per request; the
    files are stat'ed each time and read and checked again only when they changed. A set that parses is served
    even when it does not verify under the server's root (planted by hand, say): the client is the judge, and its
    refusal names what is wrong; the operator gets the warning."""

    collateral_dir: Path
    root: x509.Certificate
    _sets: dict[bytes, tuple[Stamp, _Loaded]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def for_platform(self, platform: co.Platform, now: datetime) -> Found:
        fmspc = platform.fmspc.hex()
        todo = (f"run `enclave-ike collateral fetch --fmspc {fmspc}"
                f"{f' --pck-ca {platform.pck_ca_kind}' if platform.pck_ca_kind else ''}` (or fetch elsewhere "
                f"with --out DIR and `enclave-ike collateral import DIR` here)")
        loaded = self._load(platform.fmspc)
        if loaded is None:
            return Found(None, f"no TDX collateral for FMSPC {fmspc} in {self.collateral_dir / TDX}: serving quotes "
                               f"without it, which clients refuse; {todo}")
        found = loaded.found
        if found is None:
            return Found(None, f"TDX collateral for FMSPC {fmspc} unusable ({loaded.problem}): serving quotes "
                               f"without it; {todo}")
        if loaded.problem is not None:
            return Found(found, f"TDX collateral for FMSPC {fmspc} does not verify under evidence.intel_root "
                                f"({loaded.problem}): serving it, clients will refuse it; {todo}")
        mismatch = co.pck_crl_mismatch(found.pck_crl, platform.pck_ca)
        if mismatch is not None:
            return Found(found, f"TDX collateral for FMSPC {fmspc}: {co.PCK_CRL}: {mismatch}: serving it, clients "
                                f"will refuse it; {todo}")
        what, when = found.first_deadline()
        if when < now:
            return Found(found, f"TDX collateral for FMSPC {fmspc} expired: {what} {iso(when)}, "
                                f"{co.age(when, now)}: serving it, clients refuse it unless their [trust] "
                                f"collateral_grace_days covers it; {todo}")
        return Found(found, None)

    def _load(self, fmspc: bytes) -> _Loaded | None:
        directory = set_dir(self.collateral_dir, fmspc)
        stamp = _stamp(directory)
        if stamp is None:
            return None
        with self._lock:
            cached = self._sets.get(fmspc)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        names = names_in(directory)
        try:
            found = co.parse(read_documents(directory), fmspc=fmspc, names=names)
        except co.CollateralError as exc:
            loaded = _Loaded(None, str(exc))
        except OSError as exc:  # read_documents names the file for what it foresees; this is for the rest
            loaded = _Loaded(None, f"{directory}: cannot read it ({exc.strerror or exc})")
        else:
            try:
                loaded = _Loaded(co.verify(found, self.root, names=names), None)
            except co.CollateralError as exc:
                loaded = _Loaded(found, str(exc))
        with self._lock:
            self._sets[fmspc] = (stamp, loaded)
        return loaded


def _stamp(directory: Path) -> Stamp | None:
    """What changes when the set does: inode, size and mtime of the directory and of each file in it."""
    stamps = []
    for path in (directory, *(directory / name for name in co.FILES)):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if path == directory:
                return None
            st_tuple = (0, 0, 0)
        except OSError:
            return None
        else:
            st_tuple = (st.st_ino, st.st_size, st.st_mtime_ns)
        stamps.append(st_tuple)
    return tuple(stamps)
