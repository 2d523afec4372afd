"""The executor: carries out a plan's steps (ikectl/plan.py) through ikecommon.xfrm, ikectl/nft.py and whack, with
one undo mechanism: every step that changes something registers how to put it back on an ExitStack. A failed
coffee-shop `up` unwinds the stack (the system as it was); a failed trusted `up` drops it and fails closed
instead (ikectl/session.py): both backstops stay, whatever the failure cut short.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ikecommon import xfrm

from . import backstop, daemon, nft, opportunistic, policies, protect, render, routes
from .config import DEFAULT_LOG_DIR, Address, Mode
from .errors import IkectlError
from .plan import (
    OE_CONNS,
    DeletePolicies,
    EnsureSupervisor,
    Forget,
    Intent,
    LiftBackstop,
    LoadConns,
    Negotiate,
    Protect,
    Record,
    ReloadConns,
    RemoveBackstop,
    RemoveLeftovers,
    RestoreKernel,
    StartPluto,
    Step,
    StopRun,
    TuneAcquires,
    UnloadConns,
    Upkeep,
    WriteTree,
)
from .state import RunState, StateStore
from .state import Upkeep as UpkeepRecord
from .whack import Whack

Say = Callable[[str], None]
TRAP_WAIT_S = 3.0
GUARD_WAIT_S = 30.0  # a trusted `up` waits this long at most for the supervisor's guard table (seconds under TCG)


class ApplyError(IkectlError):
    """A step could not be carried out."""


def _quiet(_: str) -> None:
    pass


@dataclass
class Execution:
    """What the steps share while they run, and what they found out (for the record)."""

    run: daemon.RunDir
    store: StateStore
    record: RunState | None
    say: Say
    stack: contextlib.ExitStack
    intent: Intent | None = None
    files: dict[str, str] = field(default_factory=dict)  # the tree to write
    make_record: Callable[[Execution], RunState] | None = None
    pluto_pid: int | None = None
    supervisor_pid: int | None = None
    nd_before: tuple[str, ...] | None = None  # pluto's ND bypasses before our pluto started
    unprotected: dict[str, str] = field(default_factory=dict)
    upkeep: UpkeepRecord | None = None
    groups_loaded_at: int | None = None  # the size of pluto's log when the conns were loaded (the upkeep reads on)
    warnings: list[str] = field(default_factory=list)
    log_dir: Path = DEFAULT_LOG_DIR  # where a removed run dir's logs go (daemon.retire)
    warn: Say = _quiet  # says at once, whatever -v: logs that could not be kept
    tell: Say = _quiet  # where the logs of a run dir that `down` or a failed `up` removed went

    @property
    def whack(self) -> Whack:
        return self.run.whack()


def run(steps: Iterable[Step], ex: Execution) -> None:
    for step in steps:
        HANDLERS[type(step)](step, ex)


# --- protection ---------------------------------------------------------------------------------------------

def _protect(_: Protect, ex: Execution) -> None:
    ex.say("installing the backstops (XFRM policies, nftables table)")
    backstop.install_xfrm()
    if not nft.available():
        ex.warnings.append("no nftables: trusted mode has only its XFRM backstop; install nftables for the second")
    else:
        nft.install()


def _lift_backstop(_: LiftBackstop, ex: Execution) -> None:
    waiting = protect.pending(ex.store)
    if waiting is not None and waiting[1] and waiting[0] != os.getpid():
        # A trusted `up` started after this one put its backstops in and waits for the lock: lifting them now
        # would let DNS out in clear until it runs.
        ex.warnings.append(f"a trusted `up` (pid {waiting[0]}) is waiting: the backstops stay")
        return
    ex.say("removing the backstops: the opportunistic traps are in")
    backstop.remove()
    ex.stack.callback(backstop.install)


def _remove_backstop(_: RemoveBackstop, ex: Execution) -> None:
    backstop.remove()


# --- kernel policies ----------------------------------------------------------------------------------------

def delete(found: Iterable[xfrm.Policy]) -> int:
    """Delete these policies in order; those gone meanwhile are fine. How many were deleted."""
    deleted = 0
    with xfrm.XfrmClient() as client:
        for policy in found:
            with contextlib.suppress(xfrm.NotFound):
                client.delete_policy(policy)
                deleted += 1
    return deleted


def _delete_policies(step: DeletePolicies, ex: Execution) -> None:
    ex.say(f"deleting {len(step.policies)} policies of pluto's for {step.why}")
    delete(step.policies)


def _remove_leftovers(step: RemoveLeftovers, ex: Execution) -> None:
    with xfrm.XfrmClient() as client:
        table = client.policies()
    found = policies.leftovers(table, step.resolvers)
    if found:
        ex.say(f"deleting {len(found)} leftover policies of pluto's for DNS to "
               f"{', '.join(sorted({str(policies.pluto_dns_peer(p)) for p in found}))}")
        delete(found)


def _restore_kernel(step: RestoreKernel, ex: Execution) -> None:
    _remove_nd_bypasses(step.baseline.nd_bypass)
    _tune(step.baseline.larval_drop, step.baseline.acq_expires_s)


def _remove_nd_bypasses(keep: tuple[str, ...]) -> None:
    """pluto's ND bypasses, but those that were there before our pluto started."""
    with xfrm.XfrmClient() as client:
        table = client.policies()
    delete([p for p in table if policies.is_nd_bypass(p) and policies.nd_bypass_key(p) not in keep])


