"""Reading a TOML config file, with every way that can fail as one line naming the file."""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from typing import Any

MAX_CONFIG = 1 << 20  # a config is a few KiB; anything this big is not one


def read(path: Path, error: type[Exception]) -> dict[str, Any]:
    """The file's TOML document; `error(message)` for a missing, unreadable, non-UTF-8 or invalid file, and for
    anything that is not a regular file of a sane size (a FIFO or /dev/zero would be read for ever)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise error(f"{path}: no such config file") from None
    except OSError as exc:
        raise error(f"{path}: cannot read it ({exc.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise error(f"{path}: not a regular file")
    with os.fdopen(fd, "rb") as config:
        try:
            data = config.read(MAX_CONFIG + 1)
        except OSError as exc:
            raise error(f"{path}: cannot read it ({exc.strerror})") from None
    if len(data) > MAX_CONFIG:
        raise error(f"{path}: over {MAX_CONFIG} bytes, not a config file")
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise error(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML: {exc}") from None
