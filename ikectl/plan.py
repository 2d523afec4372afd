"""The planner: from what should be (an `Intent`), what is (`Facts`, read from the kernel and /proc) and what was
applied (the `RunState` record) to the ordered steps that get there. Pure: data in, data out; the unit tests read
it as tables of before and after (tests/test_plan.py). ikectl/execute.py carries the steps out.

The order is the promise. In trusted mode protection comes first: both backstops go in before anything is
removed, unloaded or loaded, and nothing later lowers them (ikectl/protect.py does that step before the planner
is even loaded; the plan repeats what is missing). Leaving trusted mode, the backstops go only once the
opportunistic traps are in. A resolver ikectl has managed keeps no policy of pluto's kind (ikectl/policies.py)
that the mode now applied does not account for, whoever left it: a pluto that forgot its shunts, one that was
killed, one of a run dir the config no longer names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ikecommon.xfrm import Policy

from . import policies
from .config import Address, Mode
from .observe import Protection
from .protect import doomed, kept, managed
from .render import Profile, trusted_conns, trusted_pair
from .state import Baseline, RunState

OE_CONNS = {4: "private-or-clear", 6: "private-or-clear6"}  # one opportunistic group per address family
# Coffee-shop: an ACQUIRE that pluto leaves unanswered holds its flow for this long, not the kernel's 30 s. pluto
# answers none while it holds a shunt for the pair, and its clear fallback can go from under a larval state (a
# flush, the retry after retry_after_s, whose minimum is 5 s): DNS to that resolver was blackholed until the larval
# state expired (the walk found it, in the VM). Expiring sooner costs nothing: the next packet sends a new ACQUIRE,
# which pluto takes for the negotiation it already has.
ACQ_EXPIRES_S = 3


@dataclass(frozen=True)
class PlutoFacts:
    pid: int | None = None
    stopped: bool = False  # SIGSTOP'ed: answers nothing until resumed


@dataclass(frozen=True)
class Facts:
    """What is in place now."""

    policies: tuple[Policy, ...] = ()
    protection: Protection | None = None  # read when the plan needs it (trusted, or leaving it)
    pluto: PlutoFacts = PlutoFacts()  # in the run dir the intent names (another one's is stopped whatever it does)
    larval_drop: bool = True
    acq_expires_s: int = 30
    # The reqids of the kernel's live SAs, read when an outbound policy of pluto's has a forward twin but no inbound
    # one (policies.unpaired_reqids): another program may have deleted the SA's inbound policy (`unrouted`).
    live_reqids: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Intent:
    """The mode to apply, made from the config and the network as discovered (ikectl/session.py)."""

    mode: Mode
    run_dir: Path
    resolvers: tuple[Address, ...]  # listed, in status order
    profile: Profile  # what pluto loads
    unprotected: Mapping[str, str] = field(default_factory=dict)  # coffee-shop: left in clear, and why

    @property
    def pinned(self) -> tuple[Address, ...]:
        """Trusted mode: the pinned resolver's addresses (none in coffee-shop mode)."""
        return self.profile.trusted.addresses if self.profile.trusted else ()


# --- the steps ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Protect:
    """Both backstops (XFRM and nftables)."""


@dataclass(frozen=True)
class DeletePolicies:
    """These policies, in this order (looked up before the backstop went in, so only the deletes remain)."""

    policies: tuple[Policy, ...]
    why: str


@dataclass(frozen=True)
class RemoveLeftovers:
    """Whatever policy of pluto's kind for DNS with these resolvers the table holds when the step runs: read
    then, after a pluto stopped or a conn was unloaded."""

    resolvers: frozenset[Address]


@dataclass(frozen=True)
class StopRun:
    """The supervisor and pluto of a run dir (one the config no longer names, or a pluto that is stuck), and the
    run dir itself when `remove_dir`."""

    run_dir: Path
    why: str
    remove_dir: bool = False


