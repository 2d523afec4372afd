"""`enclave-ike forward`: the untrusted relay between the network and an enclave that has no network of its own.

    enclave-ike forward --listen 192.0.2.53 --enclave /run/enclave-ike/relay.sock

It binds UDP ports 500 and 4500 of each `--listen` address on the host and carries every datagram, as is, over one
stream to `enclave-ike serve` (whose config names the same socket as `listen.relay`), and every datagram the enclave
sends back out of the matching socket (relay.py's frames). TCP connections to the evidence port (4501) and the
metrics port (9464) are piped as byte streams to the enclave's endpoints (the sockets beside the relay's). It holds
no key and parses nothing past the frame: it sees what any router on the path sees, IKE, ESP, evidence that is
public anyway, and aggregate metrics. When the enclave is away it drops datagrams (counted) and reconnects every
second. Its log has counts only, never a client's address.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import EnclaveIkeError
from .ikev2.config import Endpoint
from .ikev2.payloads import Address
from .metrics_endpoint import metrics_socket
from .relay import Relayed, evidence_socket, socket_peer
from .relay_server import FrameStream

log = logging.getLogger("enclave_ike")

RECONNECT_S = 1.0
COUNTS_INTERVAL_S = 60.0
READ_SIZE = 1 << 16
MAX_PIPES = 64  # TCP connections piped at once (evidence and metrics together)
PIPE_TIMEOUT_S = 30.0


_DROPPED = {"not connected": "dropped: the enclave is not connected",
            "reads too slowly": "dropped: the enclave reads too slowly"}


class ForwardError(EnclaveIkeError):
    """The forwarder could not start (a port that would not bind)."""


class _Socket(asyncio.DatagramProtocol):
    def __init__(self, forwarder: Forwarder, local: Endpoint) -> None:
        self.forwarder, self.local = forwarder, local
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.forwarder.inbound(Relayed(self.local, socket_peer(addr[0], addr[1]), data))

    def error_received(self, exc: Exception) -> None:
        self.forwarder.counts["send errors"] += 1


class Forwarder:
    def __init__(self, addresses: Sequence[Address], ports: Sequence[int], enclave: str,
                 pipes: Mapping[int, Path] | None = None) -> None:
        """`pipes`: TCP port -> the enclave's Unix socket its connections are piped to."""
        self.addresses, self.ports, self.enclave = tuple(addresses), tuple(ports), enclave
        self.pipes = dict(pipes or {})
        self.counts: Counter[str] = Counter()
        self._logged: Counter[str] = Counter()
        self._sockets: dict[Endpoint, _Socket] = {}
        self._enclave: FrameStream | None = None
        self._tcp_servers: list[asyncio.Server] = []
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for address in self.addresses:
            for port in self.ports:
                local = Endpoint(address, port)
                try:
                    _, sock = await loop.create_datagram_endpoint(lambda local=local: _Socket(self, local),  # type: ignore[misc]
                                                                  local_addr=(str(address), port))
                except OSError as exc:
                    self.close()
                    raise ForwardError(f"cannot listen on {local}: {exc.strerror or exc}") from None
                self._sockets[local] = sock
            for port, socket_path in self.pipes.items():
                try:
                    self._tcp_servers.append(await asyncio.start_server(
                        functools.partial(self._pipe, socket_path), str(address), port, reuse_address=True))
                except OSError as exc:
                    self.close()
                    raise ForwardError(f"cannot listen on {address} tcp port {port}: {exc.strerror or exc}") from None

    def close(self) -> None:
        for sock in self._sockets.values():
            if sock.transport is not None:
                sock.transport.close()
        self._sockets.clear()
        for server in self._tcp_servers:
            server.close()
        for task in self._pipes:
            task.cancel()
        if self._enclave is not None:
            self._enclave.close()

    async def _pipe(self, socket_path: Path, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One TCP connection to a piped port (evidence, metrics), carried to the enclave's socket as bytes, both
        ways."""
        task = asyncio.current_task()
        what = socket_path.suffix.lstrip(".") or "tcp"
        if task is None or len(self._pipes) >= MAX_PIPES:
            self.counts[f"{what} connections refused: too many at once"] += 1
            writer.close()
            return
        self._pipes.add(task)
        try:
            inner_reader, inner_writer = await asyncio.open_unix_connection(str(socket_path))
        except OSError:
            self.counts[f"{what} connections refused: the enclave is not listening"] += 1
            writer.close()
            self._pipes.discard(task)
            return
        self.counts[f"{what} connections"] += 1
        try:
            await asyncio.wait_for(asyncio.gather(_copy(reader, inner_writer), _copy(inner_reader, writer)),
                                   PIPE_TIMEOUT_S)
        except (TimeoutError, OSError):
            pass
        finally:
            writer.close()
            inner_writer.close()
            self._pipes.discard(task)

    def inbound(self, datagram: Relayed) -> None:
        """From the network to the enclave."""
        dropped = self._enclave.send(datagram) if self._enclave is not None else "not connected"
        self.counts["to the enclave" if dropped is None else _DROPPED[dropped]] += 1

    def outbound(self, datagram: Relayed) -> None:
        """From the enclave to the network."""
        sock = self._sockets.get(datagram.local)
        if sock is None or sock.transport is None:
            self.counts["dropped: the enclave named a port not forwarded"] += 1
            return
        sock.transport.sendto(datagram.payload, (str(datagram.peer.address), datagram.peer.port))
        self.counts["from the enclave"] += 1

    async def relay(self, stop: asyncio.Event) -> None:
        """Connect to the enclave, and again whenever it goes away, until `stop`."""
        loop = asyncio.get_running_loop()
        reported = False
        while not stop.is_set():
            try:
                _, enclave = await loop.create_unix_connection(lambda: FrameStream(self.outbound), self.enclave)
            except OSError as exc:
                if not reported:
                    log.warning("cannot reach the enclave at %s (%s); trying every %g s", self.enclave,
                                exc.strerror or exc, RECONNECT_S)
                    reported = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), RECONNECT_S)
                continue
            log.info("connected to the enclave at %s", self.enclave)
            reported = False
            self._enclave = enclave
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait((enclave.closed, stopping), return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            enclave.close()
            self._enclave = None
            if enclave.error is not None:
                log.error("the enclave sent a broken frame (%s); reconnecting", enclave.error)
            elif not stop.is_set():
                log.warning("the enclave closed the relay; reconnecting")

    def log_counts(self) -> None:
        new = self.counts - self._logged
        if new:
            log.info("relayed: %s", "; ".join(f"{what}: {count}" for what, count in sorted(new.items())))
        self._logged = Counter(self.counts)


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until end of stream, then pass the end on."""
    while data := await reader.read(READ_SIZE):
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()


async def forward(addresses: Sequence[Address], ports: Sequence[int], enclave: str,
                  evidence_port: int | None = None, metrics_port: int | None = None,
                  stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM or SIGINT (or `stop` is set)."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    relay = Path(enclave)
    pipes = {port: path for port, path in ((evidence_port, evidence_socket(relay)),
                                           (metrics_port, metrics_socket(relay))) if port is not None}
    forwarder = Forwarder(addresses, ports, enclave, pipes)
    await forwarder.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("forwarding UDP %s%s on %s to the enclave at %s", " and ".join(map(str, ports)),
             "".join(f" and TCP {port} ({path.suffix.lstrip('.')})" for port, path in pipes.items()),
             ", ".join(map(str, addresses)), enclave)

    async def counts() -> None:
        while True:
            await asyncio.sleep(COUNTS_INTERVAL_S)
            forwarder.log_counts()

    counting = asyncio.create_task(counts())
    try:
        await forwarder.relay(stop)
    finally:
        counting.cancel()
        forwarder.close()
        forwarder.log_counts()
        log.info("stopped")
