"""ikectl's promises over random walks of user and network events (netns_tests/scenarios/walk.py): up in either
mode, down, config edits (mode, resolvers v4 and v6, run_dir), a resolver gaining or losing IKE, pluto killed,
frozen and resumed, another program flushing or deleting XFRM policies or the nftables ruleset, a second IKE
daemon starting and stopping, the client's address changing, the uplink failing over, time passing beyond
retry_after_s. After every step the invariants are checked on the kernel's own tables, /proc and pluto's state;
at the end, the router's captures must show no plaintext port-53 packet in any trusted phase.

Each run prints its seed; IKECTL_WALK_SEED replays one, IKECTL_WALK_STEPS sets the length (scripts/soak runs long
walks). A failure is shrunk (each attempt replays from the start; IKECTL_WALK_SHRINK_S bounds how long) and the
shortest failing walk is printed.
"""

from __future__ import annotations

import os
import random
import secrets
import time
from pathlib import Path

import pytest

from netns_tests.scenarios import walk

HOST_STEPS = 300  # at least this many per CI run (the acceptance of issue 14)
VM_STEPS = 40
SHRINK_S = 240.0  # a failure is shrunk for at most this long in CI (a replay costs minutes under TCG)


def walk_and_report(world: walk.World, steps: int, where: str, capsys: pytest.CaptureFixture[str]) -> None:
    seed = int(os.environ.get("IKECTL_WALK_SEED") or secrets.randbits(32))
    steps = int(os.environ.get("IKECTL_WALK_STEPS") or steps)
    actions = walk.generate(random.Random(seed), steps)  # noqa: S311 - a test's choice of events, not a key
    with capsys.disabled():  # the seed reaches the output, from the VM's console too
        print(f"\nwalk ({where}): seed {seed}, {steps} steps; replay with IKECTL_WALK_SEED={seed}")
    started = time.monotonic()
    failure = walk.run(world, actions)
    if failure is not None:
        story = "\n".join(world.log[-12:])
        supervisor = world.supervisor_story()
        budget = float(os.environ.get("IKECTL_WALK_SHRINK_S") or SHRINK_S)
        shortest = walk.shrink(world, actions[:failure.step + 1], budget)
        again = walk.run(world, shortest)
        pytest.fail(f"seed {seed}: step {failure.step + 1} ({failure.action}): {failure.violation}\n"
                    f"the walk's last commands:\n{story}\nthe supervisor's log:\n{supervisor}\n"
                    f"shrunk to {len(shortest)} steps: {walk.describe(shortest)}\n"
                    f"which fail with: {again.violation if again else '(passed when replayed: a race)'}",
                    pytrace=False)
    leaked = world.plaintext_in_trusted_phases()
    phases = len(world.trusted_phases)
    with capsys.disabled():
        print(f"\nwalk ({where}): {steps} steps in {time.monotonic() - started:.0f} s, {phases} trusted phases, "
              f"{leaked} plaintext port-53 packets in them")
    assert leaked == 0, f"seed {seed}: {leaked} plaintext port-53 packets on the wire in trusted phases"


@pytest.mark.host  # the kernel's tables, pluto and the wire; no ESP packet is needed for these invariants
def test_random_walk_keeps_every_promise(topology, unbound, pluto, capture, tmp_path: Path, capsys):
    with walk.walk_world(topology, unbound, pluto, capture, tmp_path) as world:
        walk_and_report(world, HOST_STEPS, "host", capsys)


def test_random_walk_with_esp_keeps_every_promise(topology, unbound, pluto, capture, tmp_path: Path, capsys):
    """The same walk where ESP works (the VM): trusted DNS inside ESP, coffee-shop encrypted where it can."""
    with walk.walk_world(topology, unbound, pluto, capture, tmp_path) as world:
        walk_and_report(world, VM_STEPS, "vm", capsys)
