"""Random walks of user and network events against the real `ikectl`, with the invariants checked on the kernel's
own tables, /proc and the wire after every step (netns_tests/test_walk.py; long runs: scripts/soak).

The world: a client with two uplinks to a router (a second one to fail over to), and behind the router
    trusted  10.91.2.53 10.91.2.54 unbound + pluto with a pinned ECDSA key (trusted mode's resolver: one service at
                                   two addresses, one pin)
    oe       10.91.3.53 fd91:3::53 unbound + a NULL-auth pluto that comes and goes (a resolver gains or loses IKE)
    plain    10.91.4.53 fd91:4::53 unbound only
The router captures both of the client's links.

The invariants (what ikectl promises, as the kernel shows it):
- trusted: both backstops complete (within a moment of another program removing them); no policy of pluto's
  kind lets DNS to a managed resolver out in clear; any other program's policy that does is caught by a complete
  nftables table; pluto's traps for each of the pinned resolver's addresses are there whenever our pluto can route
  them; no pluto
  of ours outside the recorded run dir; and on the wire, no plaintext port-53 packet in any trusted phase;
- coffee-shop: no backstop; every listed resolver has pluto's policy (trap, SA or shunt) unless the record says
  why not; nothing of pluto's kind for a resolver no longer listed;
- after `down`: nothing of ours or of our pluto's: no owned policy, no nftables table, no policy of pluto's kind
  for any resolver ever managed, no pluto or supervisor of ours, larval drop and acq_expires as before, no record.
Every command has a deadline (a stuck pluto must never hang one).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from ikecommon import keys
from ikecommon.xfrm import Policy, XfrmClient
from ikectl import backstop, plan, policies, render
from ikectl.config import Mode
from ikectl.nft import TableState, state_of
from ikectl.state import RunState, StateStore, Unreadable, state_dir
from ikectl.whack import WHACK
from netns_tests.conftest import IKECTL
from netns_tests.harness import procs
from netns_tests.harness.capture import Capture
from netns_tests.harness.dnsclient import query
from netns_tests.harness.pluto import Pluto, PlutoConfig
from netns_tests.harness.topology import Topology
from netns_tests.harness.unbound import UnboundConfig

TRUSTED, OE4, OE6, PLAIN4, PLAIN6 = "10.91.2.53", "10.91.3.53", "fd91:3::53", "10.91.4.53", "fd91:4::53"
TRUSTED2 = "10.91.2.54"  # the trusted resolver's second address: the same service, the same pin
PINNED = (TRUSTED, TRUSTED2)
RESOLVERS = (OE4, OE6, PLAIN4, PLAIN6, TRUSTED)
TRUSTED_ID = "@dns.walk.example"
RETRY_AFTER_S = 5  # the shortest the config allows: "time passes beyond retry_after_s" stays cheap
COMMAND_DEADLINE_S = 60.0
# How long an invariant that the supervisor restores may take to hold again: under TCG (the VM) every process start
# and every round of the supervisor takes 10-20 times as long as here.
SETTLE_S = 12.0 if os.environ.get("IKECTL_IN_GUEST") == "1" else 4.0
ADDRESSES = ("10.91.1.2", "10.91.1.9")  # the client's uplink address, before and after a renumbering
BACKUP_ADDRESS = "10.91.5.2"  # the client's address on the backup uplink

# The second IKE daemon: the system's own libreswan with its documented opportunistic setup.
SYSTEM_OE = """conn clear
\ttype=passthrough
\tauthby=never
\tleft=%defaultroute
\tright=%group
\tauto=ondemand

conn private-or-clear
\tleft=%defaultroute
\tleftid=%null
\trightid=%null
\tright=%opportunisticgroup
\tauthby=null
\tnegotiationshunt=hold
\tfailureshunt=passthrough
\tretransmit-timeout=2s
\tauto=ondemand
"""


@dataclass(frozen=True)
class Action:
    """One event of a walk: `kind` names it, `arg` is its choice (a mode, a resolver set, on/off, ...)."""

    kind: str
    arg: Any = None

    def __str__(self) -> str:
        return self.kind if self.arg is None else f"{self.kind}({self.arg})"


@dataclass
class Model:
    """What the walk expects, from the steps so far."""

    mode: Mode = Mode.COFFEE_SHOP  # in the config
    resolvers: tuple[str, ...] = (PLAIN4,)  # in the config
    run_dir: int = 0  # which of the two run dirs the config names
    up: Mode | None = None  # the mode applied (None: down)
    trusted_since: float | None = None  # wall clock of the current trusted phase's start
    ever: set[str] = field(default_factory=set)  # every resolver ever listed
    oe_ike: bool = False
    second_daemon: bool = False
    frozen: int | None = None  # the pid of our pluto while stopped
    address: int = 0
    failed_over: bool = False
    up_source: str = ADDRESSES[0]  # where IPv4 DNS left from when `up` last applied (pluto's group is for it)

    @property
    def source(self) -> str:
        """Where IPv4 DNS leaves from now: the backup uplink's address once failed over."""
        return BACKUP_ADDRESS if self.failed_over else ADDRESSES[self.address]


