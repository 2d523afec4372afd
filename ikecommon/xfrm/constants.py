"""Numbers from linux/xfrm.h (UAPI) that this layer uses, as enums. Values are the kernel's ABI."""

from __future__ import annotations

from enum import IntEnum

NETLINK_XFRM = 6
XFRM_INF = 0xFFFF_FFFF_FFFF_FFFF  # "no limit" in xfrm_lifetime_cfg
IPPROTO_ESP = 50


class MsgType(IntEnum):
    """XFRM_MSG_*: netlink message types on NETLINK_XFRM."""

    NEWSA = 0x10
    DELSA = 0x11
    GETSA = 0x12
    NEWPOLICY = 0x13
    DELPOLICY = 0x14
    GETPOLICY = 0x15
    ALLOCSPI = 0x16
    ACQUIRE = 0x17
    EXPIRE = 0x18
    UPDPOLICY = 0x19
    UPDSA = 0x1A
    POLEXPIRE = 0x1B
    FLUSHSA = 0x1C
    FLUSHPOLICY = 0x1D


class Group(IntEnum):
    """XFRMNLGRP_*: multicast groups (bind with NETLINK_ADD_MEMBERSHIP to the number)."""

    ACQUIRE = 1
    EXPIRE = 2
    SA = 3
    POLICY = 4


class Direction(IntEnum):
    """XFRM_POLICY_IN/OUT/FWD. Per-socket policies (pluto's, set with setsockopt) show up in dumps as
    XFRM_POLICY_MAX + dir; they can be read here but not added."""

    IN = 0
    OUT = 1
    FWD = 2
    SOCKET_IN = 3
    SOCKET_OUT = 4
    SOCKET_FWD = 5


class Action(IntEnum):
    """XFRM_POLICY_ALLOW/BLOCK."""

    ALLOW = 0
    BLOCK = 1


class Mode(IntEnum):
    """XFRM_MODE_*."""

    TRANSPORT = 0
    TUNNEL = 1
    ROUTEOPTIMIZATION = 2
    IN_TRIGGER = 3
    BEET = 4
    IPTFS = 5
