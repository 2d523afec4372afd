"""Where a line about one client goes: its address, port, identity, SPIs, and the moment it did something.

With privacy off such lines go to the log like any other. With privacy on (the default) they stay inside the
enclave, in a bounded ring of the newest `ring_lines`, and leave it only when the operator asks for them (SIGUSR1
on `serve`): the dump is announced in the log first, with its size, so a reader of the log can see that it was
asked for. What `serve` logs besides is about the server alone, or counts over every client.

The ring keeps each line's text, made when it comes in, not its arguments: an event that carries an SA's keys (a new
Child SA) is not kept alive by the ring after the SA is gone.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_RING_LINES = 2000
MAX_RING_LINES = 1_000_000


@dataclass(frozen=True)
class PrivacyConfig:
    """`[privacy]` of enclave-ike.toml."""

    enabled: bool = True
    ring_lines: int = DEFAULT_RING_LINES


@dataclass(frozen=True)
class _Entry:
    at: float
    level: int
    text: str


class Diagnostics:
    """Lines about one client (`client`), and counts over all of them (`count` for what happened, `fail` for what
    went wrong), which `serve` writes as aggregate lines now and then: a failure's own line would tell when a client
    met it."""

    def __init__(self, log: logging.Logger, config: PrivacyConfig, clock: Callable[[], float] = time.time) -> None:
        self._log, self.private, self._clock = log, config.enabled, clock
        self._ring: deque[_Entry] = deque(maxlen=config.ring_lines)
        self.counts: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()

    def client(self, level: int, message: str, *args: object) -> None:
        """A line that names a client: logged with privacy off, kept in the ring with it on (at the levels the log
        would have taken)."""
        if not self._log.isEnabledFor(level):
            return
        if self.private:
            self._ring.append(_Entry(self._clock(), level, message % args if args else message))
        else:
            self._log.log(level, message, *args)

    def count(self, what: str) -> None:
        self.counts[what] += 1

    def fail(self, what: str) -> None:
        self.failures[what] += 1

    def dump(self, asked_by: str) -> int:
        """Write the ring to the log, oldest first, after a line that says who asked and how many lines follow;
        the ring is emptied, so no line is written twice. Returns how many lines were written."""
        entries = list(self._ring)
        self._ring.clear()
        self._log.warning("privacy: diagnostics ring dumped as asked by %s: %d lines about clients follow",
                          asked_by, len(entries))
        for entry in entries:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(entry.at))
            self._log.log(entry.level, "ring %sZ: %s", stamp, entry.text)
        return len(entries)

    def __len__(self) -> int:
        return len(self._ring)
