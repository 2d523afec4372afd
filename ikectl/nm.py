"""`ikectl nm-dispatch IFACE ACTION`: NetworkManager's dispatcher hook, and `ikectl install-nm-hook`.

NetworkManager-dispatcher(8) (man/NetworkManager-dispatcher.xml in NetworkManager's tree) runs each
script in /etc/NetworkManager/dispatcher.d (pre-up.d for pre-up) as root, with the interface and the
action as arguments and the connection in the environment (CONNECTION_UUID, CONNECTION_ID,
CONNECTION_FILENAME, DEVICE_IFACE, DEVICE_IP_IFACE, IP4_*/IP6_*, DHCP4_*/DHCP6_*, VPN_*; only
CONNECTIVITY_STATE for connectivity-change). Its source (src/nm-dispatcher/nm-dispatcher.c) starts the
script with working directory "/" and kills it after 600 s; pre-up holds the connection's activation
until the script returns. It also says a queued script always runs, "even if a later event renders it
obsolete".

So the hook works in layers, like the rest of ikectl:
- `read_event`: argv and environment into a typed DispatcherEvent, or BadEvent (nothing is touched).
- `decide`: a pure function, event + config + what was applied before -> a Plan (what to apply, or leave
  the protection as it is, and the captive-portal step). Tests check it exhaustively.
- `dispatch`: serializes calls with a lock file, lets a later network event supersede an earlier one
  still waiting for the lock (a burst converges on the last), bounds the whole call in time, and applies
  the plan through session.up/down. Bad input and every failure leave the protection in place: the hook
  never calls `down` because something was wrong.
"""

from __future__ import annotations

import configparser
import contextlib
import json
import os
import re
import shlex
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from enum import Enum
from ipaddress import ip_address
from pathlib import Path
from types import FrameType
from typing import Any

from . import daemon, locks, portal, protect, resolvers
from .config import Address, Config, Mode, TrustedResolver
from .errors import IkectlError, UsageError
from .portal import PortalWindow
from .state import StateStore, read_here

# Every action NetworkManager-dispatcher(8) documents; anything else is bad input.
NM_ACTIONS = frozenset({
    "pre-up", "up", "pre-down", "down", "vpn-pre-up", "vpn-up", "vpn-pre-down", "vpn-down", "hostname",
    "dhcp4-change", "dhcp6-change", "connectivity-change", "reapply", "dns-change", "device-add",
    "device-delete",
})
NETWORK_ACTIONS = frozenset({"pre-up", "up", "dhcp4-change", "dhcp6-change", "reapply"})
# The actions whose plan replaces the whole protection: a later one makes an earlier one obsolete.
SUPERSEDING_ACTIONS = NETWORK_ACTIONS | {"vpn-up", "vpn-down"}
CONNECTIVITY_STATES = frozenset({"UNKNOWN", "NONE", "PORTAL", "LIMITED", "FULL"})

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_IFACE = re.compile(r"^[^/\s]{0,15}$")  # the kernel's IFNAMSIZ, no slash or space; "" for connectivity-change


class BadEvent(UsageError):
    """The dispatcher's argv or environment is not what NetworkManager documents."""


class Busy(IkectlError):
    """Another nm-dispatch held the lock for the whole time budget."""


class OutOfTime(IkectlError):
    """Applying the plan did not finish within the time budget."""


# --- the event -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NetworkKey:
    """What a [[networks]] entry matches a connection by."""

    uuid: str
    id: str | None = None
    ssid: str | None = None

    def label(self) -> str:
        return repr(self.id) if self.id else self.uuid


@dataclass(frozen=True)
class DispatcherEvent:
    iface: str
    action: str
    connection: NetworkKey | None = None
    device_iface: str | None = None
    ip_iface: str | None = None
    vpn_ip_iface: str | None = None
    connectivity: str | None = None  # CONNECTIVITY_STATE, connectivity-change only
    nameservers: tuple[Address, ...] = ()  # from the IP4/IP6/DHCP4/DHCP6/VPN variables, in that order
    external: bool = False  # CONNECTION_EXTERNAL=1: NM only reflects a configuration made outside it


