"""SIGTERM as an orderly exit, for this process only.

`ikectl` and its supervisor turn SIGTERM into SystemExit, so a coffee-shop `up` undoes what it did and a trusted
one fails closed. pyroute2 forks without exec (to make a network namespace, or a socket inside one) and ends those
children with SIGTERM; a child that inherited the handler would raise SystemExit into a copy of the parent's stack,
run its except and finally blocks inside the throw-away namespace, and write ikectl's files from there (a run dir
marker naming the ESP probe's namespace, seen in about half the trusted `up`s on a host without ESP). So the
handler knows the pid that installed it, and anywhere else it ends the process at once.
"""

from __future__ import annotations

import os
import signal
import sys


def exit_on_sigterm(code: int) -> None:
    owner = os.getpid()

    def on_term(_signum: int, _frame: object) -> None:
        if os.getpid() != owner:  # a fork without exec: nothing of the parent's may run here
            os._exit(code)
        sys.exit(code)

    signal.signal(signal.SIGTERM, on_term)
