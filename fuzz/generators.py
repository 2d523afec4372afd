"""Input generators and properties for fuzzing the IKEv2 core, shared by the fuzz target (`fuzz/ikev2.py`) and the
unit tests (tests/test_ikev2_fuzz.py, tests/test_ikev2_state_fuzz.py), which run them with small counts.

Everything here draws from a `random.Random` it is given, so a run is reproduced by its seed. Three kinds of input:

- **Bytes for the decoder**: mutations (`mutate`) of genuine datagrams that mostly keep the IKE header's length in
  step, so they reach the payload chain; inner payload chains as an SK payload would hold them after decryption.
- **Datagrams for the state machine**: a `World` of three `Target` responders built from a real in-memory exchange
  (a fresh one, one with a half-open SA, one with an ESTABLISHED IKE SA beside the rekeyed one it replaced, in
  EXPECT_DELETE); its transcript is the corpus. `feed` delivers one datagram and checks the properties: what we send
  decodes and is allowed unprotected, and the SAs that existed before are exactly as they were (`IkeSaView`).
- **Requests from an authenticated insider** (a NULL-authenticated peer is anyone): `Insider` sends generated
  payloads (`insider_request`) protected with real keys into an established SA and checks that the responder stays
  consistent.

A property that does not hold raises `Violation`; the code under test may only raise the project's typed errors
(`EnclaveIkeError`, of which `IkeError` is the IKEv2 part)."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Final

from enclave_ike.ikev2 import crypto as c
from enclave_ike.ikev2.config import DnsSelectors, Endpoint, Identity, InitiatorConfig, ResponderConfig
from enclave_ike.ikev2.constants import DhGroup, EncrId, ExchangeType, HeaderFlag, NotifyType, PrfId, ProtocolId
from enclave_ike.ikev2.errors import IkeError, LocalProtocolError
from enclave_ike.ikev2.events import ChildSaEstablished
from enclave_ike.ikev2.initiator import Datagram, Direction, Initiator, exchange
from enclave_ike.ikev2.negotiation import offer_esp, offer_ike
from enclave_ike.ikev2.payloads import (
    Delete,
    Encrypted,
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
    Transform,
    TransformAttribute,
    UnknownPayload,
    decode_payloads,
    encode_payloads,
)
from enclave_ike.ikev2.responder import Responder
from enclave_ike.ikev2.state import IkeSaView, State
from enclave_ike.ikev2.wire import Reader
from fuzz.probe import ProbingInitiator

IKE_HEADER: Final = 28
NOW: Final = 1.0
I_END: Final = Endpoint(IPv4Address("10.0.0.1"), 500)
R_END: Final = Endpoint(IPv4Address("10.0.0.53"), 500)
HOST_I: Final = TrafficSelector(I_END.address, I_END.address)
UDP_TO_R: Final = TrafficSelector(R_END.address, R_END.address, 17)
DNS: Final = DnsSelectors((R_END.address,))
GCM256: Final = c.ChildSuite(EncrId.ENCR_AES_GCM_16, 256)
IKE_X25519: Final = c.IkeSuite(EncrId.ENCR_AES_GCM_16, 256, PrfId.PRF_HMAC_SHA2_256, 0, DhGroup.CURVE25519)
SOURCES: Final = (I_END, Endpoint(I_END.address, 4500), Endpoint(IPv4Address("198.51.100.9"), 500),
                  Endpoint(IPv4Address("198.51.100.10"), 1701))
UNPROTECTED: Final = frozenset({NotifyType.COOKIE, NotifyType.INVALID_KE_PAYLOAD, NotifyType.NO_PROPOSAL_CHOSEN,
                                NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD, NotifyType.INVALID_MAJOR_VERSION,
                                NotifyType.INVALID_IKE_SPI})
"""Notify types a responder may send without protection (RFC 7296 2.21.1, 2.21.4, 2.5, 2.6)."""


class Violation(Exception):
    """A fuzzing property does not hold. Raised by this module, never by the code under test."""


def seeded(seed: bytes) -> c.RandomSource:
    """A deterministic RandomSource: SHA-256 in counter mode."""
    counter = itertools.count()

    def draw(n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.sha256(seed + next(counter).to_bytes(8, "big")).digest()
        return out[:n]
    return draw


# --- byte mutations ---

def with_length(data: bytes) -> bytes:
    """Set the header's length field to the datagram's length (when there is a header)."""
    if len(data) < IKE_HEADER:
        return data
    return data[:24] + len(data).to_bytes(4, "big") + data[28:]


def mutate(rng: random.Random, data: bytes, *, ike_header: bool = True) -> bytes:
    """One to six edits: overwrite or flip a byte, insert or delete up to 8 bytes, or write a small or large value
    into a 16-bit field; then, for a datagram with an IKE header, most of the time, make the header's length
    agree."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        choice = rng.random()
        position = rng.randrange(len(out) + 1)
        if choice < 0.5 and out:
            out[min(position, len(out) - 1)] = rng.randrange(256)
        elif choice < 0.65 and out:
            out[min(position, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif choice < 0.8:
            out[position:position] = rng.randbytes(rng.randint(1, 8))
        elif choice < 0.9:
            del out[position:position + rng.randint(1, 8)]
        elif len(out) > 2:  # a small or large length value in a 16-bit field
            spot = min(position, len(out) - 2)
            out[spot:spot + 2] = rng.choice([0, 1, 3, 4, 5, 8, 0xFFFF, len(out) - spot]).to_bytes(2, "big")
    return with_length(bytes(out)) if ike_header and rng.random() < 0.85 else bytes(out)


def mutate_behind_spis(rng: random.Random, data: bytes) -> bytes:
    """A mutation that keeps both SPIs, so it reaches the SA behind them."""
    if len(data) <= 16:
        return mutate(rng, data)
    out = data[:16] + mutate(rng, data[16:])
    return with_length(out) if rng.random() < 0.85 else out


def aimed_header(views: Sequence[IkeSaView], exchange_type: int, flags: int, message_id: int, first_payload: int,
                 body: bytes, spi_r_zero: bool) -> bytes:
    """A well-formed header naming one of `views` (or a zero SPIr), with anything behind it."""
    view = views[message_id % len(views)] if views else None
    spi_i = view.spi_i if view else b"\x01" * 8
    spi_r = b"\0" * 8 if spi_r_zero or view is None else view.spi_r
    header = IkeHeader(spi_i, spi_r, exchange_type, HeaderFlag(flags), message_id)
    return header.encode(first_payload, IKE_HEADER + len(body)) + body


# --- the decoder ---

def decode(data: bytes) -> Message | None:
    """Message.decode, with the typed errors turned into None (anything else propagates)."""
    try:
        return Message.decode(data)
    except IkeError:
        return None


def decode_inner(first_type: int, plaintext: bytes) -> tuple[Payload, ...] | None:
    """What an SK payload could hold after decryption, decoded; typed errors give None."""
    try:
        return decode_payloads(Reader(plaintext, payload="SK"), first_type, inner=True)
    except IkeError:
        return None


# --- the state machine: targets built from a real exchange ---

@dataclass
class Target:
    """A responder whose `guarded` SAs must not change under unauthenticated input."""

    name: str
    responder: Responder
    guarded: dict[bytes, IkeSaView]
    held: list[bytes] = field(default_factory=list)
    """Genuine requests never delivered: delivering them intact would be a legitimate change, so they are only
    mutated."""

    def snapshot(self) -> dict[bytes, IkeSaView | None]:
        return {spi: (sa.view() if (sa := self.responder.sa(spi)) is not None else None) for spi in self.guarded}


@dataclass
class World:
    targets: list[Target]
    corpus: list[bytes]


def responder(seed: bytes) -> Responder:
    return Responder(ResponderConfig(local_id=Identity.null(), dns=DNS), local=R_END, random=seeded(seed))


def initiator(seed: bytes, now: float = 0.0) -> Initiator:
    return Initiator(InitiatorConfig(tsi=(HOST_I,), tsr=(UDP_TO_R,)), local=I_END, peer=R_END, random=seeded(seed),
                     now=now)


def _drain(r: Responder | Initiator) -> None:
    r.datagrams_to_send()
    while r.next_event() is not None:
        pass


def _holding(held: list[bytes], wanted: Callable[[Message], bool]) -> Callable[[Direction, bytes], bytes | None]:
    def intercept(direction: Direction, data: bytes) -> bytes | None:
        if direction == "i->r" and not held and wanted(Message.decode(data)):
            held.append(data)
            return None
        return data
    return intercept


def fresh_target(seed: bytes = b"fuzz-fresh") -> Target:
    """A responder with no SA: mutated IKE_SA_INIT requests create half-open SAs in it, up to its limits."""
    return Target("fresh", responder(seed), {})


def build_world() -> World:
    """The targets, from real exchanges (every exchange type the responder implements); the transcripts are the
    corpus, plus the requests held back."""
    corpus: list[bytes] = []

    def record(transcript: list[Datagram]) -> None:
        corpus.extend(d.data for d in transcript)

    held_auth: list[bytes] = []  # a half-open SA: IKE_SA_INIT done, the IKE_AUTH request held back
    half = responder(b"fuzz-half")
    record(exchange(initiator(b"fuzz-half-i"), half, 0.0,
                    intercept=_holding(held_auth, lambda m: m.header.exchange == ExchangeType.IKE_AUTH)))
    est, ini = responder(b"fuzz-est"), initiator(b"fuzz-est-i")
    record(exchange(ini, est, 0.0))
    ini.create_child_sa(0.1, esp_suites=(c.ChildSuite(EncrId.ENCR_AES_GCM_16, 128, dh_group=DhGroup.ECP_256),))
    record(exchange(ini, est, 0.1))
    ini.rekey_child_sa(0.2, next(iter(ini.sa.children)))
    record(exchange(ini, est, 0.2))
    ini.check_liveness(0.3)
    record(exchange(ini, est, 0.3))
    ini.delete_child_sa(0.4, list(ini.sa.children)[-1])
    record(exchange(ini, est, 0.4))
    held_delete: list[bytes] = []  # the old IKE SA's deletion, after a rekey, held back
    ini.rekey(0.5)
    record(exchange(ini, est, 0.5,
                    intercept=_holding(held_delete, lambda m: m.header.exchange == ExchangeType.INFORMATIONAL)))
    ini.check_liveness(0.6)  # on the new IKE SA
    record(exchange(ini, est, 0.6))
    ini.create_child_sa(0.7)
    record(exchange(ini, est, 0.7))
    states = sorted(view.state.name for view in est.views())
    if states != ["ESTABLISHED", "EXPECT_DELETE"] or [v.state for v in half.views()] != [State.EXPECT_IKE_AUTH]:
        raise Violation(f"the world did not build: {states}")
    for r in (half, est):
        _drain(r)
    corpus += held_auth + held_delete
    targets = [fresh_target(), Target("half-open", half, _guard(half), held_auth),
               Target("established", est, _guard(est), held_delete)]
    return World(targets, corpus)


def _guard(r: Responder) -> dict[bytes, IkeSaView]:
    return {view.spi_r: view for view in r.views()}


def check_answers(datagrams: Sequence[tuple[bytes, Endpoint]]) -> None:
    """What the responder sends decodes, is a response, and when unprotected is an IKE_SA_INIT answer or carries
    only Notify types allowed without protection."""
    for data, _to in datagrams:
        try:
            message = Message.decode(data)
        except IkeError as exc:
            raise Violation(f"the responder sent a datagram that does not decode: {exc}") from None
        if not message.header.is_response:
            raise Violation("the responder answered with a request")
        if any(isinstance(p, Encrypted) for p in message.payloads):
            continue
        if message.header.exchange == ExchangeType.IKE_SA_INIT and message.find(SecurityAssociation):
            continue  # a genuine IKE_SA_INIT answer to a well-formed (mutated) request
        notifies = {n.notify_type for n in message.find_all(Notify)}
        if not notifies or not notifies <= UNPROTECTED:
            raise Violation(f"unprotected answer with notifies {sorted(notifies)}")


def feed(target: Target, data: bytes, source: Endpoint, stats: Counter[str]) -> None:
    """Deliver one datagram and check the properties (raises Violation). An IkeError escaping `receive` is counted
    as `ike_error`: the responder is meant to handle every datagram itself."""
    if data in target.held:
        return  # delivering a genuine held request intact is a legitimate change
    before = target.snapshot()
    try:
        target.responder.receive(data, source, NOW)
    except IkeError:
        stats["ike_error"] += 1
    out = target.responder.datagrams_to_send()
    stats["answered" if out else "silent"] += 1
    check_answers(out)
    while target.responder.next_event() is not None:
        stats["events"] += 1
    after = target.snapshot()
    if after != before:
        changed = [spi.hex() for spi in before if before[spi] != after[spi]]
        raise Violation(f"{target.name}: SAs {changed} changed under unauthenticated input")


# --- an authenticated insider ---

_GROUP_KEYS: Final = {group: c.DiffieHellman.generate(group, seeded(b"ke%d" % group)).public_key
                      for group in (DhGroup.ECP_256, DhGroup.CURVE25519)}
_ADDRESSES: Final = [I_END.address, R_END.address, IPv4Address(0), IPv4Address(2**32 - 1)]
_NOTIFY_TYPES: Final = [NotifyType.REKEY_SA, NotifyType.USE_TRANSPORT_MODE, NotifyType.COOKIE,
                        NotifyType.INVALID_SYNTAX, 40000]


def random_transform(rng: random.Random) -> Transform:
    attributes = () if rng.random() < 0.5 else (
        TransformAttribute(rng.choice([14, 15]), rng.choice([0, 128, 256, 77])),)
    return Transform(rng.choice([1, 2, 3, 4, 5, 9]), rng.choice([0, 1, 5, 12, 14, 19, 20, 31, 0xFFFF]), attributes)


def random_proposal(rng: random.Random) -> Proposal:
    return Proposal(rng.randint(1, 4), rng.choice([ProtocolId.IKE, ProtocolId.ESP, ProtocolId.AH, 9]),
                    rng.choice([b"", b"\0" * 4, b"\1\2\3\4", b"\5" * 8, b"\0" * 8]),
                    tuple(random_transform(rng) for _ in range(rng.randint(0, 6))))


def random_selector(rng: random.Random) -> TrafficSelector:
    return TrafficSelector(rng.choice(_ADDRESSES), rng.choice(_ADDRESSES), rng.choice([0, 6, 17, 1]),
                           rng.choice([0, 53, 65535]), rng.choice([0, 53, 65535]))


def _selectors(rng: random.Random) -> tuple[TrafficSelector, ...]:
    return tuple(random_selector(rng) for _ in range(rng.randint(0, 3)))


def random_payload(rng: random.Random) -> Payload:  # noqa: PLR0911 - one return per payload kind
    """One payload of a kind an established SA handles, with values near and beyond what it accepts."""
    kind = rng.randrange(8)
    if kind == 0:
        return SecurityAssociation(tuple(random_proposal(rng) for _ in range(rng.randint(1, 3))))
    if kind == 1:
        data = rng.choice(list(_GROUP_KEYS.values())) if rng.random() < 0.5 else rng.randbytes(rng.randint(0, 70))
        return KeyExchange(rng.choice([19, 31, 14, 0, 99]), data)
    if kind == 2:
        return Nonce(rng.randbytes(rng.randint(16, 40)))
    if kind == 3:
        return TrafficSelectorsInitiator(_selectors(rng))
    if kind == 4:
        return TrafficSelectorsResponder(_selectors(rng))
    if kind == 5:
        return Notify(rng.choice(_NOTIFY_TYPES), rng.randbytes(rng.randint(0, 8)), rng.choice([0, 1, 3]),
                      rng.choice([b"", b"\1\2\3\4", b"\0" * 8]))
    if kind == 6:
        return Delete(rng.choice([ProtocolId.IKE, ProtocolId.ESP, ProtocolId.AH]), 4,
                      tuple(rng.randbytes(4) for _ in range(rng.randint(0, 3))))
    return UnknownPayload(rng.randint(33, 60), rng.randbytes(rng.randint(0, 40)), rng.random() < 0.5)


CHILD_TEMPLATE: Final[tuple[Payload, ...]] = (
    offer_esp([GCM256, c.ChildSuite(EncrId.ENCR_AES_GCM_16, 256, dh_group=DhGroup.ECP_256)], b"\7\7\7\7",
              in_ike_auth=False),
    Nonce(b"n" * 32), KeyExchange(DhGroup.ECP_256, _GROUP_KEYS[DhGroup.ECP_256]),
    TrafficSelectorsInitiator((HOST_I,)), TrafficSelectorsResponder((UDP_TO_R,)),
    Notify(NotifyType.REKEY_SA, protocol=ProtocolId.ESP, spi=b"\1\2\3\4"),
    Notify(NotifyType.USE_TRANSPORT_MODE))
IKE_TEMPLATE: Final[tuple[Payload, ...]] = (
    offer_ike([IKE_X25519], b"\x09" * 8), Nonce(b"m" * 32),
    KeyExchange(DhGroup.CURVE25519, _GROUP_KEYS[DhGroup.CURVE25519]))
TEMPLATES: Final = (CHILD_TEMPLATE[:5], CHILD_TEMPLATE[:6], CHILD_TEMPLATE,
                    CHILD_TEMPLATE[:2] + CHILD_TEMPLATE[3:5], IKE_TEMPLATE)
"""Valid CREATE_CHILD_SA requests: a new Child SA (with and without PFS), a Child SA rekey, an IKE SA rekey."""


def near_valid(rng: random.Random) -> list[Payload]:
    """A valid CREATE_CHILD_SA request with up to two payloads dropped, duplicated or replaced by generated ones."""
    template = [_fresh_spis(rng, p) for p in rng.choice(TEMPLATES)]
    for _ in range(rng.randint(0, 2)):
        action, i = rng.choice(["drop", "dup", "replace", "keep"]), rng.randrange(len(template))
        if action == "drop":
            del template[i]
        elif action == "dup":
            template.insert(i, template[i])
        elif action == "replace":
            template[i] = random_payload(rng)
        if not template:
            break
    return template


def _fresh_spis(rng: random.Random, payload: Payload) -> Payload:
    """A template's SA payload with new SPIs most of the time, so that a peer can repeat it."""
    if not isinstance(payload, SecurityAssociation) or rng.random() < 0.2:
        return payload
    return SecurityAssociation(tuple(dataclasses.replace(p, spi=rng.randbytes(len(p.spi))) for p in payload.proposals))


def mutated_chain(rng: random.Random) -> tuple[int, bytes]:
    """A near-valid request's inner payload chain, encoded and then mutated: (first payload type, octets)."""
    first, body = encode_payloads(near_valid(rng) or [Nonce(b"x" * 16)])
    return first, mutate(rng, body, ike_header=False)


def insider_request(rng: random.Random) -> tuple[int, list[Payload]]:
    """What an authenticated peer sends: generated payloads in any exchange, a near-valid CREATE_CHILD_SA, or a
    mutated chain that still decodes."""
    choice = rng.random()
    if choice < 0.35:
        exchange_type = rng.choice([ExchangeType.CREATE_CHILD_SA, ExchangeType.INFORMATIONAL, ExchangeType.IKE_AUTH,
                                    40])
        return exchange_type, [random_payload(rng) for _ in range(rng.randint(0, 6))]
    if choice < 0.7:
        return ExchangeType.CREATE_CHILD_SA, near_valid(rng)
    for _ in range(8):
        payloads = decode_inner(*mutated_chain(rng))
        if payloads is not None:
            return ExchangeType.CREATE_CHILD_SA, list(payloads)
    return ExchangeType.CREATE_CHILD_SA, near_valid(rng)


def aim(payload: Payload, child: bytes) -> Payload:
    """Point REKEY_SA notifies and ESP deletes at the real Child SA `child`."""
    if isinstance(payload, Notify) and payload.spi:
        return Notify(payload.notify_type, payload.data, ProtocolId.ESP, child)
    if isinstance(payload, Delete) and payload.spis:
        return Delete(ProtocolId.ESP, 4, (child,))
    return payload


def encodable(payloads: Sequence[Payload]) -> bool:
    try:
        encode_payloads(payloads)
    except LocalProtocolError:
        return False
    return True


REKEYED_REQUESTS: Final = 20
"""Requests an insider sends into its IKE SA after it rekeyed it (the responder's copy waits in EXPECT_DELETE and
refuses new Child SAs) before a new insider takes over."""


@dataclass
class Insider:
    """A test initiator and a responder with an established NULL-authenticated IKE SA between them."""

    initiator: ProbingInitiator
    responder: Responder
    now: float = 1.0
    rekeyed_requests: int = 0

    @classmethod
    def start(cls, seed: bytes = b"insider") -> Insider:
        ini = ProbingInitiator(InitiatorConfig(tsi=(HOST_I,), tsr=(UDP_TO_R,)), local=I_END, peer=R_END,
                               random=seeded(seed), now=0.0)
        resp = responder(seed + b"-r")
        exchange(ini, resp, 0.0)
        if not ini.sa.established:
            raise Violation("the insider's IKE SA did not establish")
        _drain(resp)
        ini.events()
        return cls(ini, resp)

    def usable(self) -> bool:
        """Whether to send the next request on this insider: both sides still have the IKE SA (the insider's own
        requests may delete or rekey it behind the initiator's back: it does not act on its custom requests'
        answers), the last request was answered, there is a Child SA to aim at, the responder holds no more than a
        real peer would leave, and not more than REKEYED_REQUESTS were asked (this one counted) since the insider
        rekeyed it."""
        sa = self.initiator.sa
        theirs = self.responder.sa(sa.spi_r)
        if theirs is not None and theirs.state is State.EXPECT_DELETE:  # rekeyed by the insider: not for long
            self.rekeyed_requests += 1
            if self.rekeyed_requests > REKEYED_REQUESTS:
                return False
        return (sa.established and theirs is not None and theirs.established and bool(sa.children)
                and sa.view().outstanding_request is None and len(self.responder) <= 2)

    def send(self, exchange_type: int, payloads: Sequence[Payload], stats: Counter[str], *,
             aim_at_child: bool = False) -> None:
        """One protected request with `payloads`; checks the answers and the responder's SAs (raises Violation)."""
        if aim_at_child:
            child = next(iter(self.initiator.sa.children))
            payloads = [aim(p, child) for p in payloads]
        if not encodable(payloads):
            stats["insider_unencodable"] += 1
            return
        self.now += 1.0
        # exchange types without a name (40) are sent on purpose
        self.initiator.probe(self.now, exchange_type, payloads)
        exchange(self.initiator, self.responder, self.now, intercept=_check_response)
        stats["insider_requests"] += 1
        stats["insider_answered"] += len(self.initiator.answers())
        self.initiator.events()
        while (event := self.responder.next_event()) is not None:
            stats["insider_" + type(event).__name__] += 1
            if isinstance(event, ChildSaEstablished) and len(event.keys.encr_in) != event.suite.encryption.key_size:
                raise Violation("a Child SA's key does not fit its suite")
        for view in self.responder.views():
            if view.state not in (State.ESTABLISHED, State.EXPECT_DELETE):
                raise Violation(f"an insider's request left an IKE SA in {view.state.name}")
            if len({ch.spi_in for ch in view.children}) != len(view.children):
                raise Violation("two Child SAs share an inbound SPI")
        if len(self.responder) > 2:
            raise Violation(f"{len(self.responder)} IKE SAs for one peer after one request")


def _check_response(direction: Direction, data: bytes) -> bytes:
    if direction == "r->i":
        message = decode(data)
        if message is None or not message.header.is_response:
            raise Violation("the responder sent an insider something other than a response that decodes")
    return data

