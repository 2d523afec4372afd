"""How the guest tests are shared among VMs that run at the same time.

Under TCG one VM keeps about one of this machine's two cores busy (its guest runs one test at a time, mostly one
Python process), and the host's own tests the other, while they run. Three busy parties on two cores slowed the
guests so much that `ikectl up` took over 60 s, so only the first VM starts at once, and the others when the
host's own tests are done (`late_start`, an estimate), with one vCPU instead of two. The machine stays saturated
either way: in CI on 2026-12-05 the two VMs cut the suite from 58 to 52 min, about 47 being the floor for this
much work on two cores. Tests are placed by their expected duration (`vm_costs.json`, seconds measured in the
VM) so the shards end together: longest first, each to the shard that would finish its work so far first (the LPT
rule, the late shards counting their late start and their speed). The timing tests go last in the first shard:
they measure, and by then the other VMs are about done.

Refresh the durations from a guest report after the suite changed:

    python -m netns_tests.harness.vmshards /tmp/ikt-vm-*/report.json
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

COSTS_FILE = Path(__file__).with_name("vm_costs.json")
# Measured in CI on 2026-12-06 (two VMs; vm_costs.json holds the first VM's durations from that run, the second's
# divided by this factor): the second VM, booted when the host's tests were done, with one vCPU and the first VM
# beside it, took 1.4x the time the first VM took for the same tests (its ordinary ones 0.85x their costs of
# 2026-12-05, its own 1.43x).
LATE_VM_RELATIVE_TIME = 1.4
UNKNOWN_COST = 80.0  # seconds: a test not measured yet costs about what a typical netns test does


def load_costs(path: Path | None = None) -> dict[str, float]:
    """Node id -> seconds in the VM (from COSTS_FILE by default); empty when the file is missing or unreadable:
    placement is then by count."""
    try:
        document = json.loads((path or COSTS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(document, dict):
        return {}
    return {str(k): float(v) for k, v in document.items() if isinstance(v, int | float) and v >= 0}


def shard(tests: Sequence[str], timed_last: Sequence[str], shards: int, costs: dict[str, float],
          late_start: float = 0.0, late_relative_time: float = 1.0) -> list[list[str]]:
    """`tests` placed on `shards` VMs, each shard in the order given; `timed_last` appended to the first shard.
    Every shard but the first starts `late_start` seconds after it and takes `late_relative_time` times its time
    for a test.

    Every shard but the first may come back empty (fewer tests than VMs)."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    known = [costs[t] for t in tests if t in costs]
    fallback = statistics.median(known) if known else UNKNOWN_COST
    cost = {t: costs.get(t, fallback) for t in tests}
    load = [0.0] + [late_start] * (shards - 1)
    factor = [1.0] + [late_relative_time] * (shards - 1)
    home: dict[str, int] = {}
    for test in sorted(tests, key=lambda t: -cost[t]):
        chosen = min(range(shards), key=lambda i: (load[i] + cost[test] * factor[i], i))
        home[test] = chosen
        load[chosen] += cost[test] * factor[chosen]
    placed = [[t for t in tests if home[t] == i] for i in range(shards)]
    placed[0].extend(timed_last)
    return placed


def host_part_seconds(unit_tests: int, host_netns_tests: int) -> float:
    """How long after the first VM's first test the late VMs start theirs: the host's own tests, less the first
    VM's boot, plus a late VM's (CI on 2026-12-06: 113 host netns tests and 2,524 unit tests in 1,940 s, the first
    VM's boot 180 s under that load, the second's 70-100 s: 1,845 s)."""
    return 0.18 * unit_tests + 12.3 * host_netns_tests


def costs_from_report(report: Path) -> dict[str, float]:
    """The passed tests' durations in a guest report (`guest_report.py`), rounded to the second."""
    tests = json.loads(report.read_text())["tests"]
    return {node: round(entry["duration"]) for node, entry in tests.items() if entry["outcome"] == "passed"}


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(f"usage: python -m netns_tests.harness.vmshards REPORT.json...\n{__doc__}", file=sys.stderr)
        return 2
    costs = load_costs()
    for name in argv[1:]:
        costs.update(costs_from_report(Path(name)))
    COSTS_FILE.write_text(json.dumps(dict(sorted(costs.items())), indent=1) + "\n")
    print(f"{COSTS_FILE}: {len(costs)} tests, {sum(costs.values()) / 60:.0f} min in one VM")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
