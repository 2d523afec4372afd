"""The IKE SA state machine (RFC 7296), sans-I/O: the part both roles share, and the one table of transitions.

An `IkeSa` is one IKE SA with one peer. Bytes and the current time go in (`receive`, `handle_timer`, and the
commands that start exchanges); datagrams (`datagrams_to_send`) and typed events (`next_event`) come out; the next
moment it wants to be woken is `get_timer`. It never reads a clock, a socket or a global random source: time is an
argument, randomness an injected `RandomSource`, SPIs come from an injected `SpiAllocator`.

The legal transitions are data, in one table, `TRANSITIONS`, keyed by (state, exchange type, is_request) for every
message received. Each entry names the side effect (a handler method) and the next state for each outcome the
handler can have. A message with no entry is a protocol error; it never falls through. States are named after what
is expected next. Timeouts (half-open, retransmission, rekeyed linger) all lead to DELETED.

Before the table is consulted, the message ID rules of RFC 7296 2.3 apply (window size 1): a request with the ID
of the last one answered gets the cached response again, byte for byte; any other ID outside the window, and any
response that does not answer our outstanding request, is dropped. A protected message whose ICV does not verify is
dropped without an answer and changes nothing. Errors the peer made are answered with their Notify type where the
RFC allows: inside SK once the message authenticated; in IKE_SA_INIT only NO_PROPOSAL_CHOSEN, INVALID_KE_PAYLOAD,
UNSUPPORTED_CRITICAL_PAYLOAD (2.21.1), anything else there is dropped. Handlers check everything before they change
anything, so a refused request leaves the SA as it was (but for the message ID, which the answered request used).

Each role is a subclass with its own exchanges: `ResponderSa` (responder_sa.py) answers IKE_SA_INIT, IKE_AUTH and
CREATE_CHILD_SA; `InitiatorSa` (initiator_sa.py) requests them (for tests, benchmarks and the interop ladder). Here
is what both do: message IDs, protection, retransmission, liveness, INFORMATIONAL both ways (deletes, liveness
checks, error notifies) and the hand-over to a rekeyed IKE SA. The table names each handler by method name and
covers both roles; an SA whose class lacks the handler does not take that message (a protocol error, as for a
message with no entry). Exchanges asked for while a request is outstanding wait in a queue of named `Command`s,
visible in `IkeSaView.queued`.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import ClassVar, Final, Self, TypeVar

from .config import Endpoint, Identity, InitiatorConfig, Mode, PeerCredential, ResponderConfig
from .constants import ExchangeType, HeaderFlag, NotifyType, ProtocolId
from .crypto import (
    ChildKeys,
    ChildSuite,
    DiffieHellman,
    IkeKeys,
    IkeSuite,
    RandomSource,
    SkCipher,
    encrypt_message,
    nat_detection_hash,
)
from .errors import (
    AuthenticationFailed,
    DecodeError,
    ErrorNotified,
    IntegrityError,
    LocalProtocolError,
    RemoteProtocolError,
)
from .events import (
    ChildSaEstablished,
    ChildSaKeys,
    Event,
    IkeSaRekeyed,
    NatStatus,
    PeerAlive,
    PeerErrorNotified,
    ProtocolErrorEvent,
    SaDeleted,
)
from .payloads import (
    IKE_SPI_SIZE,
    Delete,
    Encrypted,
    IkeHeader,
    Message,
    Notify,
    Payload,
    TrafficSelector,
    decode_hash_algorithms,
    decode_payloads,
    encode_hash_algorithms,
)
from .wire import Reader

ZERO_SPI: Final = bytes(IKE_SPI_SIZE)
ESP_SPI_SIZE: Final = 4
MAX_INIT_RETRIES: Final = 4  # COOKIE and INVALID_KE_PAYLOAD round trips the initiator accepts
MAX_COOKIE_SIZE: Final = 64  # RFC 7296 2.6: 1 to 64 octets

UNPROTECTED_ANSWERS: Final = frozenset({
    NotifyType.NO_PROPOSAL_CHOSEN, NotifyType.INVALID_KE_PAYLOAD, NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD,
    NotifyType.INVALID_MAJOR_VERSION, NotifyType.COOKIE,
})
"""The only Notify types sent without protection in answer to IKE_SA_INIT (RFC 7296 2.21.1, 2.5, 2.6). Others,
INVALID_SYNTAX above all, may only go inside an authenticated SK payload (3.10.1)."""


class State(Enum):
    """Named after what is expected next."""

    EXPECT_IKE_SA_INIT = "expect IKE_SA_INIT request"
    EXPECT_IKE_AUTH = "expect IKE_AUTH request"
    SIGNING = "IKE_AUTH request accepted: expect our signature (a deferred signer)"
    EXPECT_IKE_SA_INIT_RESPONSE = "expect IKE_SA_INIT response"
    EXPECT_IKE_AUTH_RESPONSE = "expect IKE_AUTH response"
    ESTABLISHED = "established: expect CREATE_CHILD_SA and INFORMATIONAL"
    EXPECT_DELETE = "rekeyed: expect the deletion of this IKE SA"
    DELETED = "deleted"


class Role(Enum):
    """Which side of the IKE SA we are: the original initiator or the original responder (the I flag)."""

    INITIATOR = "initiator"
    RESPONDER = "responder"


class Outcome(Enum):
    """What a handler did with its message; the table maps it to the next state."""

    DONE = "done"
    RETRY = "retry"  # the initiator sends IKE_SA_INIT again (COOKIE, INVALID_KE_PAYLOAD)
    REKEYED = "rekeyed"  # a new IKE SA took over the Child SAs
    CLOSED = "closed"  # the IKE SA was deleted
    REFUSED = "refused"  # an error: answered with a Notify, or dropped
    WAITING = "waiting"  # the answer needs our signature, asked for with SignatureRequested


# --- records ---

@dataclass(frozen=True)
class ChildSa:
    """What an IKE SA keeps about one of its Child SAs. The keys are not kept: they left in the event."""

    spi_in: bytes
    spi_out: bytes
    suite: ChildSuite
    mode: Mode
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]


@dataclass(frozen=True)
class IkeSaView:
    """A read-only summary of an IKE SA, without keys: for status output and for tests that check nothing moved."""

    state: State
    role: Role
    spi_i: bytes
    spi_r: bytes
    suite: IkeSuite | None
    peer: Endpoint
    peer_id: Identity | None
    peer_auth: int | None
    peer_credential: PeerCredential | None
    children: tuple[ChildSa, ...]
    next_peer_request: int
    next_own_request: int
    outstanding_request: int | None
    cached_response: bytes | None
    queued: tuple[str, ...] = ()
    """Exchanges asked for and waiting for the outstanding one to finish (window size 1), oldest first."""


@dataclass(frozen=True)
class Inbound:
    """A received message after decoding (and decryption): what handlers see."""

    header: IkeHeader
    data: bytes
    payloads: tuple[Payload, ...]
    source: Endpoint
    protected: bool
    context: RequestContext | None = None
    """For a response: what our request asked."""

    def all(self, kind: type[P]) -> tuple[P, ...]:
        return tuple([p for p in self.payloads if isinstance(p, kind)])  # a list: cheaper than a generator

    def one(self, kind: type[P], what: str) -> P:
        found = self.all(kind)
        if len(found) != 1:
            raise RemoteProtocolError(f"{exchange_name(self.header.exchange)}: {len(found)} {what} payloads, "
                                      "expected one")
        return found[0]

    def optional(self, kind: type[P], what: str) -> P | None:
        found = self.all(kind)
        if len(found) > 1:
            raise RemoteProtocolError(f"{exchange_name(self.header.exchange)}: {len(found)} {what} payloads, "
                                      "expected one")
        return found[0] if found else None

    def notifies(self, notify_type: int) -> tuple[Notify, ...]:
        return tuple(n for n in self.all(Notify) if n.notify_type == notify_type)

    def has(self, notify_type: int) -> bool:
        return bool(self.notifies(notify_type))

    def error_notify(self) -> Notify | None:
        for notify in self.all(Notify):
            if notify.is_error:
                return notify
        return None


P = TypeVar("P", bound=Payload)


# --- what we asked, for the responses ---

@dataclass(frozen=True)
class Command:
    """An exchange asked for (delete, rekey, ...) that starts once no request of ours is outstanding."""

    name: str
    run: Callable[[], object]

class RequestContext:
    """What one of our requests asked, kept until its response comes (and the SPIs it reserved)."""

@dataclass(frozen=True)
class InitRequest(RequestContext):
    dh: DiffieHellman
    nonce: bytes
    cookie: bytes | None
    retries: int


@dataclass(frozen=True)
class AuthRequest(RequestContext):
    esp_spi: bytes
    offered: tuple[ChildSuite, ...]
    mode: Mode
    tsi: tuple[TrafficSelector, ...]
    tsr: tuple[TrafficSelector, ...]


@dataclass(frozen=True)
class ChildRequest(RequestContext):
    esp_spi: bytes
    offered: tuple[ChildSuite, ...]
    nonce: bytes
    dh: DiffieHellman | None
    mode: Mode
    tsi: tuple[TrafficSelector, ...]
    tsr: tuple[TrafficSelector, ...]
    rekey_of: ChildSa | None


@dataclass(frozen=True)
class IkeRekeyRequest(RequestContext):
    new_spi_i: bytes
    offered: tuple[IkeSuite, ...]
    nonce: bytes
    dh: DiffieHellman


@dataclass(frozen=True)
class DeleteIkeRequest(RequestContext):
    reason: str


@dataclass(frozen=True)
class DeleteChildRequest(RequestContext):
    spi_in: bytes


@dataclass(frozen=True)
class LivenessRequest(RequestContext):
    pass


@dataclass
class Pending:
    """Our outstanding request (window size 1) and its retransmission schedule."""

    message_id: int
    exchange: int
    data: bytes
    context: RequestContext
    tries: int
    deadline: float


def allocated(context: RequestContext) -> tuple[bytes, ...]:
    """SPIs a request reserved, to give back when its exchange fails."""
    if isinstance(context, AuthRequest | ChildRequest):
        return (context.esp_spi,)
    if isinstance(context, IkeRekeyRequest):
        return (context.new_spi_i,)
    return ()


class SpiAllocator:
    """Hands out SPIs unique among those it has handed out and not released: 8-octet IKE SPIs (never zero) and
    4-octet ESP SPIs (never below 256, RFC 4303 2.1). One allocator is shared by all the SAs of a responder."""

    ATTEMPTS: ClassVar[int] = 64

    def __init__(self, random: RandomSource) -> None:
        self._random = random
        self._in_use: set[bytes] = set()

    def _draw(self, size: int, minimum: int) -> bytes:
        for _ in range(self.ATTEMPTS):
            spi = self._random(size)
            if len(spi) == size and int.from_bytes(spi, "big") >= minimum and spi not in self._in_use:
                self._in_use.add(spi)
                return spi
        raise LocalProtocolError(f"the random source gave no fresh {size}-octet SPI in {self.ATTEMPTS} draws")

    def ike(self) -> bytes:
        return self._draw(IKE_SPI_SIZE, 1)

    def esp(self) -> bytes:
        return self._draw(ESP_SPI_SIZE, 256)

    def release(self, spi: bytes) -> None:
        self._in_use.discard(spi)

    def __contains__(self, spi: object) -> bool:
        return spi in self._in_use

    def __len__(self) -> int:
        return len(self._in_use)


def peek_header(data: bytes) -> IkeHeader:
    """The IKE header of a datagram, checked against the datagram's length, without decoding the payloads. Raises
    DecodeError or InvalidMajorVersion."""
    r = Reader(data)
    header, _, length = IkeHeader.decode(r)
    if length != len(data):
        raise DecodeError("IKE header", "length", f"says {length} octets, the datagram has {len(data)}")
    return header


def exchange_name(exchange: int) -> str:
    try:
        return ExchangeType(exchange).name
    except ValueError:
        return f"exchange {exchange}"


def announced_hashes(config: ResponderConfig | InitiatorConfig) -> bytes:
    """Our SIGNATURE_HASH_ALGORITHMS (RFC 7427 section 4): the hashes of the schemes we verify, and so accept."""
    return encode_hash_algorithms(sorted({scheme.hash_algorithm for scheme in config.signature_schemes}))


def peer_hash_algorithms(inbound: Inbound) -> tuple[int, ...] | None:
    """The hashes the peer's SIGNATURE_HASH_ALGORITHMS lists (every such notify, in order), or None without one.
    Numbers we do not know stay as they came; a list of odd length is a DecodeError."""
    notifies = inbound.notifies(NotifyType.SIGNATURE_HASH_ALGORITHMS)
    if not notifies:
        return None
    return tuple(h for notify in notifies for h in decode_hash_algorithms(notify.data))


def notify_name(notify_type: int) -> str:
    try:
        return f"{NotifyType(notify_type).name} ({notify_type})"
    except ValueError:
        return f"error notify {notify_type}"


def peer_identity(id_type: int, data: bytes) -> Identity:
    """The peer's identity from its ID payload; an ID that cannot name anyone fails authentication."""
    try:
        return Identity(id_type, data)
    except LocalProtocolError:
        raise AuthenticationFailed(f"ID: type {id_type} with {len(data)} octets of data names no one") from None


