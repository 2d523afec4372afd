"""Model <-> message: the dataclasses of `model.py` to the declarations of `messages.py` and back.

Decoding checks what the kernel sent against linux/xfrm.h (families, enum values, lengths) and raises
XfrmDecodeError for anything that does not fit. Encoding fills lifetimes and algorithm masks the way
iproute2 does, so the same policy encodes to the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_network
from typing import Any, cast

from . import messages as m
from .constants import XFRM_INF, Action, Direction, Mode, MsgType
from .errors import InvalidXfrmInput, XfrmDecodeError
from .model import (
    Address,
    AlgorithmInfo,
    Lifetime,
    Policy,
    SaCounters,
    SaInfo,
    SaSpec,
    Selector,
    Template,
)

AF_INET, AF_INET6 = 2, 10
ALL_ALGOS = 0xFFFF_FFFF


# --- addresses and selectors ---

def pack_address(addr: Address | None) -> bytes:
    return b"" if addr is None else addr.packed.ljust(16, b"\0")


def unpack_address(raw: bytes, family: int, what: str) -> Address:
    if family == AF_INET:
        return IPv4Address(raw[:4])
    if family == AF_INET6:
        return IPv6Address(raw[:16])
    raise XfrmDecodeError(f"{what}: unknown address family {family}")


def _family_of(addr: Address) -> int:
    return AF_INET if addr.version == 4 else AF_INET6


def selector_values(sel: Selector, prefix: str = "sel_") -> dict[str, Any]:
    return {
        f"{prefix}daddr": pack_address(sel.dst.network_address),
        f"{prefix}saddr": pack_address(sel.src.network_address),
        f"{prefix}dport": sel.dport or 0, f"{prefix}dport_mask": 0xFFFF if sel.dport is not None else 0,
        f"{prefix}sport": sel.sport or 0, f"{prefix}sport_mask": 0xFFFF if sel.sport is not None else 0,
        f"{prefix}family": sel.family,
        f"{prefix}prefixlen_d": sel.dst.prefixlen, f"{prefix}prefixlen_s": sel.src.prefixlen,
        f"{prefix}proto": sel.proto, f"{prefix}ifindex": sel.ifindex, f"{prefix}user": 0,
    }


def selector_from(fields: Mapping[str, Any], prefix: str = "sel_") -> Selector:
    family = fields[f"{prefix}family"]
    if family == 0:  # an SA without a selector: the kernel leaves it all zero
        family = AF_INET
    try:
        src = ip_network((unpack_address(fields[f"{prefix}saddr"], family, "selector"),
                          fields[f"{prefix}prefixlen_s"]), strict=False)
        dst = ip_network((unpack_address(fields[f"{prefix}daddr"], family, "selector"),
                          fields[f"{prefix}prefixlen_d"]), strict=False)
        return Selector(src, dst, fields[f"{prefix}proto"],
                        fields[f"{prefix}sport"] if fields[f"{prefix}sport_mask"] else None,
                        fields[f"{prefix}dport"] if fields[f"{prefix}dport_mask"] else None,
                        fields[f"{prefix}ifindex"])
    except (ValueError, InvalidXfrmInput) as exc:
        raise XfrmDecodeError(f"selector does not decode: {exc}") from None


def _infinite_lifetime(prefix: str = "lft_") -> dict[str, int]:
    return {f"{prefix}{name}": XFRM_INF if "limit" in name else 0 for name in m.LIFETIME_CFG_NAMES}


def _lifetime(lifetime: Lifetime) -> dict[str, int]:
    values = {"lft_soft_add_expires_seconds": lifetime.soft_seconds,
              "lft_hard_add_expires_seconds": lifetime.hard_seconds}
    if lifetime.soft_packets is not None:
        values["lft_soft_packet_limit"] = lifetime.soft_packets
    if lifetime.hard_packets is not None:
        values["lft_hard_packet_limit"] = lifetime.hard_packets
    return values


# --- policies ---

def pack_templates(policy: Policy) -> bytes:
    family = policy.selector.family
    out = b""
    for t in policy.templates:
        t_family = _family_of(t.dst) if t.dst is not None else family
        out += m.USER_TMPL.pack(pack_address(t.dst).ljust(16, b"\0"), t.spi.to_bytes(4, "big"), t.proto,
                                t_family, pack_address(t.src).ljust(16, b"\0"), t.reqid, int(t.mode), 0,
                                int(t.optional), ALL_ALGOS, ALL_ALGOS, ALL_ALGOS)
    return out


def unpack_templates(raw: bytes) -> tuple[Template, ...]:
    if len(raw) % m.USER_TMPL.size:
        raise XfrmDecodeError(f"XFRMA_TMPL of {len(raw)} bytes is not a whole number of {m.USER_TMPL.size}-byte "
                              "templates")
    templates = []
    for offset in range(0, len(raw), m.USER_TMPL.size):
        (daddr, spi, proto, family, saddr, reqid, mode, _share, optional,
         *_algos) = m.USER_TMPL.unpack_from(raw, offset)
        wildcard = daddr == bytes(16) and saddr == bytes(16)
        try:
            templates.append(Template(
                mode=_enum(Mode, mode, "template mode"), reqid=reqid, proto=proto, spi=int.from_bytes(spi, "big"),
                src=None if wildcard else unpack_address(saddr, family, "template"),
                dst=None if wildcard else unpack_address(daddr, family, "template"), optional=bool(optional)))
        except InvalidXfrmInput as exc:
            raise XfrmDecodeError(f"template does not decode: {exc}") from None
    return tuple(templates)


def policy_values(policy: Policy, prefix: str = "") -> dict[str, Any]:
    return {
        **selector_values(policy.selector, f"{prefix}sel_"), **_infinite_lifetime(f"{prefix}lft_"),
        **{f"{prefix}curlft_{name}": 0 for name in m.LIFETIME_CUR_NAMES},
        f"{prefix}priority": policy.priority, f"{prefix}index": policy.index, f"{prefix}dir": int(policy.direction),
        f"{prefix}action": int(policy.action), f"{prefix}flags": 0, f"{prefix}share": 0,
    }


def policy_parts(policy: Policy) -> m.Parts:
    attrs: list[list[Any]] = []
    if policy.templates:
        attrs.append(["XFRMA_TMPL", pack_templates(policy)])
    if policy.mark is not None:
        attrs.append(["XFRMA_MARK", {"v": policy.mark[0], "m": policy.mark[1]}])
    return m.Parts(m.userpolicy_info, policy_values(policy), attrs)


def encode_policy(policy: Policy) -> m.userpolicy_info:
    return cast(m.userpolicy_info, policy_parts(policy).message())


def policy_from(fields: Mapping[str, Any], attrs: Mapping[str, Any], prefix: str = "") -> Policy:
    try:
        return Policy(
            selector=selector_from(fields, f"{prefix}sel_"),
            direction=_enum(Direction, fields[f"{prefix}dir"], "policy direction"),
            priority=fields[f"{prefix}priority"],
            action=_enum(Action, fields[f"{prefix}action"], "policy action"),
            templates=unpack_templates(attrs.get("XFRMA_TMPL", b"")),
            index=fields[f"{prefix}index"],
            mark=(attrs["XFRMA_MARK"]["v"], attrs["XFRMA_MARK"]["m"]) if "XFRMA_MARK" in attrs else None,
        )
    except InvalidXfrmInput as exc:
        raise XfrmDecodeError(f"policy does not decode: {exc}") from None


def policy_id_parts(policy: Policy) -> m.Parts:
    values = {**selector_values(policy.selector), "index": 0, "dir": int(policy.direction)}
    attrs = [["XFRMA_MARK", {"v": policy.mark[0], "m": policy.mark[1]}]] if policy.mark else []
    return m.Parts(m.userpolicy_id, values, attrs)


def encode_policy_id(policy: Policy) -> m.userpolicy_id:
    return cast(m.userpolicy_id, policy_id_parts(policy).message())


# --- SAs ---

def sa_parts(spec: SaSpec) -> m.Parts:
    selector = spec.selector
    values: dict[str, Any] = selector_values(selector) if selector else {}
    family = _family_of(spec.dst)
    values.update({
        "id_daddr": pack_address(spec.dst), "id_spi": spec.spi, "id_proto": 50, "saddr": pack_address(spec.src),
        **_infinite_lifetime(), **_lifetime(spec.lifetime), "reqid": spec.reqid, "family": family,
        "mode": int(spec.mode), "replay_window": spec.replay_window,
    })
    attrs: list[list[Any]] = []
    for algo in spec.algorithms:
        kernel_name = algo.name.encode()
        if algo.kind == "aead":
            attrs.append(["XFRMA_ALG_AEAD", m.ALGO_AEAD.pack(kernel_name, len(algo.key) * 8, algo.bits) + algo.key])
        elif algo.kind == "auth":
            attrs.append(["XFRMA_ALG_AUTH_TRUNC",
                          m.ALGO_AUTH.pack(kernel_name, len(algo.key) * 8, algo.bits) + algo.key])
        else:
            attrs.append(["XFRMA_ALG_CRYPT", m.ALGO.pack(kernel_name, len(algo.key) * 8) + algo.key])
    return m.Parts(m.usersa_info, values, attrs)


def encode_sa(spec: SaSpec) -> m.usersa_info:
    return cast(m.usersa_info, sa_parts(spec).message())


ALGORITHM_ATTRS = {"XFRMA_ALG_AEAD": ("aead", m.ALGO_AEAD), "XFRMA_ALG_CRYPT": ("crypt", m.ALGO),
                   "XFRMA_ALG_AUTH_TRUNC": ("auth", m.ALGO_AUTH), "XFRMA_ALG_AUTH": ("auth", m.ALGO)}


def _algorithms(attrs: Mapping[str, Any], show_keys: bool) -> tuple[AlgorithmInfo, ...]:
    found = []
    for attr, raw in attrs.items():  # in the message's order
        if attr not in ALGORITHM_ATTRS:
            continue
        kind, layout = ALGORITHM_ATTRS[attr]
        if len(raw) < layout.size:
            raise XfrmDecodeError(f"{attr} of {len(raw)} bytes is shorter than its {layout.size}-byte header")
        name, key_bits, *extra = layout.unpack_from(raw)
        key = raw[layout.size:layout.size + (key_bits + 7) // 8]
        if len(key) * 8 < key_bits:
            raise XfrmDecodeError(f"{attr} announces a {key_bits}-bit key but carries {len(key)} bytes")
        found.append(AlgorithmInfo(kind=kind, name=name.rstrip(b"\0").decode(errors="replace"), key_bits=key_bits,
                                   bits=extra[0] if extra else 0, key=bytes(key) if show_keys else None))
    return tuple(found)


def sa_from(fields: Mapping[str, Any], attrs: Mapping[str, Any], show_keys: bool = False) -> SaInfo:
    family = fields["family"]
    return SaInfo(
        src=unpack_address(fields["saddr"], family, "SA source"),
        dst=unpack_address(fields["id_daddr"], family, "SA destination"),
        spi=fields["id_spi"], proto=fields["id_proto"], mode=_enum(Mode, fields["mode"], "SA mode"),
        reqid=fields["reqid"], selector=selector_from(fields), algorithms=_algorithms(attrs, show_keys),
        counters=SaCounters(bytes=fields["curlft_bytes"], packets=fields["curlft_packets"],
                            add_time=fields["curlft_add_time"], use_time=fields["curlft_use_time"]),
    )


def sa_id_parts(dst: Address, spi: int, proto: int = 50) -> m.Parts:
    return m.Parts(m.usersa_id, {"daddr": pack_address(dst), "spi": spi, "family": _family_of(dst), "proto": proto},
                   [])


def encode_sa_id(dst: Address, spi: int, proto: int = 50) -> m.usersa_id:
    return cast(m.usersa_id, sa_id_parts(dst, spi, proto).message())


# --- events ---

@dataclass(frozen=True)
class Acquire:
    """The kernel wants an SA for a packet that hit a trap (XFRM_MSG_ACQUIRE)."""

    selector: Selector  # the packet's own flow, ports included
    policy: Policy  # the trap it hit
    src: Address
    dst: Address
    seq: int


@dataclass(frozen=True)
class SaExpired:
    sa: SaInfo
    hard: bool


@dataclass(frozen=True)
class PolicyExpired:
    policy: Policy
    hard: bool


@dataclass(frozen=True)
class PolicyAdded:
    policy: Policy


@dataclass(frozen=True)
class PolicyDeleted:
    policy: Policy


@dataclass(frozen=True)
class SaAdded:
    sa: SaInfo


@dataclass(frozen=True)
class SaDeleted:
    sa: SaInfo


@dataclass(frozen=True)
class Flushed:
    what: str  # "SAs" or "policies"


XfrmEvent = Acquire | SaExpired | PolicyExpired | PolicyAdded | PolicyDeleted | SaAdded | SaDeleted | Flushed


def event_from(msg_type: int, fields: Mapping[str, Any], attrs: Mapping[str, Any]) -> XfrmEvent | None:
    """The typed event for one multicast message, or None for message types this layer does not report."""
    if msg_type == MsgType.ACQUIRE:
        family = fields["sel_family"]
        return Acquire(selector=selector_from(fields), policy=policy_from(fields, attrs, "pol_"),
                       src=unpack_address(fields["saddr"], family, "ACQUIRE source"),
                       dst=unpack_address(fields["id_daddr"], family, "ACQUIRE destination"), seq=fields["seq"])
    if msg_type == MsgType.EXPIRE:
        return SaExpired(sa=sa_from(fields, attrs), hard=bool(fields["hard"]))
    if msg_type == MsgType.POLEXPIRE:
        return PolicyExpired(policy=policy_from(fields, attrs), hard=bool(fields["hard"]))
    if msg_type in (MsgType.NEWPOLICY, MsgType.UPDPOLICY):
        return PolicyAdded(policy_from(fields, attrs))
    if msg_type == MsgType.DELPOLICY:  # the whole policy rides in XFRMA_POLICY
        if "XFRMA_POLICY" not in attrs:
            raise XfrmDecodeError("DELPOLICY event without XFRMA_POLICY")
        return PolicyDeleted(policy_from(attrs["XFRMA_POLICY"], attrs))
    if msg_type in (MsgType.NEWSA, MsgType.UPDSA):
        return SaAdded(sa_from(fields, attrs))
    if msg_type == MsgType.DELSA:
        if "XFRMA_SA" not in attrs:
            raise XfrmDecodeError("DELSA event without XFRMA_SA")
        return SaDeleted(sa_from(attrs["XFRMA_SA"], attrs))
    if msg_type == MsgType.FLUSHSA:
        return Flushed("SAs")
    if msg_type == MsgType.FLUSHPOLICY:
        return Flushed("policies")
    return None


def _enum(enum: Any, value: int, what: str) -> Any:
    try:
        return enum(value)
    except ValueError:
        raise XfrmDecodeError(f"unknown {what} {value}") from None
