"""enclave-ike's privacy setting: with it on (the default), nothing that `serve` writes outside the enclave names a
client; the operator's SIGUSR1 dumps the in-enclave ring, announced first; with it off, the log names them.

    client 10.87.1.2 -- router -- resolver 10.87.2.53 (enclave-ike serve, sim enclave)

Clients are the project's own initiator core (netns_tests/harness/ike_clients.py): each handshake is known by its
client's address, UDP port and IKE SPIs, and the scan looks for each of them in everything the server wrote: its
log (stdout and stderr) and the identity it publishes. The same scan with privacy off finds them, so the check can
fail. IKE only (apply.mode none): runs on the host.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from netns_tests.harness import procs
from netns_tests.harness.enclave_ike import config_text, servers, signing_identity
from netns_tests.harness.topology import Topology
from netns_tests.harness.unbound import Unbound
from netns_tests.scenarios.resolver_world import World, build_world
from netns_tests.test_enclave_ike_lifecycle import IkeClients

CLIENT, RESOLVER = "10.87.1.2", "10.87.2.53"
RESOLVER_ID = "@resolver.enclave.example"
CLIENTS = 3
DUMPED = "privacy: diagnostics ring dumped as asked by SIGUSR1 (the operator)"


@pytest.fixture
def world(topology: Topology, tmp_path: Path, unbound: Callable[..., Unbound]) -> World:
    return build_world(topology, tmp_path, unbound, "10.87")


@pytest.fixture
def enclave_ike(world: World) -> Iterator[Callable[[bool], procs.Daemon]]:
    with servers(world.resolver, world.workdir) as serve:
        def start(privacy: bool) -> procs.Daemon:
            return serve(config_text(RESOLVER, identity=signing_identity(RESOLVER_ID), workdir=world.workdir,
                                     privacy=privacy, extra="[evidence]\nenabled = false\n"))
        yield start


def handshakes(world: World) -> set[str]:
    """CLIENTS whole handshakes (each ends with a Delete); what identifies each client: address, port, SPIs."""
    clients = IkeClients(world, "--count", str(CLIENTS), addresses=(CLIENT, RESOLVER))
    assert clients.summary(timeout=60.0) == {"established": CLIENTS, "failed": 0}
    known = {CLIENT}
    for line in clients.lines:
        if line.get("event") == "established":
            known |= {f":{line['port']}", *line["spi"].split("/")}
    assert len(known) == 1 + 3 * CLIENTS, known
    return known


def written_outside(world: World, server: procs.Daemon) -> str:
    """Everything the server wrote that its host can read: its log and the identity file it published."""
    published = world.workdir / "identity.json"
    return server.log_text() + (published.read_text() if published.exists() else "")


def found(known: set[str], text: str) -> set[str]:
    return {k for k in known if re.search(rf"{re.escape(k)}(?![0-9])", text)}


@pytest.mark.host  # IKE only (apply.mode none)
def test_with_privacy_on_nothing_written_outside_the_enclave_names_a_client(world: World,
                                                                            enclave_ike: Callable[..., procs.Daemon]):
    server = enclave_ike(True)
    known = handshakes(world)
    server.stop()  # its last words: the counts since the last aggregate line
    text = written_outside(world, server)
    assert found(known, text) == set(), text
    # What the operator does see: counts over all clients.
    assert re.search(rf"activity: .*Child SAs established: {CLIENTS}; .*IKE SAs established: {CLIENTS}", text), text


@pytest.mark.host  # IKE only (apply.mode none)
def test_the_operators_dump_is_announced_and_only_then_names_clients(world: World,
                                                                    enclave_ike: Callable[..., procs.Daemon]):
    server = enclave_ike(True)
    known = handshakes(world)
    before = len(server.log_text())
    os.kill(server.pid, signal.SIGUSR1)
    server.wait_for_log(re.escape(DUMPED) + r": (\d+) lines about clients follow", timeout=10.0)
    # The dump is written line by line: wait for its last handshake's last line before reading it.
    procs.wait_until(lambda: len(re.findall(r"ring \S+Z: IKE SA \S+ deleted: deleted by the peer",
                                            server.log_text())) == CLIENTS, 10.0, "the whole dump")
    text = server.log_text()
    assert found(known, text[:before]) == set()
    dump = text[text.index(DUMPED):]
    assert found(known, dump) == known, dump
    # The ring is emptied by the dump: a second one writes nothing about the clients again.
    os.kill(server.pid, signal.SIGUSR1)
    server.wait_for_log(re.escape(DUMPED) + r": 0 lines about clients follow", timeout=10.0)


@pytest.mark.host  # IKE only (apply.mode none)
def test_with_privacy_off_the_same_scan_finds_every_client(world: World,
                                                           enclave_ike: Callable[..., procs.Daemon]):
    server = enclave_ike(False)
    known = handshakes(world)
    server.stop()
    assert found(known, written_outside(world, server)) == known
