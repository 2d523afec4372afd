"""The supervisor's lines to the journal, beside its log file.

The supervisor runs detached with its stdout and stderr in the run dir's supervisor.log; when the `ikectl` that
started it wrote to the journal (ikectl.service), it also sends each line to the syslog socket, /dev/log, where
journald takes it with the identifier `ikectl-supervisor` and the line's priority (`journalctl -t
ikectl-supervisor`; the supervisor runs in ikectl.service's cgroup, so `journalctl -u ikectl` shows its lines too).

The standard library's SysLogHandler does the sending, with a non-blocking socket: a journald that is slow or gone
(a full queue, no /dev/log at all) costs the line, never a wait or an exception. supervisor.log has every line all
the same.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import socket
from typing import Any

from . import logline

JOURNAL_SOCKET = "/dev/log"
IDENTIFIER = "ikectl-supervisor"
_LEVELS = {logline.ERROR: logging.ERROR, logline.WARNING: logging.WARNING, logline.INFO: logging.INFO,
           logline.DEBUG: logging.DEBUG}


class _Handler(logging.handlers.SysLogHandler):
    """SysLogHandler over a datagram socket that never blocks, and keeps quiet when a line cannot go."""

    append_nul = False  # journald takes a NUL for part of the message

    def _connect_unixsocket(self, address: Any) -> None:  # how SysLogHandler (re)connects, at first and after a failure
        super()._connect_unixsocket(address)  # type: ignore[misc]
        connected = getattr(self, "socket", None)  # SysLogHandler's, which typeshed does not declare
        if connected is not None:
            with contextlib.suppress(OSError):
                connected.setblocking(False)

    def handleError(self, record: logging.LogRecord) -> None:
        """No /dev/log, journald's queue full: the line is dropped (SysLogHandler tries again with the next one)."""


class JournalLines:
    """Lines to journald's syslog socket (`address`: /dev/log; the tests bind one of their own) under `identifier`."""

    def __init__(self, identifier: str = IDENTIFIER, address: str = JOURNAL_SOCKET) -> None:
        self.handler = _Handler(address, facility=logging.handlers.SysLogHandler.LOG_DAEMON,
                                socktype=socket.SOCK_DGRAM)
        self.handler.ident = f"{identifier}[{os.getpid()}]: "

    def send(self, text: str, priority: int = logline.INFO) -> None:
        level = _LEVELS.get(priority, logging.WARNING)
        self.handler.handle(logging.makeLogRecord({"msg": text, "levelno": level,
                                                   "levelname": logging.getLevelName(level)}))

    def close(self) -> None:
        self.handler.close()