def ssid_from_keyfile(path: Path) -> str | None:
    """The SSID in a keyfile connection profile ([wifi] ssid=), which the dispatcher does not pass itself.
    Keyfiles hold it as text, or as byte values separated by ';' when it is not printable."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(path.read_text(errors="replace"))
    except (OSError, configparser.Error):
        return None
    value = parser.get("wifi", "ssid", fallback=None)
    if value is None or not value:
        return None
    if re.fullmatch(r"(?:\d{1,3};)+\d{0,3}", value):
        octets = [int(v) for v in value.split(";") if v]
        if all(o < 256 for o in octets):
            return bytes(octets).decode(errors="replace")
    return value


def read_event(iface: str, action: str, env: Mapping[str, str],
               read_ssid: Callable[[Path], str | None] = ssid_from_keyfile) -> DispatcherEvent:
    """NetworkManager's argv and environment as a DispatcherEvent; BadEvent names what is wrong."""
    if action not in NM_ACTIONS:
        raise BadEvent(f"unknown action {action!r} (NetworkManager documents {', '.join(sorted(NM_ACTIONS))})")
    if not _IFACE.match(iface):
        raise BadEvent(f"interface {iface!r} is not an interface name")
    if env.get("NM_DISPATCHER_ACTION", action) != action:
        raise BadEvent(f"NM_DISPATCHER_ACTION={env['NM_DISPATCHER_ACTION']!r} but the action argument is {action!r}")
    connection = None
    uuid = env.get("CONNECTION_UUID")
    if uuid is not None:
        if not _UUID.match(uuid):
            raise BadEvent(f"CONNECTION_UUID={uuid!r} is not a UUID")
        filename = env.get("CONNECTION_FILENAME")
        connection = NetworkKey(uuid=uuid.lower(), id=env.get("CONNECTION_ID") or None,
                                ssid=read_ssid(Path(filename)) if filename else None)
    elif action in SUPERSEDING_ACTIONS:
        raise BadEvent("CONNECTION_UUID is missing from the environment")
    # NetworkManager 1.42, stopping, dispatches connectivity-change with no CONNECTIVITY_STATE at all (seen with
    # the real daemon in netns_tests/test_nm_real.py): it knows nothing any more, which is UNKNOWN.
    connectivity = env.get("CONNECTIVITY_STATE", "UNKNOWN" if action == "connectivity-change" else None)
    if action == "connectivity-change" and connectivity not in CONNECTIVITY_STATES:
        raise BadEvent(f"CONNECTIVITY_STATE={connectivity!r}: expected one of "
                       f"{', '.join(sorted(CONNECTIVITY_STATES))}")
    try:
        nameservers = resolvers.from_dispatcher_env(env)
    except resolvers.MalformedNameservers as exc:
        raise BadEvent(str(exc)) from None
    return DispatcherEvent(iface=iface, action=action, connection=connection,
                           device_iface=env.get("DEVICE_IFACE") or None, ip_iface=env.get("DEVICE_IP_IFACE") or None,
                           vpn_ip_iface=env.get("VPN_IP_IFACE") or None,
                           connectivity=connectivity if action == "connectivity-change" else None,
                           nameservers=nameservers, external=env.get("CONNECTION_EXTERNAL") == "1")


# --- what was applied, and the plan ----------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """A mode to apply: trusted with a pin (None: the [trusted] table), or coffee-shop."""

    mode: Mode
    pin: str | None
    resolvers: tuple[Address, ...]

    def describe(self) -> str:
        found = ", ".join(map(str, self.resolvers)) or "none"
        if self.mode == Mode.TRUSTED:
            return f"trusted, pin {self.pin or '[trusted]'} (resolvers {found})"
        return f"coffee-shop (resolvers {found})"


@dataclass(frozen=True)
class Record:
    """What the hook applied last, kept between calls (connectivity-change and vpn-down carry no network)."""

    network: NetworkKey | None = None  # the connection (not VPN) last applied
    vpn: str | None = None  # the UUID of a VPN applied on top of it
    applied: Target | None = None
    connectivity: str | None = None
    portal_waiting_since: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "network": None if self.network is None else vars(self.network),
            "vpn": self.vpn,
            "applied": None if self.applied is None else {
                "mode": self.applied.mode.value, "pin": self.applied.pin,
                "resolvers": [str(a) for a in self.applied.resolvers]},
            "connectivity": self.connectivity,
            "portal_waiting_since": self.portal_waiting_since,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Record:
        network = data.get("network")
        applied = data.get("applied")
        return cls(
            network=None if network is None else NetworkKey(**network),
            vpn=data.get("vpn"),
            applied=None if applied is None else Target(
                Mode(applied["mode"]), applied.get("pin"), tuple(ip_address(a) for a in applied["resolvers"])),
            connectivity=data.get("connectivity"),
            portal_waiting_since=data.get("portal_waiting_since"),
        )


