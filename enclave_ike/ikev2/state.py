"""The IKE SA state machine (RFC 7296), sans-I/O.

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

Both roles are here: the responder's handlers answer requests; the initiator's (used by `initiator.py`, for tests
and interop ladders, and by a responder for its own INFORMATIONAL requests) handle responses.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import ClassVar, Final, TypeVar

from .config import Endpoint, Identity, InitiatorConfig, Mode, PeerAuth, PeerCredential, ResponderConfig
from .constants import AuthMethod, CertEncoding, DhGroup, ExchangeType, HeaderFlag, IdType, NotifyType, ProtocolId
from .crypto import (
    ChildKeys,
    ChildSuite,
    DiffieHellman,
    IkeKeys,
    IkeSuite,
    RandomSource,
    SignatureScheme,
    SkCipher,
    choose_scheme,
    derive_child_keys,
    derive_ike_keys,
    encode_signature_auth,
    encrypt_message,
    key_sha256,
    nat_detection_hash,
    null_auth,
    presented_key,
    rekey_skeyseed,
    sign_auth,
    signed_octets,
    skeyseed,
    verify_mac_auth,
    verify_signature_auth,
)
from .errors import (
    AuthenticationFailed,
    ChildSaNotFound,
    DecodeError,
    ErrorNotified,
    IntegrityError,
    InvalidKePayload,
    LocalProtocolError,
    NoProposalChosen,
    RemoteProtocolError,
    TemporaryFailure,
    TsUnacceptable,
)
from .events import (
    ChildSaEstablished,
    ChildSaKeys,
    ChildSaRekeyed,
    Event,
    IkeSaEstablished,
    IkeSaRekeyed,
    NatStatus,
    PeerAlive,
    PeerErrorNotified,
    ProtocolErrorEvent,
    ResponseReceived,
    SaDeleted,
    SignatureRequested,
)
from .negotiation import (
    accept_esp_choice,
    accept_ike_choice,
    check_narrowed,
    esp_offer_suites,
    narrow_to_dns,
    offer_esp,
    offer_ike,
    select_child_suite,
    select_ike_suite,
)
from .payloads import (
    IKE_SPI_SIZE,
    Authentication,
    Certificate,
    Delete,
    Encrypted,
    IdentificationInitiator,
    IdentificationResponder,
    IkeHeader,
    KeyExchange,
    Message,
    Nonce,
    Notify,
    Payload,
    Proposal,
    SecurityAssociation,
    TrafficSelector,
    TrafficSelectorsInitiator,
    TrafficSelectorsResponder,
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
        return tuple(p for p in self.payloads if isinstance(p, kind))

    def one(self, kind: type[P], what: str) -> P:
        found = self.all(kind)
        if len(found) != 1:
            raise RemoteProtocolError(f"{_name(self.header.exchange)}: {len(found)} {what} payloads, expected one")
        return found[0]

    def optional(self, kind: type[P], what: str) -> P | None:
        found = self.all(kind)
        if len(found) > 1:
            raise RemoteProtocolError(f"{_name(self.header.exchange)}: {len(found)} {what} payloads, expected one")
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
class _Signing:
    """An IKE_AUTH request checked and waiting for our signature: what its answer is made of."""

    inbound: Inbound
    peer_id: Identity
    method: int
    credential: PeerCredential
    idr: IdentificationResponder
    scheme: SignatureScheme


@dataclass(frozen=True)
class _InitRequest:
    dh: DiffieHellman
    nonce: bytes
    cookie: bytes | None
    retries: int


@dataclass(frozen=True)
class _AuthRequest:
    esp_spi: bytes
    offered: tuple[ChildSuite, ...]
    mode: Mode
    tsi: tuple[TrafficSelector, ...]
    tsr: tuple[TrafficSelector, ...]


@dataclass(frozen=True)
class _ChildRequest:
    esp_spi: bytes
    offered: tuple[ChildSuite, ...]
    nonce: bytes
    dh: DiffieHellman | None
    mode: Mode
    tsi: tuple[TrafficSelector, ...]
    tsr: tuple[TrafficSelector, ...]
    rekey_of: ChildSa | None


@dataclass(frozen=True)
class _IkeRekeyRequest:
    new_spi_i: bytes
    offered: tuple[IkeSuite, ...]
    nonce: bytes
    dh: DiffieHellman


@dataclass(frozen=True)
class _DeleteIkeRequest:
    reason: str


@dataclass(frozen=True)
class _DeleteChildRequest:
    spi_in: bytes


@dataclass(frozen=True)
class _LivenessRequest:
    pass


@dataclass(frozen=True)
class _CustomRequest:
    pass


RequestContext = (_InitRequest | _AuthRequest | _ChildRequest | _IkeRekeyRequest | _DeleteIkeRequest
                  | _DeleteChildRequest | _LivenessRequest | _CustomRequest)


@dataclass
class _Pending:
    """Our outstanding request (window size 1) and its retransmission schedule."""

    message_id: int
    exchange: int
    data: bytes
    context: RequestContext
    tries: int
    deadline: float


def _allocated(context: RequestContext) -> tuple[bytes, ...]:
    """SPIs a request reserved, to give back when its exchange fails."""
    if isinstance(context, _AuthRequest | _ChildRequest):
        return (context.esp_spi,)
    if isinstance(context, _IkeRekeyRequest):
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


def _name(exchange: int) -> str:
    try:
        return ExchangeType(exchange).name
    except ValueError:
        return f"exchange {exchange}"


def _hash_algorithms(config: ResponderConfig | InitiatorConfig) -> bytes:
    """Our SIGNATURE_HASH_ALGORITHMS (RFC 7427 section 4): the hashes of the schemes we verify, and so accept."""
    return encode_hash_algorithms(sorted({scheme.hash_algorithm for scheme in config.signature_schemes}))


def _peer_hash_algorithms(inbound: Inbound) -> tuple[int, ...] | None:
    """The hashes the peer's SIGNATURE_HASH_ALGORITHMS lists (every such notify, in order), or None without one.
    Numbers we do not know stay as they came; a list of odd length is a DecodeError."""
    notifies = inbound.notifies(NotifyType.SIGNATURE_HASH_ALGORITHMS)
    if not notifies:
        return None
    return tuple(h for notify in notifies for h in decode_hash_algorithms(notify.data))


def _notify_name(notify_type: int) -> str:
    try:
        return f"{NotifyType(notify_type).name} ({notify_type})"
    except ValueError:
        return f"error notify {notify_type}"


def _peer_identity(id_type: int, data: bytes) -> Identity:
    """The peer's identity from its ID payload; an ID that cannot name anyone fails authentication."""
    try:
        return Identity(id_type, data)
    except LocalProtocolError:
        raise AuthenticationFailed(f"ID: type {id_type} with {len(data)} octets of data names no one") from None


def _asks_for_a_null_responder(inbound: Inbound, auth: Authentication) -> bool:
    """An initiator that authenticates with NULL and names ID_NULL as the responder it wants (IDr, RFC 7296 3.5;
    libreswan's opportunistic conns, `rightid=%null`) expects a NULL AUTH back and refuses any identity (RFC 7619
    section 3). A signing responder that also accepts NULL clients answers it so, as an unauthenticated resolver:
    it pinned nothing, so it loses nothing, and coffee-shop clients get ESP from a resolver that trusted clients
    pin. A client naming us by our ID, or naming no one, gets our signature."""
    wanted = inbound.optional(IdentificationResponder, "IDr")
    return wanted is not None and wanted.id_type == IdType.ID_NULL and auth.method == AuthMethod.NULL


