"""The one error hierarchy of enclave-ike. Every error enclave-ike raises on purpose is an EnclaveIkeError; the CLI
turns it into one line on stderr and its `exit_code` (1: the operation failed, 2: bad usage or config)."""

from __future__ import annotations


class EnclaveIkeError(Exception):
    exit_code = 1
