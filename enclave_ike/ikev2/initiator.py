"""A small IKEv2 initiator on the same core, for tests and for the interop ladder (two parties in memory first, then
a real peer). It is not a client product: ikectl's clients are libreswan's pluto.

`Initiator` owns the IKE SA it started and follows it through IKE SA rekeys (the successor takes over; the old one
stays until its deletion is answered). `exchange()` carries datagrams between an initiator and a `Responder` in
memory until both are quiet, optionally through an interceptor that drops or rewrites them, and returns the
transcript, which tests replay and mutate.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from .config import Endpoint, InitiatorConfig, Mode
from .crypto import ChildSuite, IkeSuite, RandomSource
from .errors import LocalProtocolError, RemoteProtocolError
from .events import Event
from .initiator_sa import InitiatorSa
from .responder import Responder
from .state import SpiAllocator, State, peek_header


class Initiator:
    """The initiator's IKE SA (and its rekeyed successors) behind the same interface as `Responder`."""

    def __init__(self, config: InitiatorConfig, *, local: Endpoint, peer: Endpoint, random: RandomSource,
                 now: float, sa_type: type[InitiatorSa] = InitiatorSa) -> None:
        self.config = config
        self.local = local
        self._spis = SpiAllocator(random)
        self.sa = sa_type.start(config, random=random, spis=self._spis, local=local, peer=peer, now=now)
        self._sas: list[InitiatorSa] = [self.sa]
        self._events: deque[Event] = deque()
        self._outbox: list[tuple[bytes, Endpoint]] = []
        self._collect()

    def receive(self, data: bytes, source: Endpoint, now: float) -> None:
        try:
            header = peek_header(data)
        except RemoteProtocolError:
            return
        for sa in self._sas:
            if sa.spi_i == header.spi_i:
                sa.receive(data, now, source)
                break
        self._collect()

    def datagrams_to_send(self) -> list[tuple[bytes, Endpoint]]:
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def events(self) -> list[Event]:
        """Every event not taken yet."""
        out = list(self._events)
        self._events.clear()
        return out

    def get_timer(self) -> float | None:
        deadlines = [d for sa in self._sas if (d := sa.get_timer()) is not None]
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        for sa in list(self._sas):
            deadline = sa.get_timer()
            if deadline is not None and deadline <= now:
                sa.handle_timer(now)
        self._collect()

    # --- commands, on the current IKE SA ---

    def create_child_sa(self, now: float, *, esp_suites: Sequence[ChildSuite] | None = None,
                        mode: Mode | None = None) -> None:
        self.sa.create_child_sa(now, esp_suites=esp_suites, mode=mode)
        self._collect()

    def rekey_child_sa(self, now: float, spi_in: bytes) -> None:
        self.sa.rekey_child_sa(now, spi_in)
        self._collect()

    def rekey(self, now: float, *, ike_suites: Sequence[IkeSuite] | None = None) -> None:
        self.sa.rekey(now, ike_suites=ike_suites)
        self._collect()

    def delete_child_sa(self, now: float, spi_in: bytes) -> None:
        self.sa.delete_child_sa(now, spi_in)
        self._collect()

    def delete(self, now: float) -> None:
        self.sa.delete(now)
        self._collect()

    def check_liveness(self, now: float) -> None:
        self.sa.check_liveness(now)
        self._collect()

    def _collect(self) -> None:
        for sa in list(self._sas):
            self._outbox += sa.datagrams_to_send()
            while (event := sa.next_event()) is not None:
                self._events.append(event)
            successor, sa.successor = sa.successor, None
            if successor is not None:
                self._sas.append(successor)
                self.sa = successor
        self._sas = [sa for sa in self._sas if sa.state is not State.DELETED or sa is self.sa]
        for sa in self._sas:  # a successor's first datagrams and events
            self._outbox += sa.datagrams_to_send()
            while (event := sa.next_event()) is not None:
                self._events.append(event)


Direction = Literal["i->r", "r->i"]
Interceptor = Callable[[Direction, bytes], bytes | None]
"""Sees every datagram in flight; returns it (possibly changed) or None to lose it."""


@dataclass(frozen=True)
class Datagram:
    direction: Direction
    data: bytes


def exchange(initiator: Initiator, responder: Responder, now: float, *, intercept: Interceptor | None = None,
             seen_as: Endpoint | None = None, max_rounds: int = 64) -> list[Datagram]:
    """Carry datagrams between the two until neither has anything to send; returns what was delivered, in order.
    The initiator's datagrams arrive from `seen_as` (a NAT's outside endpoint) or else from `initiator.local`; the
    responder's are delivered whatever their address."""
    transcript: list[Datagram] = []
    for _ in range(max_rounds):
        moved = False
        for data, _to in initiator.datagrams_to_send():
            kept = intercept("i->r", data) if intercept else data
            moved = True
            if kept is not None:
                transcript.append(Datagram("i->r", kept))
                responder.receive(kept, seen_as or initiator.local, now)
        for data, _to in responder.datagrams_to_send():
            kept = intercept("r->i", data) if intercept else data
            moved = True
            if kept is not None:
                transcript.append(Datagram("r->i", kept))
                initiator.receive(kept, responder.local, now)
        if not moved:
            return transcript
    raise LocalProtocolError(f"the exchange did not settle in {max_rounds} rounds")