@dataclass(frozen=True)
class UnloadConns:
    names: tuple[str, ...]
    mode: Mode  # the mode they belong to: its tree is put back and they are loaded again on undo


@dataclass(frozen=True)
class TuneAcquires:
    """How the namespace treats a packet that meets a trap: queued until the SA is there, or dropped
    (xfrm_larval_drop); and how long the larval state of its ACQUIRE holds that flow (xfrm_acq_expires)."""

    larval_drop: bool
    acq_expires_s: int


@dataclass(frozen=True)
class WriteTree:
    pass


@dataclass(frozen=True)
class StartPluto:
    pass


@dataclass(frozen=True)
class LoadConns:
    replacing: bool  # the same mode's conns are loaded already: replace them
    rescan: bool  # pluto was running: make it look at the interfaces again


@dataclass(frozen=True)
class LiftBackstop:
    """Coffee-shop, coming from trusted or blocked: the traps are in, DNS to other resolvers may leave now."""


@dataclass(frozen=True)
class Negotiate:
    pass


@dataclass(frozen=True)
class Upkeep:
    """Coffee-shop's upkeep at once (ikectl/opportunistic.py): a resolver that refused the Child SA while `up`
    negotiated goes to clear before the first query meets pluto's hold."""


@dataclass(frozen=True)
class EnsureSupervisor:
    pass


@dataclass(frozen=True)
class Record:
    pass


@dataclass(frozen=True)
class RemoveBackstop:
    pass


@dataclass(frozen=True)
class RestoreKernel:
    """What the first `up` changed and pluto leaves behind: larval drop as it was, pluto's ND bypasses gone."""

    baseline: Baseline


@dataclass(frozen=True)
class Forget:
    """The record, the run dirs, the lock."""

    run_dirs: tuple[Path, ...]


@dataclass(frozen=True)
class ReloadConns:
    """pluto's policies for loaded conns are gone (another program flushed them): load the conns again. Routing
    alone puts traps back, but not the policies of an established Child SA, whose traffic pluto then never
    negotiates again (a trap over an SA pluto believes is there): the conns go and come back, and negotiate."""

    names: tuple[str, ...]


Step = (Protect | DeletePolicies | RemoveLeftovers | StopRun | UnloadConns | TuneAcquires | WriteTree | StartPluto
        | LoadConns | LiftBackstop | Negotiate | Upkeep | EnsureSupervisor | Record | RemoveBackstop | RestoreKernel
        | Forget | ReloadConns)


# --- planners -----------------------------------------------------------------------------------------------

def loaded_mode(record: RunState | None, facts: Facts) -> Mode | None:
    """The mode whose conns our running pluto may hold, as far as the record tells: none when pluto is not running
    or is stuck. A blocked record's mode too: its conns may or may not have loaded, and a load that replaces deletes
    each one first. (A pluto of a run dir the config no longer names is the callers' `_moved`.)"""
    if record is None or facts.pluto.pid is None or facts.pluto.stopped:
        return None
    return record.mode


def up(intent: Intent, facts: Facts, record: RunState | None) -> tuple[Step, ...]:
    return (_up_trusted if intent.mode == Mode.TRUSTED else _up_coffee_shop)(intent, facts, record)


def _moved(intent: Intent, record: RunState | None) -> bool:
    return record is not None and record.run_dir != intent.run_dir


def _restart(intent: Intent, facts: Facts, record: RunState | None) -> list[Step]:
    """Stop what runs where it should not: a pluto of a run dir the config no longer names (its conns would
    outlive `down`), and a pluto that is stuck (every whack call would wait on it)."""
    steps: list[Step] = []
    if record is not None and _moved(intent, record):
        steps.append(StopRun(record.run_dir, f"the config's run_dir is now {intent.run_dir}, was {record.run_dir}",
                             remove_dir=True))
    if facts.pluto.stopped:
        steps.append(StopRun(intent.run_dir, f"pluto (pid {facts.pluto.pid}) is stopped and answers nothing"))
    return steps


