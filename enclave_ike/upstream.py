"""The resolver inside the enclave, as userspace ESP asks it: DNS queries over UDP and TCP, their answers as bytes.

A query goes on as the client sent it (enclave-ike reads no more of it than its question: the resolver parses it,
and answers FORMERR to what it cannot read), except for its ID over UDP. Every UDP query shares one socket
connected to the resolver (`UdpResolver`): a socket and a transport made per query cost more than the rest of a
query's path through serve. So each query in flight gets an ID of its own on that socket, drawn at random among
those not in use, and its answer gets the client's ID back; only the resolver's address can answer a connected
socket, and an answer must carry an ID in flight and repeat that query's question. (The resolver is meant to be
inside the enclave, on its loopback, where nothing off the path can answer at all; the random ID is for a resolver
configured elsewhere.) No answer within the timeout is None (the client's stub retries, as it would over a lossy
path). TCP queries, rare and for large answers, take a connection each (`ask_tcp`).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable
from typing import Any, NamedTuple

from .dnswire import question_key
from .errors import EnclaveIkeError
from .ikev2.config import Endpoint

DNS_ID_SIZE = 2
MAX_IN_FLIGHT = 1 << 15  # queries on the UDP socket at once: half the IDs, so a free one is found in ~2 draws
CLOCK_RESOLUTION_S = 0.001

Answered = Callable[[bytes | None], None]


class UpstreamError(EnclaveIkeError):
    """The socket to the resolver could not be made."""


class _Waiting(NamedTuple):
    """A UDP query in flight (a tuple: one is made per query)."""

    client_id: bytes
    question: bytes | None  # dnswire.question_key: what its answer must repeat
    answered: Answered
    deadline: float


class UdpResolver(asyncio.DatagramProtocol):
    """UDP queries to one resolver over one connected socket. `ask(query, answered)` calls `answered` once: with
    the answer, or with None at the timeout or when the resolver refused the datagram (never after `close`).

    An answer is taken by the query in flight with its ID only if it repeats that query's question (name without
    case, type, class), or has none when the query had none readable: an ID is free again once its query timed
    out, and the resolver's late answer to that query must not reach the next query given the ID."""

    def __init__(self, resolver: Endpoint, timeout: float) -> None:
        self.resolver, self.timeout = resolver, timeout
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.DatagramTransport | None = None
        # ID on the socket -> the query; in the order asked, so in deadline order.
        self._waiting: dict[int, _Waiting] = {}
        self._expiry: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        try:
            await self._loop.create_datagram_endpoint(lambda: self, remote_addr=(str(self.resolver.address),
                                                                                 self.resolver.port))
        except OSError as exc:
            raise UpstreamError(f"cannot open a socket to the resolver {self.resolver}: {exc.strerror or exc}") \
                from None

    def close(self) -> None:
        """Stop; the queries still waiting are forgotten (serve is stopping)."""
        self._waiting.clear()
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    @property
    def in_flight(self) -> int:
        return len(self._waiting)

    def ask(self, query: bytes, answered: Answered) -> None:
        if self._transport is None or len(query) < DNS_ID_SIZE or len(self._waiting) >= MAX_IN_FLIGHT:
            answered(None)
            return
        while (query_id := secrets.randbits(16)) in self._waiting:  # at most half the IDs are taken
            pass
        self._waiting[query_id] = _Waiting(query[:DNS_ID_SIZE], question_key(query), answered,
                                           self._loop.time() + self.timeout)
        if self._expiry is None:
            self._expiry = self._loop.call_later(self.timeout, self._expire)
        self._transport.sendto(query_id.to_bytes(DNS_ID_SIZE, "big") + query[DNS_ID_SIZE:])

    # --- asyncio's side ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) < DNS_ID_SIZE:
            return
        query_id = int.from_bytes(data[:DNS_ID_SIZE], "big")
        waiting = self._waiting.get(query_id)
        if waiting is None or question_key(data) != waiting.question:  # late, or not for this query
            return
        del self._waiting[query_id]
        waiting.answered(waiting.client_id + data[DNS_ID_SIZE:])

    def error_received(self, exc: Exception) -> None:
        """ICMP port unreachable (no resolver listens): the datagram it is about is not named, so every query
        waiting now is answered None; the stubs retry."""
        self._answer_all_none()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._answer_all_none()

    def _answer_all_none(self) -> None:
        waiting, self._waiting = self._waiting, {}
        for query in waiting.values():
            query.answered(None)

    def _expire(self) -> None:
        """Answer None to the queries past their deadline (the oldest, first in the dict), then wait for the next.
        A deadline within the clock's resolution is due: uvloop's clock counts milliseconds, and a timer re-armed
        for a deadline a fraction of one ahead would fire again at once, until the clock ticks."""
        self._expiry = None
        now, waiting = self._loop.time() + CLOCK_RESOLUTION_S, self._waiting
        while waiting:
            query_id = next(iter(waiting))
            query = waiting[query_id]
            if query.deadline > now:
                self._expiry = self._loop.call_at(query.deadline, self._expire)
                return
            del waiting[query_id]
            query.answered(None)


async def ask_tcp(resolver: Endpoint, query: bytes, timeout: float) -> bytes | None:
    """The same over TCP (RFC 7766: each message behind its two-octet length), for a query that came over TCP: its
    answer may be larger than UDP carries. A connection of its own, closed after the answer."""
    if len(query) < DNS_ID_SIZE or len(query) > 0xFFFF:
        return None

    async def exchange() -> bytes | None:
        reader, writer = await asyncio.open_connection(str(resolver.address), resolver.port)
        try:
            writer.write(len(query).to_bytes(2, "big") + query)
            await writer.drain()
            while True:
                size = int.from_bytes(await reader.readexactly(2), "big")
                answer = await reader.readexactly(size)
                if answer[:DNS_ID_SIZE] == query[:DNS_ID_SIZE]:
                    return answer
        finally:
            writer.close()

    with contextlib.suppress(TimeoutError, OSError, asyncio.IncompleteReadError):
        return await asyncio.wait_for(exchange(), timeout)
    return None
