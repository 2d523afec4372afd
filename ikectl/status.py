"""`ikectl status`: one line per resolver, from the same facts the planner reads (the kernel's tables, /proc, the
record) and what pluto says, asked with a short deadline (a stopped pluto is seen in /proc and not asked).

States: authenticated (trusted resolver inside ESP), NULL-encrypted (coffee-shop inside ESP), clear (coffee-shop
fallback, or a captive-portal window), blocked (trusted mode keeps DNS off the wire), pending (IKE starts with
the next query). Below the rows: trusted mode's backstops, and notes: what another program changed and what
ikectl did about it, another IKE daemon in this namespace, another program's policy that lets DNS past the XFRM
backstop, a pluto that is not ikectl's (the system's libreswan: `system_plutos`) and what it means. `--json` gives
the same as a versioned schema. A trusted resolver pinned from the trust store also shows its latest attestation.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

from ikecommon import xfrm

from . import daemon, nft, opportunistic, pins, plan, policies, protect, render, routes, system_pluto
from .config import Address, Config, Mode
from .errors import IkectlError
from .observe import ike_daemons, process, protection
from .state import RunState, StateStore, Unreadable
from .whack import BareShunt, TrafficStatus

SCHEMA_VERSION = 1  # fields are only ever added
PLUTO_DEADLINE_S = 3.0


class Verdict(StrEnum):
    AUTHENTICATED = "authenticated"
    NULL_ENCRYPTED = "NULL-encrypted"
    CLEAR = "clear"
    BLOCKED = "blocked"
    PENDING = "pending"


@dataclass(frozen=True)
class ResolverStatus:
    address: str
    state: str
    reason: str
    since: float | None = None  # seconds since the epoch
    packets_in: int = 0
    packets_out: int = 0
    algorithms: tuple[str, ...] = ()
    attestation: pins.AttestationView | None = None  # a trusted resolver pinned by `ikectl trust`


@dataclass(frozen=True)
class Status:
    up: bool
    mode: str | None = None
    pluto_pid: int | None = None
    resolvers: tuple[ResolverStatus, ...] = field(default_factory=tuple)
    portal: str | None = None  # a captive portal waiting, or an open portal window (NetworkManager hook)
    protection: str | None = None  # trusted: the state of both backstops
    notes: tuple[str, ...] = ()  # interference, other IKE daemons, other programs' policies
    system_plutos: tuple[system_pluto.OtherPluto, ...] = ()  # plutos of this namespace that are not ikectl's

    def to_json(self) -> dict[str, Any]:
        return {"version": SCHEMA_VERSION, **asdict(self)}


@dataclass(frozen=True)
class Seen:
    """What status knows of one resolver: the input of `decide`."""

    address: Address
    record: RunState
    pluto: int | None  # pid
    stopped: bool
    established: str | None = None  # the peer ID of an established Child SA to it
    has_sa: bool = False
    clear_pass: bool = False  # coffee-shop's clear fallback is in the kernel
    covered: bool = False  # pluto holds an outbound policy for its DNS (trap, SA, shunt)
    moved: tuple[str, str] | None = None  # (address pluto's policies are for, address this host sends from now)
    log_word: str | None = None  # pluto's last word on it, as a reason
    now: float = 0.0
    unguarded: bool = False  # trusted: no backstop at all in the kernel (XFRM incomplete, both nftables tables gone)


UNGUARDED = ("NOTHING BLOCKS ITS DNS: the XFRM backstop is incomplete and both nftables tables are gone (is the "
             "supervisor running?); `ikectl up` puts them back")


def decide(seen: Seen) -> tuple[Verdict, str]:
    record = seen.record
    return (_trusted if record.mode == Mode.TRUSTED else _coffee_shop)(seen)


def _trusted(seen: Seen) -> tuple[Verdict, str]:
    record = seen.record
    if seen.address not in record.trusted:
        if record.portal_until is not None and seen.now < record.portal_until:
            return Verdict.CLEAR, f"captive-portal window open for {_age(record.portal_until - seen.now)} more"
        if seen.unguarded:
            return Verdict.CLEAR, UNGUARDED
        return Verdict.BLOCKED, "not the trusted resolver"
    if seen.unguarded and not seen.covered:
        return Verdict.CLEAR, UNGUARDED
    if record.blocked is not None:
        until = (f"`ikectl trust verify {record.blocked.pin}` succeeds" if record.blocked.pin is not None
                 else "the next `up`")
        return Verdict.BLOCKED, f"{record.blocked.reason}; the backstops keep DNS off the wire until {until}"
    if seen.established is not None and seen.has_sa:
        return Verdict.AUTHENTICATED, f"pinned key {seen.established}"
    if seen.pluto is None:
        return Verdict.BLOCKED, "pluto is not running; the backstops keep DNS off the wire"
    if seen.stopped:
        return Verdict.BLOCKED, (f"pluto (pid {seen.pluto}) is stopped and negotiates nothing until it resumes; "
                                 "the backstops keep DNS off the wire")
    if seen.moved is not None:
        was, now = seen.moved
        return Verdict.BLOCKED, (f"this host now sends from {now}, pluto's conns are for {was}: `ikectl up` (the "
                                 "NetworkManager hook runs it) loads them from the new address")
    if not seen.covered:
        return Verdict.BLOCKED, ("pluto holds no policy for it (removed by another program?); the supervisor loads its "
                                 "conns again")
    return Verdict.BLOCKED, seen.log_word or "IKE starts with the next query; until then nothing leaves"


def _coffee_shop(seen: Seen) -> tuple[Verdict, str]:
    record, address = seen.record, str(seen.address)
    if address in record.unprotected:
        return Verdict.CLEAR, record.unprotected[address]
    excluded = record.upkeep.excluded.get(address)
    if excluded is not None and excluded.until > seen.now:
        return Verdict.CLEAR, (f"{excluded.reason}; DNS passes in clear, IKE is tried again in "
                               f"{_age(excluded.until - seen.now)}")
    if seen.established is not None and seen.has_sa:
        return Verdict.NULL_ENCRYPTED, "opportunistic IPsec, unauthenticated"
    if seen.pluto is None:
        return Verdict.CLEAR, "pluto is not running; DNS passes in clear until it is back"
    if seen.stopped:
        return Verdict.PENDING, (f"pluto (pid {seen.pluto}) is stopped: queries that meet its traps wait until it "
                                 "resumes")
    if seen.moved is not None:
        was, now = seen.moved
        return Verdict.CLEAR, (f"this host now sends from {now}, pluto's opportunistic group is for {was}: DNS passes "
                               "in clear until `ikectl up` (the NetworkManager hook runs it) loads it from the new "
                               "address")
    if seen.clear_pass:
        retry = opportunistic.retry_at(record, address)
        when = f"in {_age(retry - seen.now)}" if retry is not None and retry > seen.now else "with the next query"
        if seen.log_word == opportunistic.LATE_AUTH:
            return Verdict.CLEAR, (f"{opportunistic.LATE_AUTH}: the resolver may drop DNS in clear until IKE is tried "
                                   f"again {when}")
        return Verdict.CLEAR, f"no IKE answer; DNS passes in clear, IKE is tried again {when}"
    if seen.log_word in (opportunistic.LIVENESS, opportunistic.ESP_REFUSED, opportunistic.REFUSED):
        return Verdict.CLEAR, f"{seen.log_word}; DNS passes in clear, IKE is tried again later"
    if seen.covered:
        return Verdict.PENDING, "IKE starts with the next query"
    return Verdict.CLEAR, ("pluto holds no policy for it: DNS passes in clear until the supervisor routes its group "
                           "again")


# --- gathering ----------------------------------------------------------------------------------------------

def gather(config: Config | None = None, portal: str | None = None) -> Status:
    store = StateStore.here()
    found = store.read()
    if found is None:
        return Status(up=False, notes=tuple(_orphans(store)))
    if isinstance(found, Unreadable):
        return Status(up=True, notes=(f"the record cannot be read ({found.why}); `ikectl down` removes what the "
                                      "kernel and the config show, `ikectl up` starts afresh",))
    record, now = found, time.time()
    run = daemon.RunDir(record.run_dir)
    pid = daemon.pluto_pid(run)
    seen_process = process(pid) if pid is not None else None
    stopped = seen_process is not None and seen_process.stopped
    traffic, shunts = _ask_pluto(run) if pid is not None and not stopped else ([], [])
    with xfrm.XfrmClient() as client:
        table = [p for p in client.policies() if p.direction <= xfrm.Direction.FWD]
        sas = [sa for sa in client.sas() if not sa.larval]
    log = _log_tail(run)
    moved = opportunistic.moved_groups(run, record.resolvers) if record.mode == Mode.COFFEE_SHOP else {}
    guarded = record.mode == Mode.TRUSTED and (record.portal_until is None or record.portal_until <= now)
    shown = protection(table)
    unguarded = (guarded and shown.xfrm_missing > 0 and shown.nft != nft.TableState.INTACT
                 and nft.check(nft.GUARD) != nft.TableState.INTACT)
    rows = [_row(Seen(address, record, pid, stopped, *_about(address, record, traffic, shunts, table, sas, log,
                                                             moved), now=now, unguarded=unguarded), sas)
            for address in record.resolvers]
    if config is not None:
        rows = [_attested(r, record, config, now) for r in rows]
    others = system_pluto.find([record.run_dir, *([config.run_dir] if config is not None else [])])
    return Status(up=True, mode=record.mode.value, pluto_pid=pid, resolvers=tuple(rows), portal=portal,
                  protection=shown.describe() if guarded else None,
                  notes=(*_notes(record, table, pid, now, shown.nft.value), *_system_notes(others, table, record)),
                  system_plutos=tuple(others))


def _ask_pluto(run: daemon.RunDir) -> tuple[list[TrafficStatus], list[BareShunt]]:
    whack = run.whack(timeout_s=PLUTO_DEADLINE_S)
    with contextlib.suppress(IkectlError):  # died or stuck since the pid check: the kernel's tables still speak
        return whack.traffic_status(), whack.shunt_status()
    return [], []


def _about(address: Address, record: RunState, traffic: list[TrafficStatus], shunts: list[BareShunt],
           table: list[xfrm.Policy], sas: list[xfrm.SaInfo], log: list[str],
           moved_groups: dict[str, tuple[Address, Address]]) -> tuple[str | None, bool, bool, bool,
                                                                    tuple[str, str] | None, str | None]:
    trusted = record.mode == Mode.TRUSTED
    pair = render.trusted_pair(record.trusted.index(address)) if trusted and address in record.trusted else ()
    mine = [t for t in traffic if t.peer == str(address) or t.conn in pair]
    established = mine[0].peer_id if mine else None
    has_sa = any(sa.dst == address for sa in sas)
    clear = any(policies.pluto_dns_peer(p) == address and policies.clear_pass(p) for p in table)
    clear = clear or any(s.dst.network_address == address and s.action == "%pass" for s in shunts)
    covered = any(policies.covered(table, address, proto) for proto in (6, 17))
    group = moved_groups.get(plan.OE_CONNS[address.version])
    moved = (_moved(address, table) if pair
             else (str(group[0]), str(group[1])) if group is not None else None)
    word = trusted_failure(log, pair) if trusted else opportunistic.last_word(log, str(address))
    return established, has_sa, clear, covered, moved, word


def _moved(address: Address, table: list[xfrm.Policy]) -> tuple[str, str] | None:
    """pluto's policies for the pinned resolver name a source this host no longer sends from."""
    sources = {p.selector.src.network_address for p in table
               if policies.pluto_dns_peer(p) == address and p.direction == xfrm.Direction.OUT
               and p.selector.src.prefixlen == p.selector.src.max_prefixlen}
    if not sources:
        return None
    now = routes.source_address(address)
    return (str(min(sources, key=str)), str(now)) if now is not None and now not in sources else None


