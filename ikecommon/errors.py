"""The project's one error hierarchy. Every error ikectl, enclave-ike and this layer raise on purpose is an
`Error`; the CLIs turn it into one line on stderr and its `exit_code` (1: the operation failed, 2: bad usage or
config). ikectl names the root `IkectlError` and enclave-ike `EnclaveIkeError`: the same class, so a failure of
the shared layer (the kernel refusing a policy, evidence that does not verify) is caught like their own."""

from __future__ import annotations


class Error(Exception):
    exit_code = 1


class UsageError(Error):
    """Bad arguments or config: nothing was touched."""

    exit_code = 2
