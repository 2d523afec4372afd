"""The one error hierarchy of ikectl. Every error ikectl raises on purpose is an IkectlError; the CLI
turns it into one line on stderr and its `exit_code` (1: the operation failed, 2: bad usage or config)."""

from __future__ import annotations


class IkectlError(Exception):
    exit_code = 1


class UsageError(IkectlError):
    """Bad arguments or config: nothing was touched."""

    exit_code = 2