def _row(seen: Seen, sas: list[xfrm.SaInfo]) -> ResolverStatus:
    out = [sa for sa in sas if sa.dst == seen.address]
    inbound = [sa for sa in sas if sa.src == seen.address]
    verdict, reason = decide(seen)
    added = min((sa.counters.add_time for sa in out), default=None)
    since = float(added) if added is not None and verdict != Verdict.CLEAR else seen.record.up_at
    return ResolverStatus(str(seen.address), verdict.value, reason, since=since,
                          packets_in=sum(sa.counters.packets for sa in inbound),
                          packets_out=sum(sa.counters.packets for sa in out),
                          algorithms=tuple(sorted({a.label for sa in out for a in sa.algorithms})))


def _orphans(store: StateStore) -> list[str]:
    """ikectl is down by its record: say so if the kernel still holds a backstop of ours all the same. Only a
    trusted `up` that never wrote its record leaves that, and its marker or baseline says so: without either, the
    kernel is not asked (`status` of a host where ikectl is down stays cheap)."""
    if protect.pending(store) is None and store.baseline() is None:
        return []
    with xfrm.XfrmClient() as client:
        owned = sum(p.owned for p in client.policies())
    notes = []
    if owned or nft.check() in (nft.TableState.INTACT, nft.TableState.DAMAGED):
        notes.append(f"no record, yet ikectl's backstops are in the kernel ({owned} XFRM policies; nftables table "
                     f"{nft.check().value}): DNS is blocked; `ikectl down` removes them")
    waiting = protect.pending(store)
    if waiting is not None:
        notes.append(f"a trusted `up` (pid {waiting[0]}) {'is under way' if waiting[1] else 'did not finish'}")
    return notes


