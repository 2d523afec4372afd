"""enclave-ike's errors: the project's one hierarchy (ikecommon.errors), its root named for enclave-ike. The CLI
turns an EnclaveIkeError into one line on stderr and its `exit_code` (1: the operation failed, 2: bad usage or
config)."""

from __future__ import annotations

from ikecommon.errors import Error as EnclaveIkeError

__all__ = ["EnclaveIkeError"]