def child_keys(keys: ChildKeys, role: Role) -> ChildSaKeys:
    """KEYMAT is ordered initiator-to-responder first (RFC 7296 2.17); we receive what the other side sends."""
    if role is Role.RESPONDER:
        return ChildSaKeys(keys.encr_i, keys.integ_i, keys.encr_r, keys.integ_r)
    return ChildSaKeys(keys.encr_r, keys.integ_r, keys.encr_i, keys.integ_i)


# --- the IKE SA ---

class IkeSa:
    """One IKE SA, either role: what both sides do (message IDs, protection, retransmission, liveness, deletes,
    INFORMATIONAL, the rekey hand-over). The role's own exchanges are in `ResponderSa` (responder_sa.py) and
    `InitiatorSa` (initiator_sa.py)."""

    def __init__(self, role: Role, config: ResponderConfig | InitiatorConfig, *, random: RandomSource,
                 spis: SpiAllocator, local: Endpoint, peer: Endpoint, spi_i: bytes, spi_r: bytes,
                 state: State, now: float) -> None:
        self.role = role
        self._receiving_on = local
        self.state = state
        self.local = local
        self.peer = peer
        self.spi_i = spi_i
        self.spi_r = spi_r
        self._config = config
        self._random = random
        self._spis = spis
        self._now = now
        # negotiated
        self.suite: IkeSuite | None = None
        self._keys: IkeKeys | None = None
        self._in: SkCipher | None = None
        self._out: SkCipher | None = None
        self._ni = b""
        self._nr = b""
        self._init_request = b""  # RealMessage1, as sent by the initiator
        self._init_response = b""  # RealMessage2, as sent by the responder
        self.nat = NatStatus()
        self.peer_id: Identity | None = None
        self.peer_auth: int | None = None
        self.peer_credential: PeerCredential | None = None
        """What the peer proved in IKE_AUTH (responder: pinned key, NULL, raw key, certificate)."""
        self.children: dict[bytes, ChildSa] = {}
        self._established = False
        self.peer_hashes: tuple[int, ...] | None = None
        """The peer's SIGNATURE_HASH_ALGORITHMS from IKE_SA_INIT (RFC 7427); None when it sent none."""
        # message IDs (RFC 7296 2.3, window size 1)
        self._peer_next_id = 0
        self._last_request: bytes | None = None
        self._last_response: bytes | None = None
        self._next_id = 0
        self._pending: Pending | None = None
        self._queue: deque[Command] = deque()
        self._replaced: set[bytes] = set()  # inbound SPIs of Child SAs we answered a rekey of, until deleted
        # timers
        self._half_open_deadline: float | None = None
        self._linger_deadline: float | None = None
        self._liveness_deadline: float | None = None  # ask whether the peer is alive (Timers.liveness)
        self._dead_deadline: float | None = None  # the peer is dead unless heard from by then
        self.last_heard = now
        """When the peer last sent us something authentic (ordering of SAs at a limit; liveness)."""
        self.declared_dead = False
        """Removed because the peer stopped answering (liveness)."""
        # out
        self._events: deque[Event] = deque()
        self._outbox: list[tuple[bytes, Endpoint]] = []
        self.successor: Self | None = None
        self.dropped = 0
        self._close_reason = "deleted by the peer"

    def receive(self, data: bytes, now: float, source: Endpoint | None = None, local: Endpoint | None = None) -> None:
        """Handle one datagram from `source` (the peer's current endpoint when None), received on `local` (ours;
        the SA's when None)."""
        self._now = now
        source = source or self.peer
        self._receiving_on = local or self.local
        if self.state is State.DELETED:
            self.dropped += 1
            return
        try:
            header = peek_header(data)
        except RemoteProtocolError:
            self.dropped += 1
            return
        if not self._addressed_to_us(header):
            self.dropped += 1
            return
        if header.is_response:
            self._receive_response(header, data, source)
        else:
            self._receive_request(header, data, source)
        self._flush_queue()

    def datagrams_to_send(self) -> list[tuple[bytes, Endpoint]]:
        """Datagrams to send, each with its destination (responses go where their request came from)."""
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """When `handle_timer` should be called next, if ever."""
        liveness = ((self._liveness_deadline, self._dead_deadline) if self.state is State.ESTABLISHED
                    else (None, None))
        deadlines = [d for d in (self._half_open_deadline, self._linger_deadline, *liveness,
                                 self._pending.deadline if self._pending else None) if d is not None]
        return min(deadlines) if deadlines and self.state is not State.DELETED else None

    def handle_timer(self, now: float) -> None:
        self._now = now
        if self.state is State.DELETED:
            return
        if self._half_open_deadline is not None and now >= self._half_open_deadline:
            self._teardown("no IKE_AUTH request in time (half-open)")
            return
        if self._linger_deadline is not None and now >= self._linger_deadline:
            self._teardown("rekeyed, and the peer did not delete the old IKE SA")
            return
        if self.state is State.ESTABLISHED and self._check_liveness(now):
            return
        pending = self._pending
        if pending is not None and now >= pending.deadline:
            if pending.tries >= self._config.timers.retransmit_tries:
                # a liveness check whose retransmissions ran out before liveness_timeout: dead all the same
                self.declared_dead = self._dead_deadline is not None
                self._teardown(f"no answer to {exchange_name(pending.exchange)} request {pending.message_id} "
                               f"after {pending.tries} sends")
                return
            pending.tries += 1
            pending.deadline = now + self._config.timers.retransmit * 2 ** (pending.tries - 1)
            self._outbox.append((pending.data, self.peer))

    def _check_liveness(self, now: float) -> bool:
        """RFC 7296 2.4: a peer silent for `liveness` is asked (an empty INFORMATIONAL request, or whatever request
        is already outstanding, retransmitted as usual); silent `liveness_timeout` longer, it is dead. True when
        this removed the SA."""
        if self._dead_deadline is not None and now >= self._dead_deadline:
            self.declared_dead = True
            self._teardown(f"dead peer: nothing heard from it for {now - self.last_heard:.0f} s, liveness check "
                           "unanswered")
            return True
        if self._liveness_deadline is not None and now >= self._liveness_deadline:
            self._liveness_deadline = None
            self._dead_deadline = now + self._config.timers.liveness_timeout
            if self._pending is None:  # else the outstanding request, retransmitted as usual, asks
                self.check_liveness(now)
        return False

    def _note_source(self, source: Endpoint) -> None:
        """A new authenticated message: the peer is where it came from (NAT, RFC 7296 2.23), and alive. Copies of
        old messages never come here (anyone on the path could replay them)."""
        self.peer, self.local = source, self._receiving_on
        self._heard()

    def _heard(self) -> None:
        """The peer sent something authentic: it is alive."""
        self.last_heard = self._now
        self._dead_deadline = None
        liveness = self._config.timers.liveness
        self._liveness_deadline = None if liveness is None else self._now + liveness

    def view(self) -> IkeSaView:
        return IkeSaView(self.state, self.role, self.spi_i, self.spi_r, self.suite, self.peer, self.peer_id,
                         self.peer_auth, self.peer_credential, tuple(self.children.values()), self._peer_next_id,
                         self._next_id, self._pending.message_id if self._pending else None, self._last_response,
                         tuple(command.name for command in self._queue))

    @property
    def own_spi(self) -> bytes:
        """The SPI we chose for this IKE SA (how messages to us are recognised)."""
        return self.spi_i if self.role is Role.INITIATOR else self.spi_r

    @property
    def established(self) -> bool:
        return self.state in (State.ESTABLISHED, State.EXPECT_DELETE)

    def delete(self, now: float, reason: str = "deleted locally") -> None:
        """Delete this IKE SA and its Child SAs with an INFORMATIONAL exchange (RFC 7296 1.4.1)."""
        self._now = now
        self._queue.append(Command(f"delete IKE SA ({reason})", lambda: self._request_delete_ike(reason)))
        self._flush_queue()

    def delete_child_sa(self, now: float, spi_in: bytes) -> None:
        """Delete one Child SA (named by our inbound SPI) with an INFORMATIONAL exchange."""
        self._now = now
        if spi_in not in self.children:
            raise LocalProtocolError(f"no Child SA with inbound SPI {spi_in.hex()}")
        self._queue.append(Command(f"delete Child SA 0x{spi_in.hex()}", lambda: self._request_delete_child(spi_in)))
        self._flush_queue()

    def check_liveness(self, now: float) -> None:
        """Send an empty INFORMATIONAL request; its answer is reported as PeerAlive."""
        self._now = now
        self._queue.append(Command("liveness check", lambda: self._send_request(ExchangeType.INFORMATIONAL, (),
                                                                                LivenessRequest())))
        self._flush_queue()

    def abandon(self, now: float, reason: str) -> None:
        """Forget this IKE SA without telling the peer (INITIAL_CONTACT from it, or shutdown)."""
        self._now = now
        if self.state is not State.DELETED:
            self._teardown(reason)

    def delete_without_waiting(self, now: float, reason: str) -> None:
        """Forget this IKE SA now, telling the peer with one INFORMATIONAL request carrying a Delete whose answer is
        not awaited (as charon and pluto do when they must make room): a live peer learns at once that its SAs are
        gone and can start again, instead of at its next exchange. With a request of ours outstanding (window size
        1) no other may be sent, and the SA is forgotten silently, as by `abandon`."""
        self._now = now
        if self.state is State.DELETED:
            return
        if self.established and self._pending is None:
            self._request_delete_ike(reason)  # sent once: the teardown drops it from retransmission
        self._teardown(reason)

    def _addressed_to_us(self, header: IkeHeader) -> bool:
        """The SPIs are ours and the I flag names the peer's role (RFC 7296 3.1)."""
        if header.is_initiator != (self.role is Role.RESPONDER):
            return False
        if header.spi_i != self.spi_i:
            return False
        if header.spi_r == self.spi_r:
            return True
        if header.exchange != ExchangeType.IKE_SA_INIT:
            return False
        if self.role is Role.RESPONDER:  # an IKE_SA_INIT request (or its retransmission) carries a zero SPIr
            return header.spi_r == ZERO_SPI and not header.is_response
        return self.state is State.EXPECT_IKE_SA_INIT_RESPONSE and header.is_response

    def _receive_request(self, header: IkeHeader, data: bytes, source: Endpoint) -> None:
        mid = header.message_id
        if self._last_request is not None and mid == self._peer_next_id - 1:
            self._retransmit_response(data, source)
            return
        if mid != self._peer_next_id:
            self.dropped += 1  # outside the window: never answered (RFC 7296 2.3, 3.10.1 INVALID_MESSAGE_ID)
            return
        transition = self._transition(self.state, header.exchange, REQUEST)
        try:
            inbound = self._open(header, data, source)
        except RemoteProtocolError as exc:  # a plaintext message that does not decode, or an authenticated one
            self._refuse(header, data, source, exc, protected=header.exchange != ExchangeType.IKE_SA_INIT)
            self._finish_refused_request(transition)
            return
        if inbound is None:
            self.dropped += 1
            return
        if inbound.protected and self.state is not State.SIGNING:  # in SIGNING, only its IKE_AUTH again
            self._note_source(source)
        if transition is None:
            unexpected = RemoteProtocolError(f"{exchange_name(header.exchange)} request not expected in "
                                             f"{self.state.name}")
            self._refuse(header, data, source, unexpected, protected=inbound.protected)
            return
        try:
            outcome = self._handle(transition, inbound)
        except RemoteProtocolError as exc:
            self._refuse(header, data, source, exc, protected=inbound.protected)
            outcome = Outcome.REFUSED
        self._enter(transition.next_state[outcome], outcome)

    def _finish_refused_request(self, transition: Transition | None) -> None:
        if transition is not None:
            self._enter(transition.next_state[Outcome.REFUSED], Outcome.REFUSED)

    def _retransmit_response(self, data: bytes, source: Endpoint) -> None:
        """RFC 7296 2.3: a retransmitted request gets the same response again. Only an identical copy, or one that
        authenticates (a peer may re-encrypt), is answered; anything else with that ID is dropped."""
        if self._last_response is None:
            return
        # Answered, but neither an identical copy nor a re-encrypted one is new: anyone on the path could have
        # captured it, so it moves no address (RFC 7296 2.23) and keeps no dead peer alive.
        if data == self._last_request or self._authentic(data):
            self._outbox.append((self._last_response, source))
        else:
            self.dropped += 1

    def _authentic(self, data: bytes) -> bool:
        if self._in is None:
            return False
        try:
            message = Message.decode(data)
        except RemoteProtocolError:
            return False
        sk = message.payloads[-1] if message.payloads else None
        if not isinstance(sk, Encrypted) or len(sk.data) < self._in.iv_size + self._in.icv_size:
            return False
        try:
            self._in.open(data[:len(data) - len(sk.data)], sk.data)
        except IntegrityError:
            return False
        except DecodeError:
            return True  # authenticated, if malformed inside
        return True

    def _receive_response(self, header: IkeHeader, data: bytes, source: Endpoint) -> None:
        pending = self._pending
        if pending is None or header.message_id != pending.message_id or header.exchange != pending.exchange:
            self.dropped += 1
            return
        transition = self._transition(self.state, header.exchange, RESPONSE)
        if transition is None:
            self.dropped += 1
            return
        try:
            inbound = self._open(header, data, source)
        except RemoteProtocolError as exc:
            if header.exchange == ExchangeType.IKE_SA_INIT:
                self.dropped += 1  # unauthenticated and malformed: keep waiting for a real answer
                return
            self._pending = None
            self._release(allocated(pending.context))
            self._report(header, None, f"malformed response: {exc}")
            if transition is not None:
                self._enter(transition.next_state[Outcome.REFUSED], Outcome.REFUSED)
            return
        if inbound is None:
            self.dropped += 1
            return
        self._pending = None
        if inbound.protected:
            self._note_source(source)
        inbound = dataclasses.replace(inbound, context=pending.context)
        try:
            outcome = self._handle(transition, inbound)
        except RemoteProtocolError as exc:
            self._release(allocated(pending.context))
            if isinstance(exc, ErrorNotified):
                self._events.append(PeerErrorNotified(self.spi_i, self.spi_r, header.exchange, exc.received,
                                                      str(exc)))
            else:
                self._report(header, None, str(exc))
            outcome = Outcome.REFUSED
        self._enter(transition.next_state[outcome], outcome)

    def _open(self, header: IkeHeader, data: bytes, source: Endpoint) -> Inbound | None:
        """Decode, and decrypt unless IKE_SA_INIT. None means drop silently: a protected message that does not
        authenticate (bad ICV, broken outside SK, no SK, no keys yet). Errors raised are answerable: the plaintext
        of IKE_SA_INIT, or the inside of an authenticated SK payload."""
        if header.exchange == ExchangeType.IKE_SA_INIT:
            return Inbound(header, data, Message.decode(data).payloads, source, protected=False)
        if self._in is None:
            return None
        try:
            message = Message.decode(data)
        except RemoteProtocolError:
            return None
        sk = message.payloads[-1] if message.payloads else None
        if not isinstance(sk, Encrypted) or len(sk.data) < self._in.iv_size + self._in.icv_size:
            return None
        try:
            plaintext = self._in.open(data[:len(data) - len(sk.data)], sk.data)
        except IntegrityError:
            return None
        payloads = decode_payloads(Reader(plaintext, payload="SK"), sk.first_payload, inner=True)
        return Inbound(header, data, payloads, source, protected=True)

    def _respond(self, inbound: Inbound, payloads: Sequence[Payload], *, protected: bool,
                 spi_r: bytes | None = None, cache: bool = True) -> bytes:
        header = IkeHeader(self.spi_i, self.spi_r if spi_r is None else spi_r, inbound.header.exchange,
                           self._flags(response=True), inbound.header.message_id)
        data = self._encode(header, payloads, protected=protected)
        self._outbox.append((data, inbound.source))
        if cache:
            self._last_request, self._last_response = inbound.data, data
            self._peer_next_id = inbound.header.message_id + 1
        return data

    def _refuse(self, header: IkeHeader, data: bytes, source: Endpoint, exc: RemoteProtocolError, *,
                protected: bool) -> None:
        """Answer a faulty request with its Notify where the RFC allows, else drop it."""
        notify = exc.notify
        if notify is None or (not protected and notify not in UNPROTECTED_ANSWERS):
            self.dropped += 1
            if protected:
                self._report(header, None, str(exc))
            return
        payload = Notify(notify, exc.notify_data)
        inbound = Inbound(header, data, (), source, protected)
        # an unprotected refusal creates no state: SPIr stays zero and nothing is cached
        self._respond(inbound, (payload,), protected=protected, spi_r=None if protected else ZERO_SPI,
                      cache=protected)
        self._report(header, notify, str(exc))

    def _report(self, header: IkeHeader, answered: int | None, detail: str) -> None:
        self._events.append(ProtocolErrorEvent(self.spi_i, self.spi_r, header.exchange, header.message_id,
                                               answered, detail))

    def _flags(self, *, response: bool) -> HeaderFlag:
        flags = HeaderFlag.INITIATOR if self.role is Role.INITIATOR else HeaderFlag.NONE
        return flags | HeaderFlag.RESPONSE if response else flags

    def _encode(self, header: IkeHeader, payloads: Sequence[Payload], *, protected: bool) -> bytes:
        if not protected:
            return Message(header, tuple(payloads)).encode()
        if self._out is None:
            raise LocalProtocolError("no keys to protect a message yet")
        return encrypt_message(self._out, header, payloads, self._random(self._out.iv_size))

    def _send_request(self, exchange: ExchangeType, payloads: Sequence[Payload], context: RequestContext, *,
                      answered_in: State | None = None) -> bytes:
        """Send a request; its answer will be handled in state `answered_in` (the current one by default), which
        must have a table entry for it."""
        if self._transition(answered_in or self.state, exchange, RESPONSE) is None:
            raise LocalProtocolError(f"cannot start {exchange.name} in {self.state.name}")
        return self._transmit(exchange, payloads, context)

    def _transmit(self, exchange: int, payloads: Sequence[Payload], context: RequestContext) -> bytes:
        """Send a request and keep it for retransmission and for its response (window size 1)."""
        if self._pending is not None:
            raise LocalProtocolError("a request is already outstanding (window size 1)")
        header = IkeHeader(self.spi_i, self.spi_r, exchange, self._flags(response=False), self._next_id)
        data = self._encode(header, payloads, protected=exchange != ExchangeType.IKE_SA_INIT)
        self._next_id += 1
        self._pending = Pending(header.message_id, exchange, data, context, 1,
                                 self._now + self._config.timers.retransmit)
        self._outbox.append((data, self.peer))
        return data

    def _flush_queue(self) -> None:
        while self._queue and self._pending is None and self.established:
            self._queue.popleft().run()

    def _transition(self, state: State, exchange: int, is_request: bool) -> Transition | None:
        """The table's entry for a message, if this role takes it (its class has the handler)."""
        transition = TRANSITIONS.get((state, exchange, is_request))
        return transition if transition is not None and hasattr(self, transition.handler) else None

    def _handle(self, transition: Transition, inbound: Inbound) -> Outcome:
        handler: Callable[[Inbound], Outcome] = getattr(self, transition.handler)
        return handler(inbound)

    def _enter(self, state: State, outcome: Outcome) -> None:
        if state is State.DELETED:
            if self.state is not State.DELETED:
                self._teardown(self._close_reason if outcome is Outcome.CLOSED else "refused")
            return
        if state is State.EXPECT_DELETE and self.state is not State.EXPECT_DELETE:
            timers = self._config.timers
            linger = timers.rekeyed_linger
            if timers.liveness is not None:  # a vanished peer's old SA goes no later than its new one would
                linger = min(linger, timers.liveness + timers.liveness_timeout)
            self._linger_deadline = self._now + linger
        if state not in (State.EXPECT_IKE_AUTH, State.SIGNING):  # a signature never handed back ends it too
            self._half_open_deadline = None
        self.state = state

    def _teardown(self, reason: str) -> None:
        """Enter DELETED: report the Child SAs and (if it ever was up) the IKE SA gone, give the SPIs back."""
        for child in list(self.children.values()):
            self._drop_child(child, reason)
        if self._established:
            self._events.append(SaDeleted(self.spi_i, self.spi_r, ProtocolId.IKE, reason))
        if self._pending is not None:
            self._release(allocated(self._pending.context))
        self._pending = None
        self._queue.clear()
        self._spis.release(self.own_spi)
        self._half_open_deadline = self._linger_deadline = self._liveness_deadline = self._dead_deadline = None
        self.state = State.DELETED

    def _drop_child(self, child: ChildSa, reason: str) -> None:
        del self.children[child.spi_in]
        self._replaced.discard(child.spi_in)
        self._spis.release(child.spi_in)
        self._events.append(SaDeleted(self.spi_i, self.spi_r, ProtocolId.ESP, reason, child.spi_in, child.spi_out))

    def _release(self, spis: Sequence[bytes]) -> None:
        for spi in spis:
            self._spis.release(spi)

    def _install_keys(self, suite: IkeSuite, keys: IkeKeys) -> None:
        self.suite, self._keys = suite, keys
        peer_is_initiator = self.role is Role.RESPONDER
        self._in = SkCipher.for_sender(suite, keys, initiator=peer_is_initiator)
        self._out = SkCipher.for_sender(suite, keys, initiator=not peer_is_initiator)

    def _ike_keys(self) -> tuple[IkeSuite, IkeKeys]:
        if self.suite is None or self._keys is None:
            raise LocalProtocolError("the IKE SA has no keys yet")
        return self.suite, self._keys

    def _nat_hashes(self, spi_r: bytes) -> tuple[Notify, Notify]:
        """Our NAT_DETECTION_SOURCE_IP and _DESTINATION_IP notifies (RFC 7296 2.23)."""
        return (Notify(NotifyType.NAT_DETECTION_SOURCE_IP,
                       nat_detection_hash(self.spi_i, spi_r, self.local.address, self.local.port)),
                Notify(NotifyType.NAT_DETECTION_DESTINATION_IP,
                       nat_detection_hash(self.spi_i, spi_r, self.peer.address, self.peer.port)))

    def _nat_status(self, inbound: Inbound, spi_r: bytes) -> NatStatus:
        """Compare the peer's NAT_DETECTION hashes with what we see: its source with the address the message came
        from, its destination with ours. Without the notifies there is no detection (no NAT)."""
        sources = {n.data for n in inbound.notifies(NotifyType.NAT_DETECTION_SOURCE_IP)}
        destinations = {n.data for n in inbound.notifies(NotifyType.NAT_DETECTION_DESTINATION_IP)}
        seen_source = nat_detection_hash(self.spi_i, spi_r, inbound.source.address, inbound.source.port)
        seen_destination = nat_detection_hash(self.spi_i, spi_r, self.local.address, self.local.port)
        return NatStatus(local_behind_nat=bool(destinations) and seen_destination not in destinations,
                         peer_behind_nat=bool(sources) and seen_source not in sources)

    def _child_event(self, child: ChildSa, keys: ChildKeys) -> ChildSaEstablished:
        return ChildSaEstablished(self.spi_i, self.spi_r, child.spi_in, child.spi_out, ProtocolId.ESP, child.mode,
                                  child.suite, child.local_ts, child.remote_ts, self.local, self.peer,
                                  self.nat.detected, child_keys(keys, self.role))

    def _add_child(self, child: ChildSa, event: ChildSaEstablished) -> None:
        self.children[child.spi_in] = child
        self._events.append(event)

    def _hand_over(self: Self, role: Role, spi_i: bytes, spi_r: bytes, suite: IkeSuite, keys: IkeKeys) -> None:
        """Create the rekeyed IKE SA (RFC 7296 2.18): message IDs restart at 0, the Child SAs move over. The one
        who asked for the rekey is the original initiator of the new SA."""
        new = type(self)(role, self._config, random=self._random, spis=self._spis, local=self.local,
                         peer=self.peer, spi_i=spi_i, spi_r=spi_r, state=State.ESTABLISHED, now=self._now)
        new._heard()  # the rekey exchange itself was heard
        new._install_keys(suite, keys)
        new.nat, new.peer_id, new.peer_auth, new._established = self.nat, self.peer_id, self.peer_auth, True
        new.peer_credential = self.peer_credential
        new.children, self.children = self.children, {}
        self.successor = new
        self._events.append(IkeSaRekeyed(self.spi_i, self.spi_r, spi_i, spi_r, suite))

    def _answer_informational(self, inbound: Inbound) -> Outcome:
        deletes = inbound.all(Delete)
        if any(d.protocol == ProtocolId.IKE for d in deletes):
            self._respond(inbound, (), protected=True)  # RFC 7296 1.4.1: an empty response
            return Outcome.CLOSED
        error = inbound.error_notify()
        if error is not None:
            # RFC 7296 2.21.2: an initiator that refuses our AUTH says AUTHENTICATION_FAILED in an INFORMATIONAL
            # request and forgets the SA; so does any error notify here. The SA and its Child SAs go; the answer
            # is empty.
            self._respond(inbound, (), protected=True)
            self._close_reason = (f"the peer reported {notify_name(error.notify_type)} in an INFORMATIONAL request"
                                  + (": it refused our AUTH" if error.notify_type == NotifyType.AUTHENTICATION_FAILED
                                     else ""))
            return Outcome.CLOSED
        gone: list[ChildSa] = []
        for delete in deletes:
            if delete.protocol != ProtocolId.ESP:
                continue  # AH is not negotiated here; unknown SPIs are ignored
            for spi in delete.spis:
                child = next((c for c in self.children.values() if c.spi_out == spi), None)
                if child is not None and child not in gone:
                    gone.append(child)
        answer: tuple[Payload, ...] = ()
        if gone:
            answer = (Delete(ProtocolId.ESP, ESP_SPI_SIZE, tuple(c.spi_in for c in gone)),)
        self._respond(inbound, answer, protected=True)
        for child in gone:
            self._drop_child(child, "deleted by the peer")
        return Outcome.DONE

    def _request_delete_ike(self, reason: str) -> None:
        self._send_request(ExchangeType.INFORMATIONAL, (Delete(ProtocolId.IKE, 0),), DeleteIkeRequest(reason))

    def _request_delete_child(self, spi_in: bytes) -> None:
        if spi_in in self.children:
            self._send_request(ExchangeType.INFORMATIONAL, (Delete(ProtocolId.ESP, ESP_SPI_SIZE, (spi_in,)),),
                               DeleteChildRequest(spi_in))

    def _on_informational_response(self, inbound: Inbound) -> Outcome:
        context = inbound.context
        if isinstance(context, DeleteIkeRequest):
            self._close_reason = context.reason
            return Outcome.CLOSED  # whatever the answer says, the SA is gone (RFC 7296 1.4.1)
        if isinstance(context, DeleteChildRequest):
            child = self.children.get(context.spi_in)
            if child is not None:
                self._drop_child(child, "deleted locally")
            return Outcome.DONE
        if isinstance(context, LivenessRequest):
            self._events.append(PeerAlive(self.spi_i, self.spi_r))
            return Outcome.DONE
        raise LocalProtocolError("INFORMATIONAL response to another kind of request")


