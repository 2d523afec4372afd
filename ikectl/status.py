"""`ikectl status`: one line per resolver, from what pluto, the kernel and ikectl's state say.

States: authenticated (trusted resolver inside ESP), NULL-encrypted (coffee-shop inside ESP), clear
(coffee-shop fallback: the resolver does not speak IKE), blocked (trusted mode keeps DNS off the wire),
pending (nothing decided yet: no DNS sent). `--json` gives the same as a versioned schema. A trusted resolver
pinned from the trust store (`[trusted] attested = "NAME"`) also shows its latest attestation: result, age, evidence.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import asdict, dataclass, field, replace
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from ikecommon import xfrm

from . import daemon, opportunistic, session, truststore
from .config import Config
from .errors import IkectlError
from .whack import BareShunt, TrafficStatus

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ResolverStatus:
    address: str
    state: str
    reason: str
    since: float | None = None  # seconds since the epoch
    packets_in: int = 0
    packets_out: int = 0
    algorithms: tuple[str, ...] = ()
    attestation: truststore.AttestationView | None = None  # a trusted resolver pinned by `ikectl trust`


@dataclass(frozen=True)
class Status:
    up: bool
    mode: str | None = None
    pluto_pid: int | None = None
    resolvers: tuple[ResolverStatus, ...] = field(default_factory=tuple)
    portal: str | None = None  # a captive portal waiting, or an open portal window (NetworkManager hook)

    def to_json(self) -> dict[str, Any]:
        return {"version": SCHEMA_VERSION, **asdict(self)}


def gather(run_dir: Path, config: Config | None = None) -> Status:
    run = daemon.RunDir(run_dir)
    state = session.read_state(run)
    if state is None:
        return Status(up=False)
    pid = daemon.pluto_pid(run)
    failed = session.blocked(state)
    found = _blocked_resolvers(state, failed) if failed is not None else _measured(run, state, pid)
    portal_line = None
    if config is not None:
        from . import nm  # noqa: PLC0415 - nm -> portal -> session -> supervisor -> status: a cycle at import time
        found = [_attested(r, state, config) for r in found]
        portal_line = nm.portal_summary(config, time.time())
    mode = failed["mode"] if failed is not None else state["mode"]
    return Status(up=True, mode=mode, pluto_pid=pid, resolvers=tuple(found), portal=portal_line)


def _measured(run: daemon.RunDir, state: dict[str, Any], pid: int | None) -> list[ResolverStatus]:
    """Each resolver's state, from what pluto and the kernel say."""
    traffic: list[TrafficStatus] = []
    shunts: list[BareShunt] = []
    if pid is not None:
        whack = run.whack()
        with contextlib.suppress(IkectlError):  # pluto died between the pid check and now
            traffic, shunts = whack.traffic_status(), whack.shunt_status()
    with xfrm.XfrmClient() as client:
        sas = [sa for sa in client.sas() if not sa.larval]
    log = _log_tail(run)
    return [_resolver(state, address, pid, traffic, shunts, sas, log) for address in state["resolvers"]]


def _resolver(state: dict[str, Any], address: str, pid: int | None, traffic: list[TrafficStatus],
              shunts: list[BareShunt], sas: list[xfrm.SaInfo], log: list[str]) -> ResolverStatus:
    addr = ip_address(address)
    out = [sa for sa in sas if sa.dst == addr]
    inbound = [sa for sa in sas if sa.src == addr]
    measured = ResolverStatus(address, "", "", since=min((sa.counters.add_time for sa in out), default=None),
                              packets_in=sum(sa.counters.packets for sa in inbound),
                              packets_out=sum(sa.counters.packets for sa in out),
                              algorithms=tuple(sorted({a.label for sa in out for a in sa.algorithms})))
    verdict, reason = _decide(state, address, pid, traffic, shunts, bool(out), log)
    if verdict == "clear":
        measured = replace(measured, since=state.get("up_at"))
    return replace(measured, state=verdict, reason=reason)