def _child_keys(keys: ChildKeys, role: Role) -> ChildSaKeys:
    """KEYMAT is ordered initiator-to-responder first (RFC 7296 2.17); we receive what the other side sends."""
    if role is Role.RESPONDER:
        return ChildSaKeys(keys.encr_i, keys.integ_i, keys.encr_r, keys.integ_r)
    return ChildSaKeys(keys.encr_r, keys.integ_r, keys.encr_i, keys.integ_i)


# --- the IKE SA ---

class IkeSa:
    """One IKE SA. Build it with `IkeSa.responder` (waiting for IKE_SA_INIT) or `IkeSa.initiator` (which sends
    IKE_SA_INIT at once)."""

    def __init__(self, role: Role, config: ResponderConfig | InitiatorConfig, *, random: RandomSource,
                 spis: SpiAllocator, local: Endpoint, peer: Endpoint, spi_i: bytes, spi_r: bytes,
                 state: State) -> None:
        self.role = role
        self.state = state
        self.local = local
        self.peer = peer
        self.spi_i = spi_i
        self.spi_r = spi_r
        self._config = config
        self._random = random
        self._spis = spis
        self._now = 0.0
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
        self._pending: _Pending | None = None
        self._queue: deque[Callable[[], object]] = deque()
        self._signing: _Signing | None = None
        self._signature = b""  # handed back by complete_signature, for _on_signature
        # timers
        self._half_open_deadline: float | None = None
        self._linger_deadline: float | None = None
        self._liveness_deadline: float | None = None  # ask whether the peer is alive (Timers.liveness)
        self._dead_deadline: float | None = None  # the peer is dead unless heard from by then
        self.last_heard = 0.0
        """When the peer last sent us something authentic (ordering of SAs at a limit; liveness)."""
        self.declared_dead = False
        """Removed because the peer stopped answering (liveness)."""
        # out
        self._events: deque[Event] = deque()
        self._outbox: list[tuple[bytes, Endpoint]] = []
        self.successor: IkeSa | None = None
        self.dropped = 0
        self._close_reason = "deleted by the peer"

    # --- construction ---

    @classmethod
    def responder(cls, config: ResponderConfig, *, random: RandomSource, spis: SpiAllocator, local: Endpoint,
                  peer: Endpoint, spi_i: bytes, spi_r: bytes, now: float) -> IkeSa:
        """A new responder SA for an IKE_SA_INIT from `peer` with `spi_i`; `spi_r` is ours (from `spis`)."""
        sa = cls(Role.RESPONDER, config, random=random, spis=spis, local=local, peer=peer, spi_i=spi_i, spi_r=spi_r,
                 state=State.EXPECT_IKE_SA_INIT)
        sa._now = sa.last_heard = now
        return sa

    @classmethod
    def initiator(cls, config: InitiatorConfig, *, random: RandomSource, spis: SpiAllocator, local: Endpoint,
                  peer: Endpoint, now: float) -> IkeSa:
        """A new initiator SA; its IKE_SA_INIT request is ready in `datagrams_to_send`."""
        sa = cls(Role.INITIATOR, config, random=random, spis=spis, local=local, peer=peer, spi_i=spis.ike(),
                 spi_r=ZERO_SPI, state=State.EXPECT_IKE_SA_INIT_RESPONSE)
        sa._now = now
        group = config.first_group if config.first_group is not None else config.ike_suites[0].dh_group
        context = _InitRequest(DiffieHellman.generate(group, random), random(config.nonce_size), None, 0)
        sa._send_init(context)
        return sa

    # --- the sans-I/O interface ---

    def receive(self, data: bytes, now: float, source: Endpoint | None = None) -> None:
        """Handle one datagram from `source` (the peer's current endpoint when None)."""
        self._now = now
        source = source or self.peer
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
                self._teardown(f"no answer to {_name(pending.exchange)} request {pending.message_id} "
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
            if self._pending is None:
                self._send_request(ExchangeType.INFORMATIONAL, (), _LivenessRequest())
        return False

    def _heard(self) -> None:
        """The peer sent something authentic: it is alive."""
        self.last_heard = self._now
        self._dead_deadline = None
        liveness = self._config.timers.liveness
        self._liveness_deadline = None if liveness is None else self._now + liveness

    def view(self) -> IkeSaView:
        return IkeSaView(self.state, self.role, self.spi_i, self.spi_r, self.suite, self.peer, self.peer_id,
                         self.peer_auth, self.peer_credential, tuple(self.children.values()), self._peer_next_id,
                         self._next_id, self._pending.message_id if self._pending else None, self._last_response)

    @property
    def own_spi(self) -> bytes:
        """The SPI we chose for this IKE SA (how messages to us are recognised)."""
        return self.spi_i if self.role is Role.INITIATOR else self.spi_r

    @property
    def established(self) -> bool:
        return self.state in (State.ESTABLISHED, State.EXPECT_DELETE)

    # --- commands: exchanges we start ---

    def delete(self, now: float, reason: str = "deleted locally") -> None:
        """Delete this IKE SA and its Child SAs with an INFORMATIONAL exchange (RFC 7296 1.4.1)."""
        self._now = now
        self._queue.append(lambda: self._request_delete_ike(reason))
        self._flush_queue()

    def delete_child_sa(self, now: float, spi_in: bytes) -> None:
        """Delete one Child SA (named by our inbound SPI) with an INFORMATIONAL exchange."""
        self._now = now
        if spi_in not in self.children:
            raise LocalProtocolError(f"no Child SA with inbound SPI {spi_in.hex()}")
        self._queue.append(lambda: self._request_delete_child(spi_in))
        self._flush_queue()

    def check_liveness(self, now: float) -> None:
        """Send an empty INFORMATIONAL request; its answer is reported as PeerAlive."""
        self._now = now
        self._queue.append(lambda: self._send_request(ExchangeType.INFORMATIONAL, (), _LivenessRequest()))
        self._flush_queue()

    def send_custom_request(self, now: float, exchange: ExchangeType, payloads: Sequence[Payload]) -> None:
        """Send `payloads` protected in a request of `exchange`; the answer comes back as ResponseReceived. For tests
        and diagnostics: nothing is checked, and nothing but the answer is processed."""
        self._now = now
        self._queue.append(lambda: self._send_request(exchange, tuple(payloads), _CustomRequest()))
        self._flush_queue()

    def create_child_sa(self, now: float, *, esp_suites: Sequence[ChildSuite] | None = None,
                        mode: Mode | None = None) -> None:
        """Ask for another Child SA (initiator policy only): CREATE_CHILD_SA, with PFS when the first suite has a
        group."""
        self._now = now
        config = self._initiator_config()
        suites = tuple(esp_suites or config.esp_suites)
        self._queue.append(lambda: self._request_child(suites, mode or config.mode, None))
        self._flush_queue()

    def rekey_child_sa(self, now: float, spi_in: bytes) -> None:
        """Rekey a Child SA (RFC 7296 2.8): on success the old one is deleted."""
        self._now = now
        config = self._initiator_config()
        old = self.children.get(spi_in)
        if old is None:
            raise LocalProtocolError(f"no Child SA with inbound SPI {spi_in.hex()}")
        self._queue.append(lambda: self._request_child(config.esp_suites, old.mode, old))
        self._flush_queue()

    def rekey(self, now: float, *, ike_suites: Sequence[IkeSuite] | None = None) -> None:
        """Rekey this IKE SA (RFC 7296 2.18): on success `successor` holds the new one and this one is deleted."""
        self._now = now
        config = self._initiator_config()
        suites = tuple(ike_suites or config.ike_suites)
        self._queue.append(lambda: self._request_ike_rekey(suites))
        self._flush_queue()

    def complete_signature(self, now: float, signature: bytes) -> None:
        """Our signature for the SignatureRequested this SA asked for: the IKE_AUTH answer goes out."""
        self._now = now
        if self.state is not State.SIGNING or self._signing is None:
            raise LocalProtocolError(f"no signature is awaited in {self.state.name}")
        self._signature = signature
        transition = TRANSITIONS[(State.SIGNING, SIGNATURE_READY, REQUEST)]
        try:
            outcome = transition.handler(self, self._signing.inbound)
        except RemoteProtocolError as exc:
            header = self._signing.inbound.header
            self._refuse(header, self._signing.inbound.data, self._signing.inbound.source, exc, protected=True)
            outcome = Outcome.REFUSED
        self._signing, self._signature = None, b""
        self._enter(transition.next_state[outcome], outcome)
        self._flush_queue()

    def fail_signature(self, now: float, reason: str) -> None:
        """The signer could not sign: the IKE SA goes unanswered (the initiator's own timeout ends it there)."""
        self._now = now
        if self.state is State.SIGNING:
            self._signing = None
            self._teardown(f"our signer failed: {reason}")

    def abandon(self, now: float, reason: str) -> None:
        """Forget this IKE SA without telling the peer (INITIAL_CONTACT from it, or shutdown)."""
        self._now = now
        if self.state is not State.DELETED:
            self._teardown(reason)

    # --- receiving ---

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
        transition = TRANSITIONS.get((self.state, header.exchange, True))
        try:
            inbound = self._open(header, data, source)
        except RemoteProtocolError as exc:  # a plaintext message that does not decode, or an authenticated one
            self._refuse(header, data, source, exc, protected=header.exchange != ExchangeType.IKE_SA_INIT)
            self._finish_refused_request(transition)
            return
        if inbound is None:
            self.dropped += 1
            return
        if transition is None:
            unexpected = RemoteProtocolError(f"{_name(header.exchange)} request not expected in {self.state.name}")
            self._refuse(header, data, source, unexpected, protected=inbound.protected)
            return
        try:
            outcome = transition.handler(self, inbound)
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
        if data == self._last_request:  # answered, but a copy proves nothing: anyone on the path could replay it
            self._outbox.append((self._last_response, source))
        elif self._authentic(data):
            self._heard()
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
        custom = isinstance(pending.context, _CustomRequest)  # diagnostics, outside the table
        transition = TRANSITIONS.get((self.state, header.exchange, False))
        if transition is None and not custom:
            self.dropped += 1
            return
        try:
            inbound = self._open(header, data, source)
        except RemoteProtocolError as exc:
            if header.exchange == ExchangeType.IKE_SA_INIT:
                self.dropped += 1  # unauthenticated and malformed: keep waiting for a real answer
                return
            self._pending = None
            self._release(_allocated(pending.context))
            self._report(header, None, f"malformed response: {exc}")
            if transition is not None:
                self._enter(transition.next_state[Outcome.REFUSED], Outcome.REFUSED)
            return
        if inbound is None:
            self.dropped += 1
            return
        self._pending = None
        inbound = dataclasses.replace(inbound, context=pending.context)
        if transition is None:
            self._on_custom_response(inbound)
            return
        try:
            outcome = transition.handler(self, inbound)
        except RemoteProtocolError as exc:
            self._release(_allocated(pending.context))
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
        self.peer = source  # authenticated: the peer is where this came from (NAT, RFC 7296 2.23)
        self._heard()
        payloads = decode_payloads(Reader(plaintext, payload="SK"), sk.first_payload, inner=True)
        return Inbound(header, data, payloads, source, protected=True)

    # --- answering ---

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

    # --- requesting ---

    def _send_request(self, exchange: ExchangeType, payloads: Sequence[Payload], context: RequestContext, *,
                      answered_in: State | None = None) -> bytes:
        """Send a request; its answer will be handled in state `answered_in` (the current one by default), which
        must have a table entry for it."""
        if self._pending is not None:
            raise LocalProtocolError("a request is already outstanding (window size 1)")
        if (answered_in or self.state, exchange, False) not in TRANSITIONS and not isinstance(context, _CustomRequest):
            raise LocalProtocolError(f"cannot start {exchange.name} in {self.state.name}")
        header = IkeHeader(self.spi_i, self.spi_r, exchange, self._flags(response=False), self._next_id)
        data = self._encode(header, payloads, protected=exchange != ExchangeType.IKE_SA_INIT)
        self._next_id += 1
        self._pending = _Pending(header.message_id, exchange, data, context, 1,
                                 self._now + self._config.timers.retransmit)
        self._outbox.append((data, self.peer))
        return data

    def _flush_queue(self) -> None:
        while self._queue and self._pending is None and self.established:
            self._queue.popleft()()

    # --- state changes ---

    def _enter(self, state: State, outcome: Outcome) -> None:
        if state is State.DELETED:
            if self.state is not State.DELETED:
                self._teardown(self._close_reason if outcome is Outcome.CLOSED else "refused")
            return
        if state is State.EXPECT_DELETE and self.state is not State.EXPECT_DELETE:
            self._linger_deadline = self._now + self._config.timers.rekeyed_linger
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
            self._release(_allocated(self._pending.context))
        self._pending = None
        self._queue.clear()
        self._spis.release(self.own_spi)
        self._half_open_deadline = self._linger_deadline = self._liveness_deadline = self._dead_deadline = None
        self.state = State.DELETED

    def _drop_child(self, child: ChildSa, reason: str) -> None:
        del self.children[child.spi_in]
        self._spis.release(child.spi_in)
        self._events.append(SaDeleted(self.spi_i, self.spi_r, ProtocolId.ESP, reason, child.spi_in, child.spi_out))

    def _release(self, spis: Sequence[bytes]) -> None:
        for spi in spis:
            self._spis.release(spi)

    # --- keys ---

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

    # --- responder: IKE_SA_INIT ---

    def _responder_config(self) -> ResponderConfig:
        if not isinstance(self._config, ResponderConfig):
            raise LocalProtocolError("this IKE SA runs an initiator policy")
        return self._config

    def _initiator_config(self) -> InitiatorConfig:
        if not isinstance(self._config, InitiatorConfig):
            raise LocalProtocolError("this IKE SA runs a responder policy, which cannot start this exchange")
        return self._config

    def _answer_ike_sa_init(self, inbound: Inbound) -> Outcome:
        config = self._responder_config()
        if inbound.header.message_id != 0:
            raise RemoteProtocolError("IKE_SA_INIT: message ID must be 0")
        sa = inbound.one(SecurityAssociation, "SA")
        ke = inbound.one(KeyExchange, "KE")
        ni = inbound.one(Nonce, "Nonce").data
        proposal, suite = select_ike_suite(sa, config.ike_suites, ke_group=ke.group, spi_size=0)
        if len(ni) < suite.prf.key_size // 2:
            raise RemoteProtocolError(f"Nonce: {len(ni)} octets, less than half the PRF key (RFC 7296 2.10)")
        dh = DiffieHellman.generate(suite.dh_group, self._random)
        shared = dh.shared_secret(ke.data)
        nr = self._random(config.nonce_size)
        nat = self._nat_status(inbound, ZERO_SPI)
        peer_hashes = _peer_hash_algorithms(inbound)
        keys = derive_ike_keys(suite, skeyseed(suite.prf, ni, nr, shared), ni, nr, self.spi_i, self.spi_r)
        chosen = Proposal(proposal.number, ProtocolId.IKE, b"", suite.transforms())
        payloads: list[Payload] = [SecurityAssociation((chosen,)), KeyExchange(suite.dh_group, dh.public_key),
                                   Nonce(nr), *self._nat_hashes(self.spi_r),
                                   Notify(NotifyType.SIGNATURE_HASH_ALGORITHMS, _hash_algorithms(config))]
        # commit
        self._install_keys(suite, keys)
        self._ni, self._nr, self.nat, self.peer_hashes = ni, nr, nat, peer_hashes
        self._init_request = inbound.data
        self.peer = inbound.source
        self._init_response = self._respond(inbound, payloads, protected=False)
        self._half_open_deadline = self._now + config.timers.half_open
        return Outcome.DONE

    # --- responder: IKE_AUTH ---

    def _answer_ike_auth(self, inbound: Inbound) -> Outcome:
        config = self._responder_config()
        suite, keys = self._ike_keys()
        idi = inbound.one(IdentificationInitiator, "IDi")
        auth = inbound.optional(Authentication, "AUTH")
        if auth is None:
            raise AuthenticationFailed("IKE_AUTH: no AUTH payload (EAP is not offered here)")
        peer_id = _peer_identity(idi.id_type, idi.data)
        octets = signed_octets(suite.prf, self._init_request, self._nr, keys.sk_pi, idi.encode())
        credential = self._verify_initiator(config, inbound, peer_id, auth, octets)
        anonymous_both_ways = _asks_for_a_null_responder(inbound, auth) and PeerAuth.NULL in config.anonymous
        ours = Identity.null() if anonymous_both_ways else config.local_id
        idr = IdentificationResponder(ours.id_type, ours.data)
        our_octets = signed_octets(suite.prf, self._init_response, self._ni, keys.sk_pr, idr.encode())
        if config.signer is None or anonymous_both_ways:
            our_auth = Authentication(AuthMethod.NULL, null_auth(suite.prf, keys.sk_pr, our_octets))
            return self._finish_ike_auth(inbound, peer_id, auth.method, credential, idr, our_auth)
        # RFC 7427: a hash the peer listed, or AUTHENTICATION_FAILED when our key can make none of them
        scheme = choose_scheme(config.signer, self.peer_hashes)
        if config.signer.deferred:
            self._signing = _Signing(inbound, peer_id, auth.method, credential, idr, scheme)
            self._events.append(SignatureRequested(self.spi_i, self.spi_r, our_octets, scheme))
            return Outcome.WAITING
        our_auth = sign_auth(config.signer, our_octets, scheme)
        return self._finish_ike_auth(inbound, peer_id, auth.method, credential, idr, our_auth)

    def _on_signature(self, inbound: Inbound) -> Outcome:
        """Our signature came (complete_signature): answer the IKE_AUTH request that waited for it."""
        signing = self._signing
        if signing is None:
            raise LocalProtocolError("no signature is awaited")
        our_auth = Authentication(AuthMethod.DIGITAL_SIGNATURE, encode_signature_auth(signing.scheme,
                                                                                     self._signature))
        return self._finish_ike_auth(inbound, signing.peer_id, signing.method, signing.credential, signing.idr,
                                     our_auth)

    def _still_signing(self, inbound: Inbound) -> Outcome:
        """A retransmitted IKE_AUTH request while our signature is on its way: its answer is not made yet."""
        self.dropped += 1
        return Outcome.WAITING

    def _finish_ike_auth(self, inbound: Inbound, peer_id: Identity, method: int, credential: PeerCredential,
                         idr: IdentificationResponder, our_auth: Authentication) -> Outcome:
        suite, _ = self._ike_keys()
        child_payloads: tuple[Payload, ...]
        child: tuple[ChildSa, ChildSaEstablished] | None = None
        child_error: RemoteProtocolError | None = None
        try:
            child_payloads, child = self._answer_child(inbound, self._ni, self._nr, None)
        except (NoProposalChosen, TsUnacceptable, InvalidKePayload) as exc:  # 2.21.2: the IKE SA still comes up
            child_payloads, child_error = (Notify(exc.notify or NotifyType.NO_PROPOSAL_CHOSEN, exc.notify_data),), exc
        # commit
        self.peer_id, self.peer_auth, self.peer_credential = peer_id, method, credential
        self._respond(inbound, (idr, our_auth, *child_payloads), protected=True)
        self._established = True
        self._events.append(IkeSaEstablished(self.spi_i, self.spi_r, self.local, self.peer,
                                             Identity(idr.id_type, idr.data), peer_id, method, suite, self.nat,
                                             inbound.has(NotifyType.INITIAL_CONTACT), credential))
        if child is not None:
            self._add_child(*child)
        if child_error is not None:
            self._report(inbound.header, child_error.notify, f"Child SA refused: {child_error}")
        return Outcome.DONE

    def _verify_initiator(self, config: ResponderConfig, inbound: Inbound, peer_id: Identity, auth: Authentication,
                          octets: bytes) -> PeerCredential:
        """Who the initiator is, from its AUTH (checked, changes nothing). An identity with a pinned key must sign
        with that key. Anyone else comes in unauthenticated, by one of `config.anonymous`: NULL (RFC 7619), or a
        signature by the key of the raw public key (RFC 7670) or certificate in its first CERT payload (RFC 7296
        3.6), which proves possession of that key for this exchange and nothing about who holds it."""
        pinned = config.pinned_key(peer_id)
        if pinned is not None:
            if auth.method != AuthMethod.DIGITAL_SIGNATURE:
                raise AuthenticationFailed(f"AUTH: {peer_id} has a pinned key and must sign with it (RFC 7427, "
                                           f"method 14); it used method {auth.method}")
            verify_signature_auth(pinned, auth, octets, accept=config.signature_schemes)
            return PeerCredential(PeerAuth.PINNED, key_sha256(pinned))
        if auth.method == AuthMethod.NULL:
            if PeerAuth.NULL not in config.anonymous:
                raise AuthenticationFailed(f"AUTH: NULL authentication is not accepted here, and no key is pinned "
                                           f"for {peer_id}")
            suite, keys = self._ike_keys()
            verify_mac_auth(null_auth(suite.prf, keys.sk_pi, octets), auth, AuthMethod.NULL)
            return PeerCredential(PeerAuth.NULL)
        if auth.method != AuthMethod.DIGITAL_SIGNATURE:
            raise AuthenticationFailed(f"AUTH: method {auth.method} is not accepted here (NULL, 13, and digital "
                                       "signature, 14, are)")
        certs = inbound.all(Certificate)
        if not certs:
            raise AuthenticationFailed(f"AUTH: a signature, but no key is pinned for {peer_id} and no CERT payload "
                                       "carries the key (a raw public key or a certificate)")
        presented = presented_key(certs[0].encoding, certs[0].data)
        kind = PeerAuth.RAW_KEY if presented.encoding == CertEncoding.RAW_PUBLIC_KEY else PeerAuth.CERTIFICATE
        if kind not in config.anonymous:
            what = "a raw public key" if kind is PeerAuth.RAW_KEY else "a certificate"
            raise AuthenticationFailed(f"AUTH: no key is pinned for {peer_id}, and clients with {what} we do not "
                                       "know are not accepted here")
        verify_signature_auth(presented.public_key, auth, octets, accept=config.signature_schemes)
        return PeerCredential(kind, presented.sha256, presented.subject, presented.self_signed)

    def _answer_child(self, inbound: Inbound, ni: bytes, nr: bytes,
                      ke: KeyExchange | None) -> tuple[tuple[Payload, ...], tuple[ChildSa, ChildSaEstablished]]:
        """Negotiate a Child SA from the request's SA, TSi, TSr and USE_TRANSPORT_MODE. Returns the payloads of the
        answer and the new Child SA with its event; allocates its SPI last, after every check passed."""
        config = self._responder_config()
        suite_ike, keys = self._ike_keys()
        in_ike_auth = inbound.header.exchange == ExchangeType.IKE_AUTH
        sa = inbound.one(SecurityAssociation, "SA")
        tsi = inbound.one(TrafficSelectorsInitiator, "TSi")
        tsr = inbound.one(TrafficSelectorsResponder, "TSr")
        proposal, suite = select_child_suite(sa, config.esp_suites, ke_group=None if ke is None else ke.group,
                                             in_ike_auth=in_ike_auth)
        wants_transport = inbound.has(NotifyType.USE_TRANSPORT_MODE)
        if wants_transport and Mode.TRANSPORT in config.modes:
            mode = Mode.TRANSPORT
        elif Mode.TUNNEL in config.modes:
            mode = Mode.TUNNEL
        else:
            raise NoProposalChosen("Child SA: only transport mode is allowed and the initiator did not ask for it")
        narrowed_i, narrowed_r = narrow_to_dns(tsi.selectors, tsr.selectors, config.dns, inbound.source.address,
                                               peer_behind_nat=self.nat.peer_behind_nat)
        shared: bytes | None = None
        dh: DiffieHellman | None = None
        if suite.dh_group != DhGroup.NONE:
            if ke is None:  # select_child_suite only picks a group for a KE payload of that group
                raise InvalidKePayload("KE: missing", group=suite.dh_group)
            dh = DiffieHellman.generate(suite.dh_group, self._random)
            shared = dh.shared_secret(ke.data)
        child_keys = derive_child_keys(suite_ike.prf, keys.sk_d, suite, ni, nr, shared)
        spi_in = self._spis.esp()
        spi_out = proposal.spi
        chosen = Proposal(proposal.number, ProtocolId.ESP, spi_in, suite.transforms())
        payloads: list[Payload] = []
        if mode is Mode.TRANSPORT:
            payloads.append(Notify(NotifyType.USE_TRANSPORT_MODE))
        payloads.append(SecurityAssociation((chosen,)))
        if not in_ike_auth:
            payloads.append(Nonce(nr))
            if dh is not None:
                payloads.append(KeyExchange(dh.group, dh.public_key))
        payloads += [TrafficSelectorsInitiator(narrowed_i), TrafficSelectorsResponder(narrowed_r)]
        child = ChildSa(spi_in, spi_out, suite, mode, narrowed_r, narrowed_i)
        return tuple(payloads), (child, self._child_event(child, child_keys))

    def _child_event(self, child: ChildSa, keys: ChildKeys) -> ChildSaEstablished:
        return ChildSaEstablished(self.spi_i, self.spi_r, child.spi_in, child.spi_out, ProtocolId.ESP, child.mode,
                                  child.suite, child.local_ts, child.remote_ts, self.local, self.peer,
                                  self.nat.detected, _child_keys(keys, self.role))

    def _add_child(self, child: ChildSa, event: ChildSaEstablished) -> None:
        self.children[child.spi_in] = child
        self._events.append(event)

    # --- responder: CREATE_CHILD_SA ---

    def _answer_create_child_sa(self, inbound: Inbound) -> Outcome:
        if not isinstance(self._config, ResponderConfig):  # the test initiator takes no Child SAs from its peer
            raise RemoteProtocolError("CREATE_CHILD_SA: this side accepts no Child SAs",
                                      notify=NotifyType.NO_ADDITIONAL_SAS)
        config = self._config
        sa = inbound.one(SecurityAssociation, "SA")
        ni = inbound.one(Nonce, "Nonce").data
        ke = inbound.optional(KeyExchange, "KE")
        if sa.proposals and sa.proposals[0].protocol == ProtocolId.IKE:
            return self._answer_ike_rekey(inbound, sa, ni, ke)
        rekey = inbound.notifies(NotifyType.REKEY_SA)
        old: ChildSa | None = None
        if rekey:
            if len(rekey) != 1 or rekey[0].protocol != ProtocolId.ESP or len(rekey[0].spi) != ESP_SPI_SIZE:
                raise RemoteProtocolError("REKEY_SA: one notify naming an ESP SPI is expected")
            old = next((c for c in self.children.values() if c.spi_out == rekey[0].spi), None)
            if old is None:
                raise ChildSaNotFound(f"REKEY_SA: no Child SA with SPI {rekey[0].spi.hex()}")
        elif len(self.children) >= config.limits.max_child_sas:
            raise RemoteProtocolError(f"CREATE_CHILD_SA: already {len(self.children)} Child SAs on this IKE SA",
                                      notify=NotifyType.NO_ADDITIONAL_SAS)
        nr = self._random(config.nonce_size)
        payloads, (child, event) = self._answer_child(inbound, ni, nr, ke)
        # commit
        self._respond(inbound, payloads, protected=True)
        self.children[child.spi_in] = child
        if old is None:
            self._events.append(event)
        else:
            self._events.append(ChildSaRekeyed(self.spi_i, self.spi_r, old.spi_in, old.spi_out, event))
        return Outcome.DONE

    def _answer_ike_rekey(self, inbound: Inbound, sa: SecurityAssociation, ni: bytes,
                          ke: KeyExchange | None) -> Outcome:
        config = self._responder_config()
        old_suite, old_keys = self._ike_keys()
        if ke is None:
            raise RemoteProtocolError("CREATE_CHILD_SA: an IKE SA rekey needs a KE payload")
        if self._pending is not None:
            raise TemporaryFailure("CREATE_CHILD_SA: our own request is outstanding; rekey again later")
        proposal, suite = select_ike_suite(sa, config.ike_suites, ke_group=ke.group, spi_size=IKE_SPI_SIZE)
        dh = DiffieHellman.generate(suite.dh_group, self._random)
        shared = dh.shared_secret(ke.data)
        nr = self._random(config.nonce_size)
        new_spi_i, new_spi_r = proposal.spi, self._spis.ike()
        seed = rekey_skeyseed(old_suite.prf, old_keys.sk_d, shared, ni, nr)
        keys = derive_ike_keys(suite, seed, ni, nr, new_spi_i, new_spi_r)
        chosen = Proposal(proposal.number, ProtocolId.IKE, new_spi_r, suite.transforms())
        # commit
        self._respond(inbound, (SecurityAssociation((chosen,)), Nonce(nr), KeyExchange(dh.group, dh.public_key)),
                      protected=True)
        self._hand_over(Role.RESPONDER, new_spi_i, new_spi_r, suite, keys)
        return Outcome.REKEYED

    def _hand_over(self, role: Role, spi_i: bytes, spi_r: bytes, suite: IkeSuite, keys: IkeKeys) -> None:
        """Create the rekeyed IKE SA (RFC 7296 2.18): message IDs restart at 0, the Child SAs move over. The one
        who asked for the rekey is the original initiator of the new SA."""
        new = IkeSa(role, self._config, random=self._random, spis=self._spis, local=self.local, peer=self.peer,
                    spi_i=spi_i, spi_r=spi_r, state=State.ESTABLISHED)
        new._now = self._now
        new._heard()  # the rekey exchange itself was heard
        new._install_keys(suite, keys)
        new.nat, new.peer_id, new.peer_auth, new._established = self.nat, self.peer_id, self.peer_auth, True
        new.peer_credential = self.peer_credential
        new.children, self.children = self.children, {}
        self.successor = new
        self._events.append(IkeSaRekeyed(self.spi_i, self.spi_r, spi_i, spi_r, suite))

    # --- responder: INFORMATIONAL ---

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
            self._close_reason = (f"the peer reported {_notify_name(error.notify_type)} in an INFORMATIONAL request"
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

    # --- initiator: IKE_SA_INIT ---

    def _send_init(self, context: _InitRequest) -> None:
        """(Re)send IKE_SA_INIT with message ID 0: the first time, after a COOKIE, after INVALID_KE_PAYLOAD."""
        config = self._initiator_config()
        self._pending, self._next_id = None, 0
        self.spi_r = ZERO_SPI
        payloads: list[Payload] = []
        if context.cookie is not None:
            payloads.append(Notify(NotifyType.COOKIE, context.cookie))  # first (RFC 7296 2.6)
        payloads += [offer_ike(config.ike_suites), KeyExchange(context.dh.group, context.dh.public_key),
                     Nonce(context.nonce), *self._nat_hashes(ZERO_SPI)]
        if config.announce_hashes:
            payloads.append(Notify(NotifyType.SIGNATURE_HASH_ALGORITHMS, _hash_algorithms(config)))
        self._init_request = self._send_request(ExchangeType.IKE_SA_INIT, payloads, context)

    def _on_ike_sa_init_response(self, inbound: Inbound) -> Outcome:
        context = inbound.context
        config = self._initiator_config()
        if not isinstance(context, _InitRequest):
            raise LocalProtocolError("IKE_SA_INIT response without an IKE_SA_INIT request")
        cookie = inbound.notifies(NotifyType.COOKIE)
        invalid_ke = inbound.notifies(NotifyType.INVALID_KE_PAYLOAD)
        if (cookie or invalid_ke) and context.retries >= MAX_INIT_RETRIES:
            raise ErrorNotified("IKE_SA_INIT: too many COOKIE / INVALID_KE_PAYLOAD rounds",
                                received=NotifyType.COOKIE if cookie else NotifyType.INVALID_KE_PAYLOAD)
        if cookie:
            if not 1 <= len(cookie[0].data) <= MAX_COOKIE_SIZE:
                raise RemoteProtocolError(f"COOKIE: {len(cookie[0].data)} octets")
            self._send_init(dataclasses.replace(context, cookie=cookie[0].data, retries=context.retries + 1))
            return Outcome.RETRY
        if invalid_ke:
            data = invalid_ke[0].data
            group = int.from_bytes(data, "big") if len(data) == 2 else -1
            if group == context.dh.group or group not in {s.dh_group for s in config.ike_suites}:
                raise ErrorNotified(f"INVALID_KE_PAYLOAD: group {group} was not offered",
                                    received=NotifyType.INVALID_KE_PAYLOAD)
            dh = DiffieHellman.generate(group, self._random)
            self._send_init(dataclasses.replace(context, dh=dh, retries=context.retries + 1))
            return Outcome.RETRY
        error = inbound.error_notify()
        if error is not None:
            raise ErrorNotified(f"IKE_SA_INIT refused: notify {error.notify_type}", received=error.notify_type,
                                data=error.data)
        if inbound.header.spi_r == ZERO_SPI:
            raise RemoteProtocolError("IKE_SA_INIT response without a responder SPI")
        _, suite = accept_ike_choice(inbound.one(SecurityAssociation, "SA"), config.ike_suites, spi_size=0)
        ke = inbound.one(KeyExchange, "KE")
        nr = inbound.one(Nonce, "Nonce").data
        if ke.group != suite.dh_group or ke.group != context.dh.group:
            raise NoProposalChosen(f"KE: group {ke.group} does not match the chosen group {suite.dh_group}")
        shared = context.dh.shared_secret(ke.data)
        peer_hashes = _peer_hash_algorithms(inbound)
        spi_r = inbound.header.spi_r
        keys = derive_ike_keys(suite, skeyseed(suite.prf, context.nonce, nr, shared), context.nonce, nr,
                               self.spi_i, spi_r)
        # commit
        self.spi_r = spi_r
        self._install_keys(suite, keys)
        self._ni, self._nr, self._init_response = context.nonce, nr, inbound.data
        self.nat = self._nat_status(inbound, spi_r)
        self.peer_hashes = peer_hashes
        self._send_auth(config)
        return Outcome.DONE

    def _initiator_scheme(self, config: InitiatorConfig) -> SignatureScheme | None:
        """(test initiator) A hash the responder listed; with no overlap the key's own, for the responder to judge."""
        if config.signer is None:
            return None
        try:
            return choose_scheme(config.signer, self.peer_hashes)
        except AuthenticationFailed:
            return config.signer.algorithm

    def _send_auth(self, config: InitiatorConfig) -> None:
        suite, keys = self._ike_keys()
        idi = IdentificationInitiator(config.local_id.id_type, config.local_id.data)
        octets = signed_octets(suite.prf, self._init_request, self._nr, keys.sk_pi, idi.encode())
        auth = (Authentication(AuthMethod.NULL, null_auth(suite.prf, keys.sk_pi, octets))
                if config.signer is None else sign_auth(config.signer, octets, self._initiator_scheme(config)))
        offered = esp_offer_suites(config.esp_suites, in_ike_auth=True)
        esp_spi = self._spis.esp()
        payloads: list[Payload] = [idi, *config.certificates]
        if config.initial_contact:
            payloads.append(Notify(NotifyType.INITIAL_CONTACT))
        if config.responder_id is not None:
            payloads.append(IdentificationResponder(config.responder_id.id_type, config.responder_id.data))
        payloads.append(auth)
        if config.mode is Mode.TRANSPORT:
            payloads.append(Notify(NotifyType.USE_TRANSPORT_MODE))
        payloads += [offer_esp(config.esp_suites, esp_spi, in_ike_auth=True), TrafficSelectorsInitiator(config.tsi),
                     TrafficSelectorsResponder(config.tsr)]
        self._send_request(ExchangeType.IKE_AUTH, payloads,
                           _AuthRequest(esp_spi, offered, config.mode, config.tsi, config.tsr),
                           answered_in=State.EXPECT_IKE_AUTH_RESPONSE)

    # --- initiator: IKE_AUTH ---

    def _on_ike_auth_response(self, inbound: Inbound) -> Outcome:
        context = inbound.context
        config = self._initiator_config()
        suite, keys = self._ike_keys()
        if not isinstance(context, _AuthRequest):
            raise LocalProtocolError("IKE_AUTH response without an IKE_AUTH request")
        auth = inbound.optional(Authentication, "AUTH")
        error = inbound.error_notify()
        if auth is None:
            notify = error.notify_type if error is not None else NotifyType.AUTHENTICATION_FAILED
            raise ErrorNotified(f"IKE_AUTH refused: notify {notify}", received=notify)
        idr = inbound.one(IdentificationResponder, "IDr")
        peer_id = _peer_identity(idr.id_type, idr.data)
        if config.responder_id is not None and peer_id != config.responder_id:
            raise AuthenticationFailed(f"IDr: {peer_id}, expected {config.responder_id}")
        octets = signed_octets(suite.prf, self._init_response, self._ni, keys.sk_pr, idr.encode())
        if config.responder_key is not None:
            verify_signature_auth(config.responder_key, auth, octets, accept=config.signature_schemes)
        else:
            verify_mac_auth(null_auth(suite.prf, keys.sk_pr, octets), auth, AuthMethod.NULL)
        child: tuple[ChildSa, ChildSaEstablished] | None = None
        if error is None:
            child = self._accept_child(inbound, context.esp_spi, context.offered, context.mode, context.tsi,
                                       context.tsr, self._ni, self._nr, None)
        # commit
        credential = (PeerCredential(PeerAuth.NULL) if config.responder_key is None
                      else PeerCredential(PeerAuth.PINNED, key_sha256(config.responder_key)))
        self.peer_id, self.peer_auth, self.peer_credential = peer_id, auth.method, credential
        self._established = True
        self._events.append(IkeSaEstablished(self.spi_i, self.spi_r, self.local, self.peer, config.local_id, peer_id,
                                             auth.method, suite, self.nat, False, credential))
        if child is not None:
            self._add_child(*child)
        else:
            self._spis.release(context.esp_spi)
            if error is not None:
                self._events.append(PeerErrorNotified(self.spi_i, self.spi_r, ExchangeType.IKE_AUTH,
                                                      error.notify_type, "Child SA refused"))
        return Outcome.DONE

    def _accept_child(self, inbound: Inbound, esp_spi: bytes, offered: tuple[ChildSuite, ...], mode: Mode,
                      tsi: tuple[TrafficSelector, ...], tsr: tuple[TrafficSelector, ...], ni: bytes, nr: bytes,
                      dh: DiffieHellman | None) -> tuple[ChildSa, ChildSaEstablished]:
        """The initiator's check of a Child SA in a response: a suite we offered, selectors within ours, the mode
        we asked for (the responder may refuse transport, 1.3.1)."""
        _, keys = self._ike_keys()
        suite_ike = self.suite
        if suite_ike is None:
            raise LocalProtocolError("no IKE suite")
        spi_out, suite = accept_esp_choice(inbound.one(SecurityAssociation, "SA"), offered)
        narrowed_i = check_narrowed(tsi, inbound.one(TrafficSelectorsInitiator, "TSi").selectors, "TSi")
        narrowed_r = check_narrowed(tsr, inbound.one(TrafficSelectorsResponder, "TSr").selectors, "TSr")
        transport = inbound.has(NotifyType.USE_TRANSPORT_MODE)
        if transport and mode is not Mode.TRANSPORT:
            raise NoProposalChosen("USE_TRANSPORT_MODE in the response, tunnel mode was asked for")
        shared: bytes | None = None
        if suite.dh_group != DhGroup.NONE:
            ke = inbound.one(KeyExchange, "KE")
            if dh is None or ke.group != dh.group:
                raise NoProposalChosen(f"KE: group {ke.group} was not sent")
            shared = dh.shared_secret(ke.data)
        child_keys = derive_child_keys(suite_ike.prf, keys.sk_d, suite, ni, nr, shared)
        child = ChildSa(esp_spi, spi_out, suite, Mode.TRANSPORT if transport else Mode.TUNNEL, narrowed_i,
                        narrowed_r)
        return child, self._child_event(child, child_keys)

    # --- initiator: CREATE_CHILD_SA ---

    def _request_child(self, suites: Sequence[ChildSuite], mode: Mode, old: ChildSa | None) -> None:
        config = self._initiator_config()
        if old is not None and old.spi_in not in self.children:
            return  # deleted meanwhile
        nonce = self._random(config.nonce_size)
        group = suites[0].dh_group
        dh = DiffieHellman.generate(group, self._random) if group != DhGroup.NONE else None
        esp_spi = self._spis.esp()
        offered = esp_offer_suites(suites, in_ike_auth=False)
        tsi, tsr = (config.tsi, config.tsr) if old is None else (old.local_ts, old.remote_ts)
        payloads: list[Payload] = []
        if old is not None:
            payloads.append(Notify(NotifyType.REKEY_SA, protocol=ProtocolId.ESP, spi=old.spi_in))
        if mode is Mode.TRANSPORT:
            payloads.append(Notify(NotifyType.USE_TRANSPORT_MODE))
        payloads += [offer_esp(suites, esp_spi, in_ike_auth=False), Nonce(nonce)]
        if dh is not None:
            payloads.append(KeyExchange(dh.group, dh.public_key))
        payloads += [TrafficSelectorsInitiator(tsi), TrafficSelectorsResponder(tsr)]
        self._send_request(ExchangeType.CREATE_CHILD_SA, payloads,
                           _ChildRequest(esp_spi, offered, nonce, dh, mode, tsi, tsr, old))

    def _request_ike_rekey(self, suites: Sequence[IkeSuite]) -> None:
        config = self._initiator_config()
        nonce = self._random(config.nonce_size)
        dh = DiffieHellman.generate(suites[0].dh_group, self._random)
        new_spi_i = self._spis.ike()
        payloads = (offer_ike(suites, new_spi_i), Nonce(nonce), KeyExchange(dh.group, dh.public_key))
        self._send_request(ExchangeType.CREATE_CHILD_SA, payloads,
                           _IkeRekeyRequest(new_spi_i, tuple(suites), nonce, dh))

    def _on_create_child_sa_response(self, inbound: Inbound) -> Outcome:
        context = inbound.context
        if isinstance(context, _CustomRequest):
            return self._on_custom_response(inbound)
        error = inbound.error_notify()
        if error is not None:
            raise ErrorNotified(f"CREATE_CHILD_SA refused: notify {error.notify_type}", received=error.notify_type,
                                data=error.data)
        nr = inbound.one(Nonce, "Nonce").data
        if isinstance(context, _IkeRekeyRequest):
            return self._on_ike_rekey_response(inbound, context, nr)
        if not isinstance(context, _ChildRequest):
            raise LocalProtocolError("CREATE_CHILD_SA response to another kind of request")
        child, event = self._accept_child(inbound, context.esp_spi, context.offered, context.mode, context.tsi,
                                          context.tsr, context.nonce, nr, context.dh)
        old = context.rekey_of
        if old is None:
            self._add_child(child, event)
            return Outcome.DONE
        self.children[child.spi_in] = child
        self._events.append(ChildSaRekeyed(self.spi_i, self.spi_r, old.spi_in, old.spi_out, event))
        if old.spi_in in self.children:  # RFC 7296 2.8: who rekeyed deletes the old SA
            self._queue.appendleft(lambda: self._request_delete_child(old.spi_in))
        return Outcome.DONE

    def _on_ike_rekey_response(self, inbound: Inbound, context: _IkeRekeyRequest, nr: bytes) -> Outcome:
        old_suite, old_keys = self._ike_keys()
        new_spi_r, suite = accept_ike_choice(inbound.one(SecurityAssociation, "SA"), context.offered,
                                             spi_size=IKE_SPI_SIZE)
        ke = inbound.one(KeyExchange, "KE")
        if ke.group != suite.dh_group or ke.group != context.dh.group or not any(new_spi_r):
            raise NoProposalChosen(f"KE: group {ke.group} does not match the chosen group {suite.dh_group}")
        shared = context.dh.shared_secret(ke.data)
        seed = rekey_skeyseed(old_suite.prf, old_keys.sk_d, shared, context.nonce, nr)
        keys = derive_ike_keys(suite, seed, context.nonce, nr, context.new_spi_i, new_spi_r)
        self._hand_over(Role.INITIATOR, context.new_spi_i, new_spi_r, suite, keys)
        self._queue.clear()
        self._queue.append(lambda: self._request_delete_ike("rekeyed"))
        return Outcome.REKEYED

    # --- INFORMATIONAL requests and their responses ---

    def _request_delete_ike(self, reason: str) -> None:
        self._send_request(ExchangeType.INFORMATIONAL, (Delete(ProtocolId.IKE, 0),), _DeleteIkeRequest(reason))

    def _request_delete_child(self, spi_in: bytes) -> None:
        if spi_in in self.children:
            self._send_request(ExchangeType.INFORMATIONAL, (Delete(ProtocolId.ESP, ESP_SPI_SIZE, (spi_in,)),),
                               _DeleteChildRequest(spi_in))

    def _on_informational_response(self, inbound: Inbound) -> Outcome:
        context = inbound.context
        if isinstance(context, _DeleteIkeRequest):
            self._close_reason = context.reason
            return Outcome.CLOSED  # whatever the answer says, the SA is gone (RFC 7296 1.4.1)
        if isinstance(context, _DeleteChildRequest):
            child = self.children.get(context.spi_in)
            if child is not None:
                self._drop_child(child, "deleted locally")
            return Outcome.DONE
        if isinstance(context, _LivenessRequest):
            self._events.append(PeerAlive(self.spi_i, self.spi_r))
            return Outcome.DONE
        if isinstance(context, _CustomRequest):
            return self._on_custom_response(inbound)
        raise LocalProtocolError("INFORMATIONAL response to another kind of request")

    def _on_custom_response(self, inbound: Inbound) -> Outcome:
        self._events.append(ResponseReceived(self.spi_i, self.spi_r, inbound.header.exchange,
                                             inbound.header.message_id, inbound.payloads))
        return Outcome.DONE


# --- the transition table ---

@dataclass(frozen=True)
class Transition:
    """The side effect of a received message and the next state for each outcome of it."""

    handler: Callable[[IkeSa, Inbound], Outcome]
    next_state: Mapping[Outcome, State] = field(default_factory=dict)


S, X = State, ExchangeType
REQUEST, RESPONSE = True, False
SIGNATURE_READY: Final = 0
"""Not an exchange type (those start at 34): our deferred signature arriving, through `complete_signature`."""

TRANSITIONS: Final[Mapping[tuple[State, int, bool], Transition]] = {
    # the responder answers the original initiator's requests
    (S.EXPECT_IKE_SA_INIT, X.IKE_SA_INIT, REQUEST): Transition(IkeSa._answer_ike_sa_init, {
        Outcome.DONE: S.EXPECT_IKE_AUTH, Outcome.REFUSED: S.DELETED}),
    (S.EXPECT_IKE_AUTH, X.IKE_AUTH, REQUEST): Transition(IkeSa._answer_ike_auth, {
        Outcome.DONE: S.ESTABLISHED, Outcome.WAITING: S.SIGNING, Outcome.REFUSED: S.DELETED}),
    (S.SIGNING, X.IKE_AUTH, REQUEST): Transition(IkeSa._still_signing, {
        Outcome.WAITING: S.SIGNING, Outcome.REFUSED: S.SIGNING}),
    (S.SIGNING, SIGNATURE_READY, REQUEST): Transition(IkeSa._on_signature, {
        Outcome.DONE: S.ESTABLISHED, Outcome.REFUSED: S.DELETED}),
    (S.ESTABLISHED, X.CREATE_CHILD_SA, REQUEST): Transition(IkeSa._answer_create_child_sa, {
        Outcome.DONE: S.ESTABLISHED, Outcome.REKEYED: S.EXPECT_DELETE, Outcome.REFUSED: S.ESTABLISHED}),
    (S.ESTABLISHED, X.INFORMATIONAL, REQUEST): Transition(IkeSa._answer_informational, {
        Outcome.DONE: S.ESTABLISHED, Outcome.CLOSED: S.DELETED, Outcome.REFUSED: S.ESTABLISHED}),
    (S.EXPECT_DELETE, X.INFORMATIONAL, REQUEST): Transition(IkeSa._answer_informational, {
        Outcome.DONE: S.EXPECT_DELETE, Outcome.CLOSED: S.DELETED, Outcome.REFUSED: S.EXPECT_DELETE}),
    # the requester handles the answers to its own requests (a request is only sent where its answer has an entry)
    (S.EXPECT_IKE_SA_INIT_RESPONSE, X.IKE_SA_INIT, RESPONSE): Transition(IkeSa._on_ike_sa_init_response, {
        Outcome.DONE: S.EXPECT_IKE_AUTH_RESPONSE, Outcome.RETRY: S.EXPECT_IKE_SA_INIT_RESPONSE,
        Outcome.REFUSED: S.DELETED}),
    (S.EXPECT_IKE_AUTH_RESPONSE, X.IKE_AUTH, RESPONSE): Transition(IkeSa._on_ike_auth_response, {
        Outcome.DONE: S.ESTABLISHED, Outcome.REFUSED: S.DELETED}),
    (S.ESTABLISHED, X.CREATE_CHILD_SA, RESPONSE): Transition(IkeSa._on_create_child_sa_response, {
        Outcome.DONE: S.ESTABLISHED, Outcome.REKEYED: S.EXPECT_DELETE, Outcome.REFUSED: S.ESTABLISHED}),
    (S.ESTABLISHED, X.INFORMATIONAL, RESPONSE): Transition(IkeSa._on_informational_response, {
        Outcome.DONE: S.ESTABLISHED, Outcome.CLOSED: S.DELETED, Outcome.REFUSED: S.ESTABLISHED}),
    (S.EXPECT_DELETE, X.INFORMATIONAL, RESPONSE): Transition(IkeSa._on_informational_response, {
        Outcome.DONE: S.EXPECT_DELETE, Outcome.CLOSED: S.DELETED, Outcome.REFUSED: S.EXPECT_DELETE}),
}
"""(state, exchange type, is_request) -> (side effect, {outcome: next state}). Anything else is a protocol error."""