# --- the transition table ---

@dataclass(frozen=True)
class Transition:
    """The side effect of a received message and the next state for each outcome of it."""

    handler: str
    """The name of the IkeSa method (of ResponderSa or InitiatorSa for one role's exchanges) that handles it."""
    next_state: Mapping[Outcome, State] = field(default_factory=dict)


S, X = State, ExchangeType
REQUEST, RESPONSE = True, False
SIGNATURE_READY: Final = 0
"""Not an exchange type (those start at 34): our deferred signature arriving, through `complete_signature`."""

TRANSITIONS: Final[Mapping[tuple[State, int, bool], Transition]] = {
    # the responder answers the original initiator's requests
    (S.EXPECT_IKE_SA_INIT, X.IKE_SA_INIT, REQUEST): Transition("_answer_ike_sa_init", {
        Outcome.DONE: S.EXPECT_IKE_AUTH, Outcome.REFUSED: S.DELETED}),
    (S.EXPECT_IKE_AUTH, X.IKE_AUTH, REQUEST): Transition("_answer_ike_auth", {
        Outcome.DONE: S.ESTABLISHED, Outcome.WAITING: S.SIGNING, Outcome.REFUSED: S.DELETED}),
    (S.SIGNING, X.IKE_AUTH, REQUEST): Transition("_still_signing", {
        Outcome.WAITING: S.SIGNING, Outcome.REFUSED: S.SIGNING}),
    (S.SIGNING, SIGNATURE_READY, REQUEST): Transition("_on_signature", {
        Outcome.DONE: S.ESTABLISHED, Outcome.REFUSED: S.DELETED}),
    (S.ESTABLISHED, X.CREATE_CHILD_SA, REQUEST): Transition("_answer_create_child_sa", {
        Outcome.DONE: S.ESTABLISHED, Outcome.REKEYED: S.EXPECT_DELETE, Outcome.REFUSED: S.ESTABLISHED}),
    (S.ESTABLISHED, X.INFORMATIONAL, REQUEST): Transition("_answer_informational", {
        Outcome.DONE: S.ESTABLISHED, Outcome.CLOSED: S.DELETED, Outcome.REFUSED: S.ESTABLISHED}),
    (S.EXPECT_DELETE, X.INFORMATIONAL, REQUEST): Transition("_answer_informational", {
        Outcome.DONE: S.EXPECT_DELETE, Outcome.CLOSED: S.DELETED, Outcome.REFUSED: S.EXPECT_DELETE}),
    # the requester handles the answers to its own requests (a request is only sent where its answer has an entry)
    (S.EXPECT_IKE_SA_INIT_RESPONSE, X.IKE_SA_INIT, RESPONSE): Transition("_on_ike_sa_init_response", {
        Outcome.DONE: S.EXPECT_IKE_AUTH_RESPONSE, Outcome.RETRY: S.EXPECT_IKE_SA_INIT_RESPONSE,
        Outcome.REFUSED: S.DELETED}),
    (S.EXPECT_IKE_AUTH_RESPONSE, X.IKE_AUTH, RESPONSE): Transition("_on_ike_auth_response", {
        Outcome.DONE: S.ESTABLISHED, Outcome.REFUSED: S.DELETED}),
    (S.ESTABLISHED, X.CREATE_CHILD_SA, RESPONSE): Transition("_on_create_child_sa_response", {
        Outcome.DONE: S.ESTABLISHED, Outcome.REKEYED: S.EXPECT_DELETE, Outcome.REFUSED: S.ESTABLISHED}),
    (S.ESTABLISHED, X.INFORMATIONAL, RESPONSE): Transition("_on_informational_response", {
        Outcome.DONE: S.ESTABLISHED, Outcome.CLOSED: S.DELETED, Outcome.REFUSED: S.ESTABLISHED}),
    (S.EXPECT_DELETE, X.INFORMATIONAL, RESPONSE): Transition("_on_informational_response", {
        Outcome.DONE: S.EXPECT_DELETE, Outcome.CLOSED: S.DELETED, Outcome.REFUSED: S.EXPECT_DELETE}),
}
"""(state, exchange type, is_request) -> (side effect, {outcome: next state}). Anything else is a protocol error, and
so is an entry whose handler the SA's class does not have: the other role's exchange."""