class PortalStep(Enum):
    NONE = "none"
    WAITING = "waiting"  # trusted, portal reported, no opt-in: stays closed, status says so
    OPEN = "open"  # open `Plan.window` (remove the backstop until it ends)
    CLOSE = "close"  # end the open window now


@dataclass(frozen=True)
class Plan:
    target: Target | None  # None: leave the protection as it is
    reason: str
    record: Record  # what to remember once the plan is applied
    portal: PortalStep = PortalStep.NONE
    window: PortalWindow | None = None


@dataclass(frozen=True)
class Context:
    """What `decide` needs besides the event and the config, gathered by the caller."""

    record: Record = Record()
    system_resolvers: tuple[Address, ...] = ()  # from the configured discovery sources
    window: PortalWindow | None = None  # the recorded portal window, open or not
    now: float = 0.0
    pluto_running: bool = False
    blocked: bool = False  # a switch to trusted mode failed and left DNS blocked (the record says so)


# --- the decision ----------------------------------------------------------------------------------------

def policy_for(config: Config, network: NetworkKey) -> tuple[Mode, str | None, str]:
    """The mode and pin for a connection, and why: the first [[networks]] entry that matches, else the default."""
    for rule in config.networks:
        if rule.matches(network.uuid, network.id, network.ssid):
            return rule.mode, rule.pin, f"[[networks]] {rule.describe()}"
    return config.default_mode, config.default_pin, "unknown network, default_mode"


def _pin_addresses(config: Config, pin: str | None) -> tuple[Address, ...]:
    resolver: TrustedResolver | None = config.pin(pin) if pin is not None else config.trusted
    if resolver is None:  # config.from_mapping refuses such configs; a hand-built Config may not
        raise UsageError("trusted mode without a pin: give pin = \"NAME\" or a [trusted] table")
    return resolver.addresses


def _target(config: Config, mode: Mode, pin: str | None, found: tuple[Address, ...]) -> Target | None:
    found = config.resolvers or found
    if mode == Mode.TRUSTED:
        # The pinned resolver first; the others found stay listed (status shows them blocked).
        return Target(mode, pin, resolvers.merge(_pin_addresses(config, pin), found))
    return Target(mode, None, found) if found else None


def _window_step(ctx: Context, network: NetworkKey, target: Target | None) -> tuple[PortalStep, PortalWindow | None]:
    """A network event and an open portal window: keep it for the network it was opened for (re-open it
    after `up` reinstalled the backstop), close it when the network is another one."""
    window = ctx.window
    if window is None or not window.is_open(ctx.now):
        return PortalStep.NONE, None
    if window.network not in (None, network.uuid):
        return PortalStep.CLOSE, None
    if target is not None and target.mode == Mode.TRUSTED:
        return PortalStep.OPEN, window
    return PortalStep.NONE, None


def _connection(event: DispatcherEvent) -> NetworkKey:
    if event.connection is None:  # read_event refuses these; a hand-built event may not
        raise BadEvent(f"{event.action}: CONNECTION_UUID is missing from the environment")
    return event.connection


def _on_network(event: DispatcherEvent, config: Config, ctx: Context) -> Plan:
    network = _connection(event)
    mode, pin, why = policy_for(config, network)
    target = _target(config, mode, pin, resolvers.merge(event.nameservers, ctx.system_resolvers))
    same = ctx.record.network is not None and ctx.record.network.uuid == network.uuid
    record = replace(ctx.record, network=network, vpn=None,
                     connectivity=ctx.record.connectivity if same else None,
                     portal_waiting_since=ctx.record.portal_waiting_since if same else None)
    step, window = _window_step(ctx, network, target)
    if target is None:
        return Plan(None, f"{network.label()}: {why}: coffee-shop, but no resolver is known yet; "
                          "protection left as it is", record, step, window)
    record = replace(record, applied=target)
    in_place = same and ctx.record.applied == target and ctx.pluto_running and not ctx.blocked
    if in_place and step != PortalStep.CLOSE:
        return Plan(None, f"{network.label()}: {why}: {target.describe()} already in place", record)
    return Plan(target, f"{network.label()}: {why}: {target.describe()}", record, step, window)


