"""`GET /metrics` over HTTP/1.1 for the operator's scraper, and `GET /health` for an orchestrator's readiness check:
one request per connection, on TCP `[metrics] port` of the listen addresses, or on a Unix socket beside the relay
(behind `enclave-ike forward`, which pipes the port).

Everything it serves is aggregate (metrics.py); `/metrics` gets a 200 with the text format, `/health` a 200 "ok"
while serve is up and whole (listening, its enclave alive) or a 503 with the one-line reason, anything else a 404
or a 400, and nothing about the requester is logged. Requests are small and bounded: a head of at most 8 KiB, read
within 5 s; at most 16 connections at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import EnclaveIkeError
from .ikev2.payloads import Address
from .relay_server import admit, close_servers, listen_unix

log = logging.getLogger("enclave_ike")

MAX_HEAD = 8192
READ_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 16
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricsEndpointError(EnclaveIkeError):
    """The metrics port could not be bound."""


def metrics_socket(relay: Path) -> Path:
    """Where the metrics endpoint listens behind the forwarder: beside the relay's socket."""
    return relay.with_name(relay.name + ".metrics")


def _response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8") -> bytes:
    head = (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\nCache-Control: no-store\r\n\r\n")
    return head.encode() + body


class MetricsEndpoint:
    def __init__(self, render: Callable[[], bytes], addresses: Sequence[Address], port: int,
                 unix_path: Path | None = None, health: Callable[[], str | None] = lambda: None) -> None:
        """`health()`: None while serve is fine, else what is wrong (one line)."""
        self.render, self.addresses, self.port, self.unix_path = render, tuple(addresses), port, unix_path
        self.health = health
        self._servers: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[None]] = set()
        self.bound: list[tuple[str, int]] = []

    async def start(self) -> None:
        try:
            if self.unix_path is not None:
                self._servers.append(await listen_unix(self._connection, self.unix_path, limit=MAX_HEAD))
                where = f"{self.unix_path} (relayed from tcp port {self.port})"
            else:
                for address in self.addresses:
                    server = await asyncio.start_server(self._connection, str(address), self.port, limit=MAX_HEAD,
                                                        reuse_address=True)
                    self._servers.append(server)
                    self.bound += [(str(address), int(sock.getsockname()[1])) for sock in server.sockets]
                where = ", ".join(f"{a}:{p}" for a, p in self.bound) + " (tcp)"
        except OSError as exc:
            await self.stop()
            raise MetricsEndpointError(f"metrics endpoint: cannot listen on port {self.port}: "
                                       f"{exc.strerror or exc}") from None
        log.info("metrics endpoint on %s: GET /metrics, GET /health", where)

    async def stop(self) -> None:
        await close_servers(self._servers, self._connections, self.unix_path)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = admit(self._connections, MAX_CONNECTIONS, writer)
        if task is None:
            return
        try:
            writer.write(await self._answer(reader))
            await asyncio.wait_for(writer.drain(), READ_TIMEOUT_S)
        except (OSError, TimeoutError, asyncio.CancelledError):
            pass  # the scraper went away or stalled, or serve is stopping: nothing to tell anyone
        finally:
            self._connections.discard(task)
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader) -> bytes:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
        except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, ValueError):
            return _response("400 Bad Request", b"bad request\n")
        request_line = head.split(b"\r\n", 1)[0].split(b" ")
        if len(request_line) != 3 or request_line[0] != b"GET" or not request_line[2].startswith(b"HTTP/1."):
            return _response("400 Bad Request", b"bad request\n")
        path = request_line[1].split(b"?", 1)[0]
        if path == b"/health":
            problem = self.health()
            return (_response("200 OK", b"ok\n") if problem is None
                    else _response("503 Service Unavailable", problem.encode() + b"\n"))
        if path != b"/metrics":
            return _response("404 Not Found", b"only /metrics and /health are here\n")
        return _response("200 OK", self.render(), CONTENT_TYPE)
