"""An initiator that sends what no real initiator sends: any protected request, outside the transition table.

Tests and the fuzz target use it to probe how the responder treats authenticated requests it should refuse (unknown
exchange types, requests with payloads missing or malformed, notifies in odd places). It is the project's own
`InitiatorSa` with one more command, `probe`, whose answers are kept as they came (`answers`); production code
never sends such a request, so it lives here and not in enclave_ike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from enclave_ike.ikev2.config import Endpoint, InitiatorConfig
from enclave_ike.ikev2.crypto import RandomSource
from enclave_ike.ikev2.errors import LocalProtocolError, RemoteProtocolError
from enclave_ike.ikev2.initiator import Initiator
from enclave_ike.ikev2.initiator_sa import InitiatorSa
from enclave_ike.ikev2.payloads import IkeHeader, Payload
from enclave_ike.ikev2.state import Command, RequestContext


@dataclass(frozen=True)
class Answer:
    """The responder's answer to a probe: its exchange, message ID and payloads, decrypted."""

    exchange: int
    message_id: int
    payloads: tuple[Payload, ...]


@dataclass(frozen=True)
class _Probe(RequestContext):
    pass


class ProbingInitiatorSa(InitiatorSa):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.answers: list[Answer] = []

    def probe(self, now: float, exchange: int, payloads: Sequence[Payload]) -> None:
        """Send `payloads` protected in a request of `exchange` (any number); the answer lands in `answers`."""
        self._now = now
        if not self.established:
            raise LocalProtocolError("the IKE SA is not established")
        self._queue.append(Command(f"probe {exchange}", lambda: self._transmit(exchange, tuple(payloads),
                                                                             _Probe())))
        self._flush_queue()

    def _receive_response(self, header: IkeHeader, data: bytes, source: Endpoint) -> None:
        pending = self._pending
        if (pending is None or not isinstance(pending.context, _Probe) or header.message_id != pending.message_id
                or header.exchange != pending.exchange):
            super()._receive_response(header, data, source)
            return
        try:
            inbound = self._open(header, data, source)
        except RemoteProtocolError as exc:
            self._pending = None
            self._report(header, None, f"malformed response: {exc}")
            return
        if inbound is None:
            self.dropped += 1
            return
        self._pending = None
        self.answers.append(Answer(header.exchange, header.message_id, inbound.payloads))


class ProbingInitiator(Initiator):
    """`Initiator` whose IKE SAs are `ProbingInitiatorSa`s."""

    sa: ProbingInitiatorSa

    def __init__(self, config: InitiatorConfig, *, local: Endpoint, peer: Endpoint, random: RandomSource,
                 now: float) -> None:
        super().__init__(config, local=local, peer=peer, random=random, now=now, sa_type=ProbingInitiatorSa)

    def probe(self, now: float, exchange: int, payloads: Sequence[Payload]) -> None:
        self.sa.probe(now, exchange, payloads)
        self._collect()

    def answers(self) -> list[Answer]:
        """Every answer not taken yet, across rekeys."""
        out = [answer for sa in self._sas if isinstance(sa, ProbingInitiatorSa) for answer in sa.answers]
        for sa in self._sas:
            if isinstance(sa, ProbingInitiatorSa):
                sa.answers.clear()
        return out
