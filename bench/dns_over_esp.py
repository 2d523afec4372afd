"""Benchmark: DNS answers per second and latency through userspace ESP (enclave-ike behind the forwarder) against
kernel ESP (enclave-ike with apply.mode = "kernel") and plain DNS, same run, same machine.

    PYTHONPATH=. .venv/bin/python bench/dns_over_esp.py [--seconds 10] [--rounds 3] [--concurrency 8] [--keep]

The clients' ESP is the kernel's (pluto with the tree ikectl renders in trusted mode), so this runs in the VM
(Debian's kernel) when this host's kernel has no ESP. Three paths behind one router, each with its own client
namespace and its own unbound serving the lab zone:

    plain    client 10.90.1.2 -- router -- 10.90.11.53 unbound
    kernel   client 10.90.2.2 -- router -- 10.90.12.53 enclave-ike (kernel ESP) + unbound on that address
    user     client 10.90.3.2 -- router -- 10.90.13.53 enclave-ike forward  ==Unix socket==  enclave namespace:
                                             enclave-ike (userspace ESP) + unbound on 127.0.0.1

The load in each client namespace is one process with `--concurrency` queries in flight over UDP (each answered
query is replaced at once; a query unanswered after 2 s counts as lost and is replaced), for `--seconds`; the paths
take turns round by round (plain kernel user plain ...), so that a drift of the machine's speed hits all. Reported:
answers per second, median and 99th-percentile latency, each ESP path's ratio to plain DNS measured in the same
round, and the CPU per answer of the load process and of each daemon on the path (under TCG the guest's CPUs are
the bottleneck). Results: docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from ipaddress import ip_address
from pathlib import Path

import dns.message
import dns.rdatatype

from enclave_ike.server import PublishedIdentity
from ikecommon import keys
from ikectl import plan, render
from ikectl.config import Mode, TrustedResolver
from netns_tests.harness import procs
from netns_tests.harness.enclave_ike import config_text, signing_identity
from netns_tests.harness.kernel import probe_esp
from netns_tests.harness.pluto import Pluto
from netns_tests.harness.topology import Host, Topology
from netns_tests.harness.unbound import Unbound, UnboundConfig
from netns_tests.harness.vm import rerun_in_vm

PATHS = {"plain": ("10.90.1", "10.90.11.53"), "kernel": ("10.90.2", "10.90.12.53"),
         "user": ("10.90.3", "10.90.13.53")}  # client prefix, resolver address
RESOLVER_ID = "@resolver.bench"
LOST_AFTER_S = 2.0
QNAME = "www.lab.example."


@dataclass
class LoadReport:
    answers: int = 0
    lost: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # the load process's own
    system_seconds: float = 0.0  # of which in the kernel
    latencies_ms: list[float] = field(default_factory=list)


def load(server: str, concurrency: int, seconds: float) -> LoadReport:
    """`concurrency` queries in flight, each from its own socket, replaced when answered or lost."""
    report, started = LoadReport(seconds=seconds), os.times()
    socks: dict[int, tuple[socket.socket, int, float]] = {}  # fd -> socket, query id, sent at

    def send(sock: socket.socket) -> None:
        message = dns.message.make_query(QNAME, dns.rdatatype.A)
        sock.send(message.to_wire())
        socks[sock.fileno()] = (sock, message.id, time.monotonic())

    for _ in range(concurrency):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect((server, 53))
        sock.setblocking(False)
        send(sock)
    end = time.monotonic() + seconds
    while (now := time.monotonic()) < end:
        readable, _, _ = select.select(list(socks), [], [], 0.05)
        now = time.monotonic()
        for fd in readable:
            sock, query_id, sent = socks[fd]
            try:
                data = sock.recv(4096)
            except OSError:
                continue
            if data[:2] == query_id.to_bytes(2, "big"):
                report.answers += 1
                report.latencies_ms.append((now - sent) * 1e3)
                send(sock)
        for sock, _, sent in list(socks.values()):
            if now - sent > LOST_AFTER_S:
                report.lost += 1
                send(sock)
    for sock, _, _ in socks.values():
        sock.close()
    ended = os.times()
    report.cpu_seconds = ended.user + ended.system - started.user - started.system
    report.system_seconds = ended.system - started.system
    return report


@dataclass
class Round:
    path: str
    answers: int
    lost: int
    rate: float
    median_ms: float
    p99_ms: float
    cpu_ms: dict[str, tuple[float, float]]  # CPU per answer, all and in the kernel: the load's, each daemon's


def measure(topo: Topology, client: Host, daemons: dict[str, procs.Daemon], path: str, server: str,
            args: argparse.Namespace, work: Path) -> Round:
    out = work / f"load-{path}.json"
    before = {name: procs.cpu_times(daemon.pid) for name, daemon in daemons.items()}
    topo.run(client, [sys.executable, str(Path(__file__).resolve()), "--load", server, "--concurrency",
                      str(args.concurrency), "--seconds", str(args.seconds), "--report", str(out)],
             timeout=args.seconds + 60)
    after = {name: procs.cpu_times(daemon.pid) for name, daemon in daemons.items()}
    data = LoadReport(**json.loads(out.read_text()))
    spent = {"load": (data.cpu_seconds, data.system_seconds),
             **{name: (sum(after[name]) - sum(before[name]), after[name][1] - before[name][1]) for name in daemons}}
    latencies = sorted(data.latencies_ms) or [float("nan")]
    per_answer = {name: (1e3 * cpu / max(data.answers, 1), 1e3 * system / max(data.answers, 1))
                  for name, (cpu, system) in spent.items()}
    return Round(path, data.answers, data.lost, data.answers / data.seconds, statistics.median(latencies),
                 latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], per_answer)


def build(topo: Topology, work: Path, daemons: list[procs.Daemon]) -> dict[str, tuple[Host, dict[str, procs.Daemon]]]:
    """Each path's client, and the daemons whose CPU is counted for it."""
    router = topo.add_router("router")
    paths: dict[str, tuple[Host, dict[str, procs.Daemon]]] = {}
    for path, (prefix, server) in PATHS.items():
        client, resolver = topo.add_host(f"c-{path}"), topo.add_host(f"r-{path}")
        topo.link(client, router, f"{prefix}.0/24", hosts=(2, 1))
        topo.link(resolver, router, f"{server.rsplit('.', 1)[0]}.0/24", hosts=(53, 1))
        topo.default_route(client, router)
        topo.default_route(resolver, router)
        watched: dict[str, procs.Daemon] = {}

        def watch(name: str, daemon: procs.Daemon, watched: dict[str, procs.Daemon] = watched) -> None:
            watched[name] = daemon
            daemons.append(daemon)  # stopped at the end, newest first

        if path == "plain":
            watch("unbound", unbound(resolver, work / "unbound-plain", server))
        elif path == "kernel":
            watch("unbound", unbound(resolver, work / "unbound-kernel", server))
            watch("serve", serve(resolver, work / "kernel", server, "kernel", None))
            watch("pluto", client_pluto(topo, client, work / "kernel", server, encapsulation=False))
        else:
            enclave = topo.add_host("enclave")
            watch("unbound", unbound(enclave, work / "unbound-user", "127.0.0.1"))
            watch("serve", serve(enclave, work / "user", server, "userspace", work / "user" / "relay.sock"))
            forwarder = procs.Daemon("forward", [sys.executable, "-m", "enclave_ike.cli", "forward", "--listen",
                                                 server, "--enclave", str(work / "user" / "relay.sock")],
                                     work / "user" / "forward.log", netns=resolver.netns)
            watch("forward", forwarder)
            forwarder.start()
            forwarder.wait_for_log("connected to the enclave", timeout=120.0)
            watch("pluto", client_pluto(topo, client, work / "user", server, encapsulation=True))
        paths[path] = (client, watched)
    return paths


