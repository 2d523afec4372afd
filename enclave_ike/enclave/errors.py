"""Errors of the TEE backends, under enclave-ike's one hierarchy."""

from __future__ import annotations

from ..errors import EnclaveIkeError


class EnclaveError(EnclaveIkeError):
    """A TEE backend could not sign or produce evidence."""


class EnclaveUnavailable(EnclaveError):
    """The backend cannot run here: no configfs-tsm, an unknown provider, a child that would not start."""


class EnclaveGone(EnclaveError):
    """The process holding the key has exited or stopped answering; its key is gone with it."""


class ChannelIdle(EnclaveError):
    """No frame began on the channel to the sim enclave within the timeout: the stream is still in step."""


class ChannelError(EnclaveError):
    """A malformed frame on the channel to the sim enclave process."""


class NonceError(EnclaveError):
    """A nonce the binding cannot take (it must be 16 to 64 bytes): bad input, not a failure."""

    exit_code = 2