def generate(rng: random.Random, steps: int) -> list[Action]:
    """A walk of `steps` events. Every action is total (applicable in any state: a no-op where it makes no
    sense), so a shrunk walk stays a valid one."""
    choices: list[tuple[int, Callable[[], Action]]] = [
        (14, lambda: Action("up")),
        (5, lambda: Action("down")),
        (8, lambda: Action("mode", rng.choice([Mode.TRUSTED, Mode.COFFEE_SHOP]))),
        (6, lambda: Action("resolvers", tuple(sorted(rng.sample(RESOLVERS[:4], rng.randint(1, 3)))))),
        (2, lambda: Action("run_dir", rng.randint(0, 1))),
        (4, lambda: Action("resolver_ike", rng.choice([True, False]))),
        (3, lambda: Action("kill_pluto")),
        (3, lambda: Action("flush_xfrm")),
        (2, lambda: Action("delete_policy", rng.randint(0, 1 << 16))),
        (3, lambda: Action("flush_nft")),
        (2, lambda: Action("second_daemon", rng.choice([True, False]))),
        (2, lambda: Action("move_address")),
        (2, lambda: Action("fail_over")),
        (2, lambda: Action("freeze")),
        (3, lambda: Action("resume")),
        (1, lambda: Action("wait")),
    ]
    weights = [w for w, _ in choices]
    return [rng.choices(choices, weights)[0][1]() for _ in range(steps)]


