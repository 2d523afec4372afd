"""The enclave's end of the forwarder: a Unix socket that `enclave-ike forward` connects to (relay.py's frames).

One forwarder at a time: a new connection replaces the one before (a restarted forwarder is served at once). A
frame that breaks the layout closes that connection (the forwarder reconnects). Datagrams to send while no
forwarder is connected, or while it does not read fast enough, are dropped and counted: IKE and DNS retransmit.
Nothing logged here names a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from .diagnostics import Diagnostics
from .errors import EnclaveIkeError
from .relay import FrameReader, Relayed, RelayError

log = logging.getLogger("enclave_ike")

MAX_BUFFERED = 4 << 20  # octets waiting for a slow forwarder; past it new datagrams are dropped

_Server = TypeVar("_Server", bound=asyncio.AbstractServer)


class RelayListenError(EnclaveIkeError):
    """The forwarder's socket could not be made."""


async def listen_unix(handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]], path: Path,
                      **kwargs: Any) -> asyncio.Server:
    """A Unix stream server at `path`, which only its owner may connect to. A socket left there by a server that
    died is replaced (anything else at that path is an error)."""
    return await _owner_only(path, lambda: asyncio.start_unix_server(handler, path=str(path), **kwargs))


async def _owner_only(path: Path, listen: Callable[[], Awaitable[_Server]]) -> _Server:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
    server = await listen()
    os.chmod(path, 0o600)
    return server


def admit(connections: set[asyncio.Task[None]], limit: int,
          writer: asyncio.StreamWriter) -> asyncio.Task[None] | None:
    """The current handler task, counted in `connections`; None (and the connection closed) past `limit`."""
    task = asyncio.current_task()
    if task is None or len(connections) >= limit:
        writer.close()
        return None
    connections.add(task)
    return task


async def close_servers(servers: list[asyncio.Server], connections: set[asyncio.Task[None]],
                        unix_path: Path | None) -> None:
    """Stop listening, end the connections being served, and remove the Unix socket if there is one."""
    for server in servers:
        server.close()
    for task in list(connections):
        task.cancel()
    for server in servers:
        await server.wait_closed()
    if connections:
        await asyncio.gather(*connections, return_exceptions=True)
    servers.clear()
    if unix_path is not None:
        with contextlib.suppress(OSError):
            unix_path.unlink()


class FrameStream(asyncio.Protocol):
    """One end of a relay stream, serve's or the forwarder's: each frame goes to `deliver` as soon as the octets
    that complete it arrive (in the loop's own callback: a reader task woken per read cost more than the frame),
    `send` queues one, and the frames queued in one turn of the loop leave in one write at its end (several answers
    ready at once cost one system call, and wake the other end once). A frame that breaks the layout closes the
    stream; `error` says why. `connected` is called with the stream once it is (on a server's side), and `closed`
    is done when the stream is."""

    def __init__(self, deliver: Callable[[Relayed], None],
                 connected: Callable[[FrameStream], None] | None = None) -> None:
        self.deliver, self._connected = deliver, connected
        self.frames = FrameReader()
        self.transport: asyncio.WriteTransport | None = None
        self.error: RelayError | None = None
        self._loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self._queued: list[bytes] = []
        self._queued_size = 0

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def send(self, datagram: Relayed) -> str | None:
        """Write `datagram` as a frame; or the reason it was dropped (the caller counts it)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return "not connected"
        if transport.get_write_buffer_size() + self._queued_size > MAX_BUFFERED:
            return "reads too slowly"
        if not self._queued:
            self._loop.call_soon(self._write)
        frame = datagram.encode()
        self._queued.append(frame)
        self._queued_size += len(frame)
        return None

    def _write(self) -> None:
        queued, self._queued, self._queued_size = self._queued, [], 0
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(queued))

    def close(self) -> None:
        """Close now: what is still buffered for the other end is dropped. The other end may have stopped reading,
        and a graceful close would wait for it (with the buffer held) for ever."""
        if self.transport is not None:
            self.transport.abort()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self._connected is not None:
            self._connected(self)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.frames.feed(data)
        except RelayError as exc:
            self.error = exc
            self.close()
            return
        for frame in frames:
            self.deliver(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class Relay:
    def __init__(self, path: Path, deliver: Callable[[Relayed], None], diagnostics: Diagnostics) -> None:
        self.path, self.deliver, self.diagnostics = path, deliver, diagnostics
        self._server: asyncio.AbstractServer | None = None
        self._forwarder: FrameStream | None = None
        self._stopping = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._server = await _owner_only(self.path, lambda: loop.create_unix_server(
                lambda: FrameStream(self.deliver, connected=self._connected), path=str(self.path)))
        except OSError as exc:
            raise RelayListenError(f"cannot listen for the forwarder on {self.path}: {exc.strerror or exc}") from None

    async def stop(self) -> None:
        self._stopping = True
        if self._server is not None:
            self._server.close()
        if self._forwarder is not None:
            self._forwarder.close()
            await self._forwarder.closed
        with contextlib.suppress(OSError):
            self.path.unlink()

    @property
    def connected(self) -> bool:
        return self._forwarder is not None and self._forwarder.open

    def send(self, datagram: Relayed) -> None:
        dropped = self._forwarder.send(datagram) if self._forwarder is not None else "not connected"
        if dropped is not None:
            self.diagnostics.count(_DROPPED[dropped])

    def _connected(self, stream: FrameStream) -> None:
        if self._forwarder is not None:
            self._forwarder.close()
            log.info("relay: a new forwarder connected; the one before is closed")
        else:
            log.info("relay: the forwarder connected")
        self._forwarder = stream
        stream.closed.add_done_callback(lambda _: self._lost(stream))

    def _lost(self, stream: FrameStream) -> None:
        if stream.error is not None:
            log.error("relay: the forwarder sent a broken frame (%s); its connection is closed", stream.error)
        if self._forwarder is stream:
            self._forwarder = None
            if not self._stopping:
                log.warning("relay: the forwarder disconnected")


_DROPPED = {"not connected": "datagrams dropped: no forwarder connected",
            "reads too slowly": "datagrams dropped: the forwarder reads too slowly"}
