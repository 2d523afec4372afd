"""Benchmark: what ikectl's modes cost a DNS user, as ratios against plain DNS measured in the same run.

    .venv/bin/python bench/ikectl_modes.py [--queries 200]

Runs in the VM with Debian's kernel when this kernel has no ESP (like the lab). In the lab's topology:
- steady-state latency: `--queries` sequential queries, plain DNS to the resolver without IKE (the
  baseline) vs trusted mode over ESP (ikectl up) and coffee-shop over NULL-auth ESP: median and p95;
- first answer on a fresh network: `ikectl up` then the first query, coffee-shop with an IKE resolver,
  vs the first plain query (after `up` of nothing);
- clear fallback: coffee-shop `ikectl up` then the first query to the resolver without IKE.
Under TCG every absolute number is slow; the ratios are what to compare. Results: docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query

from netns_tests.harness import procs
from netns_tests.harness.dnsclient import query
from netns_tests.harness.kernel import probe_esp
from netns_tests.harness.vm import VmSpec, run_in_vm
from netns_tests.lab import TRUSTED_ID, Lab

IKECTL = Path(sys.executable).parent / "ikectl"
COFFEE, PLAIN, TRUSTED = "10.77.2.53", "10.77.3.53", "10.77.4.53"


def latencies(lab: Lab, server: str, count: int) -> list[float]:
    """Round trips on one socket, so that making a socket inside the namespace (a fork, under TCG about
    90 ms) is not what is measured."""
    message = dns.message.make_query("www.lab.example.", "A")
    times = []
    with lab.topo.socket(lab.hosts["client"]) as sock:
        for _ in range(count):
            started = time.perf_counter()
            try:
                dns.query.udp(message, server, timeout=5, sock=sock)
            except dns.exception.Timeout:
                raise SystemExit(f"bench: a query to {server} was not answered") from None
            times.append(time.perf_counter() - started)
    return times


def summary(name: str, times: list[float], base: float | None) -> str:
    times = sorted(times)
    median, p95 = statistics.median(times), times[max(0, int(len(times) * 0.95) - 1)]
    ratio = f", {median / base:.2f}x baseline" if base else " (baseline)"
    return f"{name}: median {median * 1e3:.2f} ms, p95 {p95 * 1e3:.2f} ms over {len(times)}{ratio}"


def ikectl(lab: Lab, config: Path, *args: str) -> float:
    started = time.monotonic()
    proc = lab.topo.run(lab.hosts["client"], [str(IKECTL), "--config", str(config), *args], check=False, timeout=120)
    if proc.returncode != 0:
        raise SystemExit(f"bench: ikectl {' '.join(args)} failed: {proc.stderr.strip()}")
    return time.monotonic() - started


def run(queries: int) -> None:
    procs.install_exit_hooks()
    work = Path(tempfile.mkdtemp(prefix="ikt-bench-", dir="/run"))
    run_dir = Path(tempfile.mkdtemp(prefix="ikt-run-", dir="/run"))
    with Lab(work, say=lambda _: None, with_client_pluto=False) as lab:
        assert lab.trusted_pin is not None
        first_plain = query(lab.topo, lab.hosts["client"], PLAIN).seconds
        plain = latencies(lab, PLAIN, queries)
        base = statistics.median(plain)
        print(summary("plain DNS, no ikectl", plain, None))

        coffee_cfg = work / "coffee.toml"
        coffee_cfg.write_text(f'mode = "coffee-shop"\n[resolvers]\naddresses = ["{COFFEE}", "{PLAIN}"]\n'
                              f'[paths]\nrun_dir = "{run_dir}"\n')
        up = ikectl(lab, coffee_cfg, "up")
        first_esp = query(lab.topo, lab.hosts["client"], COFFEE).seconds
        first_clear = query(lab.topo, lab.hosts["client"], PLAIN).seconds
        print(f"coffee-shop `ikectl up`: {up:.2f} s (it negotiates with every resolver before returning)")
        print(f"first answer after up, IKE resolver: {first_esp * 1e3:.1f} ms over ESP vs first plain query "
              f"{first_plain * 1e3:.1f} ms: {first_esp / first_plain:.2f}x")
        print(f"first answer after up, resolver without IKE (clear fallback): {first_clear * 1e3:.1f} ms, "
              f"{first_clear / first_plain:.2f}x the first plain query")
        print(summary("coffee-shop, NULL-auth ESP", latencies(lab, COFFEE, queries), base))
        ikectl(lab, coffee_cfg, "down")

        trusted_cfg = work / "trusted.toml"
        trusted_cfg.write_text(f'mode = "trusted"\n[trusted]\naddress = "{TRUSTED}"\nid = "{TRUSTED_ID}"\n'
                               f'pubkey = "{lab.trusted_pin.libreswan}"\n[paths]\nrun_dir = "{run_dir}"\n')
        up = ikectl(lab, trusted_cfg, "up")
        print(f"trusted `ikectl up`: {up:.2f} s")
        print(summary("trusted, pinned-key ESP", latencies(lab, TRUSTED, queries), base))
        ikectl(lab, trusted_cfg, "down")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    procs.install_exit_hooks()  # SIGTERM unwinds like Ctrl-C: the VM goes with us
    if os.environ.get("IKECTL_IN_GUEST") != "1" and not probe_esp().available:
        out = Path(tempfile.mkdtemp(prefix="ikt-bench-vm-"))
        result = run_in_vm(VmSpec.default(), out, [sys.executable, str(Path(__file__).resolve()), "--queries",
                                                   str(args.queries)], print)
        raise SystemExit(result.returncode)
    run(args.queries)


if __name__ == "__main__":
    main()
