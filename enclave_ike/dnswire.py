"""The one part of a DNS message enclave-ike reads itself: the first question, where it ends and what it asks.

Userspace ESP reads it for every query (the metrics' query type) and every answer (which query it answers), so it
is read here in a few microseconds rather than by having dnspython build a message (about 80). A message's first
name is never compressed (RFC 1035 4.1.4: a pointer names an earlier occurrence, and only the header precedes it),
so its labels are walked to the root and a pointer there makes the question unreadable.
"""

from __future__ import annotations

HEADER_SIZE = 12
MAX_LABEL = 63  # a longer length octet is a compression pointer or a label type RFC 6891 retired
MAX_NAME = 255  # octets of a name on the wire, its root label included
_TYPE_AND_CLASS = 4


def question_end(message: bytes) -> int | None:
    """Where the first question (name, type, class) ends in `message`, or None: no question, or not one that reads."""
    if len(message) < HEADER_SIZE or message[4:6] == b"\x00\x00":  # QDCOUNT 0
        return None
    at = HEADER_SIZE
    while (length := message[at] if at < len(message) else None) != 0:
        if length is None or length > MAX_LABEL or at + 1 + length - HEADER_SIZE >= MAX_NAME:
            return None
        at += 1 + length
    end = at + 1 + _TYPE_AND_CLASS  # the root octet, then type and class
    return end if end <= len(message) else None


def question_type(message: bytes) -> int | None:
    """The first question's type, or None."""
    end = question_end(message)
    return None if end is None else int.from_bytes(message[end - _TYPE_AND_CLASS:end - 2], "big")


def question_key(message: bytes) -> bytes | None:
    """The first question as an answer must repeat it: the name in lower case (RFC 4343: names compare without
    case, and a resolver may answer in another case), then type and class as they are. None without one."""
    end = question_end(message)
    if end is None:
        return None
    return message[HEADER_SIZE:end - _TYPE_AND_CLASS].lower() + message[end - _TYPE_AND_CLASS:end]