def _notes(record: RunState, table: list[xfrm.Policy], pid: int | None, now: float, nft_state: str) -> list[str]:
    notes = [f"{_age(now - i.at)} ago: {i.what}" for i in record.interference[-3:]]
    supervisor = process(record.supervisor_pid) if record.supervisor_pid is not None else None
    if supervisor is None or supervisor.stopped:
        what = "is stopped" if supervisor is not None else "is not running"
        notes.append(f"the supervisor (pid {record.supervisor_pid}) {what}: nothing puts the backstops or pluto's "
                     "policies back if another program removes them; `ikectl up` starts it again")
    waiting = protect.pending(StateStore.here())
    if waiting is not None and not waiting[1]:
        notes.append(f"a trusted `up` (pid {waiting[0]}) did not finish: its backstops stay until the next `up` or "
                     "`down`")
    for other in ike_daemons(exclude=[pid] if pid is not None else []):
        notes.append(f"another IKE daemon in this network namespace: {other.describe()}; it may take IKE replies "
                     "meant for ikectl's pluto, and its policies are not ikectl's to change")
    if record.mode == Mode.TRUSTED:
        ours = protect.managed(record.resolvers, record)
        for leak in policies.leaks(table):
            if policies.pluto_dns_peer(leak) in ours:
                continue  # our pluto's: the supervisor removes it
            blocked = "the nftables backstop drops it" if nft_state == "intact" else "NOTHING BLOCKS IT"
            notes.append(f"another program's policy lets DNS pass in clear ahead of the XFRM backstop "
                         f"({policies.describe(leak)}): {blocked}")
    if record.mode == Mode.COFFEE_SHOP:
        for resolver in record.resolvers:
            for caught in policies.catching(table, resolver)[:1]:
                notes.append(f"another program's policy catches DNS to {resolver} ({policies.describe(caught)}): "
                             "it may hold queries ikectl expects answered")
    if record.esp_refused:
        notes.append(f"this kernel cannot install ESP SAs: {record.esp_refused}")
    return notes


