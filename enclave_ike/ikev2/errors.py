"""Errors of the IKEv2 core, each carrying the Notify type it maps to.

Every error the core raises on purpose is an `IkeError`. Its `notify` is the IKEv2 Notify message type (RFC 7296
3.10.1) that answers the fault, or None where the RFC says to answer nothing (a message that fails its integrity
check is dropped without an answer). Faults are split by who made them:

- `RemoteProtocolError`: the peer sent something wrong. The state machine answers with `notify` (where the exchange
  allows an answer) and keeps its established state.
- `LocalProtocolError`: our own caller asked for something impossible (a value that cannot be encoded, an
  algorithm this suite does not implement). Nothing went on the wire; the fix is in our code or config.
"""

from __future__ import annotations

from ..errors import EnclaveIkeError
from .constants import NotifyType


class IkeError(EnclaveIkeError):
    """Something in the IKEv2 core went wrong. `notify` is the Notify type that answers it, if any."""

    notify: NotifyType | None = NotifyType.INVALID_SYNTAX

    def __init__(self, message: str, *, notify: NotifyType | None = None) -> None:
        super().__init__(message)
        if notify is not None:
            self.notify = notify

    @property
    def notify_data(self) -> bytes:
        """The Notification Data that goes with `notify` (empty for most types)."""
        return b""


class RemoteProtocolError(IkeError):
    """The peer sent something that breaks the protocol."""


class LocalProtocolError(IkeError):
    """We were asked to do something the protocol does not allow; nothing was sent."""

    notify = None


class DecodeError(RemoteProtocolError):
    """Bytes that do not decode as RFC 7296 says: names the payload and the field, and maps to INVALID_SYNTAX."""

    notify = NotifyType.INVALID_SYNTAX

    def __init__(self, payload: str, field: str, problem: str) -> None:
        self.payload, self.field, self.problem = payload, field, problem
        super().__init__(f"{payload}: {field}: {problem}")


class UnsupportedCriticalPayload(RemoteProtocolError):
    """A payload type we do not understand with its critical bit set (RFC 7296 2.5). The notify data is the type."""

    notify = NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD

    def __init__(self, payload_type: int) -> None:
        self.payload_type = payload_type
        super().__init__(f"payload type {payload_type} is marked critical and is not supported")

    @property
    def notify_data(self) -> bytes:
        return bytes([self.payload_type])


class InvalidMajorVersion(RemoteProtocolError):
    """An IKE header with a major version other than 2 (RFC 7296 2.5)."""

    notify = NotifyType.INVALID_MAJOR_VERSION


class InvalidKeyExchange(RemoteProtocolError):
    """A KE payload whose public value is not a valid element of its group (RFC 6989, RFC 5903, RFC 8031)."""

    notify = NotifyType.INVALID_SYNTAX


class InvalidKePayload(RemoteProtocolError):
    """The peer's KE payload is for a group other than the one selected; `group` is the one we want (RFC 7296
    1.2): its notify data is that group number."""

    notify = NotifyType.INVALID_KE_PAYLOAD

    def __init__(self, message: str, *, group: int) -> None:
        self.group = group
        super().__init__(message)

    @property
    def notify_data(self) -> bytes:
        return self.group.to_bytes(2, "big")


class NoProposalChosen(RemoteProtocolError):
    """None of the peer's proposals is acceptable, or its reply is not one of ours."""

    notify = NotifyType.NO_PROPOSAL_CHOSEN


class AuthenticationFailed(RemoteProtocolError):
    """The peer's AUTH payload does not verify, or names an algorithm we do not accept."""

    notify = NotifyType.AUTHENTICATION_FAILED


class TsUnacceptable(RemoteProtocolError):
    """The peer's traffic selectors are outside our policy."""

    notify = NotifyType.TS_UNACCEPTABLE


class InvalidSpi(RemoteProtocolError):
    """A message names an SPI we do not have."""

    notify = NotifyType.INVALID_SPI


class InvalidMessageId(RemoteProtocolError):
    """A message ID outside the window."""

    notify = NotifyType.INVALID_MESSAGE_ID


class IntegrityError(RemoteProtocolError):
    """An Encrypted payload whose ICV (GCM tag or HMAC checksum) does not verify. RFC 7296 drops such a message
    without answering it, so there is no notify."""

    notify = None


class PolicyError(LocalProtocolError):
    """A policy (responder or initiator configuration) that cannot work; raised before any packet is handled."""

    exit_code = 2


class TemporaryFailure(RemoteProtocolError):
    """The request cannot be served right now (RFC 7296 2.25: e.g. a rekey collides with another exchange)."""

    notify = NotifyType.TEMPORARY_FAILURE


class ChildSaNotFound(RemoteProtocolError):
    """A REKEY_SA or Delete names a Child SA this IKE SA does not have (RFC 7296 2.25)."""

    notify = NotifyType.CHILD_SA_NOT_FOUND


class ErrorNotified(RemoteProtocolError):
    """The peer answered our request with an error Notify (`received`). Nothing is sent back: responses are never
    answered (RFC 7296 2.21)."""

    notify = None

    def __init__(self, message: str, *, received: int, data: bytes = b"") -> None:
        self.received, self.data = received, data
        super().__init__(message)


class UnsupportedAlgorithm(LocalProtocolError):
    """A transform this suite does not implement was asked for (negotiation should never select one)."""