def _pluto_running_after(facts: Facts) -> bool:
    return facts.pluto.pid is not None and not facts.pluto.stopped


def _up_trusted(intent: Intent, facts: Facts, record: RunState | None) -> tuple[Step, ...]:
    assert intent.pinned
    everyone = managed(intent.resolvers, record)
    keep = kept(intent.pinned, intent.run_dir, record)
    found = doomed(facts.policies, everyone, keep)
    steps: list[Step] = []
    if facts.protection is None or not facts.protection.complete:
        steps.append(Protect())
    if found:
        steps.append(DeletePolicies(tuple(found), "DNS to resolvers trusted mode does not use"))
    restart = _restart(intent, facts, record)
    steps += restart
    if restart:  # a pluto that had to be killed leaves its policies behind
        steps.append(RemoveLeftovers(frozenset(everyone - keep)))
    if loaded_mode(record, facts) == Mode.COFFEE_SHOP and not _moved(intent, record):
        steps += [UnloadConns(tuple(OE_CONNS.values()), Mode.COFFEE_SHOP),
                  RemoveLeftovers(frozenset(everyone - keep))]
    stale = stale_trusted(record, len(intent.pinned))
    if loaded_mode(record, facts) == Mode.TRUSTED and not _moved(intent, record) and stale:
        steps.append(UnloadConns(stale, Mode.TRUSTED))  # loading by name replaces only the conns the pin still has
    steps.append(WriteTree())
    running = _pluto_running_after(facts) and not _moved(intent, record)
    if not running:
        steps.append(StartPluto())
    steps += [LoadConns(replacing=running and loaded_mode(record, facts) == Mode.TRUSTED, rescan=running),
              Negotiate(), EnsureSupervisor(), Record()]
    return tuple(steps)


def stale_trusted(record: RunState | None, addresses: int) -> tuple[str, ...]:
    """The trusted conns the record's pin had beyond a pin of `addresses` addresses."""
    return trusted_conns(len(record.trusted))[len(trusted_conns(addresses)):] if record is not None else ()


def _up_coffee_shop(intent: Intent, facts: Facts, record: RunState | None) -> tuple[Step, ...]:
    everyone = managed(intent.resolvers, record)
    gone = everyone - set(intent.resolvers)
    steps: list[Step] = _restart(intent, facts, record)
    if steps:  # a pluto that had to be killed leaves its policies behind
        steps.append(RemoveLeftovers(frozenset(everyone)))
    if facts.larval_drop or facts.acq_expires_s != ACQ_EXPIRES_S:
        steps.append(TuneAcquires(larval_drop=False, acq_expires_s=ACQ_EXPIRES_S))
    steps.append(WriteTree())
    running = _pluto_running_after(facts) and not _moved(intent, record)
    loaded = loaded_mode(record, facts) if running else None
    if not running:
        steps.append(StartPluto())
    elif loaded == Mode.TRUSTED and record is not None:
        steps.append(UnloadConns(trusted_conns(len(record.trusted)), Mode.TRUSTED))
    if gone:  # resolvers the network no longer offers: nothing of pluto's for them may stay
        steps.append(RemoveLeftovers(frozenset(gone)))
    steps.append(LoadConns(replacing=loaded == Mode.COFFEE_SHOP, rescan=running))
    protected = facts.protection is not None and facts.protection.anything
    if protected or (record is not None and (record.mode == Mode.TRUSTED or record.blocked is not None)):
        steps.append(LiftBackstop())  # only now: the opportunistic traps are in
    steps += [Negotiate(), Upkeep(), EnsureSupervisor(), Record()]
    return tuple(steps)


