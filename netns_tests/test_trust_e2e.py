"""Attestation end to end: `ikectl trust add` pins enclave-ike's key from verified (sim) evidence, trusted mode carries
DNS over ESP with that pin, and a resolver restarted as another build is refused: DNS stays blocked, and the router
sees 0 plaintext port-53 packets from start to end.

    client 10.79.1.2 -- router (capture) -- resolver 10.79.2.53 (enclave-ike serve: sim backend, kernel SAs;
                                                                 evidence on tcp/4501; unbound)

1. enclave-ike runs build A (its sim registers). `ikectl trust add dns --resolver 10.79.2.53 --spec A --anchors sim`
   pins the key enclave-ike publishes, and `ikectl up` (`[trusted] attested = "dns"`) answers DNS over ESP.
2. enclave-ike restarts as build A: a new key, made at start. The client's liveness check finds its SA dead, pluto
   meets the new key, and ikectl's supervisor re-attests on its own: the new key is pinned, trusted mode reloaded,
   DNS over ESP again (held, never in clear, meanwhile).
3. The spec stops accepting build A while the resolver keeps its key: `ikectl trust verify dns` fails the pin and
   DNS stays blocked (the supervisor does not load the deleted conns again, whose key the resolver still has);
   the spec back, `trust verify` reapplies trusted mode.
4. enclave-ike restarts as build B. `ikectl trust verify dns` refuses it (exit 1, the register listed), deletes the
   trusted conns; DNS stays blocked, `status` says why, and `ikectl up` refuses the failed pin.

Needs ESP in the kernel: runs in the VM.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ikecommon import keys
from ikecommon.attestation.spec import MeasurementEntry, MeasurementSpec
from netns_tests.conftest import IKECTL
from netns_tests.harness import procs
from netns_tests.harness.capture import Capture
from netns_tests.harness.dnsclient import query
from netns_tests.harness.enclave_ike import config_text, servers, signing_identity
from netns_tests.harness.topology import Topology
from netns_tests.harness.unbound import Unbound
from netns_tests.scenarios.resolver_world import World, build_world

RESOLVER = "10.79.2.53"
RESOLVER_ID = "@resolver.attested.example"
BUILD_A = bytes.fromhex("a1" * 48)
BUILD_B = bytes.fromhex("b2" * 48)


@pytest.fixture
def world(topology: Topology, tmp_path: Path, unbound: Callable[..., Unbound]) -> World:
    return build_world(topology, tmp_path, unbound, "10.79")


@pytest.fixture
def enclave_ike(world: World) -> Iterator[Callable[[bytes], procs.Daemon]]:
    """Factory: `enclave_ike(build)` (re)starts `enclave-ike serve` as that build (its sim register 0)."""
    running: list[procs.Daemon] = []
    identity = signing_identity(RESOLVER_ID)
    with servers(world.resolver, world.workdir) as serve:
        def start(build: bytes) -> procs.Daemon:
            for daemon in running:
                daemon.stop()
            daemon = serve(config_text(RESOLVER, identity=f'{identity}sim_registers = ["{build.hex()}"]\n',
                                       workdir=world.workdir, apply="kernel", extra="[evidence]\nport = 4501\n"))
            running.append(daemon)
            daemon.wait_for_log(r"evidence endpoint on 10\.79\.2\.53:4501", timeout=60.0)
            return daemon

        yield start


def published_key(world: World) -> keys.PinnedKey:
    proc = world.topo.run(world.resolver, [sys.executable, "-m", "enclave_ike.cli", "identity", "--config",
                                           str(world.workdir / "enclave-ike.toml"), "--format", "libreswan"])
    return keys.parse(proc.stdout.strip())


def ikectl(world: World, config: Path, *args: str) -> Any:
    return world.topo.run(world.client, [str(IKECTL), "--config", str(config), *args], check=False, timeout=180)


def status_row(world: World, config: Path) -> dict[str, Any]:
    proc = ikectl(world, config, "status", "--json")
    assert proc.returncode == 0, proc.stderr
    rows: dict[str, dict[str, Any]] = {r["address"]: r for r in json.loads(proc.stdout)["resolvers"]}
    return rows[RESOLVER]


def policies(world: World) -> str:
    return str(world.topo.run(world.client, ["ip", "xfrm", "policy"], check=False).stdout)


def answered(world: World, timeout: float) -> bool:
    return query(world.topo, world.client, RESOLVER, timeout=timeout).answered


def test_attested_pin_carries_dns_over_esp_and_another_build_is_refused(world, enclave_ike, run_dir, capture):
    world.topo.sysctl(world.client, "net.core.xfrm_larval_drop", "0")  # queue the query that triggers IKE
    wire: Capture = capture(world.router, world.router.interface_to(world.client).ifname)
    spec = world.workdir / "spec.json"
    spec.write_bytes(MeasurementSpec((MeasurementEntry("build-a", "sim", ((0, BUILD_A),)),)).encode())
    config = world.workdir / "ikectl.toml"
    trust_dir = world.workdir / "trust"
    config.write_text(f'mode = "trusted"\n[trusted]\nattested = "dns"\n[paths]\nrun_dir = "{run_dir}"\n'
                      f'trust_dir = "{trust_dir}"\n')

    # 1. Build A: attested, pinned, DNS over ESP.
    server = enclave_ike(BUILD_A)
    added = ikectl(world, config, "trust", "add", "dns", "--resolver", RESOLVER, "--spec", str(spec),
                   "--anchors", "sim")
    assert added.returncode == 0, added.stderr
    assert "NOT SECURE" in added.stderr and added.stdout.startswith(f"pinned dns: {RESOLVER} {RESOLVER_ID} ")
    pin = json.loads((trust_dir / "dns.json").read_text())
    assert pin["key"] == published_key(world).libreswan and pin["id"] == RESOLVER_ID
    assert pin["measurement_id"] == "build-a" and pin["result"] == "ok"
    up = ikectl(world, config, "up")
    assert up.returncode == 0, up.stderr
    assert answered(world, 20.0), server.log_text()
    assert all(answered(world, 5.0) for _ in range(4))
    row = status_row(world, config)
    assert row["state"] == "authenticated", row
    assert row["attestation"]["result"] == "ok" and row["attestation"]["measurement_id"] == "build-a"
    assert "apply: " not in server.log_text(), "enclave-ike could not install the Child SA"

    # 2. Build A again, restarted: a new key. Liveness finds the old SA dead, pluto meets the new key, and the
    #    supervisor re-attests on its own (pluto saw another key): the new key is pinned, DNS over ESP again.
    server = enclave_ike(BUILD_A)
    assert answered(world, 60.0), server.log_text()
    assert json.loads((trust_dir / "dns.json").read_text())["key"] == published_key(world).libreswan
    assert status_row(world, config)["state"] == "authenticated"
    verified = ikectl(world, config, "trust", "verify", "dns")
    assert verified.returncode == 0, verified.stderr + policies(world)
    assert verified.stdout == "dns: attested\n"  # already pinned

    # 3. The spec revoked, the same key served: blocked, and it stays so past the supervisor's repairs (the review:
    #    they loaded the deleted conns again within 2 s, with the key that just failed, and DNS flowed).
    spec.write_bytes(MeasurementSpec((MeasurementEntry("build-b", "sim", ((0, BUILD_B),)),)).encode())
    revoked = ikectl(world, config, "trust", "verify", "dns")
    assert revoked.returncode == 1 and "marked failed" in revoked.stderr, revoked.stdout + revoked.stderr
    assert not any(answered(world, 2.0) for _ in range(5)), policies(world)
    assert status_row(world, config)["state"] == "blocked"
    spec.write_bytes(MeasurementSpec((MeasurementEntry("build-a", "sim", ((0, BUILD_A),)),)).encode())
    restored = ikectl(world, config, "trust", "verify", "dns")
    assert restored.returncode == 0 and "trusted mode reloaded" in restored.stdout, restored.stderr
    assert answered(world, 30.0), policies(world)

    # 4. Build B: refused; the trusted conns go, DNS stays blocked, `up` will not reopen it.
    enclave_ike(BUILD_B)
    refused = ikectl(world, config, "trust", "verify", "dns")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    lines = refused.stderr.splitlines()
    assert lines[0].startswith(f"ikectl: error: resolver {RESOLVER} failed attestation (1 mismatch); pin 'dns' "
                               "marked failed, trusted mode's conns to it are deleted: DNS is blocked"), lines
    assert lines[1] == (f"  spec[build-a].measurements.0: expected {BUILD_A.hex()} (SIM0), got {BUILD_B.hex()}")
    assert not answered(world, 3.0)
    assert not query(world.topo, world.client, RESOLVER, tcp=True, timeout=3.0).answered
    row = status_row(world, config)
    assert row["state"] == "blocked" and row["reason"].startswith("pin 'dns' failed attestation"), row
    assert row["attestation"]["result"] == "failed"
    again = ikectl(world, config, "up")
    assert again.returncode == 1 and "pin 'dns' failed attestation" in again.stderr, again.stderr
    assert not answered(world, 3.0)

    wire.stop()
    counts = wire.count(world.client.addresses()).peer(RESOLVER)
    assert counts.plaintext_dns == 0, counts
    assert counts.esp_out >= 6 and counts.esp_in >= 6, counts
