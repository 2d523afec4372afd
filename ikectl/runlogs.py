"""A run's logs outlive its run dir: before `down` or a failed `up` removes a run dir (daemon.retire), its logs
(pluto.log, pluto.log.1, supervisor.log) go to `[paths] log_dir`/last, and the run before's to log_dir/previous.

Two runs are kept, and each file at most its last MiB (from the start of a line, with one line on top that says
what was cut), so log_dir holds at most 6 MiB whatever ran. A run that left no log (or only empty ones) changes
nothing there. The directories are 0750 and the files 0640, made by root (`up` and `down` run as root).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

KEEP_BYTES = 1 << 20  # of each file: its last MiB
LAST, PREVIOUS = "last", "previous"
DIR_MODE, FILE_MODE = 0o750, 0o640


def keep(logs: Iterable[Path], log_dir: Path, keep_bytes: int = KEEP_BYTES) -> Path | None:
    """Copy each of `logs` that is a file with something in it (its last `keep_bytes`) into a fresh log_dir/last,
    once the old one is log_dir/previous (and the one before that gone). log_dir/last, or None when there was
    nothing to keep (then log_dir is not touched). Raises OSError when the logs cannot be kept."""
    found = [(path.name, text) for path in logs if (text := _tail(path, keep_bytes))]
    if not found:
        return None
    _make_dir(log_dir)
    staging = Path(tempfile.mkdtemp(prefix=".new-", dir=log_dir))
    try:
        os.chmod(staging, DIR_MODE)
        for name, text in found:
            _write(staging / name, text)
        last, previous = log_dir / LAST, log_dir / PREVIOUS
        _remove(previous)
        if last.exists() or last.is_symlink():
            last.rename(previous)
        staging.rename(last)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return last


def _tail(path: Path, keep_bytes: int) -> bytes | None:
    """The file's last `keep_bytes` from a line's start, with a line saying what was cut; None when it is not
    there, not a regular file (nor a symlink: never followed), or empty."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
            return None
        raise
    with os.fdopen(fd, "rb") as file:
        found = os.fstat(file.fileno())
        if not stat.S_ISREG(found.st_mode) or found.st_size == 0:
            return None
        if found.st_size <= keep_bytes:
            return file.read(keep_bytes)
        file.seek(found.st_size - keep_bytes)
        text = file.read(keep_bytes)
    start = text.find(b"\n") + 1
    text = text[start:] if 0 < start < len(text) else text
    return f"[ikectl kept the last {len(text)} bytes of {found.st_size}]\n".encode() + text


def _make_dir(log_dir: Path) -> None:
    if log_dir.is_dir():
        return
    log_dir.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    os.chmod(log_dir, DIR_MODE)  # whatever the umask


def _write(path: Path, text: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    with os.fdopen(fd, "wb") as file:
        os.fchmod(file.fileno(), FILE_MODE)  # whatever the umask
        file.write(text)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
