"""The background half of `ikectl up`: it keeps what `up` applied in place, reconciling continuously.

A watcher thread waits on the kernel's own events (XFRM policy deletes and flushes, nftables table, chain and rule
deletes) and puts the backstops back at once, even while a round waits on pluto (under TCG a round took seconds,
and a flush waited for it). The main thread runs a round every second, and right after such a removal: under the
record's lock, it reads the facts again and carries out ikectl/plan.repair's steps: both backstops back,
pluto's policies routed again after a flush, leftovers of pluto's kind removed; a pluto that died is started
again. Each repair is noted in the record, so `status` says what another program did. In coffee-shop mode each
round also runs the upkeep of ikectl/opportunistic.py; in trusted mode, re-attestation of pinned resolvers when it
is due, and at once when pluto meets a key other than the pinned one (ikectl/trust.py; a failure blocks DNS).

`up` starts it detached, with its pid in the record; `down` stops it. It also ends by itself when ikectl is down
or a newer supervisor took over, so a crash of `down` cannot leave it spinning.

Its lines go to its log, the run dir's supervisor.log (its stderr); with --journal (given by `up` when its own
stderr was journald's, as under ikectl.service) also to the journal, as `ikectl-supervisor`, each with its priority
(ikectl/journal.py). Every line goes through `_log`.

    python -m ikectl.supervisor RUN_DIR [--journal]
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import select
import signal
import socket
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, replace
from pathlib import Path

from ikecommon import lean_pyroute2, xfrm

from . import (
    backstop,
    config,
    daemon,
    execute,
    journal,
    logline,
    nft,
    opportunistic,
    plan,
    policies,
    protect,
    render,
    session,
    signals,
    status,
)
from .config import Mode
from .errors import IkectlError
from .logline import ERROR, INFO, WARNING
from .state import RunState, StateBusy, StateStore

TICK_S = 1.0
RESTART_EVERY_S = 5.0  # a pluto that keeps dying is started again at most this often
# pluto removes and adds its own policies in every rekey and negotiation: conns are routed again only when their
# policies have stayed missing this long (routing one in the middle of a rekey lost queries, in the VM).
UNROUTED_FOR_S = 1.0
WATCHER_READY_S = 30.0  # a watcher that cannot start in this long: the rounds go on without it
WATCHER_NICE = -10  # the watcher thread's scheduling priority: a removal is answered before anything else runs
SWITCH_INTERVAL_S = 0.0005
LOCK_WAIT_S = 2.0  # a round that cannot get the lock (an `up` holds it) is skipped: the next one tries again
NETLINK_NETFILTER, NFNLGRP_NFTABLES = 12, 7
SOL_NETLINK, NETLINK_ADD_MEMBERSHIP = 270, 1
# Any change to ikectl's table sends the watcher to read it: a removal, or a rule put in (an `accept` ahead of ours).
NO_TABLE_EVENTS = nft.TableEvents(removed=False, added=False)
XFRM_REMOVALS = {0x14, 0x1B, 0x1D}  # XFRM_MSG_DELPOLICY, XFRM_MSG_POLEXPIRE, XFRM_MSG_FLUSHPOLICY


class Supervisor:
    def __init__(self, run: daemon.RunDir, store: StateStore | None = None) -> None:
        self.run, self.store = run, store or StateStore.here()
        self.log_seen = run.log.stat().st_size if run.log.exists() else 0  # pluto's log read up to here
        self.restarted_at = 0.0
        self.unrouted: dict[str, float] = {}  # conn -> when its policies were first seen missing
        self.guarded = False  # the last round wanted the backstops: a removal is answered before any lock
        self.seen_whole = False  # ... and found them whole
        self.guard: nft.Guard | None = None
        self.restored: deque[str] = deque()  # what `at_once` (the watcher thread) put back, for a round to note
        self.passes_removed: deque[str] = deque()  # ... and the clear passes it removed

    def tick(self, now: float) -> bool:
        """One round; False when this supervisor should end."""
        if self.wanted_before_lock():
            # A trusted `up` holds the lock: the guard, and answers to removals, need not wait for it (the `up`
            # waits for this guard before it lets its own go).
            self.hold_guard(True)
            self.guarded = True
        try:
            with self.store.lock(wait_s=LOCK_WAIT_S):
                record = self.store.read()
                if not isinstance(record, RunState) or record.supervisor_pid != os.getpid():
                    self.hold_guard(False)
                    return False
                updated = self.reconcile(record, now)
                if updated != record:
                    self.store.write(updated)
        except StateBusy:
            return True  # an `up` or `down` is at work; the next round looks again
        # Not after a failed `up` (re-attestation would reload trusted mode behind the user's back), but after a
        # failed attestation: the pin is retried, and trusted mode comes back once it verifies.
        retried = updated.blocked is None or updated.blocked.pin is not None
        if updated.mode == Mode.TRUSTED and retried and updated.config_path is not None:
            # Outside the lock: a re-attestation that pins a new key runs `up` again, which takes it.
            self.reattest(updated.config_path, len(updated.trusted), now)
        return True

    def backstop_wanted(self, record: RunState) -> bool:
        """Trusted (applied or failed closed) and no captive-portal window open; or a trusted `up` under way or
        interrupted (its marker): the backstops it put in stay until an `up` or `down` says otherwise."""
        trusted = record.mode == Mode.TRUSTED and record.portal_until is None
        return trusted or protect.pending(self.store) is not None

    def wanted_before_lock(self) -> bool:
        """Backstops wanted, as far as can be told without the lock: a trusted `up` under way, or a record (read
        unlocked: it is replaced atomically) in trusted mode with no portal window open."""
        if protect.trusted_up_running(self.store):
            return True
        record = self.store.read()
        return isinstance(record, RunState) and record.supervisor_pid == os.getpid() and self.backstop_wanted(record)

    def hold_guard(self, wanted: bool) -> None:
        if wanted and self.guard is None:
            try:
                self.guard = nft.Guard()
            except nft.NftError as exc:
                _log(f"no guard table: {exc}", WARNING)
        elif not wanted and self.guard is not None:
            self.guard.release()
            self.guard = None

    def at_once(self, xfrm_hit: XfrmHit, nft_hit: bool) -> None:
        """Events that touch trusted mode's protection, answered before any lock (the watcher thread) when the
        last round wanted the backstops: the XFRM backstop back first, then the nftables table, then any clear
        pass pluto added for DNS to a resolver ikectl manages (a coffee-shop pluto's fallback, during the switch to
        trusted mode: it outranks the XFRM backstop). Not while a coffee-shop `up` or a `down` holds the lock: they
        lift the backstops on purpose, and the round after them repairs what is missing."""
        if not self.guarded or (self.store.busy_elsewhere() and not protect.trusted_up_running(self.store)):
            return
        with contextlib.suppress(IkectlError, OSError):
            lost = xfrm_hit.put_back()
            if lost:
                self.restored.append(f"{lost} of {len(backstop.policies())} XFRM backstop policies")
        if nft_hit:
            with contextlib.suppress(IkectlError, OSError):
                table = nft.check()
                if table in (nft.TableState.ABSENT, nft.TableState.DAMAGED):
                    nft.install()
                    self.restored.append(f"the nftables table ({table.value})")
        if xfrm_hit.passes:
            record = self.store.read()
            if isinstance(record, RunState):
                resolvers = protect.managed(record.trusted, record)
                with contextlib.suppress(IkectlError, OSError):
                    for policy in xfrm_hit.remove_passes(resolvers):
                        self.passes_removed.append(policies.describe(policy))

    def reconcile(self, record: RunState, now: float) -> RunState:
        """Put back what another program took away; the record with what was done noted."""
        if record.portal_until is not None and record.portal_until <= now:
            record = replace(record, portal_until=None)  # the window ended: the backstops come back below
        record = self.revive(record, now)
        restored = Counter(self.restored.popleft() for _ in range(len(self.restored)))
        if restored:
            what = "; ".join(f"{part}, {times} times" if times > 1 else part for part, times in restored.items())
            record = record.noting(f"another program removed trusted mode's protection ({what}): restored at once",
                                   now)
            _log(record.interference[-1].what, WARNING)
        passes = [self.passes_removed.popleft() for _ in range(len(self.passes_removed))]
        if passes:
            _log(f"clear passes pluto added for DNS while the backstops were wanted, removed at once: "
                 f"{'; '.join(passes)}", WARNING)
        facts = session.gather(record.run_dir)
        wanted = self.backstop_wanted(record)
        # Backstops not yet seen whole since they were wanted (a trusted `up` has just begun and is putting them
        # in): missing ones are not another program's doing.
        newly = not self.seen_whole
        self.seen_whole = wanted and facts.protection is not None and facts.protection.complete
        self.guarded = wanted
        self.hold_guard(wanted)
        missing = plan.unrouted(record, facts)
        if missing and record.mode == Mode.COFFEE_SHOP:
            moved = opportunistic.moved_groups(self.run, plan.admitted(record))
            missing = tuple(name for name in missing if name not in moved)
            for name, (was, new) in moved.items():
                what = (f"this host now sends from {new}, pluto's {name} is for {was}: DNS to its resolvers passes in "
                        "clear until `ikectl up` (the NetworkManager hook runs it) renders it from the new address")
                if not record.interference or record.interference[-1].what != what:
                    record = record.noting(what, now)
                    _log(what, WARNING)
        self.unrouted = {name: self.unrouted.get(name, now) for name in missing}
        due = tuple(name for name, since in self.unrouted.items() if now - since >= UNROUTED_FOR_S)
        steps = plan.repair(record, facts, backstop_wanted=wanted, route=due)
        if steps:
            with contextlib.ExitStack() as stack:
                execute.run(steps, execute.Execution(self.run, self.store, record, _log, stack))
                stack.pop_all()
            for step in steps:
                record = record.noting(_what(step, facts, newly), now)
                _log(record.interference[-1].what, _priority(step, facts, newly))
        upkeep = (record.mode == Mode.COFFEE_SHOP and record.blocked is None and facts.pluto.pid is not None
                  and not facts.pluto.stopped)
        if upkeep:
            record = replace(record, upkeep=opportunistic.upkeep(self.run, record, facts.policies, now))
        return record

    def revive(self, record: RunState, now: float) -> RunState:
        """pluto died (not stopped: that is a user's or a debugger's): start it again from the tree on disk,
        which loads and routes its conns. Until then the backstops (trusted) or the clear (coffee-shop) hold."""
        if daemon.pluto_pid(self.run) is not None or record.pluto_pid is None:
            return record
        if record.blocked is not None:
            # Trusted mode failed closed: pluto has nothing to do until the next `up`, and the tree on disk may
            # be the one the failed `up` put back (coffee-shop's opportunistic groups, whose clear fallbacks
            # outrank the XFRM backstop).
            return record
        if now - self.restarted_at < RESTART_EVERY_S or not self.run.conf.exists():
            return record
        self.restarted_at = now
        try:
            pid = daemon.start_pluto(self.run)
        except IkectlError as exc:
            return record.noting(f"pluto (pid {record.pluto_pid}) exited and could not be started again: {exc}", now)
        return replace(record, pluto_pid=pid).noting(f"pluto (pid {record.pluto_pid}) exited; started again as "
                                                      f"pid {pid}", now)

    def reattest(self, config_path: Path, addresses: int, now: float) -> None:
        # Trusted mode only: trust.py brings the attestation verifiers, which `up` and a coffee-shop supervisor
        # never need.
        from . import trust  # noqa: PLC0415

        try:
            cfg = config.load(config_path)
        except IkectlError as exc:
            _log(f"re-attestation skipped: {exc}", WARNING)
            return
        for result in trust.reattest_due(cfg, now, key_changed=self.saw_other_key(addresses)):
            _log(f"re-attested {result.name}: {'ok' if result.ok else result.reason}", INFO if result.ok else ERROR)
            for note in result.notes:
                _log(f"re-attested {result.name}: {note}", WARNING)

    def saw_other_key(self, addresses: int) -> bool:
        """Has pluto written, since the last round, that the trusted resolver presented another key (at any of
        its `addresses`)?"""
        start, fresh = self.run.read_log(self.log_seen)
        self.log_seen = start + len(fresh)
        lines = fresh.decode(errors="replace").splitlines()
        return any(status.trusted_failure(lines, render.trusted_pair(position)) == status.OTHER_KEY
                   for position in range(addresses))


def _what(step: plan.Step, facts: plan.Facts, newly_wanted: bool = False) -> str:
    if isinstance(step, plan.Protect) and newly_wanted:
        return "the backstops a trusted `up` under way wants: put in"
    if isinstance(step, plan.Protect) and facts.protection is not None:
        return f"another program removed trusted mode's protection ({facts.protection.describe()}): restored"
    if isinstance(step, plan.RemoveBackstop):
        return "backstops that nothing wants any more (coffee-shop, no trusted `up` under way): removed"
    if isinstance(step, plan.ReloadConns):
        return f"pluto's policies for {', '.join(step.names)} were removed by another program: loaded again"
    if isinstance(step, plan.DeletePolicies):
        count = len(step.policies)
        return f"removed {count} {'policy' if count == 1 else 'policies'} of pluto's kind for {step.why}"
    return type(step).__name__


def _priority(step: plan.Step, facts: plan.Facts, newly_wanted: bool = False) -> int:
    """A repair after another program's doing is a warning; the rest is the supervisor at work."""
    undone = isinstance(step, plan.Protect) and not newly_wanted and facts.protection is not None
    return WARNING if undone or isinstance(step, plan.ReloadConns) else INFO


