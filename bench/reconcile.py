"""Benchmark: how soon ikectl's supervisor puts trusted mode's backstops back after another program removes them,
against a no-op Python start measured in the same run.

    .venv/bin/python bench/reconcile.py [--runs 20]

The lab's client runs `ikectl up` in trusted mode (real pluto, the backstops in the kernel). Each round:
- baseline: `python -c pass` started in the client's namespace, call to exit;
- `ip xfrm policy flush` in the client's namespace: from the flush's first event to the XFRM backstop whole again;
- `nft flush ruleset`: from its first event to ikectl's nftables table whole again;
each seen by an observer process in the namespace (netns_tests/harness/tables.py: the XFRM backstop followed from
its policy events, the table read after each nftables event that touches it, every change dated when its event
arrived). XFRM policies and nftables work in this host's kernel; ESP does not matter here. Results:
docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from netns_tests.harness import procs
from netns_tests.harness.tables import removed_and_restored
from netns_tests.lab import TRUSTED_ID, Lab

IKECTL = Path(sys.executable).parent / "ikectl"
TRUSTED = "10.77.4.53"


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
            base, xfrm_times, nft_times = [], [], []
            for _ in range(runs):  # interleaved, so a drift in the machine's speed hits every figure alike
                started = time.perf_counter()
                subprocess.run(["ip", "netns", "exec", client, sys.executable, "-c", "pass"], check=True)
                base.append(time.perf_counter() - started)
                xfrm_times.append(removed_and_restored(client, ["ip", "xfrm", "policy", "flush"]).restored_after)
                time.sleep(0.5)
                nft_times.append(removed_and_restored(client, ["nft", "flush", "ruleset"]).restored_after)
                time.sleep(0.5)
            subprocess.run(["ip", "netns", "exec", client, str(IKECTL), "--config", str(config), "down"], check=True)
    finally:
        for path in (work, run_dir):
            shutil.rmtree(path, ignore_errors=True)
    b = statistics.median(base)
    print(f"kernel {os.uname().release}, {runs} runs each")
    print(line("baseline: python -c pass", base, None))
    print(line("ip xfrm policy flush: its first event to the XFRM backstop whole again", xfrm_times, b))
    print(line("nft flush ruleset: its first event to ikectl's nftables table whole again", nft_times, b))


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
