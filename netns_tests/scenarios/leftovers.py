"""A scenario run by test_cleanup.py in a nested pytest: tests that start namespaces, pluto, unbound and
tcpdump, then fail or wait to be interrupted. Each records what it started in $IKT_SCENARIO_RECORD."""

import json
import os
import time
from pathlib import Path

from netns_tests.harness.pluto import PlutoConfig
from netns_tests.harness.topology import Topology


def start_everything(topology: Topology, pluto, unbound, capture) -> None:
    client, server = topology.add_host("client"), topology.add_host("server")
    topology.link(client, server, "10.88.0.0/24", "fd88::/64", hosts=(1, 53))
    daemons = [unbound(server), pluto(client, PlutoConfig(conns="")), capture(server, "to-client")]
    record = {"namespaces": [client.netns, server.netns], "pids": [d.pid for d in daemons],
              "names": [d.name for d in daemons]}
    with open(os.environ["IKT_SCENARIO_RECORD"], "a") as out:
        out.write(json.dumps(record) + "\n")


def test_starts_everything_then_fails(topology, pluto, unbound, capture):
    start_everything(topology, pluto, unbound, capture)
    raise AssertionError("failing on purpose, with daemons running")


def test_starts_everything_then_waits(topology, pluto, unbound, capture):
    start_everything(topology, pluto, unbound, capture)
    Path(os.environ["IKT_SCENARIO_READY"]).touch()
    time.sleep(120)  # until the outer test interrupts this run
