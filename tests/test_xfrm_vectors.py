"""XFRM messages agree with iproute2 and the kernel in both directions: captured bytes (tests/vectors/xfrm/,
made by capture.py there) decode to the intended values and re-encode to the same bytes."""

import struct
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest

from ikecommon.xfrm import Action, Direction, Mode, Policy, SaSpec, Selector, Template, XfrmDecodeError, codec, decode
from ikecommon.xfrm import messages as m
from ikecommon.xfrm.model import Algorithm

VECTORS = Path(__file__).parent / "vectors" / "xfrm"


def buffers(name: str) -> list[bytes]:
    lines = (VECTORS / f"{name}.hex").read_text().splitlines()
    return [bytes.fromhex(line) for line in lines if line and not line.startswith("#")]


def messages(name: str) -> list[bytes]:
    out = []
    for buf in buffers(name):
        offset = 0
        while offset < len(buf):
            length = int.from_bytes(buf[offset:offset + 4], "little")
            out.append(buf[offset:offset + length])
            offset += (length + 3) & ~3
    return out


def reencode(raw: bytes) -> bytes:
    """Decode with the declarations, copy every field and attribute into a fresh message, encode."""
    msg_type = int.from_bytes(raw[4:6], "little")
    cls = m.MESSAGE_CLASSES[msg_type]
    decoded = cls(raw)
    decoded.decode()
    fresh = cls()
    for name, value in m.message_fields(decoded).items():
        fresh[name] = value
    fresh["attrs"] = [[name, value] for name, value in decoded["attrs"]]
    fresh["header"] = {k: decoded["header"][k] for k in ("type", "flags", "sequence_number", "pid")}
    fresh.encode()
    return bytes(fresh.data)


ALL = sorted(p.stem for p in VECTORS.glob("*.hex") if "-error-" not in p.stem)  # errors are netlink's, not XFRM's


@pytest.mark.parametrize("name", ALL)
def test_every_vector_reencodes_byte_for_byte(name: str):
    raws = messages(name)
    assert raws
    for raw in raws:
        assert reencode(raw) == raw


def with_header(parts: m.Parts, raw: bytes) -> bytes:
    """Encoded both ways, pyroute2's field by field and `Parts.pack`, which must agree, with raw's header."""
    msg_type, flags, seq = (int.from_bytes(raw[a:b], "little") for a, b in ((4, 6), (6, 8), (8, 12)))
    msg = parts.message()
    msg["header"] = {"type": msg_type, "flags": flags, "sequence_number": seq, "pid": 0}
    msg.encode()
    packed = parts.pack(msg_type, flags, seq)
    assert packed == bytes(msg.data)
    return packed


def test_policy_add_matches_what_iproute2_sends():
    (raw,) = messages("iproute2-policy-add-udp53-out-transport-tmpl")
    (record,) = decode.parse(raw)
    policy = codec.policy_from(record.fields, record.attrs)
    assert policy == Policy(Selector.of("10.1.0.1/32", "10.1.0.53/32", "udp", dport=53), Direction.OUT,
                            priority=100, templates=(Template(Mode.TRANSPORT, reqid=0),))
    assert with_header(codec.policy_parts(policy), raw) == raw


def test_tunnel_template_and_ipv6_block_match_iproute2():
    (tunnel,) = messages("iproute2-policy-add-in-tunnel-tmpl")
    (record,) = decode.parse(tunnel)
    policy = codec.policy_from(record.fields, record.attrs)
    assert policy.templates == (Template(Mode.TUNNEL, reqid=16389, src=ip_address("10.1.0.53"),
                                         dst=ip_address("10.1.0.1")),)
    assert policy.selector.sport == 53 and policy.direction == Direction.IN
    assert with_header(codec.policy_parts(policy), tunnel) == tunnel

    (block,) = messages("iproute2-policy-add-ipv6-tcp53-out-block")
    (record,) = decode.parse(block)
    policy = codec.policy_from(record.fields, record.attrs)
    assert policy.action == Action.BLOCK and policy.owned
    assert policy.selector == Selector(ip_network("fd00::1/128"), ip_network("fd00::53/128"), 6, None, 53)
    assert with_header(codec.policy_parts(policy), block) == block


def test_policy_delete_matches_iproute2():
    (raw,) = messages("iproute2-policy-delete-udp53-out")
    policy = Policy(Selector.of("10.1.0.1/32", "10.1.0.53/32", "udp", dport=53), Direction.OUT, priority=0)
    assert with_header(codec.policy_id_parts(policy), raw) == raw


