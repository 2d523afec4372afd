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
clear does not, whatever XFRM policy let it out. The table is ikectl's alone: loaded in one transaction with the
`nft` program from Debian's nftables (`add table` + `delete table` + the table: atomic, whatever was there),
removed by `down`; ikectl never touches another table. Each rule carries a comment, which is how `check` knows the
table is whole.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import shutil
import subprocess
from enum import Enum
from pathlib import Path

from .errors import IkectlError

TABLE = "ikectl"
FAMILY = "inet"
TIMEOUT_S = 10.0
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
    """nft refused or could not be run."""


class TableState(Enum):
    INTACT = "intact"
    ABSENT = "absent"
    DAMAGED = "damaged"  # there, but a chain or a rule of ours is missing
    UNAVAILABLE = "unavailable"  # no nft program: the second backstop cannot be used


GUARD = "ikectl-guard"  # the same rules in a table the supervisor owns (Guard)


def program() -> Path | None:
    found = shutil.which("nft") or shutil.which("nft", path="/usr/sbin:/sbin")
    return Path(found) if found else None


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


def _nft(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    nft = program()
    if nft is None:
        raise NftError("nft not found: install nftables (apt-get install nftables) for trusted mode's second backstop")
    try:
        return subprocess.run([str(nft), *args], input=stdin, capture_output=True, text=True, check=False,
                              timeout=TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NftError(f"cannot run {nft}: {exc}") from None


def install() -> None:
    """Load (or reload) the table; idempotent."""
    proc = _nft(["-f", "-"], ruleset())
    if proc.returncode != 0:
        said = (proc.stderr or proc.stdout).strip().splitlines()
        raise NftError(f"nft refused ikectl's table: {said[0] if said else f'exit {proc.returncode}'}")


def remove() -> bool:
    """Delete the table; False when it was not there."""
    if program() is None:
        return False
    proc = _nft(["delete", "table", FAMILY, TABLE])
    if proc.returncode != 0:
        if "No such file or directory" in proc.stderr:
            return False
        raise NftError(f"nft could not delete table {FAMILY} {TABLE}: {proc.stderr.strip()}")
    return True


def check(table: str = TABLE) -> TableState:
    """Is the table there with every chain and rule of ours?"""
    if program() is None:
        return TableState.UNAVAILABLE
    proc = _nft(["-j", "list", "table", FAMILY, table])
    if proc.returncode != 0:
        return TableState.ABSENT
    return state_of(proc.stdout)


def state_of(listing: str) -> TableState:
    """The table's state from `nft -j list table inet ikectl` (pure: the unit tests feed it listings)."""
    try:
        items = json.loads(listing)["nftables"]
    except (ValueError, KeyError, TypeError):
        return TableState.DAMAGED
    chains = {i["chain"]["name"]: i["chain"] for i in items if isinstance(i, dict) and "chain" in i}
    comments: dict[str, set[str]] = {}
    for item in items:
        rule = item.get("rule") if isinstance(item, dict) else None
        if isinstance(rule, dict):
            comments.setdefault(str(rule.get("chain")), set()).add(str(rule.get("comment")))
    if not any(isinstance(i, dict) and "table" in i for i in items):
        return TableState.ABSENT
    for chain, rules in RULES.items():
        found = chains.get(chain)
        if found is None or found.get("hook") != HOOKS[chain] or found.get("policy") != "accept":
            return TableState.DAMAGED
        if not set(rules) <= comments.get(chain, set()):
            return TableState.DAMAGED
    return TableState.INTACT


class Guard:
    """The same table again, as `inet ikectl-guard` with nftables' `owner` flag, held by the supervisor through
    libnftables (Debian's libnftables1, which `nft` itself uses): the kernel lets no other program flush, change or
    delete an owned table, `nft flush ruleset` included, and removes it when its owner's netlink socket closes
    (the supervisor exits, `down` stops it). With it, flushing the XFRM policies and the nftables ruleset at once
    still leaves one backstop whole. None of it is ever undone by another program; `release` ends it."""

    def __init__(self) -> None:
        found = ctypes.util.find_library("nftables")
        if found is None:
            raise NftError("libnftables not found: install nftables (apt-get install nftables)")
        self._lib = ctypes.CDLL(found)
        self._lib.nft_ctx_new.restype = ctypes.c_void_p
        self._lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        self._lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        self._lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        self._lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        self._lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        self._lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self._ctx: int | None = self._lib.nft_ctx_new(0)
        if not self._ctx:
            raise NftError("libnftables: cannot make a context")
        self._lib.nft_ctx_buffer_error(self._ctx)
        # An owned table cannot be replaced by a new owner: a guard of a supervisor that died is gone with it.
        self._run(ruleset(GUARD, "owner").replace(f"add table {FAMILY} {GUARD}\ndelete table {FAMILY} {GUARD}\n", ""))

    def _run(self, commands: str) -> None:
        if self._ctx is None:
            raise NftError("the guard table was released")
        if self._lib.nft_run_cmd_from_buffer(self._ctx, commands.encode()) != 0:
            said = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(errors="replace").strip()
            raise NftError(f"nft refused ikectl's guard table: {said.splitlines()[0] if said else 'no reason given'}")

    def release(self) -> None:
        """Close the context: the kernel removes the table with its owner's socket."""
        if self._ctx is not None:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None
