"""The responder's dispatcher: datagrams in, to the right IKE SA, with bounded state. Still sans-I/O.

`Responder.receive(data, source, now)` finds the IKE SA a datagram belongs to by its SPIs (our SPI is the one we
chose; an IKE_SA_INIT request, whose responder SPI is zero, by the initiator's SPI and address), creates IKE SAs for
new IKE_SA_INIT requests, and moves the SAs' datagrams and events into its own queues. The server around it sends
`datagrams_to_send()` (each with its destination), applies `next_event()`, and calls `handle_timer(now)` at
`get_timer()`.

Bounded state (`Limits`): at most so many SAs in all, and half-open SAs in all and per peer address; past those, a
new IKE_SA_INIT is dropped. An address past `max_sas_per_peer` established SAs has its least recently heard one
replaced by the newest, so clients that vanished without a Delete never lock out the next client from there; those
that vanished are found by the SAs' liveness checks (`Timers.liveness`) and removed. Every refusal and removal for
a limit is counted in `counts` (aggregates, no address), which the server logs. Past `cookie_threshold` half-open
SAs, every IKE_SA_INIT must carry a COOKIE (RFC 7296 2.6) made by the stateless `cookies` function; requests
without one get a COOKIE answer and leave no state. Requests for an IKE SA we do not know get an unprotected
INVALID_IKE_SPI answer (2.21.4), rate-limited; responses for one are dropped.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter, deque
from ipaddress import IPv6Address, IPv6Network
from typing import Final

from .config import Endpoint, Identity, ResponderConfig
from .constants import ExchangeType, HeaderFlag, NotifyType
from .cookies import COOKIE_SECRET_SIZE, CookieSecrets, cookie_and_nonce, make_cookie, verify_cookie
from .crypto import RandomSource
from .errors import InvalidMajorVersion, RemoteProtocolError, UnsupportedCriticalPayload
from .events import Event, IkeSaEstablished
from .payloads import IKE_HEADER_SIZE, IKE_SPI_SIZE, Address, IkeHeader, Message, Notify
from .responder_sa import ResponderSa
from .state import ZERO_SPI, IkeSaView, SpiAllocator, State, peek_header

REFUSED_MAX_HALF_OPEN: Final = "IKE_SA_INIT refused: max_half_open"
REFUSED_MAX_HALF_OPEN_PER_PEER: Final = "IKE_SA_INIT refused: max_half_open_per_peer"
REFUSED_MAX_SAS: Final = "IKE_SA_INIT refused: max_sas"
REPLACED_MAX_SAS_PER_PEER: Final = "IKE SA replaced: max_sas_per_peer"
DEAD_PEER: Final = "IKE SA removed: dead peer"

PeerKey = Address | IPv6Network
"""What the per-peer limits count by: an IPv4 address, or an IPv6 /64 (one subscriber's prefix, whose addresses
cost it nothing)."""

_FLAGS_OFFSET: Final = 19
_EXCHANGE_OFFSET: Final = 18
_MESSAGE_ID_OFFSET: Final = 20


def peer_key(address: Address) -> PeerKey:
    return IPv6Network((address, 64), strict=False) if isinstance(address, IPv6Address) else address


class Responder:
    """All the responder's IKE SAs on one local endpoint."""

    def __init__(self, config: ResponderConfig, *, local: Endpoint, random: RandomSource,
                 cookie_secrets: CookieSecrets | None = None) -> None:
        self.config = config
        self.local = local
        self._random = random
        self._spis = SpiAllocator(random)
        self._cookie_secrets = cookie_secrets or CookieSecrets(random(COOKIE_SECRET_SIZE))
        self._sas: dict[bytes, ResponderSa] = {}  # by our SPI
        self._by_init: dict[tuple[Address, bytes], ResponderSa] = {}  # by (peer address, SPIi) of its IKE_SA_INIT
        self._init_key: dict[bytes, tuple[Address, bytes]] = {}
        self._address: dict[bytes, PeerKey] = {}  # the peer address (IPv6: /64) each SA is counted under
        self._half_open: set[bytes] = set()
        self._half_open_per_peer: Counter[PeerKey] = Counter()
        self._by_peer: dict[PeerKey, set[bytes]] = {}  # our SPIs of each peer address's SAs
        self._by_identity: dict[Identity, set[bytes]] = {}
        self._timers: list[tuple[float, int, bytes]] = []
        self._sequence = itertools.count()
        self._events: deque[Event] = deque()
        self._outbox: list[tuple[bytes, Endpoint, Endpoint]] = []
        self._receiving_on = local
        self._tokens = float(config.limits.invalid_spi_answers_per_second)
        self._tokens_at: float | None = None
        self.dropped = 0
        self.cookies_sent = 0
        self.counts: Counter[str] = Counter()
        """Refusals and removals for a limit, and dead peers removed, by `Limit` name (aggregates only)."""

    # --- the sans-I/O interface ---

    def receive(self, data: bytes, source: Endpoint, now: float, local: Endpoint | None = None) -> None:
        """Handle one datagram (for port 4500, already without its non-ESP marker) that `source` sent us on
        `local` (ours)."""
        local = local or self.local
        self._receiving_on = local
        try:
            header = peek_header(data)
        except InvalidMajorVersion:
            self._answer_major_version(data, source, now)
            return
        except RemoteProtocolError:
            self.dropped += 1
            return
        if header.exchange == ExchangeType.IKE_SA_INIT and not header.is_response and header.spi_r == ZERO_SPI:
            self._receive_init(header, data, source, now, local)
            return
        own = header.spi_r if header.is_initiator else header.spi_i
        sa = self._sas.get(own)
        if sa is None or (header.spi_i, header.spi_r) != (sa.spi_i, sa.spi_r):
            if header.is_response or header.exchange == ExchangeType.IKE_SA_INIT:
                self.dropped += 1
            else:
                self._answer_invalid_spi(header, source, now)
            return
        sa.receive(data, now, source, local)
        self._collect(sa, now)

    def datagrams_to_send(self) -> list[tuple[bytes, Endpoint]]:
        return [(data, peer) for data, peer, _ in self.outgoing()]

    def outgoing(self) -> list[tuple[bytes, Endpoint, Endpoint]]:
        """What to send: each datagram with its destination and the local endpoint to send it from (the one its
        IKE SA's peer last reached with a new authenticated message; for an answer without an SA, the one the
        request came in on)."""
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        while self._timers:
            deadline, _, spi = self._timers[0]
            sa = self._sas.get(spi)
            if sa is not None and sa.get_timer() == deadline:
                return deadline
            heapq.heappop(self._timers)  # stale: the SA is gone or its deadline moved (and was pushed again)
        return None

    def handle_timer(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            _, _, spi = heapq.heappop(self._timers)
            sa = self._sas.get(spi)
            if sa is None:
                continue
            deadline = sa.get_timer()
            if deadline is None or deadline > now:
                continue
            sa.handle_timer(now)
            if sa.declared_dead:
                self.counts[DEAD_PEER] += 1
            self._collect(sa, now)

    # --- what the server may ask ---

    @property
    def demanding_cookies(self) -> bool:
        return len(self._half_open) >= self.config.limits.cookie_threshold

    @property
    def half_open(self) -> int:
        return len(self._half_open)

    def __len__(self) -> int:
        return len(self._sas)

    def sa(self, own_spi: bytes) -> ResponderSa | None:
        return self._sas.get(own_spi)

    def views(self) -> list[IkeSaView]:
        return [sa.view() for sa in self._sas.values()]

    def rotate_cookie_secret(self, secret: bytes) -> None:
        """Start using a new cookie secret; cookies made with the current one stay valid until the next rotation."""
        self._cookie_secrets = self._cookie_secrets.rotate(secret)

    def complete_signature(self, own_spi: bytes, now: float, signature: bytes) -> None:
        """The signature a SignatureRequested of the IKE SA with `own_spi` asked for. An SA that is gone or no
        longer waiting (its half-open time ran out) ignores it."""
        sa = self._sas.get(own_spi)
        if sa is not None and sa.state is State.SIGNING:
            sa.complete_signature(now, signature)
            self._collect(sa, now)

    def fail_signature(self, own_spi: bytes, now: float, reason: str) -> None:
        """The signer could not make that signature: the IKE SA is removed, unanswered."""
        sa = self._sas.get(own_spi)
        if sa is not None and sa.state is State.SIGNING:
            sa.fail_signature(now, reason)
            self._collect(sa, now)

    def delete(self, own_spi: bytes, now: float) -> None:
        """Delete one IKE SA with the peer's knowledge (an INFORMATIONAL exchange)."""
        sa = self._sas.get(own_spi)
        if sa is not None and sa.established:
            sa.delete(now)
            self._collect(sa, now)

    # --- IKE_SA_INIT ---

    def _receive_init(self, header: IkeHeader, data: bytes, source: Endpoint, now: float, local: Endpoint) -> None:
        key = (source.address, header.spi_i)
        existing = self._by_init.get(key)
        if existing is not None:  # a retransmission (answered from the cache) or a stray copy (dropped)
            existing.receive(data, now, source)
            self._collect(existing, now)
            return
        if header.message_id != 0 or not any(header.spi_i):
            self.dropped += 1
            return
        # With cookies demanded the cookie comes first: a request without a valid one is answered (or dropped)
        # before anything is decoded, so a flood of them costs little each.
        if self.demanding_cookies and not self._cookie_ok(data, header, source):
            return
        try:
            Message.decode(data)
        except UnsupportedCriticalPayload:
            pass  # the IKE SA answers it
        except RemoteProtocolError:
            self.dropped += 1
            return
        refused = self._refusal(peer_key(source.address))
        if refused is not None:
            self.counts[refused] += 1
            self.dropped += 1
            return
        sa = ResponderSa.answering(self.config, random=self._random, spis=self._spis, local=local, peer=source,
                             spi_i=header.spi_i, spi_r=self._spis.ike(), now=now)
        self._register(sa, peer_key(source.address), key)
        sa.receive(data, now, source)
        if sa.state is State.EXPECT_IKE_SA_INIT:
            sa.abandon(now, "IKE_SA_INIT not taken")
        self._collect(sa, now)

    def _refusal(self, address: PeerKey) -> str | None:
        """The limit a new IKE SA from `address` would break, if any."""
        limits = self.config.limits
        if len(self._half_open) >= limits.max_half_open:
            return REFUSED_MAX_HALF_OPEN
        if self._half_open_per_peer[address] >= limits.max_half_open_per_peer:
            return REFUSED_MAX_HALF_OPEN_PER_PEER
        if len(self._sas) >= limits.max_sas:
            return REFUSED_MAX_SAS
        return None

    def _cookie_ok(self, data: bytes, header: IkeHeader, source: Endpoint) -> bool:
        """With cookies demanded: whether the request carries a valid one. If not, answer with a fresh COOKIE (no
        state is kept) or, for a request that cannot be answered (no Nonce, a broken payload chain), drop it."""
        scanned = cookie_and_nonce(data)
        if scanned is None:
            self.dropped += 1
            return False
        offered, nonce = scanned
        if offered is not None and verify_cookie(self._cookie_secrets, offered, nonce, source.address, header.spi_i):
            return True
        cookie = make_cookie(self._cookie_secrets, nonce, source.address, header.spi_i)
        self._answer_stateless(header, Notify(NotifyType.COOKIE, cookie), source)
        self.cookies_sent += 1
        return False

    # --- answers without an IKE SA ---

    def _answer_stateless(self, header: IkeHeader, notify: Notify, source: Endpoint) -> None:
        answer = IkeHeader(header.spi_i, header.spi_r, header.exchange, HeaderFlag.RESPONSE, header.message_id)
        self._outbox.append((Message(answer, (notify,)).encode(), source, self._receiving_on))

    def _take_token(self, now: float) -> bool:
        rate = self.config.limits.invalid_spi_answers_per_second
        if self._tokens_at is not None:
            self._tokens = min(float(rate), self._tokens + max(0.0, now - self._tokens_at) * rate)
        self._tokens_at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def _answer_invalid_spi(self, header: IkeHeader, source: Endpoint, now: float) -> None:
        """RFC 7296 2.21.4: an unprotected INVALID_IKE_SPI with the SPIs, exchange and message ID copied."""
        if not self._take_token(now):
            self.dropped += 1
            return
        self._answer_stateless(header, Notify(NotifyType.INVALID_IKE_SPI), source)

    def _answer_major_version(self, data: bytes, source: Endpoint, now: float) -> None:
        """RFC 7296 2.5: an IKE_SA_INIT request of a higher major version gets INVALID_MAJOR_VERSION, in a version 2
        header (rate-limited like INVALID_IKE_SPI); anything else of another version is dropped."""
        if (len(data) < IKE_HEADER_SIZE or data[_EXCHANGE_OFFSET] != ExchangeType.IKE_SA_INIT
                or data[_FLAGS_OFFSET] & HeaderFlag.RESPONSE or not self._take_token(now)):
            self.dropped += 1
            return
        header = IkeHeader(data[:IKE_SPI_SIZE], data[IKE_SPI_SIZE:2 * IKE_SPI_SIZE], ExchangeType.IKE_SA_INIT,
                           HeaderFlag.NONE,
                           int.from_bytes(data[_MESSAGE_ID_OFFSET:_MESSAGE_ID_OFFSET + 4], "big"))
        self._answer_stateless(header, Notify(NotifyType.INVALID_MAJOR_VERSION), source)

    # --- bookkeeping ---

    def _register(self, sa: ResponderSa, address: PeerKey, init_key: tuple[Address, bytes] | None) -> None:
        spi = sa.own_spi
        self._sas[spi] = sa
        self._address[spi] = address
        self._by_peer.setdefault(address, set()).add(spi)
        if init_key is not None:
            self._by_init[init_key] = sa
            self._init_key[spi] = init_key

    def _unregister(self, spi: bytes) -> None:
        sa = self._sas.pop(spi, None)
        if sa is None:
            return
        address = self._address.pop(spi)
        self._by_peer[address].discard(spi)
        if not self._by_peer[address]:
            del self._by_peer[address]
        self._set_half_open(spi, address, False)
        init_key = self._init_key.pop(spi, None)
        if init_key is not None and self._by_init.get(init_key) is sa:
            del self._by_init[init_key]
        if sa.peer_id is not None and sa.peer_id in self._by_identity:
            self._by_identity[sa.peer_id].discard(spi)
            if not self._by_identity[sa.peer_id]:
                del self._by_identity[sa.peer_id]

    def _set_half_open(self, spi: bytes, address: PeerKey, half_open: bool) -> None:
        if half_open and spi not in self._half_open:
            self._half_open.add(spi)
            self._half_open_per_peer[address] += 1
        elif not half_open and spi in self._half_open:
            self._half_open.discard(spi)
            self._half_open_per_peer[address] -= 1
            if not self._half_open_per_peer[address]:
                del self._half_open_per_peer[address]

    def _collect(self, sa: ResponderSa, now: float) -> None:
        """Move the SA's datagrams and events out, follow its state in the indexes, adopt a rekeyed successor."""
        spi = sa.own_spi
        self._outbox += [(data, peer, sa.local) for data, peer in sa.datagrams_to_send()]
        established: list[IkeSaEstablished] = []
        while (event := sa.next_event()) is not None:
            self._events.append(event)
            if isinstance(event, IkeSaEstablished):
                established.append(event)
        successor, sa.successor = sa.successor, None
        if successor is not None and successor.state is not State.DELETED:
            self._register(successor, self._address[spi], None)
            credential = successor.peer_credential
            if successor.peer_id is not None and credential is not None and credential.authenticated:
                self._by_identity.setdefault(successor.peer_id, set()).add(successor.own_spi)
            self._collect(successor, now)
            self._keep_per_peer_limit(successor, now)  # a rekey is one more SA until the old one is deleted
        if sa.state is State.DELETED:
            self._unregister(spi)
            return
        self._set_half_open(spi, self._address[spi], sa.state in (State.EXPECT_IKE_AUTH, State.SIGNING))
        for event in established:
            self._initial_contact(sa, event, now)
            self._keep_per_peer_limit(sa, now)
        deadline = sa.get_timer()
        if deadline is not None:
            heapq.heappush(self._timers, (deadline, next(self._sequence), spi))
            if len(self._timers) > 4 * len(self._sas) + 1024:
                self._rebuild_timers()

    def _initial_contact(self, sa: ResponderSa, event: IkeSaEstablished, now: float) -> None:
        """RFC 7296 2.4: INITIAL_CONTACT from an authenticated identity makes its other IKE SAs stale. The identity
        of an unauthenticated peer (NULL, or a raw key or certificate we did not pin) names no one, so it never
        removes another peer's SA."""
        if not event.credential.authenticated:
            return
        others = self._by_identity.setdefault(event.peer_id, set())
        if event.initial_contact:
            for spi in sorted(others - {sa.own_spi}):
                other = self._sas.get(spi)
                if other is not None:
                    other.abandon(now, "INITIAL_CONTACT from the same identity")
                    self._collect(other, now)
        self._by_identity.setdefault(event.peer_id, set()).add(sa.own_spi)

    def _keep_per_peer_limit(self, newest: ResponderSa, now: float) -> None:
        """Past `max_sas_per_peer` established SAs from one address, the one heard from least recently goes (see
        `Limits`), rekeyed ones waiting for their deletion first; the newest is never the one."""
        address = self._address.get(newest.own_spi)
        if address is None:
            return
        spis = self._by_peer.get(address, set())
        established = [sa for spi in spis if (sa := self._sas[spi]).established and sa is not newest]
        excess = len(established) + 1 - self.config.limits.max_sas_per_peer
        oldest_first = sorted(established, key=lambda sa: (sa.state is not State.EXPECT_DELETE, sa.last_heard,
                                                             sa.own_spi))
        for sa in oldest_first[:max(0, excess)]:
            sa.delete_without_waiting(now, "replaced by a newer IKE SA from the same address "
                                           "(limits.max_sas_per_peer)")
            self.counts[REPLACED_MAX_SAS_PER_PEER] += 1
            self._collect(sa, now)

    def _rebuild_timers(self) -> None:
        self._timers = [(deadline, next(self._sequence), spi) for spi, sa in self._sas.items()
                        if (deadline := sa.get_timer()) is not None]
        heapq.heapify(self._timers)
