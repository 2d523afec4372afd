"""`enclave-ike serve`: the only place where enclave-ike touches sockets and the clock.

UDP on port 500 and 4500 of every listen address feeds one sans-I/O `Responder` (`now=loop.time()`, its timer
armed with `loop.call_at`); what it wants sent goes out on the socket the responder names for it (the one the IKE
SA's peer last reached with a new authenticated message: `Responder.outgoing`), with the non-ESP marker (four zero
octets, RFC 3948 section 2.2) added on 4500 and stripped from what arrives there. Signatures asked of a deferred
signer are made on signing threads of their own, newest request first. Its events are logged
one line each, and the Child SA events are planned into XFRM operations (`apply.ChildSaTable`) that one worker task
runs in order through `asyncio.to_thread` (ikecommon.xfrm is synchronous), an event's operations in one trip and one
netlink datagram. A kernel that refuses is logged and the server carries on. With `apply.mode = "none"` the
operations are only logged, one line per event, and nothing waits for them.

At start the server opens the configured enclave, publishes its public identity (`PublishedIdentity`, JSON) where
`enclave-ike identity` reads it, and logs the libreswan line that pins it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import logging
import os
import secrets
import signal
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ikecommon import keys
from ikecommon.attestation.sim import DEFAULT_REGISTERS

from . import upstream
from .apply import Applier, ApplyError, ChildSaTable, KernelApplier, LogApplier, Operation
from .config import ApplyMode, Auth, Backend, KeyType, ServeConfig
from .datapath import DnsQuery, EspDatapath
from .diagnostics import Diagnostics
from .enclave import attest
from .enclave.base import Enclave
from .enclave.sim import SimEnclave
from .enclave.software import SoftwareEnclave
from .enclave.tsm import TsmEnclave
from .errors import EnclaveIkeError
from .esp import EspError
from .evidence_endpoint import EvidenceEndpoint, for_config
from .ikev2.config import IP_PROTO_TCP, Endpoint
from .ikev2.constants import DhGroup, EncrId, ExchangeType, IntegId, PrfId
from .ikev2.cookies import COOKIE_SECRET_SIZE
from .ikev2.crypto import ChildSuite, IkeSuite
from .ikev2.events import (
    ChildSaEstablished,
    ChildSaRekeyed,
    Event,
    IkeSaEstablished,
    IkeSaRekeyed,
    PeerAlive,
    PeerErrorNotified,
    ProtocolErrorEvent,
    SaDeleted,
    SignatureRequested,
)
from .ikev2.payloads import TrafficSelector
from .ikev2.responder import Responder
from .ikev2.state import State
from .metrics import Metrics
from .metrics_endpoint import MetricsEndpoint, metrics_socket
from .relay import Relayed, socket_peer
from .relay_server import Relay
from .release import service as key_release
from .release.endpoint import ReleaseEndpoint
from .release.keyring import KeyRing, NextKey
from .release.rotation import Rotation
from .topdomains import TopDomains

log = logging.getLogger("enclave_ike")

NON_ESP_MARKER = b"\x00\x00\x00\x00"
NATT_KEEPALIVE = b"\xff"  # RFC 3948 section 2.3
COOKIE_ROTATION_S = 300.0
SIGNING_THREADS = 4  # signatures at once (the sim enclave serves one at a time; a TEE's signer may serve more)
COUNTS_INTERVAL_S = 60.0  # how often the limits' refusals and removals are logged, as counts
SHUTDOWN_GRACE_S = 0.3
TCP_TICK_S = 0.25  # userspace ESP's TCP timers are looked at this often
RSA_BITS = 3072
IDENTITY_VERSION = 1


class ServeError(EnclaveIkeError):
    """The server could not start: a socket that would not bind, an enclave that would not open."""


# --- identity ---

def open_enclave(config: ServeConfig) -> Enclave | None:
    """The configured backend with a fresh key in it, or None for NULL authentication (no key at all)."""
    identity = config.identity
    if identity.auth is Auth.NULL:
        return None
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if identity.backend is Backend.SIM:
        return SimEnclave(key_type=identity.key_type.value, registers=identity.sim_registers or DEFAULT_REGISTERS,
                          sign_delay=identity.sim_sign_delay_s)
    if identity.key_type is KeyType.RSA:
        key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    if identity.backend is Backend.SOFTWARE:
        return SoftwareEnclave(key, registers=identity.sim_registers or DEFAULT_REGISTERS)
    return TsmEnclave(key)


@dataclass(frozen=True)
class PublishedIdentity:
    """What a running server says about itself: its ID, and its public key when it signs."""

    id: str
    auth: str
    backend: str
    key_type: str | None
    public_key_pem: str | None
    libreswan: str | None
    pid: int
    listen: tuple[str, ...]
    version: int = IDENTITY_VERSION
    next_public_key_pem: str | None = None  # during a rotation: the key every replica signs with from next_switch_at
    next_switch_at: int | None = None

    @classmethod
    def of(cls, config: ServeConfig, enclave: Enclave | None, rotating: NextKey | None = None) -> PublishedIdentity:
        pem = line = None
        if enclave is not None:
            public = enclave.signer().public_key()
            pem = public.public_bytes(serialization.Encoding.PEM,
                                      serialization.PublicFormat.SubjectPublicKeyInfo).decode()
            if not isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
                raise ServeError(f"identity: a {type(public).__name__} cannot be pinned by libreswan")
            pin = keys.from_public_key(public)
            line = f"{pin.keyword.replace('right', 'left')}={pin.libreswan}"
        next_pem = None
        if rotating is not None:
            next_pem = serialization.load_der_public_key(rotating.spki).public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        return cls(id=config.identity.id, auth=config.identity.auth.value, backend=config.identity.backend.value,
                   key_type=config.identity.key_type.value if enclave is not None else None,
                   public_key_pem=pem, libreswan=line, pid=os.getpid(),
                   listen=tuple(str(a) for a in config.listen.addresses), next_public_key_pem=next_pem,
                   next_switch_at=rotating.switch_at if rotating is not None else None)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str) -> PublishedIdentity:
        try:
            data: Any = json.loads(text)
            if not isinstance(data, dict) or data.get("version") != IDENTITY_VERSION:
                raise ValueError(f"not a version {IDENTITY_VERSION} identity")
            data["listen"] = tuple(data["listen"])
            return cls(**data)
        except (ValueError, TypeError, KeyError) as exc:
            raise EnclaveIkeError(f"{source}: not an identity enclave-ike published ({exc})") from None

    def publish(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            with os.fdopen(fd, "w") as out:
                out.write(self.to_json())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except OSError as exc:
            raise ServeError(f"{path}: cannot publish the identity ({exc.strerror})") from None


# --- the server ---

class _Udp(asyncio.DatagramProtocol):
    """One UDP socket: which local endpoint it is, and whether it carries the non-ESP marker (port 4500)."""

    def __init__(self, server: Server, local: Endpoint, natt: bool) -> None:
        self.server, self.local, self.natt = server, local, natt
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.server.datagram_received(self, data, socket_peer(addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        # A failed send or an ICMP error for what we sent: about one peer, at the moment of its exchange (the peer is
        # gone, or unreachable; IKE will time out).
        self.server.diagnostics.count("answers that could not be sent")
        self.server.diagnostics.client(logging.DEBUG, "%s: %s", self.local, exc)

    def send(self, data: bytes, peer: Endpoint) -> None:
        """An IKE message (behind the non-ESP marker on port 4500)."""
        self.send_esp(NON_ESP_MARKER + data if self.natt else data, peer)

    def send_esp(self, packet: bytes, peer: Endpoint) -> None:
        """A datagram as is: an ESP packet on port 4500 (RFC 3948)."""
        if self.transport is not None:
            self.transport.sendto(packet, (str(peer.address), peer.port))


class _RelayPort:
    """A listen endpoint whose datagrams come and go through `enclave-ike forward` (like `_Udp`, for the server)."""

    def __init__(self, relay: Relay, local: Endpoint, natt: bool) -> None:
        self.relay, self.local, self.natt = relay, local, natt

    def send(self, data: bytes, peer: Endpoint) -> None:
        self.send_esp(NON_ESP_MARKER + data if self.natt else data, peer)

    def send_esp(self, packet: bytes, peer: Endpoint) -> None:
        self.relay.send(Relayed(self.local, peer, packet))


_Port = _Udp | _RelayPort


@dataclass(frozen=True)
class _Send:
    """Datagrams the apply worker sends once the operations queued before them are done."""

    datagrams: tuple[tuple[bytes, Endpoint, Endpoint], ...]


class Server:
    def __init__(self, config: ServeConfig, responder: Responder, applier: Applier,
                 evidence: EvidenceEndpoint | None = None, release: ReleaseEndpoint | None = None) -> None:
        self.config, self.responder, self.applier, self.evidence = config, responder, applier, evidence
        self.release = release
        self._loop = asyncio.get_running_loop()
        # Every line that names a client goes through here: to the log, or with privacy on to the enclave's ring.
        self.diagnostics = Diagnostics(log, config.privacy)
        if evidence is not None:
            evidence.diagnostics = self.diagnostics
        self.table = ChildSaTable()
        self._sockets: list[_Port] = []
        self._by_local: dict[Endpoint, _Port] = {}
        self.relay: Relay | None = None
        # apply.mode = "userspace": ESP ends here, and the queries it carried go on to the resolver (over UDP on one
        # socket, each TCP query as a task of its own).
        self.datapath = EspDatapath() if config.apply is ApplyMode.USERSPACE else None
        self._udp_resolver: upstream.UdpResolver | None = None
        self._tcp_queries: set[asyncio.Task[None]] = set()
        # Aggregate metrics for the operator's scraper (metrics.py), the top domains only when asked for.
        top = config.metrics.top
        self.metrics = Metrics(TopDomains(top, self._loop.time(), secrets.SystemRandom().random) if top.enabled
                               else None, ike_sas=lambda: len(self.responder.views()))
        if self.datapath is not None:
            self.metrics.watch_esp(self.datapath.counts, self.datapath.drops)
        if release is not None:
            release.counted = lambda result: self.metrics.key_releases.labels(result=result).inc()
        self.metrics_endpoint: MetricsEndpoint | None = None
        if config.metrics.enabled:
            relay = config.listen.relay
            self.metrics_endpoint = MetricsEndpoint(lambda: self.metrics.render(self._loop.time()),
                                                    config.listen.addresses, config.metrics.port,
                                                    metrics_socket(relay) if relay is not None else None,
                                                    health=self.health)
        self.enclave_problem: Callable[[], str | None] = lambda: None  # serve sets the enclave's own check
        self.serving = False
        self._stopping = False
        self._esp_logged: Counter[str] = Counter()
        self._tcp_tick: asyncio.TimerHandle | None = None
        self._drops_logged: Counter[str] = Counter()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._operations: asyncio.Queue[tuple[Operation, ...] | _Send | None] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._counts_logged: Counter[str] = Counter()
        self._activity_logged: Counter[str] = Counter()
        self._failures_logged: Counter[str] = Counter()
        # Signing has threads of its own, so a backlog of signatures never delays the kernel operations (the
        # default executor). Requests are taken newest first: under a flood the newest have the most half-open time
        # left, and one whose IKE SA is gone by its turn is skipped, so the signer works for SAs that can still use
        # its signature and a client arriving after a flood is answered.
        self._sign_requests: asyncio.LifoQueue[SignatureRequested] = asyncio.LifoQueue()
        self._signing = [asyncio.create_task(self._signing_worker()) for _ in range(SIGNING_THREADS)]
        self._signers = concurrent.futures.ThreadPoolExecutor(max_workers=SIGNING_THREADS,
                                                              thread_name_prefix="enclave-ike-sign")
        self.apply_failures = 0

    async def start(self) -> None:
        listen, userspace = self.config.listen, self.config.userspace
        if self.datapath is not None:
            self._udp_resolver = upstream.UdpResolver(userspace.resolver, userspace.query_timeout_s)
            await self._udp_resolver.start()
        if listen.relay is not None:
            self.relay = Relay(listen.relay, self._relayed, self.diagnostics)
            await self.relay.start()
        for address in listen.addresses:
            for port, natt in ((listen.ike_port, False), (listen.natt_port, True)):
                local = Endpoint(address, port)
                if self.relay is not None:
                    relayed = _RelayPort(self.relay, local, natt)
                    self._sockets.append(relayed)
                    self._by_local[local] = relayed
                    continue
                try:
                    _, protocol = await self._loop.create_datagram_endpoint(
                        lambda local=local, natt=natt: _Udp(self, local, natt),  # type: ignore[misc]
                        local_addr=(str(address), port))
                except OSError as exc:
                    self._close_sockets()
                    raise ServeError(f"cannot listen on {local}: {exc.strerror or exc}") from None
                self._sockets.append(protocol)
                self._by_local[local] = protocol
        try:
            for endpoint in self._endpoints():  # TCP (or relayed) beside IKE
                await endpoint.start()
        except EnclaveIkeError:
            for endpoint in self._endpoints():
                await endpoint.stop()
            self._close_sockets()
            if self.relay is not None:
                await self.relay.stop()
            raise
        self._worker = asyncio.create_task(self._apply_worker())
        self.serving = True
        self._loop.call_later(COOKIE_ROTATION_S, self._rotate_cookie_secret)
        self._loop.call_later(COUNTS_INTERVAL_S, self._log_counts_periodically)

    def _endpoints(self) -> list[EvidenceEndpoint | MetricsEndpoint | ReleaseEndpoint]:
        return [e for e in (self.evidence, self.metrics_endpoint, self.release) if e is not None]

    def health(self) -> str | None:
        """None while serving and whole; else why not (GET /health: an orchestrator's readiness)."""
        if not self.serving:
            return "not serving (starting or stopping)"
        if self._worker is None or self._worker.done():
            return "the worker that applies Child SAs has stopped"
        return self.enclave_problem()

    async def stop(self) -> None:
        """Tell every peer its IKE SA is gone, remove what was installed, close the sockets. A client told so, or
        any other, that starts a new IKE SA meanwhile gets no answer: it would be one more to tell."""
        self.serving, self._stopping = False, True
        for endpoint in self._endpoints():
            await endpoint.stop()
        self.log_counts()
        for task in self._signing:
            task.cancel()
        self._signers.shutdown(wait=False, cancel_futures=True)
        now = self._loop.time()
        for view in self.responder.views():
            self.responder.delete(view.spi_r, now)
        self._flush()
        if self.responder.views():
            await asyncio.sleep(SHUTDOWN_GRACE_S)  # let the deletes leave (their answers are not awaited)
        self._queue_operations(self.table.teardown())
        self._operations.put_nowait(None)
        if self._worker is not None:
            await self._worker
        if self._timer is not None:
            self._timer.cancel()
        if self._tcp_tick is not None:
            self._tcp_tick.cancel()
        for task in self._tcp_queries:
            task.cancel()
        await asyncio.gather(*self._tcp_queries, return_exceptions=True)
        self._close_sockets()
        if self.relay is not None:
            await self.relay.stop()

    def _close_sockets(self) -> None:
        for sock in self._sockets:
            if isinstance(sock, _Udp) and sock.transport is not None:
                sock.transport.close()
        self._sockets.clear()
        if self._udp_resolver is not None:
            self._udp_resolver.close()

    # --- datagrams in and out ---

    def datagram_received(self, sock: _Port, data: bytes, source: Endpoint) -> None:
        if sock.natt:
            if data == NATT_KEEPALIVE:
                return
            if not data.startswith(NON_ESP_MARKER):
                if self.datapath is not None:
                    self._esp_received(sock, data, source)
                    return
                self.diagnostics.count("ESP in UDP dropped (not handled in userspace)")
                self.diagnostics.client(logging.DEBUG, "ESP in UDP from %s dropped: not handled in userspace", source)
                return
            data = data[len(NON_ESP_MARKER):]
        if self._stopping and _starts_an_ike_sa(data):  # nothing new here: the client goes to another replica
            self.diagnostics.count("IKE_SA_INIT requests dropped while stopping")
            return
        try:
            self.responder.receive(data, source, self._loop.time(), local=sock.local)
        except EnclaveIkeError as exc:  # the enclave could not sign: this exchange fails, the server goes on
            self.diagnostics.fail("exchanges failed")
            self.diagnostics.client(logging.ERROR, "%s: %s", source, exc)
        self._flush()

    def _relayed(self, datagram: Relayed) -> None:
        """A datagram the forwarder took in on one of our listen endpoints."""
        port = self._by_local.get(datagram.local)
        if port is None:  # the forwarder listens where this config does not: nothing here answers for it
            self.diagnostics.count("relayed datagrams for an endpoint not listened on")
            return
        self.datagram_received(port, datagram.payload, datagram.peer)

    def _socket_for(self, local: Endpoint, peer: Endpoint) -> _Port:
        """The socket bound to `local` (the responder says which: no unauthenticated datagram decides it)."""
        sock = self._by_local.get(local)
        if sock is not None:
            return sock
        natt = peer.port == self.config.listen.natt_port
        return next((s for s in self._sockets if s.natt == natt and s.local.address.version == peer.address.version),
                    self._sockets[0])

    def _flush(self) -> None:
        outgoing = self.responder.outgoing()
        queued = False
        while (event := self.responder.next_event()) is not None:
            queued = self._on_event(event) or queued
        if queued:
            # The answer that completes a Child SA leaves only after its kernel SAs are in: the initiator
            # sends ESP the moment it has the answer, and an SA not yet installed drops that first query.
            self._operations.put_nowait(_Send(tuple(outgoing)))
        else:
            self._send(outgoing)
        self._arm_timer()

    def _send(self, datagrams: Iterable[tuple[bytes, Endpoint, Endpoint]]) -> None:
        for data, peer, local in datagrams:
            self._socket_for(local, peer).send(data, peer)

    # --- the clock ---

    def _arm_timer(self) -> None:
        """One loop timer at the responder's deadline. A timer already armed for an earlier time stays: it fires
        early, the responder finds nothing due, and the timer is armed again (one re-arm per firing instead of a
        cancel and a new timer for nearly every datagram, as each new SA's deadline is later than the last's)."""
        deadline = self.responder.get_timer()
        if self._timer is not None and self._timer_at is not None and (deadline is None or self._timer_at <= deadline):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, deadline
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        deadline = self._timer_at
        self._timer = self._timer_at = None
        now = self._loop.time()
        if deadline is not None:
            now = max(now, deadline)  # call_at may fire within the clock's resolution before the deadline
        try:
            self.responder.handle_timer(now)
        except EnclaveIkeError as exc:
            self.diagnostics.fail("timer errors")
            self.diagnostics.client(logging.ERROR, "timer: %s", exc)
        self._flush()

    def log_counts(self) -> None:
        """What the limits refused or removed, what went wrong and what happened since the last call, each as one
        line of counts over every client: no address, no SPI, no moment of one client's."""
        self._log_new(logging.WARNING, "limits", self.responder.counts, self._counts_logged)
        self._log_new(logging.ERROR, "failures", self.diagnostics.failures, self._failures_logged)
        self._log_new(logging.INFO, "activity", self.diagnostics.counts, self._activity_logged)
        if self.datapath is not None:
            self._log_new(logging.INFO, "ESP", self.datapath.counts, self._esp_logged)
            self._log_new(logging.WARNING, "ESP drops", self.datapath.drops, self._drops_logged)

    @staticmethod
    def _log_new(level: int, name: str, counts: Counter[str], logged: Counter[str]) -> None:
        new = counts - logged
        if new:
            log.log(level, "%s: %s", name, "; ".join(f"{what}: {count}" for what, count in sorted(new.items())))
        logged.clear()
        logged.update(counts)

    def _log_counts_periodically(self) -> None:
        self.log_counts()
        self._loop.call_later(COUNTS_INTERVAL_S, self._log_counts_periodically)

    def _rotate_cookie_secret(self) -> None:
        self.responder.rotate_cookie_secret(secrets.token_bytes(COOKIE_SECRET_SIZE))
        self._loop.call_later(COOKIE_ROTATION_S, self._rotate_cookie_secret)

    # --- events ---

    def _on_event(self, event: Event) -> bool:
        """Log the event and queue its kernel operations; True when it queued any."""
        if isinstance(event, SignatureRequested):
            self._sign_requests.put_nowait(event)
            return False
        self.diagnostics.count(_activity(event))
        self.diagnostics.client(logging.DEBUG if isinstance(event, PeerAlive) else logging.INFO, "%s",
                                _Described(event))
        if isinstance(event, IkeSaEstablished):
            self.metrics.handshakes.labels(auth=event.credential.kind.value).inc()
        elif isinstance(event, ChildSaEstablished):
            self.metrics.child_sas.labels(suite=_suite(event.suite)).inc()
        if self.datapath is not None:  # userspace ESP: in place before the answer that completes a Child SA leaves
            try:
                self.datapath.apply(event, self._loop.time())
            except EspError as exc:
                self._apply_failed(ApplyError(f"userspace ESP: {exc}"))
            return False
        try:
            operations = self.table.plan(event)
        except ApplyError as exc:
            self._apply_failed(exc)
            return False
        return self._queue_operations(operations)

    def _queue_operations(self, operations: Iterable[Operation]) -> bool:
        """Queue an event's operations for the apply worker, in one trip; True when it queued any. With apply.mode
        = "none" nothing is queued: they are logged, one line for the event's."""
        batch = tuple(operations)
        if not batch:
            return False
        if self.config.apply is ApplyMode.NONE:
            self.diagnostics.client(logging.INFO, "apply (mode none, not applied): %s", _Joined(batch))
            return False
        self._operations.put_nowait(batch)
        return True

    # --- userspace ESP ---

    def _esp_received(self, sock: _Port, packet: bytes, source: Endpoint) -> None:
        """An ESP packet on port 4500: the DNS queries it completes go on to the resolver, their answers (and TCP's
        own segments) back inside ESP."""
        datapath = self.datapath
        assert datapath is not None
        now = self._loop.time()
        for query in datapath.receive(packet, source, sock.local, now):
            self._ask(query, now)
        self._send_esp()

    def _ask(self, query: DnsQuery, now: float) -> None:
        datapath, udp = self.datapath, self._udp_resolver
        assert datapath is not None and udp is not None
        if udp.in_flight + len(self._tcp_queries) >= self.config.userspace.max_queries_in_flight:
            datapath.drops["queries past max_queries_in_flight"] += 1
            datapath.answer(query, None, now)  # a TCP connection stops waiting for it
            return
        tcp = query.protocol == IP_PROTO_TCP
        datapath.counts["DNS queries over TCP" if tcp else "DNS queries over UDP"] += 1
        self.metrics.query(query.payload, "tcp" if tcp else "udp", query.client.packed, now)
        if tcp:
            task = self._loop.create_task(self._ask_tcp(query, now))
            self._tcp_queries.add(task)
            task.add_done_callback(self._tcp_queries.discard)
        else:
            udp.ask(query.payload, functools.partial(self._answered, query, now))

    async def _ask_tcp(self, query: DnsQuery, asked: float) -> None:
        userspace = self.config.userspace
        self._answered(query, asked, await upstream.ask_tcp(userspace.resolver, query.payload,
                                                            userspace.query_timeout_s))

    def _answered(self, query: DnsQuery, asked: float, answer: bytes | None) -> None:
        datapath = self.datapath
        assert datapath is not None
        now = self._loop.time()
        if answer is None:
            datapath.drops["queries the resolver did not answer"] += 1
        else:
            datapath.counts["DNS answers"] += 1
            self.metrics.answer(answer, now - asked)
        datapath.answer(query, answer, now)
        self._send_esp()

    def _send_esp(self) -> None:
        assert self.datapath is not None
        for out in self.datapath.take_outgoing():
            self._socket_for(out.local, out.peer).send_esp(out.packet, out.peer)
        if self.datapath.tcp_connections and self._tcp_tick is None:
            self._tcp_tick = self._loop.call_later(TCP_TICK_S, self._on_tcp_tick)

    def _on_tcp_tick(self) -> None:
        """TCP's retransmissions and idle closes, a few times a second while connections exist (one scan, not a
        loop timer per connection)."""
        self._tcp_tick = None
        if self.datapath is not None:
            self.datapath.handle_timer(self._loop.time())
            self._send_esp()

    async def _signing_worker(self) -> None:
        while True:
            await self._sign(await self._sign_requests.get())

    async def _sign(self, request: SignatureRequested) -> None:
        """Sign in a signing thread (a deferred signer waits on its enclave), then let the IKE SA answer. Other
        peers are served meanwhile."""
        signer = self.responder.config.signer
        sa = self.responder.sa(request.ike_spi_r)
        if sa is None or sa.state is not State.SIGNING:
            return  # gone (its half-open time ran out) before its turn: sign nothing for it
        try:
            if signer is None:
                raise EnclaveIkeError("no signer")
            signature = await self._loop.run_in_executor(self._signers, signer.sign, request.data, request.scheme)
        except Exception as exc:  # whatever the enclave raised: this IKE SA fails, the server goes on
            self.diagnostics.fail("signatures failed")
            self.diagnostics.client(logging.ERROR, "IKE SA %s/%s: our signature failed: %s", request.ike_spi_i.hex(),
                                    request.ike_spi_r.hex(), exc)
            self.responder.fail_signature(request.ike_spi_r, self._loop.time(), str(exc))
        else:
            self.responder.complete_signature(request.ike_spi_r, self._loop.time(), signature)
        self._flush()

    async def _apply_worker(self) -> None:
        """Each event's operations in one trip to a worker thread (not one per operation), in order; then the
        answers that waited for them."""
        while (item := await self._operations.get()) is not None:
            if isinstance(item, _Send):
                self._send(item.datagrams)
                continue
            try:
                errors = await asyncio.to_thread(self.applier.run, item)
            except Exception as exc:  # an applier's bug: this worker must go on, or no answer waiting here leaves
                errors = [ApplyError(f"{op}: {exc!r}") for op in item]
            for op, error in zip(item, errors, strict=True):
                if error is not None:
                    self._apply_failed(error)
                else:
                    self.diagnostics.client(logging.DEBUG, "applied: %s", op)

    def _apply_failed(self, error: ApplyError) -> None:
        self.apply_failures += 1
        self.diagnostics.fail("kernel operations failed")
        self.diagnostics.client(logging.ERROR, "apply: %s", error)


def describe(event: Event) -> str:  # noqa: PLR0911 - one return per event type
    """One log line per event."""
    sa = f"IKE SA {event.ike_spi_i.hex()}/{event.ike_spi_r.hex()}"
    if isinstance(event, IkeSaEstablished):
        return (f"{sa} established with {event.peer} (peer {event.peer_id}, {event.credential}; "
                f"we are {event.local_id}); {_suite(event.suite)}")
    if isinstance(event, ChildSaEstablished):
        return f"Child SA established under {sa}: {_child(event)}"
    if isinstance(event, ChildSaRekeyed):
        return (f"Child SA rekeyed under {sa}: old in 0x{event.old_spi_in.hex()} out 0x{event.old_spi_out.hex()}; "
                f"new {_child(event.new)}")
    if isinstance(event, IkeSaRekeyed):
        return f"{sa} rekeyed: now {event.new_spi_i.hex()}/{event.new_spi_r.hex()}"
    if isinstance(event, SaDeleted):
        what = (f"Child SA in 0x{event.spi_in.hex()} out 0x{event.spi_out.hex()}" if event.spi_in else sa)
        return f"{what} deleted: {event.reason}"
    if isinstance(event, ProtocolErrorEvent):
        return f"{sa}: protocol error in exchange {event.exchange} message {event.message_id}: {event.detail}"
    if isinstance(event, PeerErrorNotified):
        return f"{sa}: the peer answered with notify {event.notify}: {event.detail}"
    if isinstance(event, PeerAlive):
        return f"{sa}: the peer answered a liveness check"
    return f"{sa}: {type(event).__name__}"


_ACTIVITY: dict[type, str] = {
    IkeSaEstablished: "IKE SAs established", ChildSaEstablished: "Child SAs established",
    ChildSaRekeyed: "Child SAs rekeyed", IkeSaRekeyed: "IKE SAs rekeyed", ProtocolErrorEvent: "protocol errors",
    PeerErrorNotified: "error notifies from peers", PeerAlive: "liveness checks answered",
}


def _activity(event: Event) -> str:
    """What an event counts as in the log's aggregate lines."""
    if isinstance(event, SaDeleted):
        return "Child SAs deleted" if event.spi_in else "IKE SAs deleted"
    return _ACTIVITY.get(type(event), type(event).__name__)


def _child(event: ChildSaEstablished) -> str:
    ts = "; ".join(f"{_ts(ours)} <-> {_ts(theirs)}" for ours, theirs in zip(event.local_ts, event.remote_ts,
                                                                             strict=False))
    return (f"in 0x{event.spi_in.hex()} out 0x{event.spi_out.hex()} {event.mode.value} {event.peer} "
            f"{_suite(event.suite)}; {ts}")


def _suite(suite: IkeSuite | ChildSuite) -> str:
    parts = [f"{EncrId(suite.encr_id).name.removeprefix('ENCR_')}_{suite.key_length}"]
    if isinstance(suite, IkeSuite):
        parts.append(PrfId(suite.prf_id).name.removeprefix("PRF_"))
    if suite.integ_id != IntegId.NONE:
        parts.append(IntegId(suite.integ_id).name.removeprefix("AUTH_"))
    if suite.dh_group != DhGroup.NONE:
        parts.append(DhGroup(suite.dh_group).name)
    if isinstance(suite, ChildSuite) and suite.esn:
        parts.append("ESN")
    return "/".join(parts)


def _ts(ts: TrafficSelector) -> str:
    addresses = str(ts.start_address) if ts.start_address == ts.end_address else f"{ts.start_address}-{ts.end_address}"
    ports = "any" if (ts.start_port, ts.end_port) == (0, 0xFFFF) else (
        str(ts.start_port) if ts.start_port == ts.end_port else f"{ts.start_port}-{ts.end_port}")
    return f"{addresses} proto {ts.protocol} port {ports}"


class _Described:
    """An event's line, made only if it is written (with privacy on, only if the ring is dumped)."""

    __slots__ = ("event",)

    def __init__(self, event: Event) -> None:
        self.event = event

    def __str__(self) -> str:
        return describe(self.event)


def _starts_an_ike_sa(message: bytes) -> bool:
    """An IKE_SA_INIT request (RFC 7296 3.1: exchange type 34, no responder SPI yet)."""
    return len(message) >= 28 and message[18] == ExchangeType.IKE_SA_INIT and message[8:16] == bytes(8)


class _Joined:
    """Operations as one line, made only if it is written."""

    __slots__ = ("operations",)

    def __init__(self, operations: tuple[Operation, ...]) -> None:
        self.operations = operations

    def __str__(self) -> str:
        return "; ".join(map(str, self.operations))


# --- running ---

async def serve(config: ServeConfig, stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM or SIGINT (or `stop` is set)."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    enclave = await asyncio.to_thread(open_enclave, config)
    applier: Applier = KernelApplier() if config.apply is ApplyMode.KERNEL else LogApplier()
    try:
        evidence = for_config(config, enclave)
        release = rotation = None
        if enclave is not None:
            release, rotation = await _service_key(config, enclave, evidence)
        signer = enclave.signer() if enclave is not None else None
        responder = Responder(config.responder_config(signer),
                              local=Endpoint(config.listen.addresses[0], config.listen.ike_port),
                              random=secrets.token_bytes)
        server = Server(config, responder, applier, evidence=evidence, release=release)
        if isinstance(enclave, SimEnclave):
            server.enclave_problem = enclave.problem
        if rotation is not None:
            server.metrics.key_switch_at.set_function(lambda: _switch_time(rotation.keys.next))
        await server.start()
        identity = PublishedIdentity.of(config, enclave)
        identity.publish(config.identity.publish)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, server.diagnostics.dump, "SIGUSR1 (the operator)")
        loop.add_signal_handler(signal.SIGHUP, _declined_reload, config.path)
        rotating: set[asyncio.Task[Any]] = set()
        if rotation is not None:
            rotating.add(asyncio.create_task(rotation.run()))
            loop.add_signal_handler(signal.SIGUSR2, _start_rotation, rotation, rotating)
        else:
            loop.add_signal_handler(signal.SIGUSR2, log.warning, "SIGUSR2: no rotation: NULL authentication has no "
                                                                 "identity key")
        log.info("listening on %s (ports %d and %d), protecting DNS on %s; apply mode %s; identity %s %s",
                 ", ".join(map(str, config.listen.addresses)), config.listen.ike_port, config.listen.natt_port,
                 ", ".join(map(str, config.dns_addresses)), config.apply.value, config.identity.id,
                 identity.libreswan or "(NULL auth)")
        try:
            await stop.wait()
        finally:
            log.info("stopping")
            for task in rotating:
                task.cancel()
            await server.stop()
            _unpublish(config.identity.publish)
    finally:
        await asyncio.to_thread(applier.close)  # off the loop, like every other use of ikecommon.xfrm
        if isinstance(enclave, SimEnclave):
            enclave.close()


async def _service_key(config: ServeConfig, enclave: Enclave,
                       evidence: EvidenceEndpoint | None) -> tuple[ReleaseEndpoint | None, Rotation]:
    """The key (a new one, or the service's from another replica or the key broker: release/), then who this replica
    gives it to, and how it follows the service's rotations."""
    envelopes = evidence.envelope if evidence is not None else attest.envelopes(enclave)
    joined = await asyncio.to_thread(key_release.join, config.release, enclave, envelopes, log.info)
    log.info("identity key: %s", joined.said)
    keyring = KeyRing(enclave, since=joined.since, follows=key_release.follows_rotations(config.release))
    if config.release.listen and not keyring.follows:
        log.warning("rotation: this replica gives its key to others but follows no rotation ([release] peers is "
                    "empty): a rotation started on another replica is refused while this one is up; start "
                    "rotations here")
    release = key_release.endpoint(config.release, enclave, envelopes, log.warning, keyring)
    if evidence is not None:
        evidence.keys = keyring
    rotation = key_release.rotation(config.release, enclave, keyring, envelopes,
                                    lambda: PublishedIdentity.of(config, enclave, keyring.next).publish(
                                        config.identity.publish))
    return release, rotation


def _switch_time(pending: NextKey | None) -> float:
    return float(pending.switch_at) if pending is not None else 0.0


def _start_rotation(rotation: Rotation, tasks: set[asyncio.Task[Any]]) -> None:
    """SIGUSR2 (the operator): start a rotation of the service key here, off the loop (the enclave makes a key)."""
    log.info("SIGUSR2: starting a rotation of the service key")
    task = asyncio.create_task(asyncio.to_thread(rotation.start))
    tasks.add(task)
    task.add_done_callback(_rotation_started)
    task.add_done_callback(tasks.discard)


def _rotation_started(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("rotation not started: %s", exc)


def _declined_reload(path: Path) -> None:
    """SIGHUP: the identity key, the IKE SAs and their Child SAs live in this process; a new config could change
    the listen addresses or the identity under them. It is declined, said so, and the server goes on."""
    log.warning("SIGHUP: the config is not reloaded (%s is read at start only); serve goes on unchanged. Restart it "
                "to apply a new config: its clients re-run IKE, and pin again if the identity changed", path)


def _unpublish(path: Path) -> None:
    """Remove the published identity if it is still ours."""
    with contextlib.suppress(OSError, EnclaveIkeError):
        if PublishedIdentity.from_json(path.read_text(), str(path)).pid == os.getpid():
            path.unlink()
