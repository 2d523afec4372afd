"""NETLINK_XFRM messages, declared on pyroute2's nlmsg/nla base the way linux/xfrm.h lays them out.

pyroute2 packs each field on its own, so nested structs are flattened here with a prefix per struct
(`sel_` for the selector, `lft_`/`curlft_` for lifetimes, `id_` for xfrm_id) and every byte of padding
is spelled out: a missing pad shifts the attributes that follow. Field formats are pyroute2's `struct`
codes; `>` marks the fields the kernel keeps in network byte order (SPIs and ports). Addresses are 16
bytes (xfrm_address_t), IPv4 in the first four.

Arrays and variable-length tails (templates, algorithm keys) have no pyroute2 declaration: they travel
as `cdata` and are packed by the `Struct`s at the end of this module.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink import nla, nlmsg
from pyroute2.netlink.nlsocket import Marshal

from .constants import MsgType

Fields = tuple[tuple[str, str], ...]


def selector_fields(prefix: str = "sel_") -> Fields:
    """struct xfrm_selector (56 bytes)."""
    return (
        (f"{prefix}daddr", "16s"), (f"{prefix}saddr", "16s"),
        (f"{prefix}dport", ">H"), (f"{prefix}dport_mask", ">H"),
        (f"{prefix}sport", ">H"), (f"{prefix}sport_mask", ">H"),
        (f"{prefix}family", "H"), (f"{prefix}prefixlen_d", "B"), (f"{prefix}prefixlen_s", "B"),
        (f"{prefix}proto", "B"), (f"__{prefix}pad", "3x"),
        (f"{prefix}ifindex", "i"), (f"{prefix}user", "I"),
    )


LIFETIME_CFG_NAMES = ("soft_byte_limit", "hard_byte_limit", "soft_packet_limit", "hard_packet_limit",
                      "soft_add_expires_seconds", "hard_add_expires_seconds",
                      "soft_use_expires_seconds", "hard_use_expires_seconds")
LIFETIME_CUR_NAMES = ("bytes", "packets", "add_time", "use_time")


def lifetime_cfg_fields(prefix: str = "lft_") -> Fields:
    """struct xfrm_lifetime_cfg (64 bytes)."""
    return tuple((f"{prefix}{name}", "Q") for name in LIFETIME_CFG_NAMES)


def lifetime_cur_fields(prefix: str = "curlft_") -> Fields:
    """struct xfrm_lifetime_cur (32 bytes)."""
    return tuple((f"{prefix}{name}", "Q") for name in LIFETIME_CUR_NAMES)


def id_fields(prefix: str = "id_") -> Fields:
    """struct xfrm_id (24 bytes)."""
    return ((f"{prefix}daddr", "16s"), (f"{prefix}spi", ">I"), (f"{prefix}proto", "B"), (f"__{prefix}pad", "3x"))


def userpolicy_info_fields(prefix: str = "") -> Fields:
    """struct xfrm_userpolicy_info (168 bytes)."""
    return (
        selector_fields(f"{prefix}sel_") + lifetime_cfg_fields(f"{prefix}lft_")
        + lifetime_cur_fields(f"{prefix}curlft_")
        + ((f"{prefix}priority", "I"), (f"{prefix}index", "I"), (f"{prefix}dir", "B"), (f"{prefix}action", "B"),
           (f"{prefix}flags", "B"), (f"{prefix}share", "B"), (f"__{prefix}pad", "4x"))
    )


def usersa_info_fields() -> Fields:
    """struct xfrm_usersa_info (224 bytes)."""
    return (
        selector_fields() + id_fields() + (("saddr", "16s"),) + lifetime_cfg_fields() + lifetime_cur_fields()
        + (("stats_replay_window", "I"), ("stats_replay", "I"), ("stats_integrity_failed", "I"),
           ("seq", "I"), ("reqid", "I"), ("family", "H"), ("mode", "B"), ("replay_window", "B"), ("flags", "B"),
           ("__pad", "7x"))
    )


def _zero_addresses(fields: Fields) -> dict[str, bytes]:
    # pyroute2 encodes an unset field as 0, which "16s" cannot take.
    return {name: b"" for name, fmt in fields if fmt.endswith("s")}


class XfrmNla(nla):
    """Attributes shared by every XFRM message (XFRMA_*, numbered as in linux/xfrm.h)."""

    class userpolicy_info(nla):
        """XFRMA_POLICY: struct xfrm_userpolicy_info."""

        fields = userpolicy_info_fields()
        defaults = _zero_addresses(fields)

    class usersa_info(nla):
        """XFRMA_SA: struct xfrm_usersa_info."""

        fields = usersa_info_fields()
        defaults = _zero_addresses(fields)

    class lifetime_cur(nla):
        """XFRMA_LTIME_VAL: struct xfrm_lifetime_cur."""

        fields = lifetime_cur_fields("")

    class mark(nla):
        """XFRMA_MARK: struct xfrm_mark."""

        fields = (("v", "I"), ("m", "I"))

    class encap_tmpl(nla):
        """XFRMA_ENCAP: struct xfrm_encap_tmpl."""

        fields = (("encap_type", "H"), ("encap_sport", ">H"), ("encap_dport", ">H"), ("__pad", "2x"),
                  ("encap_oa", "16s"))
        defaults = {"encap_oa": b""}


XFRMA_MAP = (
    (0, "XFRMA_UNSPEC", "none"),
    (1, "XFRMA_ALG_AUTH", "cdata"),
    (2, "XFRMA_ALG_CRYPT", "cdata"),
    (3, "XFRMA_ALG_COMP", "cdata"),
    (4, "XFRMA_ENCAP", "encap_tmpl"),
    (5, "XFRMA_TMPL", "cdata"),  # an array of struct xfrm_user_tmpl: see USER_TMPL
    (6, "XFRMA_SA", "usersa_info"),
    (7, "XFRMA_POLICY", "userpolicy_info"),
    (8, "XFRMA_SEC_CTX", "cdata"),
    (9, "XFRMA_LTIME_VAL", "lifetime_cur"),
    (10, "XFRMA_REPLAY_VAL", "cdata"),
    (11, "XFRMA_REPLAY_THRESH", "uint32"),
    (12, "XFRMA_ETIMER_THRESH", "uint32"),
    (13, "XFRMA_SRCADDR", "cdata"),
    (14, "XFRMA_COADDR", "cdata"),
    (15, "XFRMA_LASTUSED", "uint64"),
    (16, "XFRMA_POLICY_TYPE", "cdata"),
    (17, "XFRMA_MIGRATE", "cdata"),
    (18, "XFRMA_ALG_AEAD", "cdata"),
    (19, "XFRMA_KMADDRESS", "cdata"),
    (20, "XFRMA_ALG_AUTH_TRUNC", "cdata"),
    (21, "XFRMA_MARK", "mark"),
    (22, "XFRMA_TFCPAD", "uint32"),
    (23, "XFRMA_REPLAY_ESN_VAL", "cdata"),
    (24, "XFRMA_SA_EXTRA_FLAGS", "uint32"),
    (25, "XFRMA_PROTO", "uint8"),
    (26, "XFRMA_ADDRESS_FILTER", "cdata"),
    (27, "XFRMA_PAD", "none"),
    (28, "XFRMA_OFFLOAD_DEV", "cdata"),
    (29, "XFRMA_SET_MARK", "uint32"),
    (30, "XFRMA_SET_MARK_MASK", "uint32"),
    (31, "XFRMA_IF_ID", "uint32"),
    (32, "XFRMA_MTIMER_THRESH", "uint32"),
    (33, "XFRMA_SA_DIR", "uint8"),
)


class XfrmMsg(nlmsg):
    """Base of the XFRM messages: the fixed struct in `fields`, then XFRMA_* attributes."""

    nla_map = XFRMA_MAP
    userpolicy_info = XfrmNla.userpolicy_info
    usersa_info = XfrmNla.usersa_info
    lifetime_cur = XfrmNla.lifetime_cur
    mark = XfrmNla.mark
    encap_tmpl = XfrmNla.encap_tmpl


class userpolicy_info(XfrmMsg):
    """XFRM_MSG_NEWPOLICY / UPDPOLICY, and policy dump replies: struct xfrm_userpolicy_info."""

    fields = userpolicy_info_fields()
    defaults = _zero_addresses(fields)


class userpolicy_id(XfrmMsg):
    """XFRM_MSG_DELPOLICY / GETPOLICY: struct xfrm_userpolicy_id (64 bytes)."""

    fields = selector_fields() + (("index", "I"), ("dir", "B"), ("__pad", "3x"))
    defaults = _zero_addresses(fields)


class usersa_info(XfrmMsg):
    """XFRM_MSG_NEWSA / UPDSA, and SA dump replies: struct xfrm_usersa_info."""

    fields = usersa_info_fields()
    defaults = _zero_addresses(fields)


class usersa_id(XfrmMsg):
    """XFRM_MSG_DELSA / GETSA: struct xfrm_usersa_id (24 bytes)."""

    fields = (("daddr", "16s"), ("spi", ">I"), ("family", "H"), ("proto", "B"), ("__pad", "x"))
    defaults = {"daddr": b""}


class user_acquire(XfrmMsg):
    """XFRM_MSG_ACQUIRE: struct xfrm_user_acquire (280 bytes)."""

    fields = (id_fields() + (("saddr", "16s"),) + selector_fields() + userpolicy_info_fields("pol_")
              + (("aalgos", "I"), ("ealgos", "I"), ("calgos", "I"), ("seq", "I")))
    defaults = _zero_addresses(fields)


class user_expire(XfrmMsg):
    """XFRM_MSG_EXPIRE: struct xfrm_user_expire (232 bytes)."""

    fields = usersa_info_fields() + (("hard", "B"), ("__hard_pad", "7x"))
    defaults = _zero_addresses(fields)


class user_polexpire(XfrmMsg):
    """XFRM_MSG_POLEXPIRE: struct xfrm_user_polexpire (176 bytes)."""

    fields = userpolicy_info_fields() + (("hard", "B"), ("__hard_pad", "7x"))
    defaults = _zero_addresses(fields)


class usersa_flush(XfrmMsg):
    """XFRM_MSG_FLUSHSA: struct xfrm_usersa_flush (1 byte, padded to 4 on the wire)."""

    fields = (("proto", "B"), ("__pad", "3x"))


class empty(XfrmMsg):
    """XFRM_MSG_FLUSHPOLICY and dump requests: no fixed part."""

    fields = ()


MESSAGE_CLASSES: dict[MsgType, type[XfrmMsg]] = {
    MsgType.NEWPOLICY: userpolicy_info,
    MsgType.UPDPOLICY: userpolicy_info,
    MsgType.DELPOLICY: userpolicy_id,
    MsgType.GETPOLICY: userpolicy_id,
    MsgType.NEWSA: usersa_info,
    MsgType.UPDSA: usersa_info,
    MsgType.DELSA: usersa_id,
    MsgType.GETSA: usersa_id,
    MsgType.ACQUIRE: user_acquire,
    MsgType.EXPIRE: user_expire,
    MsgType.POLEXPIRE: user_polexpire,
    MsgType.FLUSHSA: usersa_flush,
    MsgType.FLUSHPOLICY: empty,
}


class XfrmMarshal(Marshal):
    """Turns replies and events into the classes above, by message type."""

    msg_map = {int(k): v for k, v in MESSAGE_CLASSES.items()}


def fixed_size(cls: type[XfrmMsg]) -> int:
    return sum(struct.calcsize(fmt) for _, fmt in cls.fields)


# struct xfrm_user_tmpl (64 bytes): xfrm_id, family, pad, saddr, reqid, mode, share, optional, pad, algo masks.
USER_TMPL = struct.Struct("=16s4sB3xH2x16sIBBBxIII")
# struct xfrm_algo (68 + key), xfrm_algo_auth / xfrm_algo_aead (72 + key): name[64], key length in bits, and
# for auth the truncation length, for AEAD the ICV length, in bits.
ALGO = struct.Struct("=64sI")
ALGO_AUTH = struct.Struct("=64sII")
ALGO_AEAD = ALGO_AUTH


def message_fields(msg: XfrmMsg) -> dict[str, Any]:
    """The decoded fixed fields of a message, pads left out."""
    return {name: msg[name] for name, _ in msg.fields if not name.startswith("__")}


# --- requests: the fields' values, then a pyroute2 message or bytes packed in one struct call ---
# pyroute2 encodes a message field by field: about 0.1 ms of CPU for an SA add here, more than the kernel's work
# for it, and enclave-ike sends four such requests per handshake. `Parts.pack` writes the same bytes (tests compare
# them with pyroute2's encoding and with iproute2's) from the same declarations, each fixed part compiled once.

NLMSG_HEADER = struct.Struct("=IHHII")  # struct nlmsghdr: length, type, flags, sequence number, port id
NLA_HEADER = struct.Struct("=HH")  # struct nlattr: length, type
_NLA_BY_NAME = {name: (number, kind) for number, name, kind in XFRMA_MAP}


class _Compiled:
    """One declaration's fixed part as one `struct.Struct`; fields in network byte order go in as bytes."""

    def __init__(self, fields: Fields) -> None:
        parts: list[str] = []
        self.fields: list[tuple[str, Any, struct.Struct | None]] = []  # name, default, big-endian packer
        for name, fmt in fields:
            if fmt.endswith("x"):
                parts.append(fmt)
            elif fmt.startswith(">"):
                big = struct.Struct(fmt)
                parts.append(f"{big.size}s")
                self.fields.append((name, 0, big))
            else:
                parts.append(fmt)
                self.fields.append((name, b"" if fmt.endswith("s") else 0, None))
        self.struct = struct.Struct("=" + "".join(parts))

    def pack(self, values: dict[str, Any]) -> bytes:
        return self.struct.pack(*(big.pack(values.get(name, default)) if big else values.get(name, default)
                                  for name, default, big in self.fields))


