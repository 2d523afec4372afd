"""Benchmark: how soon ikectl's supervisor puts trusted mode's backstops back after another program removes them,
against a no-op Python start measured in the same run.

    .venv/bin/python bench/reconcile.py [--runs 20]

The lab's client runs `ikectl up` in trusted mode (real pluto, the backstops in the kernel). Each round:
- baseline: `python -c pass` started in the client's namespace, call to exit;
- `ip xfrm policy flush` in the client's namespace: from just before it starts to the XFRM backstop complete
  again (checked after each burst of XFRM policy events, from a subscription made before the flush);
- `nft flush ruleset`: from just before it starts to ikectl's nftables table whole again (checked after each
  nftables event, which the supervisor's libnftables transaction sends when it loads the table).
XFRM policies and nftables work in this host's kernel; ESP does not matter here. Results: docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ikecommon.xfrm import Group, XfrmClient, event_socket
from ikectl import backstop, nft
from netns_tests.harness import procs
from netns_tests.harness.tables import drain, nft_events
from netns_tests.lab import TRUSTED_ID, Lab

IKECTL = Path(sys.executable).parent / "ikectl"
TRUSTED = "10.77.4.53"
def timed(netns: str, argv: list[str], events: socket.socket, back: Callable[[], bool]) -> float:
    """Seconds from just before `argv` starts in `netns` until `back()` holds (checked after each event)."""
    drain(events)
    started = time.perf_counter()
    subprocess.run(["ip", "netns", "exec", netns, *argv], check=True)
    while time.perf_counter() - started < 10:
        if select.select([events], [], [], 0.5)[0]:
            drain(events)
        if back():
            return time.perf_counter() - started
    raise SystemExit(f"bench: {' '.join(argv)}: not restored within 10 s")


def line(name: str, times: list[float], base: float | None) -> str:
    times = sorted(times)
    median = statistics.median(times)
    ratio = f"; {median / base:.2f}x baseline" if base else ""
    return (f"{name}: median {median * 1e3:.1f} ms (min {times[0] * 1e3:.1f}, max {times[-1] * 1e3:.1f}, "
            f"{len(times)} runs){ratio}")


def run(runs: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="ikt-bench-", dir="/run"))
    run_dir = Path(tempfile.mkdtemp(prefix="ikt-run-", dir="/run"))
    env = {**os.environ, "IKECTL_ASSUME_ESP": "1"}
    try:
        with Lab(work / "lab", say=lambda _: None, with_client_pluto=False) as lab:
            client = lab.hosts["client"].netns
            assert lab.trusted_pin is not None
            config = work / "ikectl.toml"
            config.write_text(f'mode = "trusted"\n[trusted]\naddress = "{TRUSTED}"\nid = "{TRUSTED_ID}"\n'
                              f'pubkey = "{lab.trusted_pin.libreswan}"\n[paths]\nrun_dir = "{run_dir}"\n')
            subprocess.run(["ip", "netns", "exec", client, str(IKECTL), "--config", str(config), "up"], check=True,
                           env=env)
            time.sleep(2)  # the supervisor is waiting on its events
            xfrm = XfrmClient(client)

            def xfrm_back() -> bool:
                return not backstop.missing(xfrm.policies())

            def nft_back() -> bool:
                listing = subprocess.run(["ip", "netns", "exec", client, "nft", "-j", "list", "table", "inet",
                                          "ikectl"], capture_output=True, text=True, check=False)
                return listing.returncode == 0 and nft.state_of(listing.stdout) == nft.TableState.INTACT

            base, xfrm_times, nft_times = [], [], []
            with event_socket(client, (Group.POLICY,)) as policy_events, nft_events(client) as table_events:
                for _ in range(runs):  # interleaved, so a drift in the machine's speed hits every figure alike
                    started = time.perf_counter()
                    subprocess.run(["ip", "netns", "exec", client, sys.executable, "-c", "pass"], check=True)
                    base.append(time.perf_counter() - started)
                    xfrm_times.append(timed(client, ["ip", "xfrm", "policy", "flush"], policy_events, xfrm_back))
                    time.sleep(0.5)
                    nft_times.append(timed(client, ["nft", "flush", "ruleset"], table_events, nft_back))
                    time.sleep(0.5)
            xfrm.close()
            subprocess.run(["ip", "netns", "exec", client, str(IKECTL), "--config", str(config), "down"], check=True)
    finally:
        for path in (work, run_dir):
            shutil.rmtree(path, ignore_errors=True)
    b = statistics.median(base)
    print(f"kernel {os.uname().release}, {runs} runs each, times from just before the process starts")
    print(line("baseline: python -c pass", base, None))
    print(line("ip xfrm policy flush: start to XFRM backstop complete again", xfrm_times, b))
    print(line("nft flush ruleset: start to ikectl's nftables table whole again", nft_times, b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench: needs root (namespaces, XFRM policies, nftables)")
    procs.install_exit_hooks()
    run(args.runs)


if __name__ == "__main__":
    main()