_journal: journal.JournalLines | None = None  # set by main with --journal


def forward_to_journal(address: str | None = None) -> None:
    """From now on `_log` sends each line to journald's syslog socket too (`address`: /dev/log)."""
    global _journal  # noqa: PLW0603 - one per process, like its stderr
    _journal = journal.JournalLines(address=address or journal.JOURNAL_SOCKET)


def _log(message: str, priority: int = INFO) -> None:
    """Every line of the supervisor's: to its log (its stderr), and with --journal to the journal."""
    logline.write(f"ikectl supervisor: {message}", priority)
    if _journal is not None:
        _journal.send(message, priority)


def event_sockets() -> list[socket.socket]:
    """Sockets on which the kernel tells of XFRM policy and nftables changes in this network namespace."""
    sockets = [xfrm.event_socket(None, (xfrm.Group.POLICY,))]
    with contextlib.suppress(OSError):  # no nf_tables in this kernel: the tick still checks
        nfsock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        nfsock.bind((0, 0))
        nfsock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
        nfsock.setblocking(False)
        sockets.append(nfsock)
    return sockets


def removals(data: bytes) -> bool:
    """Does this batch of netlink messages remove an XFRM policy (anyone's: pluto's too, which the round routes
    again) or a piece of an nftables table? Such a batch wakes the round."""
    offset = 0
    while offset + 16 <= len(data):
        length = int.from_bytes(data[offset:offset + 4], sys.byteorder)
        kind = int.from_bytes(data[offset + 4:offset + 6], sys.byteorder)
        if kind in XFRM_REMOVALS or kind in nft.NFT_REMOVALS:
            return True
        if length < 16:
            break
        offset += (length + 3) & ~3
    return False