_COMPILED: dict[type, _Compiled] = {}


def _compiled(cls: type) -> _Compiled:
    compiled = _COMPILED.get(cls)
    if compiled is None:
        compiled = _COMPILED[cls] = _Compiled(cls.fields)  # type: ignore[attr-defined]
    return compiled


@dataclass(frozen=True)
class Parts:
    """A message to send, before encoding: its class (the fixed part's declaration), the values of its fields
    (unset ones are zero), and its attributes as [name, value] (raw bytes, or the fields of a declared attribute
    such as XFRMA_MARK)."""

    cls: type[XfrmMsg]
    values: dict[str, Any]
    attrs: list[list[Any]]

    def message(self) -> XfrmMsg:
        """As pyroute2's message, for XfrmClient's requests."""
        msg = self.cls()
        for name, value in self.values.items():
            msg[name] = value
        msg["attrs"] = self.attrs
        return msg

    def pack(self, msg_type: int, flags: int, seq: int = 0) -> bytes:
        """The bytes pyroute2 would encode for `message()` with this header, in a few struct calls."""
        body = bytearray(_compiled(self.cls).pack(self.values))
        for name, value in self.attrs:
            number, kind = _NLA_BY_NAME[name]
            payload = value if kind == "cdata" else _compiled(getattr(XfrmNla, kind)).pack(value)
            body += NLA_HEADER.pack(NLA_HEADER.size + len(payload), number) + payload
            body += bytes(-len(body) % 4)
        return NLMSG_HEADER.pack(NLMSG_HEADER.size + len(body), msg_type, flags, seq, 0) + body
