"""Trusted mode's second backstop: an nftables table of ikectl's own (`inet ikectl`) that drops DNS which leaves
without IPsec, so that neither a flushed XFRM table nor another daemon's policy outranking ikectl's XFRM backstop
is enough to leak (docs/architecture.md).

    table inet ikectl {
        chain out { type filter hook output priority 0; policy accept;
            oifname "lo" accept                                            # a local stub
            meta l4proto udp th dport 53 rt ipsec missing drop             # EPERM to the sender
            meta l4proto tcp th dport 53 rt ipsec missing reject with tcp reset   # fails at once, not after retries
        }
        chain in { type filter hook input priority 0; policy accept;
            iifname "lo" accept
            meta l4proto { udp, tcp } th sport 53 meta secpath missing drop      # answers that did not come in ESP
        }
        chain routed { type filter hook forward priority 0; policy accept;       # what this host routes for others
            meta l4proto udp th dport 53 rt ipsec missing drop
            meta l4proto tcp th dport 53 rt ipsec missing reject with tcp reset
        }
    }

`rt ipsec missing` is true for a packet whose route has no IPsec transformation: DNS inside ESP passes, DNS in
clear does not, whatever XFRM policy let it out. The table is ikectl's alone: loaded in one transaction through
libnftables, the library Debian's `nft` program is a front end of (`add table` + `delete table` + the table: atomic,
whatever was there), removed by `down`; ikectl never touches another table. In-process, not by running `nft`: the
supervisor checks the table every round, and a process start each second took a whole CPU under emulation. Each
rule carries a comment, which is how `check` knows the table is whole.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import shutil
import struct
import threading
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from .errors import IkectlError

TABLE = "ikectl"
FAMILY = "inet"
RULES = {  # chain -> comment -> rule
    "out": {
        "ikectl: loopback stubs": 'oifname "lo" accept',
        "ikectl: udp/53 out without IPsec": "meta l4proto udp th dport 53 rt ipsec missing counter drop",
        "ikectl: tcp/53 out without IPsec":
            "meta l4proto tcp th dport 53 rt ipsec missing counter reject with tcp reset",
    },
    "in": {
        "ikectl: loopback stubs": 'iifname "lo" accept',
        "ikectl: dns answers in without IPsec":
            "meta l4proto { udp, tcp } th sport 53 meta secpath missing counter drop",
    },
    # DNS this host forwards (a container's, a VM's) meets the XFRM backstop too, as every routed packet does:
    # so it meets this table.
    "routed": {
        "ikectl: forwarded udp/53 without IPsec": "meta l4proto udp th dport 53 rt ipsec missing counter drop",
        "ikectl: forwarded tcp/53 without IPsec":
            "meta l4proto tcp th dport 53 rt ipsec missing counter reject with tcp reset",
    },
}
HOOKS = {"out": "output", "in": "input", "routed": "forward"}


class NftError(IkectlError):
    """libnftables refused a command, or is not installed."""


class TableState(Enum):
    INTACT = "intact"
    ABSENT = "absent"
    DAMAGED = "damaged"  # there, but a chain or a rule of ours is missing
    UNAVAILABLE = "unavailable"  # no libnftables: the second backstop cannot be used


GUARD = "ikectl-guard"  # the same rules in a table the supervisor owns (Guard)
UP_GUARD = "ikectl-up-guard-{pid}"  # ... and in one a trusted `up` owns while it runs (protect.first)


def program() -> Path | None:
    """The `nft` program (doctor shows its version; ikectl itself goes through the library)."""
    found = shutil.which("nft") or shutil.which("nft", path="/usr/sbin:/sbin")
    return Path(found) if found else None


NFT_CTX_OUTPUT_JSON = 1 << 4
_LIBRARY: list[ctypes.CDLL | None] = []  # loaded once per process (empty: not tried yet)


def _library() -> ctypes.CDLL | None:
    if not _LIBRARY:
        lib = None
        for name in ("libnftables.so.1", ctypes.util.find_library("nftables")):
            try:
                lib = ctypes.CDLL(name) if name else None
            except OSError:
                continue
            if lib is not None:
                break
        if lib is not None:
            lib.nft_ctx_new.restype = ctypes.c_void_p
            lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
            lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
            for buffered in (lib.nft_ctx_buffer_output, lib.nft_ctx_buffer_error):
                buffered.argtypes = [ctypes.c_void_p]
            for getter in (lib.nft_ctx_get_output_buffer, lib.nft_ctx_get_error_buffer):
                getter.restype, getter.argtypes = ctypes.c_char_p, [ctypes.c_void_p]
            lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
            lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        _LIBRARY.append(lib)
    return _LIBRARY[0]


def available() -> bool:
    """Can this host have the second backstop (libnftables, from Debian's nftables)?"""
    return _library() is not None


class Context:
    """One libnftables context: one netlink socket to nf_tables, which owns the tables it makes with the `owner`
    flag for as long as it is open."""

    def __init__(self) -> None:
        lib = _library()
        if lib is None:
            raise NftError("libnftables not found: install nftables (apt-get install nftables) for trusted mode's "
                           "second backstop")
        self._lib = lib
        self._ctx: int | None = lib.nft_ctx_new(0)
        if not self._ctx:
            raise NftError("libnftables: cannot make a context")
        lib.nft_ctx_buffer_output(self._ctx)
        lib.nft_ctx_buffer_error(self._ctx)

    def run(self, commands: str, json_output: bool = False) -> tuple[bool, str, str]:
        """(accepted, output, errors) of a batch of nft commands, as `nft -f` reads them."""
        if self._ctx is None:
            raise NftError("the nftables context was closed")
        self._lib.nft_ctx_output_set_flags(self._ctx, NFT_CTX_OUTPUT_JSON if json_output else 0)
        accepted = self._lib.nft_run_cmd_from_buffer(self._ctx, commands.encode()) == 0
        output = (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode(errors="replace")
        errors = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(errors="replace").strip()
        return accepted, output, errors

    def close(self) -> None:
        if self._ctx is not None:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None


_SHARED = threading.local()  # one context per thread for ikectl's own table: a context is not thread-safe


def _shared() -> Context:
    context: Context | None = getattr(_SHARED, "context", None)
    if context is None:
        context = _SHARED.context = Context()
    return context


def ruleset(table: str = TABLE, flags: str = "") -> str:
    """The table, as `nft -f` reads it: replaces any table of that name in one transaction."""
    chains = []
    for chain, rules in RULES.items():
        body = "".join(f"\t\t{rule} comment {json.dumps(comment)}\n" for comment, rule in rules.items())
        chains.append(f"\tchain {chain} {{\n\t\ttype filter hook {HOOKS[chain]} priority 0; policy accept;\n"
                      f"{body}\t}}\n")
    header = f"\tflags {flags};\n" if flags else ""
    return (f"add table {FAMILY} {table}\ndelete table {FAMILY} {table}\n"
            f"table {FAMILY} {table} {{\n{header}{''.join(chains)}}}\n")


def install() -> None:
    """Load (or reload) the table; idempotent."""
    accepted, _, errors = _shared().run(ruleset())
    if not accepted:
        raise NftError(f"nftables refused ikectl's table: {_first(errors)}")


def remove() -> bool:
    """Delete the table; False when it was not there (or there is no nftables)."""
    if not available():
        return False
    accepted, _, errors = _shared().run(f"delete table {FAMILY} {TABLE}")
    if not accepted:
        if "No such file or directory" in errors:
            return False
        raise NftError(f"nftables could not delete table {FAMILY} {TABLE}: {_first(errors)}")
    return True


def check(table: str = TABLE) -> TableState:
    """Is the table there with every chain and rule of ours?"""
    if not available():
        return TableState.UNAVAILABLE
    accepted, listing, _ = _shared().run(f"list table {FAMILY} {table}", json_output=True)
    return state_of(listing) if accepted else TableState.ABSENT


def _first(errors: str) -> str:
    lines = errors.splitlines()
    return lines[0] if lines else "no reason given"


def state_of(listing: str) -> TableState:
    """The table's state from `nft -j list table inet ikectl` (pure: the unit tests feed it listings): whole only
    with exactly ikectl's chains and rules, each rule once."""
    try:
        items = json.loads(listing)["nftables"]
    except (ValueError, KeyError, TypeError):
        return TableState.DAMAGED
    chains = {i["chain"]["name"]: i["chain"] for i in items if isinstance(i, dict) and "chain" in i}
    comments: dict[str, list[str]] = {}
    for item in items:
        rule = item.get("rule") if isinstance(item, dict) else None
        if isinstance(rule, dict):
            comments.setdefault(str(rule.get("chain")), []).append(str(rule.get("comment")))
    if not any(isinstance(i, dict) and "table" in i for i in items):
        return TableState.ABSENT
    if set(chains) != set(RULES) or any(sorted(comments.get(c, [])) != sorted(RULES[c]) for c in RULES):
        return TableState.DAMAGED  # a chain or a rule missing, or one that is not ikectl's (an `accept` put in)
    for chain in RULES:
        if chains[chain].get("hook") != HOOKS[chain] or chains[chain].get("policy") != "accept":
            return TableState.DAMAGED
    return TableState.INTACT


# nf_tables' netlink events (NFNLGRP_NFTABLES): a netlink header, nfgenmsg (family, version, resource id), then
# attributes; in table, chain and rule messages attribute 1 names the table.
NFNL_SUBSYS_NFTABLES = 10
NFT_ADDS = {(NFNL_SUBSYS_NFTABLES << 8) | msg for msg in (0, 3, 6)}  # NEWTABLE, NEWCHAIN, NEWRULE
NFT_REMOVALS = {(NFNL_SUBSYS_NFTABLES << 8) | msg for msg in (2, 5, 8)}  # DELTABLE, DELCHAIN, DELRULE
NFPROTO_INET = 1
_NLMSG, _NLA = struct.Struct("=IHHII"), struct.Struct("=HH")
NFGENMSG_SIZE, NLA_TABLE, NLA_TYPE_MASK = 4, 1, 0x3FFF


@dataclass(frozen=True)
class TableEvents:
    """What a batch of nf_tables events did to one table."""

    removed: bool  # a part of it (the table, a chain, a rule) deleted
    added: bool  # a part of it (re)made


def table_events(data: bytes, table: str = TABLE) -> TableEvents:
    """What these nf_tables event messages did to `inet table`. Pure and total: a batch that does not parse
    counts as both, so the caller looks at the table itself."""
    name, removed, added, offset = table.encode() + b"\0", False, False, 0
    while offset < len(data):
        if len(data) - offset < _NLMSG.size + NFGENMSG_SIZE:
            return TableEvents(True, True)
        length, kind = _NLMSG.unpack_from(data, offset)[:2]
        if length < _NLMSG.size or offset + length > len(data):
            return TableEvents(True, True)
        if (kind in NFT_REMOVALS or kind in NFT_ADDS) and data[offset + _NLMSG.size] == NFPROTO_INET:
            named = _table_name(data[offset + _NLMSG.size + NFGENMSG_SIZE:offset + length])
            if named is None:
                return TableEvents(True, True)
            if named == name:
                removed, added = removed or kind in NFT_REMOVALS, added or kind in NFT_ADDS
        offset += (length + 3) & ~3
    return TableEvents(removed, added)


def _table_name(attrs: bytes) -> bytes | None:
    """The table-name attribute's bytes (NUL included); None when the attributes do not parse or lack it."""
    offset = 0
    while offset + _NLA.size <= len(attrs):
        length, kind = _NLA.unpack_from(attrs, offset)
        if length < _NLA.size or offset + length > len(attrs):
            return None
        if kind & NLA_TYPE_MASK == NLA_TABLE:
            return attrs[offset + _NLA.size:offset + length]
        offset += (length + 3) & ~3
    return None


class Guard:
    """The same table again, as `inet ikectl-guard` with nftables' `owner` flag, held by the supervisor through
    libnftables (Debian's libnftables1, which `nft` itself uses): the kernel lets no other program flush, change or
    delete an owned table, `nft flush ruleset` included, and removes it when its owner's netlink socket closes
    (the supervisor exits, `down` stops it). With it, flushing the XFRM policies and the nftables ruleset at once
    still leaves one backstop whole. None of it is ever undone by another program; `release` ends it."""

    def __init__(self, name: str = GUARD) -> None:
        self._context: Context | None = Context()
        # An owned table cannot be replaced by a new owner: a guard of a supervisor that died is gone with it.
        accepted, _, errors = self._context.run(
            ruleset(name, "owner").replace(f"add table {FAMILY} {name}\ndelete table {FAMILY} {name}\n", ""))
        if not accepted:
            self.release()
            raise NftError(f"nftables refused ikectl's guard table: {_first(errors)}")

    def release(self) -> None:
        """Close the context: the kernel removes the table with its owner's socket."""
        if self._context is not None:
            self._context.close()
            self._context = None
