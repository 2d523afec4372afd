"""The holder's key release endpoint, HTTP/1.1 on TCP `[release] listen` (default port 4502):

    POST /release/challenge   (no body)            200 application/json {"challenge": HEX}: single use, 30 s
    POST /release/key         (a KeyRequest)       200 application/json: the KeyGrant
                                                   400 a request that does not parse; 403 refused (one line why)
    GET  /release/keys                             200 application/json: the keys held (keyring.Listing), public:
                                                   replicas poll it to follow a rotation

Plain HTTP on purpose, like the evidence endpoint: what crosses is evidence, which authenticates itself, and a key
sealed to a key that evidence binds; TLS would add nothing either side relies on. POST because a challenge is state.
Bounds: a head of at most 8 KiB read within 2 s, and a body of at most messages.MAX_MESSAGE read within 10 s; at
most 16 connections, 4 from one address (more get 503 at once: a joiner that is turned away must see a holder
there, not an absence), and one grant in the making at a time (it verifies evidence and asks the enclave for a
report and a seal; more get 503). Each grant and each refusal is logged on one line with the counts so far, and
counted in `enclave_ike_key_releases`; nothing of any DNS client is involved.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus

from ikecommon.evidence_client import hostport

from ..errors import EnclaveIkeError
from ..evidence_endpoint import Response
from ..relay_server import close_servers
from .errors import MessageError, Refused
from .holder import Holder
from .messages import MAX_MESSAGE

log = logging.getLogger("enclave_ike.release")

DEFAULT_PORT = 4502
MAX_HEAD = 8192
HEAD_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 16
MAX_PER_ADDRESS = 4
_DIGITS = re.compile(r"[0-9]{1,9}")
ROUTES = {"/release/challenge": "POST", "/release/key": "POST", "/release/keys": "GET"}


class ReleaseEndpointError(EnclaveIkeError):
    """The release endpoint could not listen."""


@dataclass
class Tally:
    granted: int = 0
    refused: int = 0

    def __str__(self) -> str:
        return f"{self.granted} granted, {self.refused} refused since start"


class ReleaseEndpoint:
    def __init__(self, holder: Holder, listen: Sequence[tuple[str, int]], *,
                 counted: Callable[[str], None] = lambda result: None,
                 clock: Callable[[], float] = time.time) -> None:
        """`counted("granted" | "refused")` for each answered request (the metrics); `clock` is wall time (the
        evidence's validity is judged at it)."""
        self.holder, self.listen, self.counted, self._clock = holder, tuple(listen), counted, clock
        self.tally = Tally()
        self._servers: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[None]] = set()
        self._by_address: Counter[str] = Counter()
        self._granting = asyncio.Lock()
        self.bound: list[tuple[str, int]] = []

    async def start(self) -> None:
        for address, port in self.listen:
            try:
                server = await asyncio.start_server(self._connection, address, port, limit=MAX_HEAD,
                                                    reuse_address=True)
            except OSError as exc:
                await self.stop()
                raise ReleaseEndpointError(f"release endpoint: cannot listen on {hostport(address, port)} (tcp): "
                                           f"{exc.strerror or exc}") from None
            self._servers.append(server)
            self.bound += [(address, int(sock.getsockname()[1])) for sock in server.sockets]
        log.info("key release endpoint on %s (tcp): POST /release/challenge, POST /release/key, GET /release/keys",
                 ", ".join(hostport(a, p) for a, p in self.bound))

    async def stop(self) -> None:
        await close_servers(self._servers, self._connections, None)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if peer else "?"
        if task is None or len(self._connections) >= MAX_CONNECTIONS or self._by_address[address] >= MAX_PER_ADDRESS:
            await _turn_away(reader, writer)
            return
        self._connections.add(task)
        self._by_address[address] += 1
        try:
            response = await self._read(reader)
            if isinstance(response, tuple):
                response = await self._route(*response, address)
            writer.write(response.encode())
            await asyncio.wait_for(writer.drain(), READ_TIMEOUT_S)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the peer went away or stalled, or serve is stopping
        except Exception as exc:  # one line, never asyncio's traceback per request
            log.error("key release request from %s failed: %r", address, exc)
        finally:
            self._connections.discard(task)
            self._by_address[address] -= 1
            if not self._by_address[address]:
                del self._by_address[address]
            writer.close()
            with contextlib.suppress(OSError, TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _read(self, reader: asyncio.StreamReader) -> tuple[str, bytes] | Response:
        """(path, body) of a POST, or the error to answer with."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
        except asyncio.LimitOverrunError:
            return Response.text(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"head over {MAX_HEAD} bytes")
        line, *headers = head[:-4].decode("latin-1").split("\r\n")
        parts = line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return Response.text(HTTPStatus.BAD_REQUEST, "expected a request line: POST /release/... HTTP/1.1")
        method, path, _ = parts
        if path not in ROUTES:
            return Response.text(HTTPStatus.NOT_FOUND, f"{path[:80]}: not here ({', '.join(ROUTES)})")
        if method != ROUTES[path]:
            return Response.text(HTTPStatus.METHOD_NOT_ALLOWED, f"{method[:20]}: only {ROUTES[path]}",
                                 ("Allow", ROUTES[path]))
        length = _body_length(headers)
        if isinstance(length, Response):
            return length
        return path, await asyncio.wait_for(reader.readexactly(length), READ_TIMEOUT_S)

    async def _route(self, path: str, body: bytes, peer: str) -> Response:
        if path == "/release/key":
            return await self._grant(body, peer)
        if body:
            return Response.text(HTTPStatus.BAD_REQUEST, f"{path} takes no body")
        if path == "/release/keys":
            return Response(HTTPStatus.OK, self.holder.keys.listing().encode(), "application/json")
        challenge = self.holder.challenge()
        return Response(HTTPStatus.OK, json.dumps({"challenge": challenge.hex()}).encode() + b"\n",
                        "application/json")

    async def _grant(self, body: bytes, peer: str) -> Response:
        if self._granting.locked():
            return Response.text(HTTPStatus.SERVICE_UNAVAILABLE, "busy granting; try again", ("Retry-After", "1"))
        async with self._granting:
            try:
                granted = await asyncio.to_thread(self.holder.grant, body, self._clock())
            except (MessageError, Refused) as exc:
                self.tally.refused += 1
                self.counted("refused")
                log.warning("key release to %s refused: %s; %s", peer, exc, self.tally)
                status = HTTPStatus.BAD_REQUEST if isinstance(exc, MessageError) else HTTPStatus.FORBIDDEN
                return Response.text(status, f"refused: {exc}")
            except EnclaveIkeError as exc:  # our enclave could not make evidence or seal: not the joiner's fault
                log.error("key release to %s failed: %s", peer, exc)
                return Response.text(HTTPStatus.SERVICE_UNAVAILABLE, f"cannot grant now: {exc}")
        self.tally.granted += 1
        self.counted("granted")
        what = "key's successor (rotation)" if granted.next_key else "key"
        log.info("key release: granted the service %s to %s (%s evidence matching %r); %s", what, peer, granted.kind,
                 granted.measurement_id, self.tally)
        return Response(HTTPStatus.OK, granted.grant, "application/json")


def _body_length(headers: list[str]) -> int | Response:
    """The Content-Length (0 without one), or the error to answer with."""
    fields = {name.strip().lower(): value.strip() for name, _, value in (h.partition(":") for h in headers)}
    if "transfer-encoding" in fields:
        return Response.text(HTTPStatus.BAD_REQUEST, "a body with Content-Length only")
    length = fields.get("content-length", "0")
    if not _DIGITS.fullmatch(length):
        return Response.text(HTTPStatus.BAD_REQUEST, f"Content-Length {length[:20]!r}: not a number")
    if int(length) > MAX_MESSAGE:
        return Response.text(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"Content-Length {length}: at most {MAX_MESSAGE}")
    return int(length)


async def _turn_away(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A 503 past the connection caps, then a close the peer sees as one (its request read and dropped, at most a
    second: closing with it unread would reset the connection before the answer is read)."""
    with contextlib.suppress(OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                             asyncio.CancelledError):
        writer.write(Response.text(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections; try again",
                                   ("Retry-After", "1")).encode())
        writer.write_eof()
        await asyncio.wait_for(writer.drain(), 1.0)
        await asyncio.wait_for(reader.read(MAX_HEAD), 1.0)
    writer.close()
