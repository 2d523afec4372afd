"""Reading a TOML config file, with every way that can fail as one line naming the file."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any


def read(path: Path, error: type[Exception]) -> dict[str, Any]:
    """The file's TOML document; `error(message)` for a missing, unreadable, non-UTF-8 or invalid file."""
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{path}: no such config file") from None
    except OSError as exc:
        raise error(f"{path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML: {exc}") from None
