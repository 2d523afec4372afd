"""Bytes from NETLINK_XFRM to checked (type, fields, attributes) records: the one place kernel bytes
are decoded, shared by request replies, the monitor and the fuzz tests.

pyroute2's marshal splits and decodes the messages; everything it cannot make sense of, and every message
shorter than its fixed struct, becomes an XfrmDecodeError.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink import NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP
from pyroute2.netlink.exceptions import NetlinkDecodeError, NetlinkError

from . import messages as m
from .errors import XfrmDecodeError
from .messages import NLA_HEADER, NLMSG_HEADER


@dataclass(frozen=True)
class Record:
    msg_type: int
    fields: Mapping[str, Any]
    attrs: Mapping[str, Any]  # first value of each XFRMA_* present


def attributes(msg: m.XfrmMsg) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    for name, value in msg.get("attrs", []):
        attrs.setdefault(name, value)
    return attrs


def check(msg: Any) -> Record:
    """A record from one message that pyroute2 decoded (a reply or an event), or XfrmDecodeError."""
    header = msg["header"]
    error = header.get("error")
    if error is not None and not isinstance(error, NetlinkError):
        raise XfrmDecodeError(f"message type 0x{header.get('type', 0):x} does not decode: {error}")
    msg_type = header["type"]
    cls = m.MESSAGE_CLASSES.get(msg_type)
    if cls is None:
        raise XfrmDecodeError(f"unexpected message type 0x{msg_type:x}")
    body = header["length"] - NLMSG_HEADER.size
    if body < m.fixed_size(cls):
        raise XfrmDecodeError(f"{cls.__name__} of {body} bytes is shorter than its {m.fixed_size(cls)}-byte struct")
    return Record(msg_type, m.message_fields(msg), attributes(msg))


def _split(data: bytes) -> Iterator[tuple[bytes, int, int, int]]:
    """Each netlink message in a datagram as (its bytes, type, flags, sequence number); XfrmDecodeError where one
    does not fit."""
    offset = 0
    while offset < len(data):
        if len(data) - offset < NLMSG_HEADER.size:
            raise XfrmDecodeError(f"{len(data) - offset} trailing bytes: shorter than a netlink header")
        length, msg_type, flags, seq, _pid = NLMSG_HEADER.unpack_from(data, offset)
        if length < NLMSG_HEADER.size or offset + length > len(data):
            raise XfrmDecodeError(f"netlink length {length} at offset {offset} does not fit the {len(data)}-byte "
                                  "datagram")
        yield data[offset:offset + length], msg_type, flags, seq
        offset += (length + 3) & ~3


def parse(data: bytes) -> Iterator[Record]:
    """Every XFRM message in a netlink datagram (NOOP and DONE skipped), checked."""
    for chunk, msg_type, _flags, _seq in _split(data):
        if msg_type == NLMSG_ERROR:
            raise XfrmDecodeError("an error message where an XFRM message was expected")
        if msg_type not in (NLMSG_NOOP, NLMSG_DONE):
            yield _decode_one(chunk, msg_type)


ERROR_CODE = struct.Struct("=i")
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200  # the request is quoted by its header alone; attributes follow
NLMSGERR_ATTR_MSG = 1  # the kernel's own words (extended ack)
QUOTED = NLMSG_HEADER.size + ERROR_CODE.size  # where the quoted request starts


def acks(data: bytes) -> Iterator[tuple[int, int, str | None]]:
    """(sequence number, error, the kernel's words) of each NLMSG_ERROR in a datagram of answers to requests:
    error 0 is an ack, a negative errno a refusal, whose words come with an extended ack (NETLINK_EXT_ACK) and are
    None otherwise. Other messages are skipped; a message that does not fit is XfrmDecodeError."""
    for chunk, msg_type, flags, seq in _split(data):
        if msg_type == NLMSG_ERROR:
            if len(chunk) < QUOTED:
                raise XfrmDecodeError(f"an error message of {len(chunk)} bytes has no error code")
            error = ERROR_CODE.unpack_from(chunk, NLMSG_HEADER.size)[0]
            yield seq, error, _kernel_words(chunk, flags) if error and flags & NLM_F_ACK_TLVS else None


def _kernel_words(chunk: bytes, flags: int) -> str | None:
    """NLMSGERR_ATTR_MSG of an extended ack, or None where there is none or the attributes do not fit (they only
    explain the error, which is already known)."""
    if len(chunk) < QUOTED + NLMSG_HEADER.size:
        return None
    quoted = NLMSG_HEADER.size if flags & NLM_F_CAPPED else NLMSG_HEADER.unpack_from(chunk, QUOTED)[0]
    if quoted < NLMSG_HEADER.size or QUOTED + quoted > len(chunk):  # a quote that does not fit: no words
        return None
    offset = QUOTED + ((quoted + 3) & ~3)
    while offset + NLA_HEADER.size <= len(chunk):
        length, kind = NLA_HEADER.unpack_from(chunk, offset)
        if length < NLA_HEADER.size or offset + length > len(chunk):
            return None
        if kind & 0x3FFF == NLMSGERR_ATTR_MSG:  # the top two bits are flags
            return chunk[offset + NLA_HEADER.size:offset + length].split(b"\0", 1)[0].decode(errors="replace")
        offset += (length + 3) & ~3
    return None


def _decode_one(chunk: bytes, msg_type: int) -> Record:
    cls = m.MESSAGE_CLASSES.get(msg_type)  # type: ignore[call-overload]
    if cls is None:
        raise XfrmDecodeError(f"unknown XFRM message type 0x{msg_type:x}")
    if len(chunk) - NLMSG_HEADER.size < m.fixed_size(cls):
        raise XfrmDecodeError(f"{cls.__name__} of {len(chunk) - NLMSG_HEADER.size} bytes is shorter than its "
                              f"{m.fixed_size(cls)}-byte struct")
    msg = cls(chunk)
    try:
        msg.decode()
    except (NetlinkDecodeError, struct.error, ValueError, IndexError, KeyError, TypeError) as exc:
        raise XfrmDecodeError(f"{cls.__name__} does not decode: {exc}") from None
    return check(msg)