@pytest.mark.parametrize(("name", "mode", "algorithms"), [
    ("iproute2-state-add-aes-gcm-transport", Mode.TRANSPORT,
     (Algorithm("aead", "rfc4106(gcm(aes))", b"\x11" * 20, 128),)),
    ("iproute2-state-add-cbc-hmac-tunnel", Mode.TUNNEL,
     (Algorithm("auth", "hmac(sha256)", b"\x33" * 32, 128), Algorithm("crypt", "cbc(aes)", b"\x22" * 16))),
])
def test_sa_add_matches_what_iproute2_sends(name: str, mode: Mode, algorithms: tuple[Algorithm, ...]):
    (raw,) = messages(name)
    (record,) = decode.parse(raw)
    sa = codec.sa_from(record.fields, record.attrs, show_keys=True)
    assert (sa.src, sa.dst, sa.mode) == (ip_address("10.1.0.1"), ip_address("10.1.0.53"), mode)
    assert [(a.name, a.key) for a in sa.algorithms] == [(a.name, a.key) for a in algorithms]
    spec = SaSpec(src=sa.src, dst=sa.dst, spi=sa.spi, algorithms=algorithms, mode=mode, reqid=sa.reqid,
                  replay_window=0)
    assert with_header(codec.sa_parts(spec), raw) == raw


def test_keys_stay_out_unless_asked():
    (raw,) = messages("iproute2-state-add-aes-gcm-transport")
    (record,) = decode.parse(raw)
    sa = codec.sa_from(record.fields, record.attrs)
    assert sa.algorithms[0].key is None and sa.algorithms[0].name == "rfc4106(gcm(aes))"
    assert sa.algorithms[0].key_bits == 160 and sa.algorithms[0].bits == 128
    assert "1111" not in repr(sa)


def test_kernel_policy_dump_reads_back_as_added():
    records = [r for buf in buffers("kernel-policy-dump-three-policies") for r in decode.parse(buf)]
    policies = {(str(p.selector.dst), p.direction): p for p in (codec.policy_from(r.fields, r.attrs)
                                                                for r in records)}
    assert len(policies) == 3
    trap = policies[("10.1.0.53/32", Direction.OUT)]
    assert trap.templates == (Template(Mode.TRANSPORT),) and trap.priority == 100 and trap.index > 0
    assert policies[("fd00::53/128", Direction.OUT)].action == Action.BLOCK
    assert policies[("10.1.0.1/32", Direction.IN)].templates[0].mode == Mode.TUNNEL


def test_kernel_larval_sa_dump():
    (record,) = [r for buf in buffers("kernel-state-dump-larval-allocspi") for r in decode.parse(buf)]
    sa = codec.sa_from(record.fields, record.attrs)
    assert (sa.src, sa.dst, sa.reqid, sa.proto) == (ip_address("10.1.0.1"), ip_address("10.1.0.53"), 9, 50)
    assert sa.spi != 0 and sa.algorithms == ()


def test_a_refusal_reads_as_its_sequence_number_and_errno():
    """PreparedPolicies sends a batch and matches each answer to its request by sequence number."""
    raw = buffers("kernel-error-policy-delete-absent")[0]
    seq = int.from_bytes(raw[28:32], "little")  # the request's, in its header that the error quotes
    assert raw[24:26] == b"\x14\x00"  # ... a DELPOLICY
    assert list(decode.acks(raw)) == [(seq, -2, None)]  # ENOENT, without an extended ack
    ack = struct.pack("=IHHIIi", 36, 2, 0x100, 7, 0, 0) + bytes(16)
    assert list(decode.acks(ack + raw)) == [(7, 0, None), (seq, -2, None)]
    for cut in (raw[:10], raw[:18], raw[:-1]):
        with pytest.raises(XfrmDecodeError):
            list(decode.acks(cut))


def test_an_extended_ack_carries_the_kernels_words():
    """The kernel's refusal of an SA add where it has no ESP, as iproute2 got it (extended ack, request quoted in
    full): the words after the quote are read; cut short or capped, they are left out, never misread."""
    raw = buffers("kernel-error-state-add-no-esp-ext-ack")[0]
    seq = int.from_bytes(raw[28:32], "little")
    assert list(decode.acks(raw)) == [(seq, -38, "Requested AEAD algorithm not found")]  # ENOSYS
    attribute = raw[-40:]  # the NLMSGERR_ATTR_MSG attribute: 39 bytes and a pad
    assert attribute[2:4] == b"\x01\x00"
    capped = bytearray(raw[:36] + attribute)  # the same answer to a socket with NETLINK_CAP_ACK
    capped[0:4] = len(capped).to_bytes(4, "little")
    capped[6:8] = (0x300).to_bytes(2, "little")
    assert list(decode.acks(bytes(capped))) == [(seq, -38, "Requested AEAD algorithm not found")]
    for broken in (raw[:-40] + b"\x00\xff" + attribute[2:],  # an attribute longer than the message
                   raw[:-40] + b"\x02\x00" + attribute[2:],  # shorter than its own header
                   raw[:-40] + attribute[:2] + b"\x02\x00" + attribute[4:],  # of another type
                   raw[:20] + b"\x08\x00\x00\x00" + raw[24:],  # a quoted request shorter than its header
                   raw[:20] + b"\xff\xff\x00\x00" + raw[24:]):  # or longer than the answer
        assert list(decode.acks(broken)) == [(seq, -38, None)]
