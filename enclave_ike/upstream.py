"""The resolver inside the enclave, as userspace ESP asks it: one DNS query over UDP, its answer as bytes.

The query goes on as the client sent it (enclave-ike does not parse DNS: the resolver does, and answers FORMERR
to what it cannot read). Each query has a connected socket of its own, so the kernel picks a fresh source port and
only the resolver's address can answer it; an answer must also carry the query's ID. No answer within the timeout
is None (the client's stub retries, as it would over a lossy path).
"""

from __future__ import annotations

import asyncio
import contextlib

from .ikev2.config import Endpoint

DNS_ID_SIZE = 2


class _Answer(asyncio.DatagramProtocol):
    def __init__(self, query_id: bytes) -> None:
        self.query_id = query_id
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: object) -> None:
        if data[:DNS_ID_SIZE] == self.query_id and not self.answer.done():
            self.answer.set_result(data)

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable: no resolver listens
        if not self.answer.done():
            self.answer.set_exception(exc)


async def ask_udp(resolver: Endpoint, query: bytes, timeout: float) -> bytes | None:
    """The resolver's answer to `query`, or None: no answer in time, or the resolver refused the datagram."""
    if len(query) < DNS_ID_SIZE:
        return None
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(lambda: _Answer(query[:DNS_ID_SIZE]),
                                                              remote_addr=(str(resolver.address), resolver.port))
    try:
        transport.sendto(query)
        with contextlib.suppress(TimeoutError, OSError):
            return await asyncio.wait_for(protocol.answer, timeout)
        return None
    finally:
        transport.close()


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