def _system_notes(others: list[system_pluto.OtherPluto], table: list[xfrm.Policy], record: RunState) -> list[str]:
    """What another pluto in this namespace means for ikectl's (docs/coexistence.md)."""
    if not others:
        return []
    found = system_pluto.conflicts(table, record.resolvers)
    now = f"{len(found)} such polic{'ies' if len(found) != 1 else 'y'} now" if found else "none does now"
    notes = [f"a system pluto runs beside ikectl's ({other.describe()}): both share this network namespace's XFRM "
             "tables; ikectl's backstop is in its own priority band, which every pluto policy outranks, and a conn of "
             f"that pluto covering a resolver's DNS overrides ikectl's ({now}); `ikectl ipsec status` asks ikectl's "
             "pluto" for other in others]
    notes += [f"{conflict.describe()}: a conn of the system pluto (or another program) overrides ikectl for it"
              for conflict in found]
    return notes


def _attested(resolver: ResolverStatus, record: RunState, config: Config, now: float) -> ResolverStatus:
    if record.mode != Mode.TRUSTED or resolver.address not in map(str, record.trusted):
        return resolver
    view = pins.view(config, now)
    if view is None:
        return resolver
    if view.result != pins.OK and resolver.state == Verdict.BLOCKED:
        why = "failed attestation: " if view.result == pins.FAILED else "cannot be read: "
        return replace(resolver, reason=f"pin {view.pin!r} {why}{view.reason}", attestation=view)
    return replace(resolver, attestation=view)