def down(record: RunState | None, run_dirs: tuple[Path, ...], baseline: Baseline | None = None) -> tuple[Step, ...]:
    """Everything of ours goes, whatever happened between: the supervisor and pluto of every run dir the record
    or the config names, the backstops, every policy of pluto's kind for a resolver we managed (a pluto that was
    killed leaves its traps: DNS blackholed), pluto's ND bypasses, larval drop as it was before the first `up` (from
    the record, or from the baseline a first `up` wrote before it changed anything)."""
    dirs = tuple(dict.fromkeys(((record.run_dir,) if record is not None else ()) + run_dirs))
    steps: list[Step] = [StopRun(d, "ikectl down") for d in dirs]
    steps.append(RemoveBackstop())
    if record is not None:
        steps.append(RemoveLeftovers(managed(record.resolvers, record)))
    kept = record.baseline if record is not None else baseline  # a first `up` killed half-way left only this
    if kept is not None:
        steps.append(RestoreKernel(kept))
    steps.append(Forget(dirs))
    return tuple(steps)


def admitted(record: RunState) -> tuple[Address, ...]:
    """Coffee-shop: the resolvers in pluto's opportunistic groups (not excluded, not left in clear)."""
    return tuple(a for a in record.resolvers
                 if str(a) not in record.upkeep.excluded and str(a) not in record.unprotected)


def _whole(facts: Facts, resolver: Address) -> bool:
    """pluto's policies for DNS to `resolver` are in: an outbound one per protocol (trap, SA or shunt), and the
    inbound one of an SA that DNS goes out through. Another program deleting only the inbound one of a tunnel-mode
    SA left the outbound one looking whole while the kernel dropped every answer, for good (the walk in the VM, seed
    2722371450: coffee-shop DNS to an IPv6 resolver unanswered, its SAs and the other policies in place)."""
    return all(policies.covered(facts.policies, resolver, proto)
               and not policies.inbound_lost(facts.policies, resolver, proto, facts.live_reqids) for proto in (6, 17))


def unrouted(record: RunState, facts: Facts) -> tuple[str, ...]:
    """The conns whose policies pluto no longer holds (no trap, SA or shunt for a resolver they cover, or an SA
    without its inbound policy), while our pluto runs: what another program's flush or delete leaves. pluto itself
    removes and adds policies in every rekey and negotiation, so the supervisor routes them only once they have
    stayed missing a while (`repair`)."""
    if not _pluto_running_after(facts):
        return ()
    if record.mode == Mode.TRUSTED:
        if record.blocked is not None:
            return ()
        return tuple(name for position, address in enumerate(record.trusted) if not _whole(facts, address)
                     for name in trusted_pair(position))
    # A member pluto dropped itself (liveness) is the upkeep's, which routes it again after retry_after_s.
    members = [a for a in admitted(record) if str(a) not in record.upkeep.lost_at]
    bare = [a for a in members if not _whole(facts, a)]
    return tuple(dict.fromkeys(OE_CONNS[a.version] for a in bare))


def repair(record: RunState, facts: Facts, backstop_wanted: bool, route: tuple[str, ...] = ()) -> tuple[Step, ...]:
    """The supervisor's watch, after another program changed the kernel's tables: put back what ikectl keeps
    there. `backstop_wanted`: trusted or blocked, and no captive-portal window open; `route`: conns `unrouted`
    has named for long enough."""
    steps: list[Step] = []
    if backstop_wanted and facts.protection is not None and not facts.protection.complete:
        steps.append(Protect())
    elif not backstop_wanted and facts.protection is not None and facts.protection.anything:
        steps.append(RemoveBackstop())  # coffee-shop mode must not block what its clear fallback lets out
    if record.mode == Mode.TRUSTED:
        # The pinned resolver's traps and SAs stay, blocked or not: only a clear pass to it would leak.
        stray = doomed(facts.policies, managed(record.resolvers, record), frozenset(record.trusted))
        if stray:
            steps.append(DeletePolicies(tuple(stray), "DNS to resolvers trusted mode does not use"))
    if route:
        steps.append(ReloadConns(route))
    return tuple(steps)
