"""Hostile datagrams into a Responder in every state: random bytes, random headers aimed at our SPIs, and mutations
of a real in-memory exchange (every exchange type, both directions, plus requests held back so that they were never
delivered).

The properties, for every input:
- `Responder.receive` returns normally (an IkeError subclass would be tolerated and counted; anything else fails);
- whatever it sends decodes, is a response, and when unprotected is an IKE_SA_INIT answer or carries only the
  Notify types RFC 7296 allows without protection (never INVALID_SYNTAX);
- the SAs that were half-open, established or waiting for deletion before the input are exactly as they were
  after it (`IkeSaView`, which covers state, SPIs, Child SAs, message IDs and the cached response).

Targets: a fresh responder (new IKE SAs in EXPECT_IKE_SA_INIT), one with a half-open SA (EXPECT_IKE_AUTH), and one
with an ESTABLISHED IKE SA and, beside it, the IKE SA it replaced, in EXPECT_DELETE.

Mutations of protected messages mostly stop at the ICV, as they should. A NULL-authenticated peer, though, is anyone:
`test_authenticated_garbage` plays such an insider and sends well-protected requests with generated payloads
(proposals, KE values, selectors, notifies, deletes, undecodable bodies) into an established SA, checking that the
responder answers within the RFC and stays consistent."""

import random
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from ipaddress import IPv4Address

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_ikev2_exchanges import (
    DNS,
    GCM256,
    HOST_I,
    I_END,
    IKE_X25519,
    R_END,
    UDP_TO_R,
    initiator,
    responder,
    seeded,
)
from test_ikev2_fuzz import mutate

from enclave_ike.ikev2 import crypto as c
from enclave_ike.ikev2.config import Endpoint, Identity, ResponderConfig
from enclave_ike.ikev2.constants import DhGroup, EncrId, ExchangeType, HeaderFlag, NotifyType, ProtocolId
from enclave_ike.ikev2.errors import IkeError, LocalProtocolError
from enclave_ike.ikev2.events import ChildSaEstablished, ResponseReceived
from enclave_ike.ikev2.initiator import Datagram, exchange
from enclave_ike.ikev2.negotiation import offer_esp, offer_ike
from enclave_ike.ikev2.payloads import (
    Delete,
    Encrypted,
    IkeHeader,
    KeyExchange,
    Message,
    Nonce,
    Notify,
    Proposal,
    SecurityAssociation,
    TrafficSelector,
    TrafficSelectorsInitiator,
    TrafficSelectorsResponder,
    Transform,
    TransformAttribute,
    UnknownPayload,
    encode_payloads,
)
from enclave_ike.ikev2.responder import Responder
from enclave_ike.ikev2.state import IkeSaView, State

NOW = 1.0
SOURCES = (I_END, Endpoint(I_END.address, 4500), Endpoint(IPv4Address("198.51.100.9"), 500),
           Endpoint(IPv4Address("198.51.100.10"), 1701))
UNPROTECTED = {NotifyType.COOKIE, NotifyType.INVALID_KE_PAYLOAD, NotifyType.NO_PROPOSAL_CHOSEN,
               NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD, NotifyType.INVALID_MAJOR_VERSION, NotifyType.INVALID_IKE_SPI}
STATS: Counter[str] = Counter()


@dataclass
class Target:
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


def _guard(r: Responder) -> dict[bytes, IkeSaView]:
    return {view.spi_r: view for view in r.views()}