def _on_vpn_up(event: DispatcherEvent, config: Config, ctx: Context) -> Plan:
    vpn = _connection(event)
    found = resolvers.merge(event.nameservers, ctx.system_resolvers)
    record = replace(ctx.record, vpn=vpn.uuid)
    matched = next((r for r in config.networks if r.matches(vpn.uuid, vpn.id, vpn.ssid)), None)
    if matched is not None:
        target = _target(config, matched.mode, matched.pin, found)
        why = f"VPN {vpn.label()}: [[networks]] {matched.describe()}"
    elif ctx.record.applied is not None and ctx.record.applied.mode == Mode.TRUSTED:
        return Plan(None, f"VPN {vpn.label()}: not in [[networks]]: trusted mode stays as it is", ctx.record)
    else:
        target = _target(config, Mode.COFFEE_SHOP, None, found)
        why = f"VPN {vpn.label()}: not in [[networks]]: coffee-shop with its resolvers"
    if target is None:
        return Plan(None, f"{why}: no resolver known; protection left as it is", ctx.record)
    return Plan(target, f"{why}: {target.describe()}", replace(record, applied=target))


def _on_vpn_down(event: DispatcherEvent, config: Config, ctx: Context) -> Plan:
    vpn = _connection(event)
    base = ctx.record.network
    if ctx.record.vpn != vpn.uuid or base is None:
        return Plan(None, f"VPN {vpn.label()} down: it was not what ikectl applied; protection left as it is",
                    ctx.record)
    mode, pin, why = policy_for(config, base)
    target = _target(config, mode, pin, ctx.system_resolvers)  # the VPN's own resolvers are gone
    record = replace(ctx.record, vpn=None)
    if target is None:
        return Plan(None, f"VPN {vpn.label()} down, back to {base.label()}: no resolver known; "
                          "protection left as it is", record)
    return Plan(target, f"VPN {vpn.label()} down, back to {base.label()}: {why}: {target.describe()}",
                replace(record, applied=target))


def _on_down(event: DispatcherEvent, config: Config, ctx: Context) -> Plan:
    name = event.connection.label() if event.connection else event.iface
    return Plan(None, f"{name} down: protection stays in place until the next network is up", ctx.record)


def _on_connectivity(event: DispatcherEvent, config: Config, ctx: Context) -> Plan:
    state = event.connectivity
    record = replace(ctx.record, connectivity=state)
    applied = ctx.record.applied
    window = ctx.window if ctx.window is not None and ctx.window.is_open(ctx.now) else None
    if applied is None:
        return Plan(None, f"connectivity {state}: no network applied yet; nothing to change", record)
    if state == "PORTAL":
        if applied.mode == Mode.COFFEE_SHOP:
            return Plan(None, "captive portal: coffee-shop lets its DNS through (clear fallback)", record)
        return _portal_on_trusted(config, ctx, record, window)
    record = replace(record, portal_waiting_since=None)
    if state == "FULL" and window is not None:
        return Plan(None, "connectivity FULL: the portal window is closed early", record, PortalStep.CLOSE)
    return Plan(None, f"connectivity {state}: nothing to change", record)


def _portal_on_trusted(config: Config, ctx: Context, record: Record, window: PortalWindow | None) -> Plan:
    """Trusted stays closed for a portal unless a window is open, or the config opens one (once per
    network: a window that ran out is not reopened by the next PORTAL report)."""
    network = ctx.record.network.uuid if ctx.record.network else None
    if window is not None:
        return Plan(None, f"captive portal: {window.describe(ctx.now)}", record, PortalStep.OPEN, window)
    opened_here_before = ctx.window is not None and ctx.window.network == network
    if config.portal.allow_minutes and not opened_here_before:
        new = portal.new_window(config.portal.allow_minutes, ctx.now, "[portal] allow_minutes", network)
        return Plan(None, f"captive portal: {new.describe(ctx.now)}", record, PortalStep.OPEN, new)
    waiting = replace(record, portal_waiting_since=ctx.record.portal_waiting_since or ctx.now)
    return Plan(None, "captive portal waiting: trusted mode keeps DNS closed; "
                      "`ikectl portal allow --minutes N` lets clear DNS through for the login",
                waiting, PortalStep.WAITING)