OTHER_KEY = "the resolver presented a different key"
_UNREACHABLE = "the resolver is unreachable from this host (Network is unreachable)"
_KEEPS_TRYING = "no IKE answer from the resolver yet; pluto keeps trying"
_FAILURES = (
    (r"AUTHENTICATION_FAILED|authentication failed|signature.*(?:failed|invalid)|RSA.*failed|ECDSA.*failed",
     OTHER_KEY),
    (r"Peer ID '([^']*)' mismatched", "the resolver presented another ID ({0}) than the pinned one"),
    (r"Add SA .*(?:Function not implemented|errno 38)", "the kernel refused the ESP SA (no ESP in this kernel)"),
    (r"Network is unreachable", _UNREACHABLE),
    (r"No response \(or no acceptable response\) to our first IKEv2 message", "no IKE answer from the resolver"),
    (r"STATE_V2_PARENT_I1: retransmission", _KEEPS_TRYING),
    (r"TS_UNACCEPTABLE|NO_PROPOSAL_CHOSEN", "the resolver refused the DNS-only Child SA"),
)




def trusted_failure(log: list[str], conns: tuple[str, ...] = render.trusted_pair(0)) -> str | None:
    """pluto's last word on the trusted conns `conns` (one address's), as a reason; None when it is an established
    Child SA. "Keeps trying" is only a last word when nothing since the last Child SA says why: with trusted mode's
    short IKE timeout (`trusted_dead_after_ms`) each new try's retransmissions come after the ICMP error that
    explains them."""
    found = None
    for line in reversed(log):
        if not any(conn in line for conn in conns):
            continue
        if "established Child SA" in line:
            return found
        reason = _reason(line)
        if reason is None:
            continue
        if found is None:
            found = reason
        if found != _KEEPS_TRYING or reason == _UNREACHABLE:
            return reason
    return found


def _reason(line: str) -> str | None:
    for pattern, reason in _FAILURES:
        match = re.search(pattern, line)
        if match:
            return reason.format(*match.groups())
    return None


TAIL_BYTES = 1 << 17  # room for 400 of pluto's lines at over 300 bytes each


def _log_tail(run: daemon.RunDir, lines: int = 400) -> list[str]:
    """The last lines of pluto's log, read from its end: the log grows for as long as pluto runs."""
    try:
        with open(run.log, "rb") as log:
            size = log.seek(0, 2)
            log.seek(max(0, size - TAIL_BYTES))
            tail = log.read().decode(errors="replace").splitlines()
    except OSError:
        return []
    return tail[1:][-lines:] if size > TAIL_BYTES else tail[-lines:]  # the first line read may be cut


# --- the human format ---------------------------------------------------------------------------------------

def format_human(status: Status, now: float | None = None) -> str:
    if not status.up:
        return "ikectl is down"
    now = time.time() if now is None else now
    rows = []
    for r in status.resolvers:
        since = f"since {_age(now - r.since)} ago" if r.since else ""
        packets = f"{r.packets_in} in / {r.packets_out} out packets" if r.packets_in or r.packets_out else ""
        rows.append([r.address, status.mode or "", r.state, r.reason, since, packets, " ".join(r.algorithms),
                     _attestation(r.attestation)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))] if rows else []
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    pluto = f"pluto pid {status.pluto_pid}" if status.pluto_pid else "pluto NOT running"
    backstops = [f"backstops: {status.protection}"] if status.protection else []
    portal_line = [f"portal: {status.portal}"] if status.portal else []
    notes = [f"note: {note}" for note in status.notes]
    return "\n".join([*lines, pluto, *backstops, *portal_line, *notes])


def _attestation(view: pins.AttestationView | None) -> str:
    if view is None:
        return ""
    if view.age_s is None:
        return f"attestation: pin {view.pin} {view.result}"
    sim = " (sim: NOT SECURE)" if view.anchors == "sim" else ""
    staged = ""
    if view.next_switch_at is not None and view.attested_at is not None:
        left = view.next_switch_at - (view.attested_at + view.age_s)  # the switch, from the moment of this view
        staged = f"; next key staged, the resolver switches {f'in {_age(left)}' if left > 0 else 'now'}"
    return f"attestation {'ok' if view.result == pins.OK else 'FAILED'} {_age(view.age_s)} ago{sim}{staged}"


def _age(seconds: float) -> str:
    seconds = int(max(0, seconds))
    if seconds < 60:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} minute{'s' if minutes != 1 else ''}, {seconds} second{'s' if seconds != 1 else ''}"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} hour{'s' if hours != 1 else ''}, {minutes} minute{'s' if minutes != 1 else ''}"