@cache
def world() -> World:
    """Build the targets from real exchanges; the transcripts are the corpus."""
    corpus: list[bytes] = []

    def record(transcript: list[Datagram]) -> None:
        corpus.extend(d.data for d in transcript)

    # a fresh responder
    fresh = responder(seed=b"fuzz-fresh")
    # a half-open SA: IKE_SA_INIT done, the IKE_AUTH request held back
    held_auth: list[bytes] = []

    def hold_auth(direction: str, data: bytes) -> bytes | None:
        if direction == "i->r" and Message.decode(data).header.exchange == ExchangeType.IKE_AUTH:
            held_auth.append(data)
            return None
        return data
    half = responder(seed=b"fuzz-half")
    record(exchange(initiator(seed=b"fuzz-half-i"), half, 0.0, intercept=hold_auth))
    # an established SA with every exchange run on it, then rekeyed with the old SA's deletion held back
    rcfg = ResponderConfig(local_id=Identity.null(), dns=DNS)
    est = Responder(rcfg, local=R_END, random=seeded(b"fuzz-est"), cookie_secrets=None)
    ini = initiator(seed=b"fuzz-est-i")
    record(exchange(ini, est, 0.0))
    ini.create_child_sa(0.1, esp_suites=(c.ChildSuite(EncrId.ENCR_AES_GCM_16, 128, dh_group=DhGroup.ECP_256),))
    record(exchange(ini, est, 0.1))
    ini.rekey_child_sa(0.2, next(iter(ini.sa.children)))
    record(exchange(ini, est, 0.2))
    ini.check_liveness(0.3)
    record(exchange(ini, est, 0.3))
    ini.delete_child_sa(0.4, list(ini.sa.children)[-1])
    record(exchange(ini, est, 0.4))
    held_delete: list[bytes] = []

    def hold_delete(direction: str, data: bytes) -> bytes | None:
        message = Message.decode(data)
        if direction == "i->r" and message.header.exchange == ExchangeType.INFORMATIONAL and not held_delete:
            held_delete.append(data)
            return None
        return data
    ini.rekey(0.5)
    record(exchange(ini, est, 0.5, intercept=hold_delete))
    ini.check_liveness(0.6)  # on the new IKE SA
    record(exchange(ini, est, 0.6))
    ini.create_child_sa(0.7)
    record(exchange(ini, est, 0.7))
    states = sorted(view.state.name for view in est.views())
    assert states == ["ESTABLISHED", "EXPECT_DELETE"], states
    assert [view.state for view in half.views()] == [State.EXPECT_IKE_AUTH]
    for r in (fresh, half, est):
        r.datagrams_to_send()
        while r.next_event() is not None:
            pass
    corpus += held_auth + held_delete
    targets = [Target("fresh", fresh, {}), Target("half-open", half, _guard(half), held_auth),
               Target("established", est, _guard(est), held_delete)]
    return World(targets, corpus)


def check_answers(datagrams: list[tuple[bytes, Endpoint]]) -> None:
    for data, _to in datagrams:
        message = Message.decode(data)  # what we send always decodes
        assert message.header.is_response
        if any(isinstance(p, Encrypted) for p in message.payloads):
            continue
        if message.header.exchange == ExchangeType.IKE_SA_INIT and message.find(SecurityAssociation):
            continue  # a genuine IKE_SA_INIT answer to a well-formed (mutated) request
        notifies = {n.notify_type for n in message.find_all(Notify)}
        assert notifies and notifies <= UNPROTECTED, notifies


def feed(target: Target, data: bytes, source: Endpoint) -> None:
    if data in target.held:
        return  # delivering a genuine held request intact is a legitimate change
    before = target.snapshot()
    try:
        target.responder.receive(data, source, NOW)
    except IkeError:
        STATS["ike_error"] += 1
    out = target.responder.datagrams_to_send()
    STATS["answered" if out else "silent"] += 1
    check_answers(out)
    while target.responder.next_event() is not None:
        STATS["events"] += 1
    assert target.snapshot() == before, target.name


targets = st.integers(0, 2)
sources = st.sampled_from(SOURCES)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(targets, st.binary(max_size=600), sources)
def test_random_bytes_in_every_state(which, data, source):
    feed(world().targets[which], data, source)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(targets, st.sampled_from([34, 35, 36, 37, 0, 255]), st.integers(0, 255), st.integers(0, 5),
       st.integers(0, 60), st.binary(max_size=300), st.booleans(), sources)
def test_headers_aimed_at_our_spis(which, exchange_type, flags, message_id, first_payload, body, spi_r_zero,
                                   source):
    """A well-formed header naming an SA the responder has (or a zero SPIr), with anything behind it."""
    target = world().targets[which]
    views = target.responder.views() or [None]
    view = views[message_id % len(views)]
    spi_i = view.spi_i if view else b"\x01" * 8
    spi_r = b"\0" * 8 if spi_r_zero or view is None else view.spi_r
    header = IkeHeader(spi_i, spi_r, exchange_type, HeaderFlag(flags), message_id)
    feed(target, header.encode(first_payload, 28 + len(body)) + body, source)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(targets, st.integers(0, 10_000), st.integers(0, 2**32 - 1), sources)