@dataclass(frozen=True)
class XfrmNews:
    """What one burst of XFRM policy events says that the watcher must answer."""

    lost: int | None  # XFRM backstop policies taken away: all for a flush; None when the events cannot tell
    passes: tuple[xfrm.Policy, ...] = ()  # clear passes for DNS added (pluto's fallbacks among them)


def xfrm_news(data: bytes) -> XfrmNews:
    """Read a burst of XFRM policy events: backstop policies a flush, a delete or a hard expiry took away, and
    clear passes for DNS that were added. Events that do not decode cannot tell (the table must be read)."""
    try:
        events = xfrm.events(data)
    except xfrm.XfrmDecodeError:
        return XfrmNews(None)
    lost, passes = 0, []
    for event in events:
        if isinstance(event, xfrm.Flushed) and event.what == "policies":
            lost = len(backstop.policies())
        elif isinstance(event, xfrm.PolicyDeleted | xfrm.PolicyExpired) and backstop.is_backstop(event.policy):
            lost += not isinstance(event, xfrm.PolicyExpired) or event.hard
        elif isinstance(event, xfrm.PolicyAdded) and policies.clear_pass(event.policy) and not event.policy.owned:
            passes.append(event.policy)  # not ikectl's own loopback allows, which the backstop's put_back sends
    return XfrmNews(min(lost, len(backstop.policies())), tuple(passes))