class World:
    """The hosts, daemons and captures of a walk; `apply` carries out an action, `check` the invariants."""

    def __init__(self, topo: Topology, unbound: Callable[..., Any], pluto: Callable[..., Pluto],
                 capture: Callable[..., Capture], workdir: Path) -> None:
        self.topo, self.pluto_factory, self.workdir = topo, pluto, workdir
        self.client, self.router = topo.add_host("client"), topo.add_router("router")
        topo.link(self.client, self.router, "10.91.1.0/24", "fd91:1::/64", hosts=(2, 1))
        # The second uplink: the client's other interface, through a second router that reaches the first.
        self.backup = topo.add_router("backup")
        topo.link(self.client, self.backup, "10.91.5.0/24", hosts=(2, 1))
        topo.link(self.backup, self.router, "10.91.6.0/24", hosts=(1, 2))
        topo.default_route(self.client, self.router)
        topo.run(self.backup, ["ip", "route", "add", "10.91.0.0/16", "via", "10.91.6.2"])
        self.hosts = {}
        for name, net4, net6 in (("trusted", "10.91.2.0/24", None), ("oe", "10.91.3.0/24", "fd91:3::/64"),
                                 ("plain", "10.91.4.0/24", "fd91:4::/64")):
            host = topo.add_host(name)
            topo.link(host, self.router, net4, net6, hosts=(53, 1))
            topo.default_route(host, self.router)
            if name == "trusted":
                topo.run(host, ["ip", "address", "add", f"{TRUSTED2}/24", "dev", host.interface_to(self.router).ifname])
                unbound(host, UnboundConfig(addresses=[ip_address(a) for a in PINNED]))
            else:
                unbound(host)
            self.hosts[name] = host
        topo.run(self.router, ["ip", "route", "add", "10.91.5.0/24", "via", "10.91.6.1"])
        self.captures = [capture(self.router, self.router.interface_to(self.client).ifname),
                         capture(self.router, self.router.interface_to(self.backup).ifname)]
        server = pluto(self.hosts["trusted"], run=False)
        self.pin = keys.parse(server.show_hostkey(server.new_hostkey("ecdsa"), "right"))
        self.trusted_pluto = server
        self.serve_trusted(TRUSTED_ID)
        self.oe_pluto: Pluto | None = None
        self.system_pluto: Pluto | None = None
        self.config = workdir / "ikectl.toml"
        self.run_dirs = (Path("/run") / f"ikt-walk-{os.getpid()}-a", Path("/run") / f"ikt-walk-{os.getpid()}-b")
        for run_dir in self.run_dirs:
            procs.attach_log(f"ikectl's pluto in {run_dir.name}", run_dir / "pluto.log")
            procs.attach_log(f"ikectl's supervisor in {run_dir.name}", run_dir / "supervisor.log")
        self.netns_id = int(topo.run(self.client, [sys.executable, "-c", "from ikectl.state import netns_id; "
                                                   "print(netns_id())"]).stdout)
        self.model = Model()
        self.trusted_phases: list[tuple[float, float]] = []
        self.log: list[str] = []
        self.write_config()

    def serve_trusted(self, ike_id: str, new_key: bool = False) -> None:
        """(Re)start the trusted resolver's pluto, authenticating as `ike_id` with the pinned key, or with a key
        made now (`new_key`: the resolver restarted as a TEE would, with a key of its own)."""
        server = self.trusted_pluto
        if server.running():
            server.stop()
        key = keys.parse(server.show_hostkey(server.new_hostkey("ecdsa"), "right")) if new_key else self.pin
        server.write_config(PlutoConfig(conns="\n".join(
            render.render_responder(f"dns{n}", ip_address(address), ike_id, key) for n, address in enumerate(PINNED))))
        server.start()
        server.addconn("--autoall")

    # --- the config and the commands ---

    def write_config(self) -> None:
        m = self.model
        addresses = ", ".join(f'"{a}"' for a in m.resolvers)
        self.config.write_text(
            f'mode = "{m.mode.value}"\n[resolvers]\naddresses = [{addresses}]\n'
            f'[trusted]\naddress = ["{TRUSTED}", "{TRUSTED2}"]\nid = "{TRUSTED_ID}"\npubkey = "{self.pin.libreswan}"\n'
            f"[coffee_shop]\nretry_after_s = {RETRY_AFTER_S}\n[paths]\nrun_dir = \"{self.run_dirs[m.run_dir]}\"\n")

    def ikectl(self, *args: str) -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        try:
            proc = self.topo.run(self.client, [str(IKECTL), "--config", str(self.config), *args], check=False,
                                 timeout=COMMAND_DEADLINE_S)
        except subprocess.TimeoutExpired:
            raise Violation(f"`ikectl {' '.join(args)}` hung for over {COMMAND_DEADLINE_S:g} s") from None
        self.log.append(f"  ikectl {' '.join(args)}: exit {proc.returncode} in {time.monotonic() - started:.1f} s"
                        + (f": {proc.stderr.strip().splitlines()[-1]}" if proc.stderr.strip() else ""))
        return proc

    # --- actions ---

    def apply(self, action: Action) -> None:
        getattr(self, f"_{action.kind}")(action.arg)

    def _up(self, _: object) -> None:
        m = self.model
        self._end_trusted_phase()
        proc = self.ikectl("up")
        m.ever |= set(m.resolvers) | (set(PINNED) if m.mode == Mode.TRUSTED else set())
        if proc.returncode == 0 or m.mode == Mode.TRUSTED:  # trusted fails closed: trusted (blocked) all the same
            m.up, m.up_source = m.mode, m.source
        elif proc.returncode not in (0, 1):
            raise Violation(f"`ikectl up` exited {proc.returncode}: {proc.stderr.strip()}")
        m.frozen = None if m.frozen is not None and not _alive(m.frozen) else m.frozen
        if m.up == Mode.TRUSTED:
            m.trusted_since = time.time()

    def _down(self, _: object) -> None:
        self._end_trusted_phase()
        proc = self.ikectl("down")
        if proc.returncode != 0:
            raise Violation(f"`ikectl down` exited {proc.returncode}: {proc.stderr.strip()}")
        self.model.up, self.model.frozen = None, None

    def _end_trusted_phase(self) -> None:
        if self.model.trusted_since is not None:
            self.trusted_phases.append((self.model.trusted_since, time.time()))
            self.model.trusted_since = None

    def _mode(self, mode: Mode) -> None:
        self.model.mode = mode
        self.write_config()

    def _resolvers(self, chosen: tuple[str, ...]) -> None:
        self.model.resolvers = chosen
        self.write_config()

    def _run_dir(self, which: int) -> None:
        self.model.run_dir = which
        self.write_config()

    def _resolver_ike(self, on: bool) -> None:
        if on and self.oe_pluto is None:
            conns = (render.render_responder("oe", ip_address(OE4)) + "\n"
                     + render.render_responder("oe6", ip_address(OE6)))
            self.oe_pluto = self.pluto_factory(self.hosts["oe"], PlutoConfig(conns=conns))
            self.oe_pluto.addconn("--autoall")
        elif not on and self.oe_pluto is not None:
            self.oe_pluto.stop()
            self.topo.run(self.hosts["oe"], ["ip", "xfrm", "state", "flush"])
            self.topo.run(self.hosts["oe"], ["ip", "xfrm", "policy", "flush"])
            self.oe_pluto = None
        self.model.oe_ike = self.oe_pluto is not None

    def our_pluto(self) -> int | None:
        for run_dir in self.run_dirs:
            pid = pluto_of(run_dir)
            if pid is not None:
                return pid
        return None

    def _kill_pluto(self, _: object) -> None:
        pid = self.our_pluto()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid)
            if self.model.frozen == pid:
                self.model.frozen = None

    def _flush_xfrm(self, _: object) -> None:
        self.topo.run(self.client, ["ip", "xfrm", "policy", "flush"])

    def _delete_policy(self, pick: int) -> None:
        with XfrmClient(self.client.netns) as client:
            table = [p for p in client.policies() if p.direction <= 2]
            if table:
                with contextlib.suppress(Exception):
                    client.delete_policy(table[pick % len(table)])

    def _flush_nft(self, _: object) -> None:
        self.topo.run(self.client, ["nft", "flush", "ruleset"])

    def _second_daemon(self, on: bool) -> None:
        if on and self.system_pluto is None:
            self.system_pluto = self.pluto_factory(self.client, PlutoConfig(
                conns=SYSTEM_OE, policies={"private-or-clear": ["0.0.0.0/0"], "clear": ["10.91.1.0/24"]}))
        elif not on and self.system_pluto is not None:
            self.system_pluto.stop()
            self.system_pluto = None
            # A pluto stopped in the middle of a negotiation leaves its bare hold shunt (for the whole host) in the
            # kernel, as ikectl's own pluto does with its clear fallbacks; ikectl never touches another daemon's
            # policies, so its admin would clean up after it: here, what that daemon alone makes (proto any).
            with XfrmClient(self.client.netns) as client:
                for leftover in [p for p in client.policies() if p.direction <= 2 and not p.owned
                                 and p.selector.proto == 0]:
                    with contextlib.suppress(Exception):
                        client.delete_policy(leftover)
        self.model.second_daemon = self.system_pluto is not None

    def _move_address(self, _: object) -> None:
        m = self.model
        uplink = self.client.interface_to(self.router).ifname
        old, new = ADDRESSES[m.address], ADDRESSES[1 - m.address]
        self.topo.run(self.client, ["ip", "addr", "del", f"{old}/24", "dev", uplink])
        self.topo.run(self.client, ["ip", "addr", "add", f"{new}/24", "dev", uplink, "nodad"])
        if not m.failed_over:
            self.topo.run(self.client, ["ip", "route", "replace", "default", "via", "10.91.1.1"])
        m.address = 1 - m.address

    def _fail_over(self, _: object) -> None:
        m = self.model
        via = "10.91.1.1" if m.failed_over else "10.91.5.1"
        self.topo.run(self.client, ["ip", "route", "replace", "default", "via", via])
        m.failed_over = not m.failed_over

    def _freeze(self, _: object) -> None:
        pid = self.our_pluto()
        if pid is not None and self.model.frozen is None:
            os.kill(pid, signal.SIGSTOP)
            self.model.frozen = pid

    def _resume(self, _: object) -> None:
        if self.model.frozen is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.model.frozen, signal.SIGCONT)
            self.model.frozen = None

    def _wait(self, _: object) -> None:
        time.sleep(RETRY_AFTER_S + 1)

    # --- the invariants ---

    def record(self) -> RunState | Unreadable | None:
        return StateStore(state_dir(), self.netns_id).read()

    def table(self) -> list[Policy]:
        with XfrmClient(self.client.netns) as client:
            return [p for p in client.policies() if p.direction <= 2]

    def nft_state(self, table: str = "ikectl") -> TableState:
        proc = self.topo.run(self.client, ["nft", "-j", "list", "table", "inet", table], check=False)
        return state_of(proc.stdout) if proc.returncode == 0 else TableState.ABSENT

    def diagnosis(self) -> str:
        """What a failed invariant needs beside it: the kernel's policies, `ikectl status`, pluto's shunts and the
        end of its log. (whack waits on a frozen pluto: a short deadline.)"""
        table = "\n".join(f"  {policies.describe(p)}" for p in self.table())
        shown = self.ikectl("status").stdout.strip()
        run_dir = self.run_dirs[self.model.run_dir]
        shunts = log = "(none)"
        with contextlib.suppress(subprocess.TimeoutExpired):
            shunts = self.topo.run(self.client, [str(WHACK), "--rundir", str(run_dir / "pluto"), "--shuntstatus"],
                                   check=False, timeout=5).stdout.strip()
        with contextlib.suppress(OSError):
            log = "\n".join((run_dir / "pluto.log").read_text(errors="replace").splitlines()[-40:])
        states = self.topo.run(self.client, ["ip", "xfrm", "state"], check=False).stdout.strip()
        return (f"the kernel's policies:\n{table}\nits SAs (larval ones are ACQUIREs pluto has not answered):\n"
                f"{states}\nikectl status:\n{shown}\npluto's shunts:\n{shunts}\n"
                f"the end of ikectl's pluto's log:\n{log}")

    def check(self) -> None:
        """Raise Violation naming the first invariant that does not hold, with a diagnosis."""
        try:
            self._check()
        except Violation as exc:
            raise Violation(f"{exc}\n{self.diagnosis()}") from None

    def _check(self) -> None:
        m = self.model
        found = self.record()
        if isinstance(found, Unreadable):
            raise Violation(f"the record is unreadable: {found.why}")
        if m.up is None:
            self._check_down(found)
        elif found is None or found.mode != m.up:
            raise Violation(f"expected ikectl up in {m.up.value} mode, the record says "
                            f"{found.mode.value if found else 'down'}")
        elif m.up == Mode.TRUSTED:
            self._check_trusted(found)
        else:
            self._check_coffee_shop(found)

    def _check_down(self, found: RunState | None) -> None:
        if found is not None:
            raise Violation(f"down, but a record remains ({found.mode.value})")
        table = self.table()
        owned = [p for p in table if p.owned]
        ever = {ip_address(a) for a in self.model.ever}
        stray = policies.leftovers(table, ever)
        if owned or stray:
            raise Violation(f"down, but {len(owned)} owned policies and pluto's {_shown(stray)} remain")
        if self.nft_state() != TableState.ABSENT or self.nft_state("ikectl-guard") != TableState.ABSENT:
            raise Violation("down, but an nftables table of ikectl's remains")
        for run_dir in self.run_dirs:
            if pluto_of(run_dir) is not None or supervisors_of(run_dir):
                raise Violation(f"down, but a pluto or supervisor of {run_dir} runs")
            if run_dir.exists():
                left = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*"))
                raise Violation(f"down, but {run_dir} remains, holding {left[:20]}")
        for sysctl, was in (("xfrm_larval_drop", "1"), ("xfrm_acq_expires", "30")):
            now = self.topo.run(self.client, ["sysctl", "-n", f"net.core.{sysctl}"]).stdout.strip()
            if now != was:
                raise Violation(f"down, but {sysctl} is {now} (was {was})")

    def _check_trusted(self, record: RunState) -> None:
        managed = {ip_address(a) for a in self.model.ever} | set(record.resolvers)

        def protected() -> str | None:
            table = self.table()
            missing = backstop.missing(table)
            nft = self.nft_state()
            if missing or nft != TableState.INTACT:
                return f"backstops incomplete: {len(missing)} XFRM policies missing, nftables table {nft.value}"
            ours = [p for p in table if policies.pluto_dns_peer(p) in managed and policies.clear_pass(p)]
            if ours:
                return f"pluto's clear passes for managed resolvers outrank the backstop: {_shown(ours)}"
            return None

        _eventually(protected, "trusted mode's protection")
        self._check_single_pluto(record)
        pid = pluto_of(record.run_dir)
        if record.blocked is None and pid is not None and pid != self.model.frozen:
            def routed() -> str | None:
                table = self.table()
                missing = [(address, proto) for address in PINNED for proto in (6, 17)
                           if not policies.covered(table, ip_address(address), proto)]
                return f"no pluto policy for the pinned resolver's {missing}" if missing else None

            _eventually(routed, "pluto's traps for each of the pinned resolver's addresses")
        # From the wire's side: DNS to a resolver that is not pinned gets no answer (the captures count it too).
        server = (PLAIN4, OE4)[len(self.log) % 2]
        if query(self.topo, self.client, server, timeout=0.5, retry_every=0.25).answered:
            raise Violation(f"trusted mode, and {server} answered a query")

    def _check_coffee_shop(self, record: RunState) -> None:
        if any(p.owned for p in self.table()) or self.nft_state() != TableState.ABSENT:
            raise Violation("coffee-shop mode, and a backstop is in the kernel")
        self._check_single_pluto(record)
        listed = set(record.resolvers)
        gone = {ip_address(a) for a in self.model.ever} - listed
        stray = policies.leftovers(self.table(), gone)
        if stray:
            raise Violation(f"pluto's policies for resolvers no longer listed: {_shown(stray)}")
        pid = pluto_of(record.run_dir)
        if pid is None or pid == self.model.frozen:  # a stopped pluto holds what meets its traps until it resumes
            return

        # IPv4 DNS leaves from another address than at `up` (renumbered, or failed over): pluto's IPv4 group is for
        # the old one (dropped, if that address went), and DNS to IPv4 resolvers passes in clear until the next `up`
        # (the NetworkManager hook's). status must say so.
        moved = self.model.up_source != self.model.source
        # Only the groups' members: the others' rows say why they are in clear.
        if moved and any(a.version == 4 for a in plan.admitted(record)):
            shown = self.ikectl("status").stdout
            if "this host now sends from" not in shown:
                raise Violation(f"the client's address changed since `up`, and `ikectl status` does not say so:\n"
                                f"{shown}")

        def covered() -> str | None:
            now = self.record()
            if not isinstance(now, RunState):
                return "the record went"
            members = [a for a in plan.admitted(now) if not (moved and a.version == 4)]
            table = self.table()
            bare = [str(a) for a in members if not all(policies.covered(table, a, p) for p in (6, 17))]
            return f"no pluto policy for {bare}" if bare else None

        _eventually(covered, "pluto's policies for every listed resolver")

        if self.model.second_daemon:
            # Another IKE daemon in the namespace takes IKE replies and ACQUIREs meant for ikectl's pluto: ikectl
            # cannot promise that DNS is answered then (docs/modes.md); it promises to say so.
            shown = self.ikectl("status").stdout
            if "another IKE daemon in this network namespace" not in shown:
                raise Violation(f"a second IKE daemon runs, and `ikectl status` does not name it:\n{shown}")
            return
        reachable = [a for a in record.resolvers if not record.unprotected.get(str(a), "").startswith("no route")]

        def answered() -> str | None:
            silent = [str(a) for a in reachable
                      if not query(self.topo, self.client, str(a), timeout=2.0, retry_every=1.0).answered]
            return f"{silent} not answered within 2 s" if silent else None

        _eventually(answered, "coffee-shop answers every resolver", within=2 * SETTLE_S)

    def _check_single_pluto(self, record: RunState) -> None:
        for run_dir in self.run_dirs:
            if run_dir != record.run_dir and pluto_of(run_dir) is not None:
                raise Violation(f"a pluto of {run_dir} runs beside the recorded {record.run_dir}")

    def supervisor_story(self) -> str:
        """Each supervisor's state and, after a SIGUSR1 (faulthandler), its threads' stacks and its log."""
        lines = []
        for run_dir in self.run_dirs:
            for pid in supervisors_of(run_dir):
                with contextlib.suppress(OSError):
                    status = Path(f"/proc/{pid}/status").read_text().splitlines()
                    lines.append(f"supervisor pid {pid}: {[s for s in status if s.startswith('State')]}, wchan "
                                 f"{Path(f'/proc/{pid}/wchan').read_text()}")
                    os.kill(pid, signal.SIGUSR1)
        time.sleep(1)
        return "\n".join([*lines, self.supervisor_log(80)])

    def supervisor_log(self, lines: int = 30) -> str:
        text = []
        for run_dir in self.run_dirs:
            with contextlib.suppress(OSError):
                text += (run_dir / "supervisor.log").read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(text) or "(none)"

    # --- the wire ---

    def plaintext_in_trusted_phases(self, also: tuple[str, ...] = ()) -> int:
        """Plaintext port-53 packets between the client (or hosts behind it, `also`) and any resolver while trusted
        mode was applied."""
        self._end_trusted_phase()
        time.sleep(0.3)
        total = 0
        subject = {*ADDRESSES, BACKUP_ADDRESS, "fd91:1::2", *also}
        for wire in self.captures:
            wire.stop()
            inside = [p for p in wire.packets() if any(start <= float(p.time) <= end
                                                       for start, end in self.trusted_phases)]
            total += wire_count(inside, subject)
        return total

    def reset(self) -> None:
        """Back to the walk's start between runs (the shrinker replays from here)."""
        with contextlib.suppress(Violation):
            self._resume(None)
        self.ikectl("down")
        self._second_daemon(False)
        self._resolver_ike(False)
        if self.model.address:
            self._move_address(None)
        if self.model.failed_over:
            self._fail_over(None)
        self.topo.run(self.client, ["nft", "flush", "ruleset"], check=False)
        self.model = Model()
        self.trusted_phases.clear()
        self.write_config()