def _blocked_resolvers(state: dict[str, Any], failed: dict[str, Any]) -> list[ResolverStatus]:
    """After a failed switch to trusted mode: every resolver blocked, the trusted one with the failure."""
    trusted = failed.get("trusted")
    others = [a for a in state.get("resolvers", ()) if a != trusted]
    since = failed.get("since")
    rows = []
    if trusted:
        why = f"{failed.get('reason')}; the backstop keeps DNS off the wire until the next `up`"
        rows.append(ResolverStatus(trusted, "blocked", why, since=since))
    rows.extend(ResolverStatus(a, "blocked", "not the trusted resolver", since=since) for a in others)
    return rows


def _attested(resolver: ResolverStatus, state: dict[str, Any], config: Config) -> ResolverStatus:
    if state["mode"] != "trusted" or resolver.address != state.get("trusted"):
        return resolver
    view = truststore.view(config, time.time())
    if view is None:
        return resolver
    if view.result != truststore.OK and resolver.state == "blocked":
        why = "failed attestation: " if view.result == truststore.FAILED else "cannot be read: "
        return replace(resolver, reason=f"pin {view.pin!r} {why}{view.reason}", attestation=view)
    return replace(resolver, attestation=view)


def _decide(state: dict[str, Any], address: str, pid: int | None, traffic: list[TrafficStatus],
            shunts: list[BareShunt], has_sa: bool, log: list[str]) -> tuple[str, str]:
    trusted = state["mode"] == "trusted"
    if trusted and address != state.get("trusted"):
        return "blocked", "not the trusted resolver"
    established = [t for t in traffic if t.peer == address or (trusted and t.conn in session.TRUSTED_CONNS)]
    if established and has_sa:
        if trusted:
            return "authenticated", f"pinned key {established[0].peer_id}"
        return "NULL-encrypted", "opportunistic IPsec, unauthenticated"
    if pid is None:
        if trusted:
            return "blocked", "pluto is not running; the backstop keeps DNS off the wire"
        return "pending", "pluto is not running"
    if trusted:
        return "blocked", trusted_failure(log) or "no DNS sent yet; IKE starts with the first query"
    decided = opportunistic.reason_for(state, address)
    if decided is not None:
        return "clear", f"{decided}; DNS passes in clear, IKE is retried later"
    if any(s.dst.network_address == ip_address(address) and s.action == "%pass" for s in shunts):
        return "clear", "no IKE answer; DNS passes in clear, IKE is retried later"
    if opportunistic.liveness_failed(log, address):
        return "clear", f"{opportunistic.LIVENESS}; DNS passes in clear, IKE is retried later"
    return "pending", "no DNS sent yet; IKE starts with the first query"


OTHER_KEY = "the resolver presented a different key"
_FAILURES = (
    (r"AUTHENTICATION_FAILED|authentication failed|signature.*(?:failed|invalid)|RSA.*failed|ECDSA.*failed",
     OTHER_KEY),
    (r"No response \(or no acceptable response\) to our first IKEv2 message", "no IKE answer from the resolver"),
    (r"STATE_V2_PARENT_I1: retransmission", "no IKE answer from the resolver yet; pluto keeps trying"),
    (r"TS_UNACCEPTABLE|NO_PROPOSAL_CHOSEN", "the resolver refused the DNS-only Child SA"),
)


def trusted_failure(log: list[str]) -> str | None:
    for line in reversed(log):
        if not any(conn in line for conn in session.TRUSTED_CONNS):
            continue
        if "established Child SA" in line:
            return None
        for pattern, reason in _FAILURES:
            if re.search(pattern, line):
                return reason
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
    portal_line = [f"portal: {status.portal}"] if status.portal else []
    return "\n".join([*lines, pluto, *portal_line])


def _attestation(view: truststore.AttestationView | None) -> str:
    if view is None:
        return ""
    if view.age_s is None:
        return f"attestation: pin {view.pin} {view.result}"
    sim = " (sim: NOT SECURE)" if view.anchors == "sim" else ""
    return f"attestation {'ok' if view.result == truststore.OK else 'FAILED'} {_age(view.age_s)} ago{sim}"


def _age(seconds: float) -> str:
    seconds = int(max(0, seconds))
    if seconds < 60:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} minute{'s' if minutes != 1 else ''}, {seconds} second{'s' if seconds != 1 else ''}"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} hour{'s' if hours != 1 else ''}, {minutes} minute{'s' if minutes != 1 else ''}"