def test_mutated_exchange_in_every_state(which, index, seed, source):
    w = world()
    original = w.corpus[index % len(w.corpus)]
    rng = random.Random(seed)
    if rng.random() < 0.5:  # keep the SPIs, so the mutation reaches the SA behind them
        data = original[:16] + mutate(rng, original[16:]) if len(original) > 16 else original
        if len(data) >= 28 and rng.random() < 0.85:
            data = data[:24] + len(data).to_bytes(4, "big") + data[28:]
    else:
        data = mutate(rng, original)
    feed(w.targets[which], data, source)


def test_replayed_corpus_changes_nothing():
    """Every genuine datagram of the exchange, delivered again to every target: old message IDs are dropped, the
    last request of each SA is answered from its cache."""
    w = world()
    for target in w.targets:
        for data in w.corpus:
            feed(target, data, I_END)


def test_many_mutations(capsys):
    """A longer deterministic run; prints its counts (recorded in the report)."""
    w = world()
    rng = random.Random(20261123)
    start, count = time.perf_counter(), 0
    before = Counter(STATS)
    while count < 100_000:
        original = rng.choice(w.corpus)
        keep_spis = rng.random() < 0.6 and len(original) > 16
        data = original[:16] + mutate(rng, original[16:]) if keep_spis else mutate(rng, original)
        feed(rng.choice(w.targets), data, rng.choice(SOURCES))
        count += 1
    elapsed = time.perf_counter() - start
    delta = Counter(STATS)
    delta.subtract(before)
    with capsys.disabled():
        print(f"\nstate fuzz: {count} mutated datagrams in {elapsed:.2f} s; {dict(delta)}; "
              f"SAs held: {[len(t.responder) for t in w.targets]}")
    assert delta["ike_error"] == 0


# --- an authenticated peer sending garbage inside SK ---

_GROUP_KEYS = {group: c.DiffieHellman.generate(group, seeded(b"ke%d" % group)).public_key
               for group in (DhGroup.ECP_256, DhGroup.CURVE25519)}
_ADDRESSES = [I_END.address, R_END.address, IPv4Address("0.0.0.0"), IPv4Address("255.255.255.255")]

transform_st = st.builds(
    Transform, st.sampled_from([1, 2, 3, 4, 5, 9]),
    st.sampled_from([0, 1, 5, 12, 14, 19, 20, 31, 0xFFFF]),
    st.one_of(st.just(()), st.tuples(st.builds(TransformAttribute, st.sampled_from([14, 15]),
                                                st.sampled_from([0, 128, 256, 77])))))
proposal_st = st.builds(
    Proposal, st.integers(1, 4), st.sampled_from([ProtocolId.IKE, ProtocolId.ESP, ProtocolId.AH, 9]),
    st.sampled_from([b"", b"\0" * 4, b"\1\2\3\4", b"\5" * 8, b"\0" * 8]),
    st.lists(transform_st, max_size=6).map(tuple))
selector_st = st.builds(TrafficSelector, st.sampled_from(_ADDRESSES), st.sampled_from(_ADDRESSES),
                        st.sampled_from([0, 6, 17, 1]), st.sampled_from([0, 53, 65535]),
                        st.sampled_from([0, 53, 65535]))
payload_st = st.one_of(
    st.builds(SecurityAssociation, st.lists(proposal_st, min_size=1, max_size=3).map(tuple)),
    st.builds(KeyExchange, st.sampled_from([19, 31, 14, 0, 99]),
              st.one_of(st.sampled_from(list(_GROUP_KEYS.values())), st.binary(max_size=70))),
    st.builds(Nonce, st.binary(min_size=16, max_size=40)),
    st.builds(TrafficSelectorsInitiator, st.lists(selector_st, max_size=3).map(tuple)),
    st.builds(TrafficSelectorsResponder, st.lists(selector_st, max_size=3).map(tuple)),
    st.builds(Notify, st.sampled_from([NotifyType.REKEY_SA, NotifyType.USE_TRANSPORT_MODE, NotifyType.COOKIE,
                                       NotifyType.INVALID_SYNTAX, 40000]),
              st.binary(max_size=8), st.sampled_from([0, 1, 3]), st.sampled_from([b"", b"\1\2\3\4", b"\0" * 8])),
    st.builds(Delete, st.sampled_from([ProtocolId.IKE, ProtocolId.ESP, ProtocolId.AH]), st.just(4),
              st.lists(st.binary(min_size=4, max_size=4), max_size=3).map(tuple)),
    st.builds(UnknownPayload, st.integers(33, 60), st.binary(max_size=40), st.booleans()),
)
_CHILD_TEMPLATE = [offer_esp([GCM256, c.ChildSuite(EncrId.ENCR_AES_GCM_16, 256, dh_group=DhGroup.ECP_256)],
                             b"\7\7\7\7", in_ike_auth=False),
                   Nonce(b"n" * 32), KeyExchange(DhGroup.ECP_256, _GROUP_KEYS[DhGroup.ECP_256]),
                   TrafficSelectorsInitiator((HOST_I,)), TrafficSelectorsResponder((UDP_TO_R,)),
                   Notify(NotifyType.REKEY_SA, protocol=ProtocolId.ESP, spi=b"\1\2\3\4"),
                   Notify(NotifyType.USE_TRANSPORT_MODE)]
