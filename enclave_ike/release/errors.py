"""Errors of key release, under enclave-ike's one hierarchy."""

from __future__ import annotations

from ..errors import EnclaveIkeError


class ReleaseError(EnclaveIkeError):
    """A key release that did not happen: nothing was given out, nothing was taken in."""


class MessageError(ReleaseError):
    """A request or grant that does not parse; `field` names the member (`request.challenge`)."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field, self.detail = field, detail


class Refused(ReleaseError):
    """The other side did not prove what release requires (its evidence, its challenge, its sealed key)."""


class Unreachable(ReleaseError):
    """No answer from a peer: nothing listens there, or it did not answer in time."""