def _tune_acquires(step: TuneAcquires, ex: Execution) -> None:
    before = (xfrm.larval_drop(), xfrm.acq_expires())
    ex.stack.callback(_tune, *before)
    _tune(step.larval_drop, step.acq_expires_s)


def _tune(larval_drop: bool, acq_expires_s: int) -> None:
    xfrm.set_larval_drop(larval_drop)
    xfrm.set_acq_expires(acq_expires_s)


# --- processes ----------------------------------------------------------------------------------------------

def _stop_run(step: StopRun, ex: Execution) -> None:
    run = daemon.RunDir(step.run_dir)
    for pid in daemon.supervisors_of(run):
        daemon.stop_supervisor(pid)
    if daemon.pluto_pid(run) is not None:
        ex.say(f"stopping pluto of {step.run_dir}: {step.why}")
        daemon.stop_pluto(run)
    if step.remove_dir:
        _retire(run, ex, ex.say)


def _retire(run: daemon.RunDir, ex: Execution, tell: Say) -> None:
    """Every run dir that goes, goes here: its logs kept in log_dir first, `tell` says where (a warning when
    they could not be)."""
    retired = daemon.retire(run, ex.log_dir)
    if retired.warning is not None:
        ex.warn(retired.warning)
    if retired.kept is not None:
        tell(f"logs of {run.root} kept in {retired.kept}")


def _start_pluto(_: StartPluto, ex: Execution) -> None:
    with xfrm.XfrmClient() as client:
        ex.nd_before = tuple(sorted(policies.nd_bypasses(client.policies())))
    ex.say("starting pluto")
    ex.pluto_pid = daemon.start_pluto(ex.run)
    ex.stack.callback(_stop_our_pluto, ex.run, ex.nd_before)


def _stop_our_pluto(run: daemon.RunDir, nd_before: tuple[str, ...]) -> None:
    daemon.stop_pluto(run)
    _remove_nd_bypasses(nd_before)


def _ensure_supervisor(_: EnsureSupervisor, ex: Execution) -> None:
    recorded = ex.record.supervisor_pid if ex.record is not None else None
    running = daemon.supervisor_running(recorded) and recorded in daemon.supervisors_of(ex.run)
    # Never this process (a supervisor reapplying trusted mode runs `up` itself): it would kill itself mid-`up`.
    if running and recorded is not None and (recorded == os.getpid() or not daemon.runs_older_code(recorded)):
        ex.supervisor_pid = recorded
    else:
        ex.supervisor_pid = daemon.start_supervisor(ex.run)
        ex.stack.callback(daemon.stop_supervisor, ex.supervisor_pid)
        if running:  # only once the new one runs: the supervisor's watch never lapses
            ex.say(f"replacing the supervisor (pid {recorded}): it runs ikectl's code from before an upgrade")
            daemon.stop_supervisor(recorded)
    if ex.intent is not None and ex.intent.mode == Mode.TRUSTED:
        late = await_guard(ex.supervisor_pid)
        if late is not None:
            ex.warnings.append(late)


def await_guard(supervisor_pid: int | None) -> str | None:
    """Wait until the supervisor holds its guard table (a trusted `up`'s own goes when it exits, and the
    supervisor takes its guard a moment after it starts); a warning when it does not within GUARD_WAIT_S."""
    if not nft.available():
        return None
    deadline = time.monotonic() + GUARD_WAIT_S
    while nft.check(nft.GUARD) != nft.TableState.INTACT:
        if time.monotonic() > deadline:
            return (f"the supervisor (pid {supervisor_pid}) did not take its guard table within {GUARD_WAIT_S:g} s: "
                    "until it does, the other two backstops hold alone")
        time.sleep(0.02)
    return None


# --- the tree and pluto's conns -----------------------------------------------------------------------------

