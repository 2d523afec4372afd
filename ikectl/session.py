"""`ikectl up` and `ikectl down`: make this network namespace hold the configured mode, and take it away.

Each is observe, plan, execute, record (docs/architecture.md): the intent comes from the config and the network as
discovered now, the facts from the kernel's tables and /proc, the record from ikectl/state.py; ikectl/plan.py
orders the steps and ikectl/execute.py carries them out.

A failed coffee-shop `up` undoes what it did: the system is as it was. A failed trusted `up` never lowers the
protection that was in place: both backstops stay, coffee-shop's conns and shunts go, the record says `blocked`
and why (so `status` says so, the next `up` starts from it, and `down` takes it away), and the error is raised.

`down` removes everything of ours the record, the config and the kernel's tables show, whatever happened
between: our plutos and supervisors, both backstops, every policy of pluto's kind for a resolver we managed,
pluto's ND bypasses, larval drop as it was; and it works from the record alone when the config broke or went.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ikecommon import xfrm

from . import backstop, daemon, execute, nft, pins, plan, policies, protect, render, resolvers, routes
from .config import Address, Config, Mode, default_log_dir
from .errors import IkectlError
from .observe import process, protection
from .state import Baseline, Blocked, RunState, StateStore, Unreadable

Say = Callable[[str], None]
ESP_CACHE = "esp.json"
LOCK_WAIT_S = 60.0  # another `up` under TCG takes up to half a minute; a stuck holder is named, never waited on


class UpError(IkectlError):
    """`up` could not apply the mode."""


class Blocking(UpError):
    """A trusted `up` failed and failed closed: DNS is blocked, and the message says why."""


@dataclass(frozen=True)
class UpResult:
    mode: Mode
    resolvers: tuple[Address, ...]
    pluto_pid: int | None
    seconds: float
    warnings: tuple[str, ...] = ()


def _quiet(_: str) -> None:
    pass


# --- facts --------------------------------------------------------------------------------------------------

def _pluto_facts(run_dir: Path) -> plan.PlutoFacts:
    pid = daemon.pluto_pid(daemon.RunDir(run_dir))
    found = process(pid) if pid is not None else None
    return plan.PlutoFacts(pid, found is not None and found.stopped)


def gather(run_dir: Path) -> plan.Facts:
    # One netlink client for both reads: under TCG making one took seconds.
    with xfrm.XfrmClient() as client:
        table = tuple(p for p in client.policies() if p.direction <= xfrm.Direction.FWD)
        live = live_reqids(client, table)
    return plan.Facts(policies=table, protection=protection(table), pluto=_pluto_facts(run_dir),
                      larval_drop=xfrm.larval_drop(), acq_expires_s=xfrm.acq_expires(), live_reqids=live)


def live_reqids(client: xfrm.XfrmClient, table: tuple[xfrm.Policy, ...]) -> frozenset[int]:
    """The reqids of live SAs among those of pluto's outbound policies whose SA lost its inbound policy
    (plan.unrouted): the SAs are read only when there are such policies, which is almost never."""
    unpaired = policies.unpaired_reqids(table)
    if not unpaired:
        return frozenset()
    return frozenset(sa.reqid for sa in client.sas() if not sa.larval and sa.reqid in unpaired)


def esp_refused(store: StateStore) -> str | None:
    """Why this kernel cannot install ESP SAs (None: it can), from the XFRM layer's probe. A kernel that can is
    remembered for the boot; one that cannot is probed again (a module may have been loaded since).
    IKECTL_ASSUME_ESP=1 skips the probe: for a kernel the probe misjudges, and for the project's host tests,
    which check policies and IKE on a kernel without ESP."""
    if os.environ.get("IKECTL_ASSUME_ESP") == "1":
        return None
    cache = store.root / ESP_CACHE
    boot = _boot_id()
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        if json.loads(cache.read_text())["boot"] == boot:
            return None
    support = xfrm.probe_esp()
    if not support.available:
        return support.detail or "the kernel refused an AES-GCM ESP SA"
    with contextlib.suppress(OSError):
        store.root.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"boot": boot}))
    return None


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


# --- the intent ---------------------------------------------------------------------------------------------

def intent(config: Config, record: RunState | None, esp: str | None, now: float) -> plan.Intent:
    """What `up` is to apply: the resolvers found now, and in coffee-shop mode which of them go into pluto's
    groups (the others are left in clear, and why)."""
    found = resolvers.discover(config)
    if config.mode == Mode.TRUSTED:
        if config.trusted is None:
            raise UpError("trusted mode without a trusted resolver")  # config.load refuses it; a bug guard
        pinned = config.trusted.addresses
        listed = (*pinned, *(a for a in found if a not in pinned))  # the others stay listed, as blocked
        if esp is not None:
            raise Blocking(f"this kernel cannot install ESP SAs ({esp}): trusted mode blocks all DNS")
        return plan.Intent(Mode.TRUSTED, config.run_dir, listed, render.Profile.from_config(config, ()))
    if not found:
        raise UpError("no resolvers to protect: none configured and none found in /etc/resolv.conf")
    unprotected: dict[str, str] = {}
    sources: dict[int, Address] = {}
    kept = record.upkeep if record is not None and record.mode == Mode.COFFEE_SHOP and record.blocked is None else None
    for address in found:
        if esp is not None:
            unprotected[str(address)] = f"this kernel cannot install ESP SAs ({esp}); DNS passes in clear"
            continue
        source = routes.source_address(address)
        if source is None:
            unprotected[str(address)] = f"no route to it from this host (no IPv{address.version} address or route)"
            continue
        sources.setdefault(address.version, source)
    admitted = tuple(a for a in found if str(a) not in unprotected
                     and not (kept and str(a) in kept.excluded and kept.excluded[str(a)].until > now))
    profile = render.Profile.from_config(config, admitted, sources)
    return plan.Intent(Mode.COFFEE_SHOP, config.run_dir, found, profile, unprotected)


def _check(files: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory(prefix="ikectl-check-") as scratch:
        render.write_tree(files, Path(scratch))
        render.check_tree(Path(scratch))


# --- up -----------------------------------------------------------------------------------------------------

def up(config: Config, say: Say = _quiet, config_path: Path | None = None, *, protected: bool = False,
       tell: Say = _quiet, warn: Say = _quiet) -> UpResult:
    """Apply the configured mode. `config_path`, when given, is where the supervisor reads the config again
    (re-attestation); `protected`: the caller ran protect.first already (the NetworkManager hook). A failed
    trusted `up` fails closed, then raises what failed. A failed `up` that removes the run dir it made `tell`s
    where its logs went (in config.log_dir), and `warn`s when they could not be kept."""
    pins.require_usable(config)  # a trust-store pin that failed attestation: refused, nothing touched
    daemon.require_libreswan()  # no libreswan: refused, nothing touched
    started = time.monotonic()
    store = StateStore.here()
    store.check()  # a state directory that cannot take the record: refused, nothing touched
    daemon.RunDir(config.run_dir).check()  # a run dir of someone else's: refused, nothing touched
    if config.mode == Mode.TRUSTED and not protected:
        # Protection first, before waiting for the lock (a supervisor round holds it for milliseconds, another
        # `up` for longer): both backstops, and pluto's policies for DNS to any other resolver out. Failing
        # closed, none of it is undone, so it needs no record; the plan under the lock repeats what is missing.
        _protect_first(config, store)
    with store.lock(wait_s=LOCK_WAIT_S, unstick=daemon.end_if_stuck):
        found = store.read()
        record = found if isinstance(found, RunState) else None
        settled = True  # the record says what holds
        try:
            return _up(config, store, record, say, config_path, started, tell, warn)
        except BaseException as exc:
            if config.mode == Mode.TRUSTED:  # the caller says so: the error stays the one that happened
                settled = False
                _fail_closed(config, store, record, str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                             say)
                settled = True
            raise
        finally:
            # This `up`'s marker (or a dead one's) goes once the record says what holds. A fail-closed cut short
            # (a full disk, a second Ctrl-C) leaves it: the supervisor then keeps the backstops until the next
            # `up` or `down`, whatever the old record says.
            if settled:
                protect.done(store)


def _protect_first(config: Config, store: StateStore) -> None:
    found = store.read()
    assert config.trusted is not None
    protect.first(config.trusted.addresses, config.run_dir, found if isinstance(found, RunState) else None, store)


def _up(config: Config, store: StateStore, record: RunState | None, say: Say, config_path: Path | None,
        started: float, tell: Say = _quiet, warn: Say = _quiet) -> UpResult:
    now = time.time()
    facts = gather(config.run_dir)
    baseline = store.keep_baseline(Baseline(facts.larval_drop, tuple(sorted(policies.nd_bypasses(facts.policies))),
                                            facts.acq_expires_s))
    esp = esp_refused(store)
    wanted = intent(config, record, esp, now)
    files = render.render_tree(wanted.profile)
    _check(files)
    steps = plan.up(wanted, facts, record)
    with contextlib.ExitStack() as stack:
        ex = execute.Execution(daemon.RunDir(config.run_dir), store, record, say, stack, intent=wanted, files=files,
                               unprotected=dict(wanted.unprotected), log_dir=config.log_dir, warn=warn, tell=tell)
        ex.make_record = lambda ex: _record_of(ex, config, baseline, config_path, now, esp)
        execute.run(steps, ex)
        stack.pop_all()  # applied: nothing to undo
    warnings = (*ex.warnings, *(f"{a} left in clear: {why}" for a, why in ex.unprotected.items()))
    pid = ex.pluto_pid or daemon.pluto_pid(ex.run)
    return UpResult(wanted.mode, wanted.resolvers, pid, time.monotonic() - started, warnings)


def _record_of(ex: execute.Execution, config: Config, baseline: Baseline, config_path: Path | None, now: float,
               esp: str | None) -> RunState:
    wanted, record = ex.intent, ex.record
    assert wanted is not None
    same_mode = record is not None and record.mode == wanted.mode and record.blocked is None
    upkeep = ex.upkeep if ex.upkeep is not None else (
        record.upkeep if record is not None and same_mode and wanted.mode == Mode.COFFEE_SHOP else None)
    state = RunState(
        mode=wanted.mode, resolvers=wanted.resolvers, run_dir=wanted.run_dir,
        up_at=record.up_at if record is not None and same_mode else now, baseline=baseline,
        trusted=wanted.pinned, managed=protect.managed(wanted.resolvers, record),
        pluto_pid=ex.pluto_pid or daemon.pluto_pid(ex.run), supervisor_pid=ex.supervisor_pid,
        config_path=config_path or (record.config_path if record is not None else None),
        retry_after_s=config.coffee_shop.retry_after_s, unprotected=dict(ex.unprotected), esp_refused=esp,
        interference=record.interference if record is not None else ())
    return replace(state, upkeep=upkeep) if upkeep is not None else state


def _fail_closed(config: Config, store: StateStore, record: RunState | None, reason: str, say: Say) -> None:
    """A trusted `up` failed: both backstops (the failure may have cut their installation short), no
    opportunistic conn or pluto policy for another resolver left to outrank them, and the record says so."""
    say(f"failing closed: {reason}")
    backstop.install_xfrm()
    with contextlib.suppress(IkectlError):
        nft.install()
    run = daemon.RunDir(config.run_dir)
    assert config.trusted is not None
    pinned = config.trusted.addresses
    if daemon.pluto_pid(run) is not None and _pluto_facts(config.run_dir).stopped is False:
        whack = run.whack(timeout_s=5.0)
        # Coffee-shop's groups, and the conns of addresses an earlier pin had and this one has not (the record
        # written below counts only this pin's): an undone switch may have loaded them again.
        for name in (*plan.OE_CONNS.values(), *plan.stale_trusted(record, len(pinned))):
            with contextlib.suppress(IkectlError):
                whack.delete(name)
    everyone = protect.managed(pinned, record)
    with xfrm.XfrmClient() as client:
        table = client.policies()
    execute.delete(policies.leftovers(table, everyone - set(pinned))
                   + [p for p in table if policies.clear_pass(p) and policies.pluto_dns_peer(p) in pinned])
    now = time.time()
    found = resolvers.discover(config) if record is None else record.resolvers
    listed = (*pinned, *(a for a in found if a not in pinned))
    supervisor = record.supervisor_pid if record is not None else None
    if not daemon.supervisor_running(supervisor):
        with contextlib.suppress(OSError):  # the watch keeps the backstops in place; DNS is blocked without it
            supervisor = daemon.start_supervisor(run)
    baseline = record.baseline if record is not None else store.keep_baseline(
        Baseline(xfrm.larval_drop(), acq_expires_s=xfrm.acq_expires()))
    store.write(RunState(
        mode=Mode.TRUSTED, resolvers=listed, run_dir=config.run_dir, up_at=now, baseline=baseline, trusted=pinned,
        managed=protect.managed(listed, record), pluto_pid=daemon.pluto_pid(run), supervisor_pid=supervisor,
        config_path=record.config_path if record is not None else None, retry_after_s=config.coffee_shop.retry_after_s,
        blocked=Blocked(f"applying trusted mode failed: {reason}", now),
        interference=record.interference if record is not None else ()))
    late = execute.await_guard(supervisor) if supervisor is not None else None
    if late is not None:
        say(late)


# --- down ---------------------------------------------------------------------------------------------------

def down(config_run_dir: Path | None, say: Say = _quiet, *, log_dir: Path | None = None,
         warn: Say = _quiet) -> bool:
    """Remove what `up` installed, from the record (and the config's run dir, when given); False when ikectl was
    not up. Raises IkectlError naming what could not be removed. Each run dir's logs go to `log_dir` (default
    config.default_log_dir()) before it is removed: `say` says where, `warn` when they could not be kept (which
    never stops `down`)."""
    store = StateStore.here()
    store.check()
    with store.lock(wait_s=LOCK_WAIT_S, unstick=daemon.end_if_stuck):
        found = store.read()
        record = found if isinstance(found, RunState) else None
        dirs = (config_run_dir,) if config_run_dir is not None else ()
        marked = any(daemon.RunDir(d).ours() for d in dirs)
        if found is None and store.baseline() is None and not marked and not _anything_of_ours():
            return False
        if isinstance(found, Unreadable):
            say(f"the record is unreadable ({found.why}): removing what the config and the kernel show")
        with contextlib.ExitStack() as stack:
            ex = execute.Execution(daemon.RunDir(record.run_dir if record else dirs[0] if dirs else Path("/")),
                                   store, record, say, stack, log_dir=log_dir or default_log_dir(), warn=warn,
                                   tell=say)
            execute.run(plan.down(record, dirs, store.baseline()), ex)
            stack.pop_all()
        protect.done(store, whoever=True)
        remaining = _remaining(record, dirs)
    store.remove_lock()
    if remaining:
        raise IkectlError(f"down left {'; '.join(remaining)}")
    return True


def _anything_of_ours() -> bool:
    with xfrm.XfrmClient() as client:
        owned = any(p.owned for p in client.policies())
    return owned or nft.check() in (nft.TableState.INTACT, nft.TableState.DAMAGED)


def _remaining(record: RunState | None, dirs: tuple[Path, ...]) -> list[str]:
    """What of ours is still there after `down`: the verification after apply."""
    left = []
    with xfrm.XfrmClient() as client:
        table = client.policies()
    owned = [p for p in table if p.owned]
    if owned:
        left.append(f"{len(owned)} XFRM policies in ikectl's band")
    if nft.check() in (nft.TableState.INTACT, nft.TableState.DAMAGED):
        left.append("the nftables table inet ikectl")
    if record is not None:
        stray = policies.leftovers(table, protect.managed(record.resolvers, record))
        left += [f"pluto's policy {policies.describe(p)}" for p in stray]
    for run_dir in {*dirs, *((record.run_dir,) if record else ())}:
        if daemon.pluto_pid(daemon.RunDir(run_dir)) is not None:
            left.append(f"pluto of {run_dir}")
    return left


# --- a pin that failed --------------------------------------------------------------------------------------

def hold_blocked(pinned: tuple[Address, ...], reason: str, now: float, pin: str | None = None) -> bool:
    """A pin trusted mode uses failed (`pin`) or is gone: the record says trusted mode is blocked, so that neither
    the supervisor's repairs nor a pluto it revives load the trusted conns again from the tree on disk, which still
    holds the pin's key; the next `up` (a pin that verifies again reapplies) replaces it. True when written."""
    store = StateStore.here()
    with store.lock(wait_s=LOCK_WAIT_S, unstick=daemon.end_if_stuck):
        record = store.read()
        if not isinstance(record, RunState) or record.mode != Mode.TRUSTED or record.trusted != pinned:
            return False
        store.write(replace(record, blocked=Blocked(reason, now, pin)))
    return True


