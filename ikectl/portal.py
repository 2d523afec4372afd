"""Captive portals on trusted networks: the time-limited window during which clear DNS may pass.

Trusted mode stays closed when NetworkManager reports a portal (CONNECTIVITY_STATE=PORTAL): the login
page needs the portal's own resolver, in clear, and trusted mode never lets that happen by itself. A user
opts in for a bounded time, with `ikectl portal allow --minutes N` or `[portal] allow_minutes = N` in the
config; the window is recorded in a small JSON file (so every dispatcher call, `ikectl portal show` and a
closer started for the purpose agree on it) and ends at its deadline or when connectivity becomes FULL.

This module holds the window's data and logic, no policy changes: session.open_portal_window and
session.close_portal_window apply it (the record carries the window's end, so the supervisor's watch leaves the
backstops out until then, and puts them back at its end).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ikecommon import lean_pyroute2, xfrm

from .errors import UsageError

MAX_MINUTES = 120  # a login takes minutes; anything longer is a mode change, not a portal window


@dataclass(frozen=True)
class PortalWindow:
    opened_at: float  # seconds since the epoch
    until: float
    source: str  # who opened it: "ikectl portal allow" or "[portal] allow_minutes"
    network: str | None = None  # the connection UUID it was opened for, when known

    def is_open(self, now: float) -> bool:
        return self.opened_at <= now < self.until

    def describe(self, now: float) -> str:
        if not self.is_open(now):
            return "portal window closed"
        left = int(self.until - now)
        return f"portal window open: clear DNS allowed for {left // 60} min {left % 60} s more ({self.source})"


def new_window(minutes: int, now: float, source: str, network: str | None = None) -> PortalWindow:
    if not 1 <= minutes <= MAX_MINUTES:
        raise UsageError(f"--minutes {minutes}: expected a whole number from 1 to {MAX_MINUTES}")
    return PortalWindow(opened_at=now, until=now + 60 * minutes, source=source, network=network)


def read(path: Path) -> PortalWindow | None:
    """The recorded window; None when there is none or the file is damaged (a damaged file opens nothing)."""
    try:
        data = json.loads(path.read_text())
        network = data.get("network")
        if network is not None and not isinstance(network, str):
            return None
        return PortalWindow(opened_at=float(data["opened_at"]), until=float(data["until"]),
                            source=str(data["source"]), network=network)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def write(path: Path, window: PortalWindow) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(window)))
    tmp.replace(path)


def clear(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def open_window(path: Path, now: float) -> PortalWindow | None:
    """The recorded window if it is open now."""
    window = read(path)
    return window if window is not None and window.is_open(now) else None


def close_when_due(path: Path, poll_s: float = 5.0) -> None:
    """Sleep until the recorded window ends, then close it; a window closed or replaced meanwhile is left
    to whoever did that. Run detached by `ikectl portal allow` (python -m ikectl.portal ...)."""
    xfrm.preload()  # what closing needs, loaded before the wait and not at the deadline
    while True:
        window = read(path)
        if window is None:
            return
        wait = window.until - time.time()
        if wait <= 0:
            from . import session  # noqa: PLC0415 - imported at the deadline; xfrm.preload() loaded the slow part

            session.close_portal_window()
            clear(path)
            print(f"ikectl portal: window opened by {window.source} has ended; trusted DNS is closed again",
                  file=sys.stderr, flush=True)
            return
        time.sleep(min(wait, poll_s))


def spawn_closer(path: Path) -> int:
    """Start the closer detached from the caller, its output in a log beside the window's file: it must hold
    none of the caller's pipes, or whoever reads them (NM's dispatcher, a shell's `$(...)`) waits for the whole
    window. The supervisor puts the backstops back at the window's end too; the closer also forgets the window
    and says so in its log."""
    path.parent.mkdir(parents=True, exist_ok=True)
    log = open(path.with_name("portal-closer.log"), "ab")  # noqa: SIM115 - handed to the child, closed here after
    try:
        proc = subprocess.Popen([sys.executable, "-m", "ikectl.portal", str(path)], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, start_new_session=True, cwd="/")
    finally:
        log.close()
    return proc.pid


if __name__ == "__main__":
    lean_pyroute2.use()
    close_when_due(Path(sys.argv[1]))