class XfrmHit:
    """What the watcher learnt of the XFRM table from one burst of events, and how to answer it: the backstop
    policies the events name as gone are put back in one prepared datagram, without reading the table (under
    TCG reading it took 0.3-0.5 s); when the events could not tell (lost to ENOBUFS, not decodable), the table
    is read."""

    def __init__(self, client: xfrm.XfrmClient, prepared: xfrm.PreparedPolicies) -> None:
        self.client, self.prepared = client, prepared
        self.lost: int | None = 0  # None: unknown
        self.passes: list[xfrm.Policy] = []

    def add(self, news: XfrmNews) -> None:
        self.lost = None if news.lost is None or self.lost is None else self.lost + news.lost
        self.passes += news.passes

    @property
    def any(self) -> bool:
        return self.lost != 0 or bool(self.passes)

    def put_back(self) -> int:
        """Put the backstop back as the events require; how many of its policies were missing."""
        if self.lost is None:
            missing = backstop.missing(p for p in self.client.policies() if p.direction <= xfrm.Direction.FWD)
            if missing:
                self.prepared.put_back()
            return len(missing)
        if self.lost:
            self.prepared.put_back()
        return self.lost

    def remove_passes(self, resolvers: frozenset[config.Address]) -> list[xfrm.Policy]:
        """Delete the added clear passes of pluto's kind for DNS with `resolvers`; those deleted."""
        removed = []
        for policy in policies.leftovers(self.passes, resolvers):
            with contextlib.suppress(xfrm.KernelRefused):  # gone meanwhile
                self.client.delete_policy(policy)
                removed.append(policy)
        return removed