# --- captive-portal windows ---------------------------------------------------------------------------------
# Trusted mode only: coffee-shop lets a portal's DNS through by itself (its clear fallback). Opening removes both
# backstops, so DNS to the portal's resolver passes in clear while pluto's conns still hold the trusted
# resolver's DNS to ESP; closing puts them back. The record carries the window's end, so the supervisor's watch
# leaves the backstops out until then. Both do nothing unless ikectl is up in trusted mode.

def open_portal_window(until: float, say: Say = _quiet) -> bool:
    """Let clear DNS pass until `until` (a portal login); True when trusted mode is up and the backstops are out."""
    store = StateStore.here()
    with store.lock(wait_s=LOCK_WAIT_S, unstick=daemon.end_if_stuck):
        record = store.read()
        if not isinstance(record, RunState) or record.mode != Mode.TRUSTED:
            return False
        store.write(replace(record, portal_until=until))
        say("portal window: removing the backstops, DNS to other resolvers passes in clear")
        backstop.remove()
    return True


def close_portal_window(say: Say = _quiet) -> bool:
    """End the window: the backstops block DNS that is not protected again; True when they were reinstalled."""
    store = StateStore.here()
    with store.lock(wait_s=LOCK_WAIT_S, unstick=daemon.end_if_stuck):
        record = store.read()
        if not isinstance(record, RunState) or record.mode != Mode.TRUSTED:
            return False
        say("portal window closed: reinstalling the backstops")
        backstop.install()
        store.write(replace(record, portal_until=None))
    return True
