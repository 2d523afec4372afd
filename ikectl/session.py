"""`ikectl up` and `ikectl down`: apply a mode to this host (its network namespace), and take it away.

`up` renders the tree, checks it with libreswan's parser, then applies in an order that never lowers
protection, recording an undo step for each change: if any step fails, the steps done so far are undone
in reverse and the error is raised, so a failed `up` leaves the system as it was. Run again, `up`
refreshes in place (backstop first, then pluto's conns) without ever removing protection in between.
Run with the other mode, `up` switches without a window of clear DNS: to trusted, the backstop goes in
before the opportunistic conn goes; to coffee-shop, the backstop goes only after the opportunistic traps
are in.

`down` removes what `up` installed (recorded in state.json): our pluto, our policies, the policies our
pluto leaves behind when it exits (its IPv6 neighbour-discovery bypasses), the larval-drop setting, the
run dir; nothing else.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ikecommon import xfrm

from . import backstop, daemon, locks, opportunistic, render, resolvers, routes, supervisor, truststore
from .config import Address, Config, Mode
from .errors import IkectlError
from .whack import Whack

STATE_VERSION = 1
TRUSTED_CONNS = ("ikectl-trusted-udp", "ikectl-trusted-tcp")
OE_CONN = opportunistic.OE_CONN


class UpError(IkectlError):
    """`up` could not apply the mode; what it had done was undone."""


@dataclass(frozen=True)
class UpResult:
    mode: Mode
    resolvers: tuple[Address, ...]
    pluto_pid: int
    seconds: float


def up(config: Config, say: Callable[[str], None] = lambda _: None, config_path: Path | None = None, *,
       fail_closed: bool = False) -> UpResult:
    """`config_path`, when given, is where the supervisor reads the config again (re-attestation).

    A failed `up` undoes what it did. With `fail_closed` (the NetworkManager hook on a trusted network, whose
    time budget may cut `up` short) a trusted `up` that fails keeps the backstop and does not load the old
    mode's conns again: DNS stays blocked rather than going back to what the old network allowed; finish
    with `block_dns`."""
    truststore.require_usable(config)  # a trust-store pin that failed attestation: refused, nothing touched
    run = daemon.RunDir(config.run_dir)
    fail_closed = fail_closed and config.mode == Mode.TRUSTED
    if fail_closed:
        # Before waiting for the state lock, which a supervisor round may hold for tens of milliseconds:
        # failing closed, none of this is undone, so it needs no record. _up repeats it under the lock.
        _block_coffee_shop_dns(read_state(run) or {}, backstop.install)
    with state_lock(run):
        return _up(config, run, say, config_path, fail_closed)


BLOCK_RECORD_WAIT_S = 2.0


def block_dns(config: Config, reason: str) -> None:
    """After a failed fail-closed `up`: the whole backstop (the failure may have cut its installation
    short), and no opportunistic conn or clear-fallback shunt of coffee-shop mode left to outrank it.

    state.json then says so (`blocked`), so that `status` does not report the old mode's resolvers, the
    coffee-shop supervisor leaves its upkeep, the next coffee-shop `up` takes the backstop away again, and
    `down` finds something to take down even when the failed `up` was the first."""
    backstop.install()
    run = daemon.RunDir(config.run_dir)
    if daemon.pluto_pid(run) is not None:
        with contextlib.suppress(IkectlError):
            run.whack().delete(OE_CONN)
    previous = read_state(run)
    _remove_pass_shunts({*(str(a) for a in config.resolvers), *(previous or {}).get("resolvers", ())})
    # The record under the state lock, but bounded: the hook that calls this must never hang NetworkManager,
    # and DNS is blocked by now whether or not the record can be written.
    with contextlib.suppress(StateBusy), state_lock(run, wait_s=BLOCK_RECORD_WAIT_S):
        previous = read_state(run)
        trusted = str(config.trusted.address) if config.trusted else None
        record = {"mode": config.mode.value, "trusted": trusted, "since": time.time(), "reason": reason}
        if previous is None:  # nothing was up: the failed `up` undid its run dir, the backstop stays
            run.root.mkdir(parents=True, exist_ok=True)
            previous = {"version": STATE_VERSION, "mode": config.mode.value, "trusted": trusted,
                        "resolvers": [trusted] if trusted else []}
        write_state(run, {**previous, "blocked": record})


def blocked(state: dict[str, Any]) -> dict[str, Any] | None:
    """The record `block_dns` left: DNS blocked after a failed switch to trusted mode; None otherwise."""
    found = state.get("blocked")
    return found if isinstance(found, dict) else None


def _up(config: Config, run: daemon.RunDir, say: Callable[[str], None],  # noqa: PLR0915
        config_path: Path | None, fail_closed: bool) -> UpResult:
    started = time.monotonic()
    undo: list[Callable[[], object]] = []
    previous = read_state(run)
    before = _recorded_mode(previous)
    unloaded = False  # the old mode's conns are gone already
    try:
        if config.mode == Mode.TRUSTED:
            unloaded = _protect_first(run, previous or {}, undo, say, fail_closed)
        found = resolvers.discover(config)
        if config.trusted is not None and config.mode == Mode.TRUSTED:
            # The trusted resolver first; the others found stay listed, as blocked.
            found = (config.trusted.address, *(a for a in found if a != config.trusted.address))
        if config.mode == Mode.COFFEE_SHOP and not found:
            raise UpError("no resolvers to protect: none configured and none found in /etc/resolv.conf")
        kept = _kept_upkeep(previous, config.mode)
        now = time.time()
        # Resolvers ikectl put in clear (they refused the Child SA) stay out of the group until their time is up.
        admitted = tuple(a for a in found if str(a) not in kept.excluded or kept.excluded[str(a)].until <= now)
        profile = render.Profile.from_config(config, admitted)
        files = render.render_tree(profile)
        with tempfile.TemporaryDirectory(prefix="ikectl-check-") as scratch:
            render.write_tree(files, Path(scratch))
            render.check_tree(Path(scratch))

        larval_before = xfrm.larval_drop()
        if config.mode == Mode.COFFEE_SHOP and larval_before:
            # Queue the query that triggers IKE instead of dropping it.
            xfrm.set_larval_drop(False)
            undo.append(lambda: xfrm.set_larval_drop(True))

        fresh_dir = not run.root.exists()
        old_tree = _read_tree(run.root, files)
        render.write_tree(files, run.root)
        undo.append(lambda: shutil.rmtree(run.root, ignore_errors=True) if fresh_dir
                    else _restore_tree(run.root, old_tree))
        pid = daemon.pluto_pid(run)
        pluto_fresh = pid is None
        bypass_before = (previous or {}).get("nd_bypass_before")
        if pid is None:
            bypass_before = sorted(_nd_bypass_keys())
            say("starting pluto")
            pid = daemon.start_pluto(run)
            undo.append(lambda: _stop_our_pluto(run, bypass_before or []))
        elif before is not None and before != config.mode and not unloaded:
            say(f"switching from {before.value} to {config.mode.value}")
            _unload_conns(run, before, old_tree, undo, set((previous or {}).get("resolvers", ())))
        say("loading the conns into pluto")
        _load_conns(run, profile, replacing=before == config.mode, rescan=not pluto_fresh)
        if config.mode == Mode.COFFEE_SHOP and (before == Mode.TRUSTED or blocked(previous or {})):
            # The opportunistic traps are in; only now may DNS to other resolvers leave the host.
            _remove_backstop()
            undo.append(backstop.install)
        _negotiate_ahead(run, profile, say)
        state = {
            "version": STATE_VERSION, "mode": config.mode.value, "resolvers": [str(a) for a in found],
            "trusted": str(config.trusted.address) if config.trusted else None,
            "larval_drop_before": (previous or {}).get("larval_drop_before", larval_before),
            "up_at": (previous or {}).get("up_at", now) if before == config.mode else now,
            "pluto_pid": pid, "nd_bypass_before": bypass_before,
            "retry_after_s": config.coffee_shop.retry_after_s, "opportunistic": kept.to_state(),
            "supervisor_pid": (previous or {}).get("supervisor_pid"),
            "config_path": str(config_path) if config_path else (previous or {}).get("config_path"),
        }
        if config.mode == Mode.COFFEE_SHOP:
            # A resolver that refused the Child SA during the negotiation above goes to clear now, before
            # the first query meets pluto's hold.
            state["opportunistic"] = opportunistic.upkeep(run, state, config.coffee_shop.retry_after_s,
                                                          time.time()).to_state()
        if not supervisor.running(run, state["supervisor_pid"]):
            state["supervisor_pid"] = supervisor.start(run)
            undo.append(lambda: supervisor.stop(run, state["supervisor_pid"]))
        write_state(run, state)
    except BaseException:
        for step in reversed(undo):
            with contextlib.suppress(Exception):  # undo as much as can be undone; the first error wins
                step()
        raise
    return UpResult(config.mode, found, pid, time.monotonic() - started)


def _kept_upkeep(previous: dict[str, Any] | None, mode: Mode) -> opportunistic.Upkeep:
    """The coffee-shop record of the previous `up`, when it was in coffee-shop mode too."""
    if previous is None or mode != Mode.COFFEE_SHOP or _recorded_mode(previous) != Mode.COFFEE_SHOP:
        return opportunistic.Upkeep()
    try:
        return opportunistic.Upkeep.from_state(previous)
    except (TypeError, ValueError, AttributeError):  # a record from another version: start afresh
        return opportunistic.Upkeep()


def _recorded_mode(state: dict[str, Any] | None) -> Mode | None:
    try:
        return Mode(state["mode"]) if state else None
    except (KeyError, ValueError):
        return None


def _conn_names(mode: Mode) -> tuple[str, ...]:
    return TRUSTED_CONNS if mode == Mode.TRUSTED else (OE_CONN,)


def _load_conns(run: daemon.RunDir, profile: render.Profile, replacing: bool, rescan: bool) -> None:
    whack = run.whack()
    if replacing and profile.opportunistic:
        # Before --listen, which reloads the groups: with the group conn still in, an instance of a
        # resolver line that has an SA clashes ("group name + target yields duplicate name", in the VM).
        with contextlib.suppress(IkectlError):
            whack.delete(OE_CONN)
    if rescan:
        # The network may have changed under a running pluto, and pluto looks at its interfaces only when told.
        # A rescan while a network switch had taken the address away shut its socket there; without another
        # one the conns cannot load ("we cannot identify ourselves with either end of this connection").
        whack.listen()
    names = (TRUSTED_CONNS if profile.trusted else ()) + ((OE_CONN,) if profile.opportunistic else ())
    for name in names:
        if replacing:
            with contextlib.suppress(IkectlError):
                whack.delete(name)
        whack.add(name)
        if name != OE_CONN:
            whack.route(name)
    if profile.opportunistic:
        # Loads the OE group; routing the group conn routes a trap per resolver line. A pluto that had
        # another mode's conns did not route them from the reread alone (seen in the VM).
        opportunistic.route_group(whack)
        _wait_for_traps(whack, profile.opportunistic)


TRAP_WAIT_S = 3.0


def _wait_for_traps(whack: Whack, resolvers: tuple[Address, ...]) -> None:
    """Wait until the kernel holds an opportunistic trap for udp/53 and tcp/53 to each resolver. pluto routes
    a group's lines after `--listen` returns, and now and then not at all (seen in the VM: the group loaded,
    no trap, DNS in clear without IKE): reload the group once if they are late."""
    wanted = {(resolver, proto) for resolver in resolvers for proto in (6, 17)}
    started = time.monotonic()
    reloaded = False
    while True:
        missing = wanted - opportunistic.policed()
        if not missing:
            return
        waited = time.monotonic() - started
        if waited > TRAP_WAIT_S:
            listed = ", ".join(sorted(f"{a} {'tcp' if p == 6 else 'udp'}/53" for a, p in missing))
            raise UpError(f"pluto loaded the opportunistic group but routed no trap for {listed}")
        if waited > TRAP_WAIT_S / 2 and not reloaded:
            opportunistic.route_group(whack)
            reloaded = True
        time.sleep(0.05)


def _unload_conns(run: daemon.RunDir, mode: Mode, old_tree: dict[str, str | None],
                  undo: list[Callable[[], object]], previous_resolvers: set[str]) -> None:
    """Delete the conns of the mode we are leaving (their shunts would outrank the new mode's policies);
    the undo step puts the old tree back and loads them again."""
    whack = run.whack()
    for name in _conn_names(mode):
        with contextlib.suppress(IkectlError):
            whack.delete(name)
    if mode == Mode.COFFEE_SHOP:
        # pluto keeps the clear-fallback shunts of a deleted conn until they expire, and they outrank the
        # backstop: without this, DNS to a resolver without IKE left in clear after the switch (seen in the VM).
        _remove_pass_shunts(previous_resolvers)

    def reload() -> None:
        _restore_tree(run.root, old_tree)
        for name in _conn_names(mode):
            whack.add(name)
            if name != OE_CONN:
                whack.route(name)
        if mode == Mode.COFFEE_SHOP:
            whack.reread_groups()

    undo.append(reload)


def _protect_first(run: daemon.RunDir, previous: dict[str, Any], undo: list[Callable[[], object]],
                   say: Callable[[str], None], fail_closed: bool) -> bool:
    """Trusted mode's first step, before resolvers are looked up or conns rendered and checked: the backstop,
    and from coffee-shop its conn and shunts out. From here on no DNS leaves in clear; the NetworkManager
    hook's pre-up counts the time to this point (docs/performance.md). Failing closed, nothing of it is
    undone, so there is no need to look at what was there. True when the old conns are gone."""
    remove_on_failure = not fail_closed and not backstop.installed()
    say("installing the backstop policies")
    _block_coffee_shop_dns(previous, backstop.install)
    if remove_on_failure:
        undo.append(_remove_backstop)
    if _recorded_mode(previous) != Mode.COFFEE_SHOP:
        return False
    return _leave_coffee_shop(run, previous, [] if fail_closed else undo, say)


def _block_coffee_shop_dns(previous: dict[str, Any], install_backstop: Callable[[], object]) -> None:
    """The backstop, and coming from coffee-shop, pluto's policies for DNS to its resolvers out at once: its
    clear-fallback shunts outrank the backstop (in the VM, 4 to 6 queries per switch left in clear while the
    trusted conns were rendered, when they went later), and its traps would start negotiations whose clear
    fallback could come before the conn is deleted. They are looked up before the backstop goes in, so
    that once it is complete only the deletes remain, clear-fallback shunts first."""
    coffee_shop = _recorded_mode(previous) == Mode.COFFEE_SHOP
    doomed = _pluto_dns_policies(set(previous.get("resolvers", ())), traps_too=True) if coffee_shop else []
    install_backstop()
    _delete_policies(doomed)


def _leave_coffee_shop(run: daemon.RunDir, previous: dict[str, Any], undo: list[Callable[[], object]],
                       say: Callable[[str], None]) -> bool:
    """Switching to trusted, after `_block_coffee_shop_dns`: the opportunistic conn itself, then any shunt
    pluto made meanwhile. True when pluto runs (its conn is gone); the undo step loads the conn again
    (failing closed, the caller drops it)."""
    old_resolvers = set(previous.get("resolvers", ()))
    if daemon.pluto_pid(run) is None:
        return False
    say("switching from coffee-shop to trusted")
    _unload_conns(run, Mode.COFFEE_SHOP, {}, undo, old_resolvers)  # the tree on disk is still the old one
    return True


def _remove_pass_shunts(resolvers: set[str]) -> None:
    _delete_policies(_pluto_dns_policies(resolvers, traps_too=False))


def _pluto_dns_policies(resolvers: set[str], traps_too: bool) -> list[xfrm.Policy]:
    """pluto's bare pass policies (packets go in clear) for DNS to those resolvers, and with `traps_too` its
    trap and ESP policies for it, after them."""
    with xfrm.XfrmClient() as client:
        found = [p for p in client.policies()
                 if backstop.lets_dns_past(p, in_clear_only=not traps_too)
                 and p.selector.dst.prefixlen == p.selector.dst.max_prefixlen
                 and str(p.selector.dst.network_address) in resolvers]
    return sorted(found, key=lambda p: bool(p.templates))


def _delete_policies(policies: list[xfrm.Policy]) -> None:
    if not policies:
        return
    with xfrm.XfrmClient() as client:
        for policy in policies:
            with contextlib.suppress(xfrm.KernelRefused, xfrm.NotFound):  # gone meanwhile
                client.delete_policy(policy)


def _read_tree(root: Path, files: dict[str, str]) -> dict[str, str | None]:
    """The current content of each file the new tree will write (None: absent), to put back on failure."""
    tree: dict[str, str | None] = {}
    for relative in files:
        try:
            tree[relative] = (root / relative).read_text()
        except OSError:
            tree[relative] = None
    return tree


def _restore_tree(root: Path, tree: dict[str, str | None]) -> None:
    render.write_tree({k: v for k, v in tree.items() if v is not None}, root)
    for relative, content in tree.items():
        if content is None:
            (root / relative).unlink(missing_ok=True)


def _negotiate_ahead(run: daemon.RunDir, profile: render.Profile, say: Callable[[str], None]) -> None:
    """Negotiate now, for udp/53 and tcp/53 alike, so the first query finds ESP (or, in coffee-shop mode,
    the clear fallback) in place. Waiting for the first packet instead is slower, and a tcp/53 trap that
    fires while the udp/53 one is negotiating is dropped by pluto as a duplicate acquire (seen in the VM)."""
    whack = run.whack()
    if profile.trusted is not None:
        say(f"negotiating with {profile.trusted.address}")
        for name in TRUSTED_CONNS:
            # A query that met the conn's trap may have started its negotiation already: another initiate
            # would add a second Child SA for the same traffic (seen in the VM: one on demand, one from here).
            if name in _conns_with_states(whack):
                continue
            with contextlib.suppress(IkectlError):  # a resolver that does not answer stays blocked
                whack.initiate(name)
    pairs = [(resolver, source_address(resolver)) for resolver in profile.opportunistic]
    if pairs:
        say(f"negotiating with {', '.join(str(r) for r, local in pairs if local is not None)}")
    import concurrent.futures  # noqa: PLC0415 - with logging, not worth loading for `status` or `down`

    # One resolver's negotiation (or its IKE timeout) does not wait for another's: in parallel, each
    # resolver's udp/53 then tcp/53 in turn (pluto refuses a second negotiation with a peer in flight).
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(pairs))) as pool:
        for _ in pool.map(lambda pair: _negotiate_opportunistic(whack, *pair), pairs):
            pass


def _conns_with_states(whack: Whack) -> set[str]:
    try:
        return {state.conn for state in whack.states()}
    except IkectlError:  # pluto busy: initiate anyway
        return set()


def _negotiate_opportunistic(whack: Whack, resolver: Address, local: Address | None) -> None:
    if local is None:  # no route to it: nothing to negotiate, the first query will say so
        return
    for proto in (17, 6):
        with contextlib.suppress(IkectlError):  # a resolver without IKE is an outcome, not an error
            whack.initiate_opportunistic(str(local), str(resolver), proto=proto)


def source_address(destination: Address) -> Address | None:
    """The address this host would send from to reach `destination` (the kernel's route lookup)."""
    route = routes.route_to(destination)
    return route.source if route else None


def _is_nd_bypass(policy: xfrm.Policy) -> bool:
    """pluto's IPv6 neighbour-discovery bypass policies: it installs them at start and leaves them at exit."""
    sel = policy.selector
    return (sel.proto == 58 and sel.sport in (135, 136) and policy.priority == 1 and not policy.templates
            and str(sel.src) == str(sel.dst) == "::/0")


def _key(policy: xfrm.Policy) -> str:
    return f"{policy.selector.sport} {policy.direction.name}"


def _nd_bypass_keys() -> set[str]:
    with xfrm.XfrmClient() as client:
        return {_key(p) for p in client.policies() if _is_nd_bypass(p)}


def _remove_nd_bypass(keep: list[str]) -> None:
    """Remove the bypass policies our pluto left behind, but not ones that were there before it started."""
    with xfrm.XfrmClient() as client:
        for policy in client.policies():
            if _is_nd_bypass(policy) and _key(policy) not in keep:
                with contextlib.suppress(xfrm.KernelRefused):
                    client.delete_policy(policy)


def _stop_our_pluto(run: daemon.RunDir, bypass_before: list[str]) -> None:
    daemon.stop_pluto(run)
    _remove_nd_bypass(bypass_before)


def _remove_backstop() -> None:
    with xfrm.XfrmClient() as client:
        for policy in backstop.installed():
            with contextlib.suppress(xfrm.KernelRefused):
                client.delete_policy(policy)


def down(run_dir: Path) -> bool:
    """Remove what `up` installed; False when ikectl was not up."""
    run = daemon.RunDir(run_dir)
    with state_lock(run):
        removed = _down(run)
    run.root.with_name(f".{run.root.name}.lock").unlink(missing_ok=True)
    return removed


def _down(run: daemon.RunDir) -> bool:
    state = read_state(run)
    if state is None and not run.root.exists():
        return False
    if state is not None:
        supervisor.stop(run, state.get("supervisor_pid"))
    if state is not None and state.get("nd_bypass_before") is not None:
        _stop_our_pluto(run, list(state["nd_bypass_before"]))
    else:
        daemon.stop_pluto(run)
    with xfrm.XfrmClient() as client:
        client.flush_owned()
    if state is not None and state.get("larval_drop_before") is not None:
        xfrm.set_larval_drop(bool(state["larval_drop_before"]))
    shutil.rmtree(run.root, ignore_errors=True)
    return True


def read_state(run: daemon.RunDir) -> dict[str, Any] | None:
    try:
        state = json.loads(run.state.read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and state.get("version") == STATE_VERSION else None


class StateBusy(IkectlError):
    """state.json's lock stayed held for longer than the caller can wait."""


@contextlib.contextmanager
def state_lock(run: daemon.RunDir, wait_s: float | None = None) -> Iterator[None]:
    """Serializes `up`, `down` and the supervisor's rounds on state.json (a lock file beside the run dir,
    which `up` may still have to create). With `wait_s`, StateBusy when it is not free within that time."""
    path = run.root.with_name(f".{run.root.name}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if not locks.lock_by(fd, None if wait_s is None else time.monotonic() + wait_s):
            raise StateBusy(f"{path}: held by another ikectl for over {wait_s:g} s")
        yield
    finally:
        os.close(fd)


def write_state(run: daemon.RunDir, state: dict[str, Any]) -> None:
    tmp = run.state.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(run.state)


# Captive-portal window (ikectl/portal.py holds its data and logic). Trusted mode only: coffee-shop lets
# a portal's DNS through by itself (its clear fallback). Opening removes the backstop, so DNS to the
# portal's resolver passes in clear while pluto's conns still hold the trusted resolver's DNS to ESP;
# closing puts the backstop back. Both are idempotent and do nothing unless ikectl is up in trusted mode.

def open_portal_window(run_dir: Path, say: Callable[[str], None] = lambda _: None) -> bool:
    """Let clear DNS pass (a portal login); True when the backstop was up and is now removed."""
    state = read_state(daemon.RunDir(run_dir))
    if state is None or state.get("mode") != Mode.TRUSTED.value:
        return False
    say("portal window: removing the backstop, DNS to other resolvers passes in clear")
    _remove_backstop()
    return True


def close_portal_window(run_dir: Path, say: Callable[[str], None] = lambda _: None) -> bool:
    """End the window: the backstop again blocks DNS that is not protected; True when it was reinstalled."""
    state = read_state(daemon.RunDir(run_dir))
    if state is None or state.get("mode") != Mode.TRUSTED.value:
        return False
    say("portal window closed: reinstalling the backstop")
    backstop.install()
    return True