def _ignored(event: DispatcherEvent, config: Config, ctx: Context) -> Plan:
    return Plan(None, f"action {event.action}: not one ikectl acts on", ctx.record)


# One row per NetworkManager action: read_event has refused every action not listed in NM_ACTIONS.
DECISIONS: Mapping[str, Callable[[DispatcherEvent, Config, Context], Plan]] = {
    **dict.fromkeys(NETWORK_ACTIONS, _on_network),
    "vpn-up": _on_vpn_up,
    "vpn-down": _on_vpn_down,
    "down": _on_down,
    "connectivity-change": _on_connectivity,
    **dict.fromkeys(NM_ACTIONS - NETWORK_ACTIONS - {"vpn-up", "vpn-down", "down", "connectivity-change"}, _ignored),
}


def decide(event: DispatcherEvent, config: Config, ctx: Context) -> Plan:
    if event.external and event.action in SUPERSEDING_ACTIONS:
        return _external(event, config, ctx)
    return DECISIONS[event.action](event, config, ctx)


def _external(event: DispatcherEvent, config: Config, ctx: Context) -> Plan:
    """NetworkManager makes an "external" connection for a link configured outside it (a container bridge,
    a link that had addresses when NM started) and dispatches pre-up/up for it with CONNECTION_EXTERNAL=1.
    That is no network the user joined: switching modes for it would, say, drop trusted mode because a
    bridge came up."""
    name = event.connection.label() if event.connection else event.iface
    return Plan(None, f"{name}: made outside NetworkManager (CONNECTION_EXTERNAL=1), not a network to apply a "
                      "mode for; protection left as it is", ctx.record)


# --- serialization: lock, tickets, time budget -----------------------------------------------------------

@dataclass(frozen=True)
class NmPaths:
    """The hook's own runtime files. They sit beside the run dir, not in it: `down` (and a switch to
    coffee-shop) removes the run dir whole, and a lock file must not vanish while it is held."""

    root: Path

    @classmethod
    def for_config(cls, config: Config) -> NmPaths:
        return cls(config.run_dir.with_name(config.run_dir.name + "-nm"))

    @property
    def lock(self) -> Path:
        return self.root / "dispatch.lock"

    @property
    def tickets(self) -> Path:
        return self.root / "tickets"

    @property
    def record(self) -> Path:
        return self.root / "record.json"

    @property
    def window(self) -> Path:
        return self.root / "portal.json"


def _open_locked(path: Path, deadline: float) -> int:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    if not locks.lock_by(fd, deadline):
        os.close(fd)
        raise Busy(f"{path} stayed locked by another ikectl nm-dispatch")
    return fd


def take_ticket(paths: NmPaths, deadline: float) -> int:
    """The next number in the ticket file: the order in which superseding events arrived."""
    fd = _open_locked(paths.tickets, deadline)
    try:
        current = _parse_ticket(os.pread(fd, 64, 0))
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(current + 1).encode(), 0)
        return current + 1
    finally:
        os.close(fd)  # closing releases the flock


def latest_ticket(paths: NmPaths) -> int:
    try:
        return _parse_ticket(paths.tickets.read_bytes())
    except OSError:
        return 0


def _parse_ticket(raw: bytes) -> int:
    try:
        return int(raw.decode().strip() or 0)
    except ValueError:
        return 0  # a damaged counter restarts; at worst one event is not superseded