def _write_tree(_: WriteTree, ex: Execution) -> None:
    root = ex.run.root
    fresh = not ex.run.ours()
    old = {relative: _read(root / relative) for relative in ex.files}
    ex.run.prepare()
    render.write_tree(ex.files, root)
    # A failed `up` that made the run dir removes it (its pluto and supervisor were stopped before: the stack
    # unwinds in order), and says where its logs went.
    ex.stack.callback(lambda: _retire(ex.run, ex, ex.tell) if fresh else restore_tree(root, old))


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def restore_tree(root: Path, tree: dict[str, str | None]) -> None:
    render.write_tree({k: v for k, v in tree.items() if v is not None}, root)
    for relative, content in tree.items():
        if content is None:
            (root / relative).unlink(missing_ok=True)


def _unload_conns(step: UnloadConns, ex: Execution) -> None:
    ex.say(f"unloading the {step.mode.value} conns")
    whack = ex.whack
    unloaded = []
    for name in step.names:
        with contextlib.suppress(IkectlError):  # not loaded
            whack.delete(name)
            unloaded.append(name)

    def reload() -> None:  # the old tree is back on disk by the time this runs (the stack unwinds in order)
        for name in unloaded:  # only what was loaded: a conn deleted before (a failed pin's) stays out
            with contextlib.suppress(IkectlError):
                whack.add(name)
                whack.route(name)

    ex.stack.callback(reload)


def _load_conns(step: LoadConns, ex: Execution) -> None:
    assert ex.intent is not None
    profile = ex.intent.profile
    whack = ex.whack
    ex.say("loading the conns into pluto")
    ex.groups_loaded_at = _log_size(ex.run)
    groups = profile.groups()
    if step.replacing:
        # Before --listen, which reloads the groups: with a group conn still in, an instance of a resolver line
        # that has an SA clashes ("group name + target yields duplicate name", in the VM).
        for name in OE_CONNS.values():
            with contextlib.suppress(IkectlError):
                whack.delete(name)
    if step.rescan:
        # pluto looks at its interfaces only when told: the network may have changed under it. A rescan while a
        # switch had taken the address away shut its socket there; without another the conns cannot load.
        whack.listen()
    trusted = render.trusted_conns(len(profile.trusted.addresses)) if profile.trusted else ()
    for name in trusted + tuple(g.conn for g in groups):
        if step.replacing:
            with contextlib.suppress(IkectlError):
                whack.delete(name)
        whack.add(name)
        if name in trusted:
            whack.route(name)
    if groups:
        opportunistic.route_groups(whack, profile.opportunistic)
        _wait_for_traps(ex, whack, profile.opportunistic)


def _log_size(run: daemon.RunDir) -> int:
    try:
        return run.log.stat().st_size
    except OSError:  # no log yet
        return 0


def _wait_for_traps(ex: Execution, whack: Whack, resolvers: tuple[Address, ...]) -> None:
    """Wait until the kernel holds a trap (or pluto's decision) for udp/53 and tcp/53 to each resolver. pluto
    routes a group's lines after --listen returns, and now and then not at all (seen in the VM): route the
    groups once more if they are late. A resolver still without one is left in clear, and says why: it never
    costs the others their protection."""
    wanted = {(resolver, proto) for resolver in resolvers for proto in (6, 17)}
    started, rerouted = time.monotonic(), False
    while True:
        with xfrm.XfrmClient() as client:
            table = client.policies()
        missing = {(a, p) for a, p in wanted if not policies.covered(table, a, p)}
        if not missing:
            return
        waited = time.monotonic() - started
        if waited > TRAP_WAIT_S:
            break
        if waited > TRAP_WAIT_S / 2 and not rerouted:
            opportunistic.route_groups(whack, resolvers)
            rerouted = True
        time.sleep(0.05)
    left_out = sorted({a for a, _ in missing}, key=str)
    for address in left_out:
        ex.unprotected[str(address)] = "pluto routed no trap for it; DNS passes in clear"
    members = tuple(a for a in resolvers if a not in left_out)
    assert ex.intent is not None
    files = render.group_files(render.Profile(Mode.COFFEE_SHOP, opportunistic=members,
                                              sources=ex.intent.profile.sources).groups())
    render.write_tree({f"ipsec.d/policies/{name}": "" for name in OE_CONNS.values()} | files, ex.run.root)
    opportunistic.reload(ex.run, members, list(left_out))


