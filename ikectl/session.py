"""`ikectl up` and `ikectl down`: apply a mode to this host (its network namespace), and take it away.

`up` renders the tree, checks it with libreswan's parser, then applies in an order that never lowers
protection, recording an undo step for each change: if any step fails, the steps done so far are undone
in reverse and the error is raised, so a failed `up` leaves the system as it was. Run again, `up`
refreshes in place (backstop first, then pluto's conns) without ever removing protection in between.

`down` removes what `up` installed (recorded in state.json): our pluto, our policies, the policies our
pluto leaves behind when it exits (its IPv6 neighbour-discovery bypasses), the larval-drop setting, the
run dir; nothing else.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from . import backstop, daemon, render, resolvers, xfrm
from .config import Address, Config, Mode
from .errors import IkectlError

STATE_VERSION = 1
TRUSTED_CONNS = ("ikectl-trusted-udp", "ikectl-trusted-tcp")
OE_CONN = "private-or-clear"


class UpError(IkectlError):
    """`up` could not apply the mode; what it had done was undone."""


@dataclass(frozen=True)
class UpResult:
    mode: Mode
    resolvers: tuple[Address, ...]
    pluto_pid: int
    seconds: float


def up(config: Config, say: Callable[[str], None] = lambda _: None) -> UpResult:
    started = time.monotonic()
    run = daemon.RunDir(config.run_dir)
    found = resolvers.discover(config)
    if config.trusted is not None and config.mode == Mode.TRUSTED:
        # The trusted resolver first; the others found stay listed, as blocked.
        found = (config.trusted.address, *(a for a in found if a != config.trusted.address))
    if config.mode == Mode.COFFEE_SHOP and not found:
        raise UpError("no resolvers to protect: none configured and none found in /etc/resolv.conf")
    profile = render.Profile.from_config(config, found)
    files = render.render_tree(profile)
    with tempfile.TemporaryDirectory(prefix="ikectl-check-") as scratch:
        render.write_tree(files, Path(scratch))
        render.check_tree(Path(scratch))

    previous = read_state(run)
    undo: list[Callable[[], object]] = []
    try:
        if config.mode == Mode.TRUSTED:
            # Before pluto exists: from here on no DNS leaves in clear.
            owned_before = {p.selector for p in backstop.installed()}
            say("installing the backstop policies")
            backstop.install()
            if not owned_before:
                undo.append(_remove_backstop)
        larval_before = xfrm.larval_drop()
        if config.mode == Mode.COFFEE_SHOP and larval_before:
            # Queue the query that triggers IKE instead of dropping it.
            xfrm.set_larval_drop(False)
            undo.append(lambda: xfrm.set_larval_drop(True))

        fresh_dir = not run.root.exists()
        render.write_tree(files, run.root)
        if fresh_dir:
            undo.append(lambda: shutil.rmtree(run.root, ignore_errors=True))
        pid = daemon.pluto_pid(run)
        bypass_before = (previous or {}).get("nd_bypass_before")
        if pid is None:
            bypass_before = sorted(_nd_bypass_keys())
            say("starting pluto")
            pid = daemon.start_pluto(run)
            undo.append(lambda: _stop_our_pluto(run, bypass_before or []))
        _load_conns(run, profile, replacing=previous is not None)
        _negotiate_ahead(run, profile, say)
        write_state(run, {
            "version": STATE_VERSION, "mode": config.mode.value, "resolvers": [str(a) for a in found],
            "trusted": str(config.trusted.address) if config.trusted else None,
            "larval_drop_before": (previous or {}).get("larval_drop_before", larval_before),
            "up_at": (previous or {}).get("up_at", time.time()), "pluto_pid": pid,
            "nd_bypass_before": bypass_before,
        })
    except BaseException:
        for step in reversed(undo):
            with contextlib.suppress(Exception):  # undo as much as can be undone; the first error wins
                step()
        raise
    return UpResult(config.mode, found, pid, time.monotonic() - started)


def _load_conns(run: daemon.RunDir, profile: render.Profile, replacing: bool) -> None:
    whack = run.whack()
    names = (TRUSTED_CONNS if profile.trusted else ()) + ((OE_CONN,) if profile.opportunistic else ())
    for name in names:
        if replacing:
            with contextlib.suppress(IkectlError):
                whack.delete(name)
        whack.add(name)
        if name != OE_CONN:
            whack.route(name)
    if profile.opportunistic:
        whack.reread_groups()  # loads the OE group and routes a trap per resolver line


def _negotiate_ahead(run: daemon.RunDir, profile: render.Profile, say: Callable[[str], None]) -> None:
    """Negotiate now, for udp/53 and tcp/53 alike, so the first query finds ESP (or, in coffee-shop mode,
    the clear fallback) in place. Waiting for the first packet instead is slower, and a tcp/53 trap that
    fires while the udp/53 one is negotiating is dropped by pluto as a duplicate acquire (seen in the VM)."""
    whack = run.whack()
    if profile.trusted is not None:
        say(f"negotiating with {profile.trusted.address}")
        for name in TRUSTED_CONNS:
            with contextlib.suppress(IkectlError):  # a resolver that does not answer stays blocked
                whack.initiate(name)
    for resolver in profile.opportunistic:
        local = source_address(resolver)
        if local is None:
            continue
        say(f"negotiating with {resolver}")
        for proto in (17, 6):
            with contextlib.suppress(IkectlError):  # a resolver without IKE is an outcome, not an error
                whack.initiate_opportunistic(str(local), str(resolver), proto=proto)


def source_address(destination: Address) -> Address | None:
    """The address this host would send from to reach `destination` (the kernel's route lookup)."""
    with IPRoute() as ipr:
        try:
            routes = ipr.route("get", dst=str(destination))
        except NetlinkError:  # no route to it
            return None
        for route in routes:
            src = route.get_attr("RTA_PREFSRC")
            if src:
                return ipaddress.ip_address(src)
    return None


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
    state = read_state(run)
    if state is None and not run.root.exists():
        return False
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