def unbound(host: Host, directory: Path, address: str) -> Unbound:
    daemon = Unbound(host, directory, UnboundConfig(addresses=[ip_address(address)]))
    daemon.start()
    return daemon


def serve(host: Host, directory: Path, address: str, apply: str, relay: Path | None) -> procs.Daemon:
    directory.mkdir(parents=True, exist_ok=True)
    text = config_text(address, identity=signing_identity(RESOLVER_ID), workdir=directory, apply=apply,
                       extra="[evidence]\nenabled = false\n", privacy=True)
    if relay is not None:
        text = text.replace("[listen]\n", f'[listen]\nrelay = "{relay}"\n', 1)
    (directory / "enclave-ike.toml").write_text(text)
    daemon = procs.Daemon(f"enclave-ike@{apply}", [sys.executable, "-m", "enclave_ike.cli", "serve", "--config",
                                                   str(directory / "enclave-ike.toml")],
                          directory / "enclave-ike.log", netns=host.netns)
    daemon.start()
    daemon.wait_for_log(r"listening on ", timeout=120.0)
    return daemon


def client_pluto(topo: Topology, host: Host, directory: Path, server: str, *, encapsulation: bool) -> Pluto:
    published = directory / "identity.json"
    identity = PublishedIdentity.from_json(published.read_text(), str(published))
    assert identity.libreswan is not None
    topo.sysctl(host, "net.core.xfrm_larval_drop", "0")
    topo.sysctl(host, "net.core.xfrm_acq_expires", str(plan.ACQ_EXPIRES_S))
    pluto = Pluto(topo, host, directory / "pluto")
    pluto.init_nss()
    profile = render.Profile(Mode.TRUSTED, encapsulation=encapsulation, trusted=TrustedResolver(
        ip_address(server), RESOLVER_ID, keys.parse(identity.libreswan)))
    render.write_tree(render.render_tree(profile), pluto.dir)
    pluto.start()
    pluto.addconn("--autoall")
    return pluto