@contextlib.contextmanager
def holding_lock(paths: NmPaths, deadline: float) -> Iterator[None]:
    fd = _open_locked(paths.lock, deadline)
    try:
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def time_limit(seconds: float, budget_s: float) -> Iterator[None]:
    """Raise OutOfTime in this (main) thread when `seconds` pass; session.up undoes what it had done, or
    on a trusted network keeps DNS blocked (`_apply_target`)."""
    def expire(_signum: int, _frame: FrameType | None) -> None:
        raise OutOfTime(f"not done within the {budget_s:g} s budget")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def read_record(paths: NmPaths) -> Record:
    try:
        return Record.from_json(json.loads(paths.record.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return Record()  # nothing applied yet, or a damaged record: decide from the event alone


def write_record(paths: NmPaths, record: Record) -> None:
    tmp = paths.record.with_suffix(".tmp")
    tmp.write_text(json.dumps(record.to_json(), indent=1))
    tmp.replace(paths.record)


def gather_context(config: Config, paths: NmPaths) -> Context:
    found = resolvers.discover(replace(config, resolvers=()))
    record = read_here()
    run = daemon.RunDir(record.run_dir if record is not None else config.run_dir)
    return Context(record=read_record(paths), system_resolvers=found, window=portal.read(paths.window),
                   now=time.time(), pluto_running=daemon.pluto_pid(run) is not None,
                   blocked=record is not None and record.blocked is not None)


# --- applying a plan -------------------------------------------------------------------------------------

def apply_plan(plan: Plan, config: Config, paths: NmPaths, say: Callable[[str], None]) -> None:
    if plan.target is not None:
        _apply_target(plan.target, config, say)
    from . import session  # noqa: PLC0415 - the planner and executor load after protection (_apply_target)

    if plan.portal == PortalStep.OPEN and plan.window is not None:
        fresh = portal.read(paths.window) != plan.window  # a window already recorded has its closer running
        portal.write(paths.window, plan.window)
        if session.open_portal_window(plan.window.until, say) and fresh:
            portal.spawn_closer(paths.window)
    elif plan.portal == PortalStep.CLOSE:
        session.close_portal_window(say)
        portal.clear(paths.window)


def _apply_target(target: Target, config: Config, say: Callable[[str], None]) -> None:
    pinned = config.pin(target.pin) if target.pin is not None else config.trusted
    wanted = replace(config, mode=target.mode, resolvers=target.resolvers,
                     trusted=pinned if target.mode == Mode.TRUSTED else config.trusted)
    # Switching modes, too, never lets DNS out in clear; a trusted `up` that fails or runs out of time fails
    # closed: a trusted network's DNS stays blocked, never clear. Trusted protection comes first, before the
    # planner and the executor are even imported: they are most of the time to it (docs/performance.md).
    if wanted.mode == Mode.TRUSTED and wanted.trusted is not None:
        protect.first(wanted.trusted.addresses, wanted.run_dir, read_here(), StateStore.here())
    from . import session  # noqa: PLC0415 - see above

    session.up(wanted, say, protected=wanted.mode == Mode.TRUSTED)


# --- the entry point -------------------------------------------------------------------------------------

def dispatch(event: DispatcherEvent, config: Config, *, log: Callable[[str], None],
             budget_s: float | None = None, dry_run: bool = False,
             gather: Callable[[Config, NmPaths], Context] = gather_context,
             apply: Callable[[Plan, Config, NmPaths, Callable[[str], None]], None] = apply_plan,
             paths: NmPaths | None = None) -> int:
    """Serialize, decide, apply, record; one log line. Returns the exit code. The time budget is the
    config's `[nm] budget_s` unless given."""
    started = time.monotonic()
    budget_s = config.nm.budget_s if budget_s is None else budget_s
    deadline = started + budget_s
    paths = paths or NmPaths.for_config(config)
    where = f"{event.action} {event.iface or '-'}"
    plan: Plan | None = None
    steps: list[str] = []  # what `up` said it was doing: a call that runs out of time names its last step
    if dry_run:  # touches nothing, not even the lock
        plan = decide(event, config, gather(config, paths))
        step = "" if plan.portal == PortalStep.NONE else f" [portal {plan.portal.value}]"
        log(f"{where}: would {'apply' if plan.target else 'leave as is'}: {plan.reason}{step}")
        return 0
    try:
        supersedes = event.action in SUPERSEDING_ACTIONS and not event.external
        ticket = take_ticket(paths, deadline) if supersedes else None
        with holding_lock(paths, deadline):
            if ticket is not None and latest_ticket(paths) > ticket:
                log(f"{where}: superseded by a later network event; nothing done")
                return 0
            plan = decide(event, config, gather(config, paths))
            with time_limit(deadline - time.monotonic(), budget_s):
                apply(plan, config, paths, steps.append)
            write_record(paths, plan.record)
    except (Busy, OutOfTime) as exc:
        last = f"; last step: {steps[-1]}" if steps else ""
        log(f"{where}: gave up after {time.monotonic() - started:.1f} s ({exc}{last}); "
            f"{_after_failure(plan, 'is')}")
        return 1
    except IkectlError as exc:
        log(f"{where}: failed: {exc}; {_after_failure(plan, 'was')}")
        return exc.exit_code
    except OSError as exc:  # the run dir, the lock or the kernel refused: still one line for the journal
        log(f"{where}: failed: {exc}; {_after_failure(plan, 'was')}")
        return 1
    verb = "applied" if plan.target else "left as is"
    log(f"{where}: {plan.reason}: {verb} in {time.monotonic() - started:.2f} s")
    return 0


def _after_failure(plan: Plan | None, tense: str) -> str:
    if plan is not None and plan.target is not None and plan.target.mode == Mode.TRUSTED:
        return "trusted network: DNS blocked until the next event applies it"
    return f"protection left as it {tense}"


def portal_summary(config: Config, now: float) -> str | None:
    """A line for `status`: a portal waiting, or an open window; None when there is neither."""
    paths = NmPaths.for_config(config)
    window = portal.open_window(paths.window, now)
    if window is not None:
        return window.describe(now)
    record = read_record(paths)
    if record.connectivity == "PORTAL" and record.portal_waiting_since is not None:
        return (f"captive portal waiting for {int(now - record.portal_waiting_since)} s: trusted mode keeps DNS "
                "closed; `ikectl portal allow --minutes N` lets clear DNS through for the login")
    return None


# --- the installed hook ----------------------------------------------------------------------------------

HOOK_NAME = "10-ikectl"  # early: protection first, before other hooks send DNS
HOOK_MARKER = "# ikectl NetworkManager hook"


def hook_paths(root: Path) -> tuple[Path, Path]:
    dispatcher_d = root / "etc/NetworkManager/dispatcher.d"
    return dispatcher_d / HOOK_NAME, dispatcher_d / "pre-up.d" / HOOK_NAME


def actions_always_left() -> tuple[str, ...]:
    """The actions whose row in DECISIONS never changes anything, whatever the network and the record: the
    hook answers them in the shell. nm-dispatcher runs every script in dispatcher.d for every event, and a
    Python start with ikectl's imports costs far more than the event is worth (docs/performance.md)."""
    return tuple(sorted(action for action, row in DECISIONS.items() if row in (_ignored, _on_down)))


INSTALLED_BY_COMMAND = "written by `ikectl install-nm-hook`, removed by `ikectl install-nm-hook --uninstall`"
INSTALLED_BY_PACKAGE = "installed with the ikectl package (/usr/lib/NetworkManager), removed with it"


def hook_script(ikectl: Path, config_path: Path, installed_by: str = INSTALLED_BY_COMMAND) -> str:
    return (
        "#!/bin/sh\n"
        f"{HOOK_MARKER}: {installed_by}.\n"
        "# NetworkManager-dispatcher runs it as root with IFACE and ACTION as arguments and the connection in\n"
        "# the environment; ikectl bounds its own time, so NetworkManager never waits long on it.\n"
        "# These actions never change the protection (ikectl.nm.DECISIONS): no need to start ikectl for them.\n"
        f"case \"$2\" in {'|'.join(actions_always_left())}) exit 0 ;; esac\n"
        f"exec {shlex.quote(str(ikectl))} --config {shlex.quote(str(config_path))} nm-dispatch \"$1\" \"$2\"\n"
    )


def _is_ours(path: Path) -> bool:
    try:
        return HOOK_MARKER in path.read_text(errors="replace").splitlines()[1]
    except (OSError, IndexError):
        return False


def install_hook(root: Path, ikectl: Path, config_path: Path) -> list[Path]:
    """Write the hook into dispatcher.d and pre-up.d: root-owned (when run as root), 0755, never writable
    by group or other, as NetworkManager requires of every script it runs."""
    nm_dir = root / "etc/NetworkManager"
    if not nm_dir.is_dir():
        raise IkectlError(f"{nm_dir}: no such directory: is NetworkManager installed?")
    paths = hook_paths(root)
    for path in paths:
        if path.exists() and not _is_ours(path):
            raise IkectlError(f"{path} exists and is not ikectl's hook: move it away first")
    text = hook_script(ikectl, config_path)
    for path in paths:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")  # a leading dot: nm-dispatcher skips it until renamed
        tmp.write_text(text)
        if os.geteuid() == 0:
            os.chown(tmp, 0, 0)
        tmp.chmod(0o755)
        tmp.replace(path)
    return list(paths)


def uninstall_hook(root: Path) -> list[Path]:
    """Remove the hook files `install_hook` wrote, and nothing else."""
    removed = []
    for path in hook_paths(root):
        if _is_ours(path):
            path.unlink()
            removed.append(path)
    return removed
