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
from typing import Any

from .diagnostics import Diagnostics
from .errors import EnclaveIkeError
from .relay import FrameReader, Relayed, RelayError

log = logging.getLogger("enclave_ike")

READ_SIZE = 1 << 16
MAX_BUFFERED = 4 << 20  # octets waiting for a slow forwarder; past it new datagrams are dropped


class RelayListenError(EnclaveIkeError):
    """The forwarder's socket could not be made."""


async def listen_unix(handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]], path: Path,
                      **kwargs: Any) -> asyncio.Server:
    """A Unix stream server at `path`, which only its owner may connect to. A socket left there by a server that
    died is replaced (anything else at that path is an error)."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
    server = await asyncio.start_unix_server(handler, path=str(path), **kwargs)
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


async def read_frames(reader: asyncio.StreamReader, deliver: Callable[[Relayed], None]) -> None:
    """Every frame of a relay stream to `deliver`, until the stream ends; a broken frame raises `RelayError`. Both
    ends of the relay (serve's and the forwarder's) read this way."""
    frames = FrameReader()
    while data := await reader.read(READ_SIZE):
        for datagram in frames.feed(data):
            deliver(datagram)


class Relay:
    def __init__(self, path: Path, deliver: Callable[[Relayed], None], diagnostics: Diagnostics) -> None:
        self.path, self.deliver, self.diagnostics = path, deliver, diagnostics
        self._server: asyncio.AbstractServer | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._readers: set[asyncio.Task[None]] = set()
        self._stopping = False

    async def start(self) -> None:
        try:
            self._server = await listen_unix(self._connected, self.path)
        except OSError as exc:
            raise RelayListenError(f"cannot listen for the forwarder on {self.path}: {exc.strerror or exc}") from None

    async def stop(self) -> None:
        self._stopping = True
        if self._server is not None:
            self._server.close()
        if self._writer is not None:
            self._writer.close()
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        with contextlib.suppress(OSError):
            self.path.unlink()

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    def send(self, datagram: Relayed) -> None:
        writer = self._writer
        if writer is None or writer.is_closing():
            self.diagnostics.count("datagrams dropped: no forwarder connected")
            return
        if writer.transport.get_write_buffer_size() > MAX_BUFFERED:
            self.diagnostics.count("datagrams dropped: the forwarder reads too slowly")
            return
        writer.write(datagram.encode())

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._readers.add(task)
        if self._writer is not None:
            self._writer.close()
            log.info("relay: a new forwarder connected; the one before is closed")
        else:
            log.info("relay: the forwarder connected")
        self._writer = writer
        try:
            await read_frames(reader, self.deliver)
        except RelayError as exc:
            log.error("relay: the forwarder sent a broken frame (%s); its connection is closed", exc)
        except ConnectionError:
            pass
        except asyncio.CancelledError:
            pass  # serve is stopping. Ended quietly: asyncio 3.11 logs a traceback for a cancelled handler task
        finally:
            writer.close()
            if self._writer is writer:
                self._writer = None
                if not self._stopping:
                    log.warning("relay: the forwarder disconnected")
            if task is not None:
                self._readers.discard(task)
