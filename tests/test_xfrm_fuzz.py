"""Hostile bytes from netlink: the decoders (of messages and of answers) raise XfrmDecodeError and nothing
else. Every valid policy survives encode -> decode unchanged, and every request packed in one struct call is
byte for byte what pyroute2 encodes field by field."""

import contextlib
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ikecommon.xfrm import (
    Action,
    Direction,
    Lifetime,
    Mode,
    Policy,
    SaSpec,
    Selector,
    Template,
    XfrmDecodeError,
    algorithm,
    codec,
    decode,
)
from ikecommon.xfrm import messages as m
from ikecommon.xfrm.model import ALGORITHMS, Algorithm

VECTORS = Path(__file__).parent / "vectors" / "xfrm"
SEEDS = [bytes.fromhex(line) for p in sorted(VECTORS.glob("*.hex"))
         for line in p.read_text().splitlines() if line and not line.startswith("#")]


def decode_fully(data: bytes) -> None:
    """Everything a reply or an event goes through: split, decode, check, convert to the model."""
    with contextlib.suppress(XfrmDecodeError):
        list(decode.acks(data))
    try:
        for record in decode.parse(data):
            event = codec.event_from(record.msg_type, record.fields, record.attrs)
            if event is None and record.msg_type in (0x10, 0x1A):
                codec.sa_from(record.fields, record.attrs, show_keys=True)
    except XfrmDecodeError:
        pass


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes(data: bytes):
    decode_fully(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut]) if draw(st.booleans()) else bytes(data)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_real_messages(data: bytes):
    decode_fully(data)


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    v6 = draw(st.booleans())
    bits = 128 if v6 else 32
    net = IPv6Network if v6 else IPv4Network

    def prefix() -> IPv4Network | IPv6Network:
        length = draw(st.integers(0, bits))
        raw = draw(st.integers(0, 2**bits - 1)) >> (bits - length) << (bits - length) if length else 0
        return net((raw, length))

    proto = draw(st.sampled_from([0, 1, 6, 17, 132]))
    ports = proto in (6, 17, 132)
    port = st.one_of(st.none(), st.integers(0, 65535)) if ports else st.none()
    action = draw(st.sampled_from(list(Action)))
    templates = () if action == Action.BLOCK else tuple(draw(st.lists(st.builds(
        Template, mode=st.just(Mode.TRANSPORT), reqid=st.integers(0, 2**32 - 1)), max_size=2)))
    return Policy(Selector(prefix(), prefix(), proto, draw(port), draw(port)),
                  draw(st.sampled_from(list(Direction))), draw(st.integers(0, 2**32 - 1)), action, templates,
                  mark=draw(st.one_of(st.none(), st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)))))


@settings(max_examples=500, deadline=None)
@given(policies())
def test_policy_round_trip(policy: Policy):
    msg = codec.encode_policy(policy)
    msg["header"] = {"type": 0x13, "flags": 5, "sequence_number": 1, "pid": 0}
    msg.encode()
    (record,) = decode.parse(bytes(msg.data))
    assert codec.policy_from(record.fields, record.attrs) == policy


def pyroute2_bytes(parts: m.Parts, msg_type: int) -> bytes:
    msg = parts.message()
    msg["header"] = {"type": msg_type, "flags": 5, "sequence_number": 7, "pid": 0}
    msg.encode()
    return bytes(msg.data)


@settings(max_examples=500, deadline=None)
@given(policies())
def test_packed_policy_requests_are_pyroute2s_bytes(policy: Policy):
    """`Parts.pack` (one struct call per part, what Batches sends) against pyroute2's field-by-field encoding."""
    for parts, msg_type in ((codec.policy_parts(policy), 0x19), (codec.policy_id_parts(policy), 0x14)):
        assert parts.pack(msg_type, 5, 7) == pyroute2_bytes(parts, msg_type)


@st.composite
def sa_specs(draw: st.DrawFn) -> SaSpec:
    v6 = draw(st.booleans())
    address = st.integers(0, 2**128 - 1).map(IPv6Address) if v6 else st.integers(0, 2**32 - 1).map(IPv4Address)
    def one(kind: str) -> Algorithm:
        name = draw(st.sampled_from([n for n, (k, *_) in ALGORITHMS.items() if k == kind]))
        size = draw(st.sampled_from(ALGORITHMS[name][2]))
        return algorithm(name, draw(st.binary(min_size=size, max_size=size)))

    algorithms = (one("aead"),) if draw(st.booleans()) else (one("crypt"), one("auth"))
    soft = draw(st.integers(0, 2**32))
    lifetime = Lifetime(soft_seconds=soft, hard_seconds=soft + draw(st.integers(1, 2**32)),
                        soft_packets=draw(st.one_of(st.none(), st.integers(1, 2**40))))
    return SaSpec(draw(address), draw(address), draw(st.integers(0x100, 2**32 - 1)), algorithms,
                  draw(st.sampled_from(list(Mode))), draw(st.integers(0, 2**32 - 1)),
                  replay_window=draw(st.integers(0, 255)), lifetime=lifetime)


@settings(max_examples=500, deadline=None)
@given(sa_specs())
def test_packed_sa_requests_are_pyroute2s_bytes(spec: SaSpec):
    for parts, msg_type in ((codec.sa_parts(spec), 0x10), (codec.sa_id_parts(spec.dst, spec.spi), 0x11)):
        assert parts.pack(msg_type, 5, 7) == pyroute2_bytes(parts, msg_type)