def _reload_conns(step: ReloadConns, ex: Execution) -> None:
    whack = ex.whack
    if any(render.is_trusted_conn(name) for name in step.names):
        # The trusted conn's %defaultroute is looked up when it is added, and pluto routes it only from an address
        # it listens on: if the host's address changed since `up` (no hook told ikectl yet), pluto knows none, the
        # route fails and DNS stays blocked (a random walk found it: move the address, then flush XFRM).
        with contextlib.suppress(IkectlError):
            whack.listen()
    for name in step.names:
        with contextlib.suppress(IkectlError):  # not loaded: nothing to take away
            whack.delete(name)
        try:
            whack.add(name)
        except IkectlError as exc:
            ex.say(f"cannot load {name} again: {exc}")
            continue
        if render.is_trusted_conn(name):
            with contextlib.suppress(IkectlError):  # a resolver that does not answer stays blocked
                whack.route(name)
                whack.initiate(name)
    groups = [name for name in step.names if name in OE_CONNS.values()]
    if groups:
        whack.reread_groups()
        for name in groups:
            with contextlib.suppress(IkectlError):
                whack.route(name)


def _negotiate(step: Negotiate, ex: Execution) -> None:
    """Negotiate now, for udp/53 and tcp/53 alike, so the first query finds ESP (or, in coffee-shop mode, the
    clear fallback) in place. Waiting for the first packet instead is slower, and a tcp/53 trap that fires while
    the udp/53 one is negotiating is dropped by pluto as a duplicate acquire (seen in the VM)."""
    assert ex.intent is not None
    profile, whack = ex.intent.profile, ex.whack
    if profile.trusted is not None:
        ex.say(f"negotiating with {', '.join(map(str, profile.trusted.addresses))}")
        busy = _conns_with_states(whack)
        for name in render.trusted_conns(len(profile.trusted.addresses)):
            # A query that met the conn's trap may have started its negotiation already: another initiate would
            # add a second Child SA for the same traffic (seen in the VM: one on demand, one from here).
            if name not in busy:
                with contextlib.suppress(IkectlError):  # a resolver that does not answer stays blocked
                    whack.initiate(name)
    pairs = [(resolver, routes.source_address(resolver)) for resolver in profile.opportunistic]
    if pairs:
        ex.say(f"negotiating with {', '.join(str(r) for r, local in pairs if local is not None)}")
    # One resolver's negotiation (or its IKE timeout) does not wait for another's: in parallel, each resolver's
    # udp/53 then tcp/53 in turn (pluto refuses a second negotiation with a peer in flight).
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(pairs))) as pool:
        list(pool.map(lambda pair: _negotiate_opportunistic(whack, *pair), pairs))


def _conns_with_states(whack: Whack) -> set[str]:
    try:
        return {state.conn for state in whack.states()}
    except IkectlError:  # pluto busy: initiate anyway
        return set()


def _negotiate_opportunistic(whack: Whack, resolver: Address, local: Address | None) -> None:
    if local is None:  # no route to it: nothing to negotiate
        return
    for proto in (17, 6):
        with contextlib.suppress(IkectlError):  # a resolver without IKE is an outcome, not an error
            whack.initiate_opportunistic(str(local), str(resolver), proto=proto)


def _upkeep(_: Upkeep, ex: Execution) -> None:
    assert ex.make_record is not None
    record = ex.make_record(ex)
    with xfrm.XfrmClient() as client:
        table = client.policies()
    # A resolver whose exclusion ran out is in the groups this `up` loaded: what pluto said since counts for it.
    ex.upkeep = opportunistic.upkeep(ex.run, record, table, time.time(), loaded_at=ex.groups_loaded_at)


def _record(_: Record, ex: Execution) -> None:
    assert ex.make_record is not None
    ex.store.write(ex.make_record(ex))


def _forget(step: Forget, ex: Execution) -> None:
    for run_dir in step.run_dirs:
        _retire(daemon.RunDir(run_dir), ex, ex.tell)
    ex.store.remove()


# One handler per kind of step; `run` looks them up by the step's type.
HANDLERS: dict[type[Any], Callable[[Any, Execution], None]] = {
    Protect: _protect, DeletePolicies: _delete_policies, RemoveLeftovers: _remove_leftovers, StopRun: _stop_run,
    UnloadConns: _unload_conns, TuneAcquires: _tune_acquires, WriteTree: _write_tree, StartPluto: _start_pluto,
    LoadConns: _load_conns, LiftBackstop: _lift_backstop, Negotiate: _negotiate, Upkeep: _upkeep,
    EnsureSupervisor: _ensure_supervisor, Record: _record, RemoveBackstop: _remove_backstop,
    RestoreKernel: _restore_kernel, Forget: _forget, ReloadConns: _reload_conns,
}
