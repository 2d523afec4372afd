"""Benchmark: the NetworkManager hook, from the call to protection in place, against a no-op Python start.

    .venv/bin/python bench/nm_dispatch.py [--runs 10] [--vm]

What is timed is what nm-dispatcher runs: the hook `ikectl install-nm-hook` writes (`/bin/sh` that execs
ikectl), in the client's namespace, with working directory / and an environment shaped like the
dispatcher's, for the lab's client (real pluto responders and unbound on the resolvers). Each figure is the
wall time from just before the process is started:

- baseline: `python -c pass` (the same interpreter), started the same way (`ip netns exec`);
- where the time goes before the hook does anything: `python -c 'import ikectl.cli'` (what `ikectl` loads
  for every command) and `python -c 'import ikectl.nm'` (what nm-dispatch itself needs);
- the floor: an event the hook leaves alone (connectivity-change), call to exit;
- trusted network, nothing applied before (pre-up): call to protection, the moment no DNS can leave in
  clear: the first of the two backstops complete (ikectl's nftables table, which alone drops every port-53
  packet that leaves without IPsec; or the XFRM backstop with nothing of pluto's ahead of it); call to both
  complete; and call to exit (pluto started, conns loaded, negotiated);
- coffee-shop to trusted (pre-up of the trusted network while coffee-shop is up, 2 s after its `up`
  returned): call to protection, and call to both backstops complete with coffee-shop's clear-fallback shunts
  gone (they outrank the XFRM backstop);
- the same network again (up after pre-up: "already in place"): call to exit.

Each backstop is checked after each burst of XFRM policy or nftables events (netlink subscriptions in the
client's namespace made before the process starts; nftables through a libnftables context opened there), so
the bench takes no CPU from the hook while it waits.

XFRM policies work in this host's kernel (only ESP SAs do not), so the backstop can be timed here; the
negotiation in "call to exit" fails at the SA install here and costs less than it would with ESP. `--vm`
runs the same in the VM with Debian's kernel (qemu under TCG: every figure slower). Results:
docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from ikecommon.xfrm import Group, event_socket
from ikectl import backstop, nft, nm
from ikectl import policies as policies_of
from netns_tests.harness import procs
from netns_tests.harness.tables import Tables, drain, nft_events
from netns_tests.harness.vm import VmSpec, run_in_vm
from netns_tests.lab import TRUSTED_ID, Lab

IKECTL = Path(sys.executable).parent / "ikectl"
COFFEE, PLAIN, TRUSTED = "10.77.2.53", "10.77.3.53", "10.77.4.53"
HOME_UUID, CAFE_UUID = "0b4c9a3e-5d1f-4f6a-9c2e-7a8b1d3e5f60", "6a1e2b3c-4d5e-4f60-8a9b-0c1d2e3f4a5b"
TARGET_MS = 150.0
SETTLE_S = 2.0


def dispatcher_env(action: str, uuid: str | None, name: str | None, nameservers: str = "") -> dict[str, str]:
    # IKECTL_ASSUME_ESP: on this host's kernel (no ESP) trusted mode would fail closed at the ESP probe, after
    # protection but before pluto; the VM's kernel passes the probe anyway.
    env = {"NM_DISPATCHER_ACTION": action, "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "IKECTL_ASSUME_ESP": "1"}
    if uuid is not None and name is not None:
        env.update({"CONNECTION_UUID": uuid, "CONNECTION_ID": name, "DEVICE_IFACE": "to-router",
                    "DEVICE_IP_IFACE": "to-router", "IP4_NAMESERVERS": nameservers,
                    "DHCP4_DOMAIN_NAME_SERVERS": nameservers})
    else:
        env["CONNECTIVITY_STATE"] = "FULL"
    return env


class HookFailed(Exception):
    pass


class Bench:
    def __init__(self, lab: Lab, work: Path, run_dir: Path) -> None:
        self.lab, self.work, self.run_dir = lab, work, run_dir
        self.client = lab.hosts["client"]
        assert lab.trusted_pin is not None
        self.config = work / "ikectl.toml"
        self.config.write_text(
            'mode = "coffee-shop"\ndefault_mode = "coffee-shop"\n[resolvers]\ndiscover = ["networkmanager"]\n'
            '[[networks]]\nid = "home"\nmode = "trusted"\npin = "home"\n'
            f'[pins.home]\naddress = "{TRUSTED}"\nid = "{TRUSTED_ID}"\npubkey = "{lab.trusted_pin.libreswan}"\n'
            f'[paths]\nrun_dir = "{run_dir}"\n')
        root = work / "root"
        (root / "etc/NetworkManager").mkdir(parents=True)
        lab.topo.run(self.client, [str(IKECTL), "--config", str(self.config), "install-nm-hook", "--root",
                                   str(root), "--ikectl", str(IKECTL)])
        self.hook, self.pre_up_hook = nm.hook_paths(root)
        self.backstop = {(p.selector, p.direction, p.action) for p in backstop.policies()}
        self.tables = Tables(self.client.netns)

    def xfrm_protects(self) -> bool:
        """The XFRM backstop complete, and no pluto policy left that would let DNS past it in clear (coffee-shop's
        clear-fallback shunts outrank it)."""
        policies = self.tables.xfrm.policies()
        have = {(p.selector, p.direction, p.action) for p in policies if p.owned}
        return self.backstop <= have and not policies_of.leaks(policies)

    def nft_protects(self) -> bool:
        return self.tables.nft_state() == nft.TableState.INTACT

    def protected(self) -> bool:
        """No DNS can leave in clear: either backstop alone is enough."""
        return self.nft_protects() or self.xfrm_protects()

    def both(self) -> bool:
        return self.nft_protects() and self.xfrm_protects()

    def run(self, argv: list[str], env: dict[str, str] | None = None,
            marks: Mapping[str, Callable[[], bool]] | None = None) -> tuple[dict[str, float], float]:
        """(seconds to each mark, seconds to exit), all from just before the start; HookFailed if it fails.
        The marks are checked after each burst of XFRM policy or nftables events, not in a busy loop: polling
        the tables every half millisecond took most of a core from the process being timed (2 cores here)."""
        marks = marks or {}
        reached: dict[str, float] = {}
        # Subscribed before the start.
        with event_socket(self.client.netns, (Group.POLICY,)) as xfrm_events, nft_events(self.client.netns) as nfts:
            started = time.perf_counter()
            proc = subprocess.Popen(["ip", "netns", "exec", self.client.netns, *argv], env=env, cwd="/",
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            while len(reached) < len(marks) and proc.poll() is None:
                ready = select.select([xfrm_events, nfts], [], [], 0.01)[0]
                for sock in ready:
                    drain(sock)
                for name, check in marks.items():
                    if ready and name not in reached and check():
                        reached[name] = time.perf_counter() - started
        _, err = proc.communicate(timeout=120)
        ended = time.perf_counter() - started
        for name, check in marks.items():
            if name not in reached and check():
                reached[name] = ended  # done between the last poll and the exit
        if proc.returncode != 0:
            raise HookFailed(f"{' '.join(argv[-2:])}: {err.decode(errors='replace').strip()}")
        return reached, ended

    def hook_call(self, action: str, uuid: str | None = None, name: str | None = None, nameservers: str = "",
                  marks: Mapping[str, Callable[[], bool]] | None = None) -> tuple[dict[str, float], float]:
        hook = self.pre_up_hook if action == "pre-up" else self.hook
        iface = "" if action == "connectivity-change" else "to-router"
        return self.run(["/bin/sh", str(hook), iface, action], dispatcher_env(action, uuid, name, nameservers),
                        marks)

    def protection_marks(self) -> dict[str, Callable[[], bool]]:
        return {"protected": self.protected, "both": self.both}

    def reset(self) -> None:
        self.lab.topo.run(self.client, [str(IKECTL), "--config", str(self.config), "down"])
        shutil.rmtree(self.run_dir.with_name(self.run_dir.name + "-nm"), ignore_errors=True)


def line(name: str, times: list[float], base: float | None) -> str:
    times = sorted(times)
    median = statistics.median(times)
    ratio = f"; {median / base:.1f}x baseline" if base else ""
    target = f"; target {TARGET_MS:.0f} ms: {'met' if median * 1e3 <= TARGET_MS else 'NOT met'}" if base else ""
    return (f"{name}: median {median * 1e3:.1f} ms (min {times[0] * 1e3:.1f}, max {times[-1] * 1e3:.1f}, "
            f"{len(times)} runs){ratio}{target}")


def run(runs: int) -> None:
    procs.install_exit_hooks()
    work = Path(tempfile.mkdtemp(prefix="ikt-bench-", dir="/run"))
    run_dir = Path(tempfile.mkdtemp(prefix="ikt-run-", dir="/run"))
    try:
        with Lab(work / "lab", say=lambda _: None, with_client_pluto=False) as lab:
            bench = Bench(lab, work, run_dir)
            home, cafe = f"{TRUSTED} {PLAIN}", f"{COFFEE} {PLAIN}"
            base, floor, first_exit, again = [], [], [], []
            first: dict[str, list[float]] = {"protected": [], "both": []}
            switch: dict[str, list[float]] = {"protected": [], "both": []}
            imports: dict[str, list[float]] = {"ikectl.cli": [], "ikectl.nm": []}
            skipped: str | None = None
            for _ in range(runs):  # interleaved, so a drift in the machine's speed hits every figure alike
                base.append(bench.run([sys.executable, "-c", "pass"])[1])
                for module, times in imports.items():
                    times.append(bench.run([sys.executable, "-c", f"import {module}"])[1])
                floor.append(bench.hook_call("connectivity-change")[1])
                bench.reset()
                reached, ended = bench.hook_call("pre-up", HOME_UUID, "home", home, bench.protection_marks())
                for mark, times in first.items():
                    times.append(reached[mark])
                first_exit.append(ended)
                again.append(bench.hook_call("up", HOME_UUID, "home", home)[1])
                bench.reset()
                if skipped is None:
                    try:
                        bench.hook_call("pre-up", CAFE_UUID, "cafe", cafe)
                    except HookFailed as exc:  # coffee-shop cannot come up here: say why, measure the rest
                        skipped = str(exc)
                        continue
                    # A switch comes after a while on the coffee-shop network, not while its `up` is still
                    # negotiating in the background: let pluto and the supervisor settle.
                    time.sleep(SETTLE_S)
                    reached, _ = bench.hook_call("pre-up", HOME_UUID, "home", home, bench.protection_marks())
                    for mark, times in switch.items():
                        times.append(reached[mark])
            bench.reset()
            bench.tables.close()
    finally:
        for path in (work, run_dir, run_dir.with_name(run_dir.name + "-nm")):
            shutil.rmtree(path, ignore_errors=True)
    b = statistics.median(base)
    print(f"kernel {os.uname().release}, {runs} runs each, times from just before the process starts")
    print(line("baseline: python -c pass", base, None))
    for module, times in imports.items():
        print(line(f"python -c 'import {module}'", times, b))
    print(line("hook, event left alone (connectivity-change): call to exit", floor, b))
    print(line("hook, trusted pre-up, nothing applied before: call to protection (the first backstop complete)",
               first["protected"], b))
    print(line("hook, trusted pre-up, nothing applied before: call to both backstops complete", first["both"], b))
    print(line("hook, trusted pre-up, nothing applied before: call to exit", first_exit, b))
    if switch["protected"]:
        print(line("hook, coffee-shop -> trusted pre-up: call to protection (the first backstop complete)",
                   switch["protected"], b))
        print(line("hook, coffee-shop -> trusted pre-up: call to both backstops complete, clear shunts gone",
                   switch["both"], b))
    else:
        print(f"hook, coffee-shop -> trusted pre-up: not measured: coffee-shop did not come up here ({skipped})")
    print(line("hook, same network again (already in place): call to exit", again, b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--vm", action="store_true", help="run in the VM with Debian's kernel (TCG)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench: needs root (namespaces, XFRM policies, pluto)")
    procs.install_exit_hooks()  # SIGTERM unwinds like Ctrl-C: the VM and the namespaces go with us
    if args.vm and os.environ.get("IKECTL_IN_GUEST") != "1":
        out = Path(tempfile.mkdtemp(prefix="ikt-bench-vm-"))
        result = run_in_vm(VmSpec.default(), out, [sys.executable, str(Path(__file__).resolve()), "--runs",
                                                   str(args.runs)], print)
        raise SystemExit(result.returncode)
    run(args.runs)


if __name__ == "__main__":
    main()