def watch(supervisor: Supervisor, sockets: list[socket.socket], wake: threading.Event,
          ready: threading.Event) -> None:
    """The watcher thread: each burst of events that removes something of a backstop is answered at once, and
    the main thread's round comes right after (it notes what was restored, and repairs the rest). Events the
    kernel could not queue (ENOBUFS: a burst of pluto's) may have held a removal: they count as one. Everything
    an answer needs is made before the first event (under TCG making a netlink client took seconds)."""
    try:
        client, prepared = xfrm.XfrmClient(), xfrm.PreparedPolicies(backstop.policies())
    except (IkectlError, OSError) as exc:
        _log(f"watcher: no XFRM netlink client ({exc}): removals wait for the next round", WARNING)
        ready.set()
        return
    with contextlib.suppress(IkectlError, OSError):
        nft.check()  # this thread's libnftables context, made now
    with contextlib.suppress(OSError):  # ahead of the rounds, pluto and the rest when a removal comes (root only)
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WATCHER_NICE)
    ready.set()
    xfrm_events = sockets[0]
    while True:
        readable, _, _ = select.select(sockets, [], [])
        removed, nft_hit, xfrm_hit = False, False, XfrmHit(client, prepared)
        for sock in readable:
            data, complete = drain(sock)
            removed = removed or not complete or removals(data)
            if sock is xfrm_events:
                xfrm_hit.add(xfrm_news(data) if complete else XfrmNews(None))
            else:
                nft_hit = nft_hit or not complete or nft.table_events(data) != NO_TABLE_EVENTS
        if xfrm_hit.any or nft_hit:
            try:
                supervisor.at_once(xfrm_hit, nft_hit)
            except Exception as exc:  # the watcher must outlive anything one answer meets
                _log(f"watcher: {type(exc).__name__}: {exc}", ERROR)
        if removed:
            wake.set()


def drain(sock: socket.socket) -> tuple[bytes, bool]:
    """Every event waiting on `sock`, and whether none were lost (ENOBUFS: the kernel could not queue some)."""
    chunks = []
    while True:
        try:
            chunks.append(sock.recv(1 << 16))
        except BlockingIOError:
            return b"".join(chunks), True
        except OSError:
            return b"".join(chunks), False


def main(argv: list[str]) -> int:
    if "--journal" in argv[1:]:
        forward_to_journal()
    supervisor = Supervisor(daemon.RunDir(Path(argv[0])))
    signals.exit_on_sigterm(0)
    # A round holds the GIL for most of a second under TCG; the watcher must not wait the default 5 ms per turn.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` writes where each thread is to the log
    wake, ready = threading.Event(), threading.Event()
    threading.Thread(target=watch, args=(supervisor, event_sockets(), wake, ready), name="watch",
                     daemon=True).start()
    # The first round waits for the watcher (under TCG making its netlink client took seconds, and a flush in
    # that time waited for a round): from then on a removal is answered at once.
    ready.wait(WATCHER_READY_S)
    _log(f"watching the record of this network namespace for {argv[0]} (pid {os.getpid()}; SIGUSR1 dumps its "
         "stack to this log)")
    while True:
        try:
            if not supervisor.tick(time.time()):
                return 0
        except (IkectlError, OSError) as exc:  # pluto busy, a full disk: say so, try again next round
            _log(f"{type(exc).__name__}: {exc}", WARNING)
        wake.wait(TICK_S)
        wake.clear()


if __name__ == "__main__":
    lean_pyroute2.use()
    try:
        sys.exit(main(sys.argv[1:]))
    except Exception as exc:  # the traceback follows in the log; the journal gets the line
        _log(f"ended by {type(exc).__name__}: {exc}", ERROR)
        raise