_IKE_TEMPLATE = [offer_ike([IKE_X25519], b"\x09" * 8), Nonce(b"m" * 32),
                 KeyExchange(DhGroup.CURVE25519, _GROUP_KEYS[DhGroup.CURVE25519])]


@st.composite
def near_valid(draw: st.DrawFn) -> list:
    """A valid CREATE_CHILD_SA (new Child SA, Child rekey, IKE rekey) with a few payloads dropped, duplicated or
    replaced by generated ones."""
    template = list(draw(st.sampled_from([_CHILD_TEMPLATE[:5], _CHILD_TEMPLATE[:6], _CHILD_TEMPLATE,
                                          [*_CHILD_TEMPLATE[:2], *_CHILD_TEMPLATE[3:5]], _IKE_TEMPLATE])))
    for _ in range(draw(st.integers(0, 2))):
        action = draw(st.sampled_from(["drop", "dup", "replace", "keep"]))
        i = draw(st.integers(0, len(template) - 1))
        if action == "drop":
            del template[i]
        elif action == "dup":
            template.insert(i, template[i])
        elif action == "replace":
            template[i] = draw(payload_st)
        if not template:
            break
    return template


request_st = st.one_of(
    st.tuples(st.sampled_from([ExchangeType.CREATE_CHILD_SA, ExchangeType.INFORMATIONAL, ExchangeType.IKE_AUTH, 40]),
              st.lists(payload_st, max_size=6)),
    st.tuples(st.just(ExchangeType.CREATE_CHILD_SA), near_valid()))


def _encodable(payloads: list) -> bool:
    try:
        encode_payloads(payloads)
    except LocalProtocolError:
        return False
    return True


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(request_st, min_size=1, max_size=3), st.booleans())
def test_authenticated_garbage(requests, use_real_spis):
    ini, resp = initiator(seed=b"insider"), responder(seed=b"insider-r")
    exchange(ini, resp, 0.0)
    child = next(iter(ini.sa.children))
    for n, (exchange_type, generated) in enumerate(requests):
        payloads = [_aim(p, child) for p in generated] if use_real_spis else generated
        assume(_encodable(payloads))
        if not ini.sa.established:
            break
        ini.send_custom_request(1.0 + n, exchange_type, payloads)
        exchange(ini, resp, 1.0 + n)
        STATS["insider_requests"] += 1
        answers = [e for e in ini.events() if isinstance(e, ResponseReceived)]
        STATS["insider_answered"] += len(answers)
        for event in drain_all(resp):
            STATS["insider_" + type(event).__name__] += 1
            if isinstance(event, ChildSaEstablished):
                assert len(event.keys.encr_in) == event.suite.encryption.key_size
        for view in resp.views():
            assert view.state in (State.ESTABLISHED, State.EXPECT_DELETE)
            assert len({ch.spi_in for ch in view.children}) == len(view.children)
        assert len(resp) <= 2


def _aim(payload: object, child: bytes) -> object:
    """Point REKEY_SA notifies and ESP deletes at the real Child SA."""
    if isinstance(payload, Notify) and payload.spi:
        return Notify(payload.notify_type, payload.data, ProtocolId.ESP, child)
    if isinstance(payload, Delete) and payload.spis:
        return Delete(ProtocolId.ESP, 4, (child,))
    return payload


def drain_all(r: Responder) -> list:
    out = []
    while (event := r.next_event()) is not None:
        out.append(event)
    return out