def wire_count(packets: list[Any], subject: set[str]) -> int:
    from ikectl.wire import count_wire  # noqa: PLC0415 - scapy, for the wire only

    return count_wire(packets, subject).plaintext_dns


class Violation(AssertionError):
    """An invariant that did not hold."""


def pluto_of(run_dir: Path) -> int | None:
    """The pluto of a run dir, seen from outside the client's namespace (ikectl's own lookup sees its namespace's
    processes only)."""
    found = procs.pids_by_argv("--rundir", str(run_dir / "pluto"))
    return found[0] if found else None


def supervisors_of(run_dir: Path) -> list[int]:
    return procs.pids_by_argv("ikectl.supervisor", str(run_dir))


def _eventually(check: Callable[[], str | None], what: str, within: float = SETTLE_S) -> None:
    deadline = time.monotonic() + within
    while True:
        problem = check()
        if problem is None:
            return
        if time.monotonic() > deadline:
            raise Violation(f"{what}: {problem} (still after {within:g} s)")
        time.sleep(0.1)


def _shown(found: list[Policy]) -> str:
    return "; ".join(policies.describe(p) for p in found[:3]) + (" ..." if len(found) > 3 else "")


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _wait_gone(pid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


# --- running, and shrinking a failure ---

@dataclass(frozen=True)
class Failure:
    step: int
    action: Action
    violation: str


def run(world: World, actions: list[Action], say: Callable[[str], None] = lambda _: None) -> Failure | None:
    world.reset()
    for index, action in enumerate(actions):
        try:
            world.apply(action)
            world.check()
        except Violation as exc:
            return Failure(index, action, str(exc))
        say(f"step {index + 1}/{len(actions)} {action}: ok")
    return None


def shrink(world: World, actions: list[Action], budget_s: float = 900.0) -> list[Action]:
    """The shortest walk found that still fails (delta debugging: drop chunks, halving their size), within
    `budget_s`; each attempt replays from the start."""
    deadline = time.monotonic() + budget_s
    current = actions
    chunk = max(1, len(current) // 2)
    while chunk >= 1 and time.monotonic() < deadline:
        index, shrunk = 0, False
        while index < len(current) and time.monotonic() < deadline:
            candidate = current[:index] + current[index + chunk:]
            failure = run(world, candidate) if candidate else None
            if failure is not None:
                current, shrunk = candidate[:failure.step + 1], True
            else:
                index += chunk
        if not shrunk:
            chunk //= 2
    return current


@contextlib.contextmanager
def walk_world(topology: Topology, unbound: Callable[..., Any], pluto: Callable[..., Pluto],
               capture: Callable[..., Capture], workdir: Path) -> Iterator[World]:
    world = World(topology, unbound, pluto, capture, workdir)
    try:
        yield world
    finally:
        with contextlib.suppress(Exception):
            world.reset()
        for run_dir in world.run_dirs:
            subprocess.run(["rm", "-rf", str(run_dir)], check=False)


def describe(actions: list[Action]) -> str:
    return " -> ".join(map(str, actions))
