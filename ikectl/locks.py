"""An exclusive flock that can give up at a deadline: the NetworkManager hook must never wait for ever."""

from __future__ import annotations

import fcntl
import time

POLL_S = 0.01


def lock_by(fd: int, deadline: float | None) -> bool:
    """Take an exclusive flock on `fd`, waiting until `deadline` (time.monotonic()); None waits as long as it
    takes. False when the deadline passed first."""
    if deadline is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return True
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_S)