def report(rounds: list[Round]) -> None:
    by_path: dict[str, list[Round]] = {}
    for r in rounds:
        by_path.setdefault(r.path, []).append(r)
    print("\npath    answers/s (rounds)               median ms  p99 ms  lost  rate vs plain (rounds)")
    for path, results in by_path.items():
        ratios = [r.rate / p.rate for r, p in zip(results, by_path["plain"], strict=True)]
        median_ms, p99_ms = (statistics.median(getattr(r, key) for r in results) for key in ("median_ms", "p99_ms"))
        print(f"{path:7} {statistics.median(r.rate for r in results):8.1f} "
              f"({', '.join(f'{r.rate:.0f}' for r in results):20}) {median_ms:9.2f} {p99_ms:7.2f}"
              f" {sum(r.lost for r in results):5}  {statistics.median(ratios):.2f} "
              f"({', '.join(f'{x:.2f}' for x in ratios)})")
    print("CPU per answer, every process on the path together (median of the rounds; in the kernel): " + ", ".join(
        f"{path} {statistics.median(sum(ms for ms, _ in r.cpu_ms.values()) for r in results):.2f} ms "
        f"({statistics.median(sum(system for _, system in r.cpu_ms.values()) for r in results):.2f})"
        for path, results in by_path.items()))
    user, kernel = by_path["user"], by_path["kernel"]
    print(f"userspace / kernel ESP: {statistics.median(u.rate / k.rate for u, k in zip(user, kernel, strict=True)):.2f}"
          " (rate, median of the rounds' ratios); median latency "
          f"{statistics.median(u.median_ms / k.median_ms for u, k in zip(user, kernel, strict=True)):.2f}x "
          "(the issue's goal: within 1.5x)")


def run(args: argparse.Namespace) -> None:
    with Topology() as topo, procs.bench_run("ikt-bench-dns-", args.keep) as (work, daemons):
        paths = build(topo, work, daemons)
        warm_up = argparse.Namespace(**{**vars(args), "seconds": 3.0})
        for path, (_, server) in PATHS.items():  # the SAs come up, caches fill
            measure(topo, *paths[path], path, server, warm_up, work)
        rounds = []
        for number in range(args.rounds):
            for path, (_, server) in PATHS.items():
                result = measure(topo, *paths[path], path, server, args, work)
                rounds.append(result)
                print(f"round {number + 1} {path}: {result.rate:.1f} answers/s, median {result.median_ms:.2f} ms,"
                      f" p99 {result.p99_ms:.2f} ms, {result.lost} lost; CPU ms per answer (in the kernel): "
                      + ", ".join(f"{name} {ms:.2f} ({system:.2f})" for name, (ms, system) in result.cpu_ms.items()),
                      flush=True)
        report(rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--load", help=argparse.SUPPRESS)
    parser.add_argument("--report", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load is not None:
        args.report.write_text(json.dumps(asdict(load(args.load, args.concurrency, args.seconds))))
        return
    if not 1 <= args.concurrency <= 256 or args.seconds <= 0 or args.rounds < 1:
        parser.error("--concurrency 1 to 256, --seconds > 0, --rounds >= 1")
    procs.install_exit_hooks()
    if os.environ.get("IKECTL_IN_GUEST") != "1" and not probe_esp().available:
        rerun_in_vm(__file__)
    run(args)


if __name__ == "__main__":
    main()
