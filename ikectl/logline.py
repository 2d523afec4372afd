"""ikectl's lines on stderr, and their priority where journald reads them.

Under systemd (ikectl.service, NetworkManager's dispatcher when it passes the variable on) stderr is journald's
stream, and systemd says so in JOURNAL_STREAM=<device>:<inode> of that stream (systemd.exec(5)). Then every line
starts with the sd-daemon priority prefix (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug; sd-daemon(3)), which
journald takes off and keeps as the line's priority (SyslogLevelPrefix=, on by default), so `journalctl -u ikectl -p
warning` shows the warnings and errors alone. On a terminal, a pipe or a file nothing changes. The prefix is checked
against the stream written to, each time: a variable inherited by a process whose stderr went elsewhere (the
supervisor's log file) does not count.

Only the standard library, and nothing slow: every `ikectl` call loads this (tests/test_lazy_imports.py).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import TextIO

ERROR, WARNING, INFO, DEBUG = 3, 4, 6, 7  # syslog's numbers, as sd-daemon's prefix and the syslog socket take them


def to_journal(stream: TextIO | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """Is `stream` (default: sys.stderr) the journal stream systemd names in JOURNAL_STREAM?"""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not device.isdigit() or not inode.isdigit():
        return False
    stream = sys.stderr if stream is None else stream
    try:
        found = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):  # no stream, or one without a descriptor (a StringIO)
        return False
    return (found.st_dev, found.st_ino) == (int(device), int(inode))


def write(text: str, priority: int, stream: TextIO | None = None) -> None:
    """`text` on `stream` (default: sys.stderr), each of its lines with the priority prefix when the stream is the
    journal's (journald gives every line its own entry and priority)."""
    stream = sys.stderr if stream is None else stream
    if stream is None:  # no stderr at all (a daemon started with it closed)
        return
    prefix = f"<{priority}>" if to_journal(stream) else ""
    stream.write("".join(f"{prefix}{line}\n" for line in text.split("\n")))  # as print() would, prefixed
    stream.flush()
