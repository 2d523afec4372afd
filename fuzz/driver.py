"""The shared driver of this project's fuzz targets (fuzz/ikev2.py, fuzz/esp.py).

A target brings a fuzzer (a world that draws inputs and applies them, counting what they met) and says how its
inputs are named, saved and summed up (`Target`); the driver runs the loop, stops at the first failure, saves the
input as JSON, replays a saved one and parses the command line. Input `index` of a run comes from its own
`random.Random(seed, index)`, so a failure is found again by seed and index alone.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar


class Drawn(Protocol):
    """An input: its kind names it in the replay's lines."""

    kind: str


Item = TypeVar("Item", bound=Drawn)
F = TypeVar("F", bound="Fuzzer[Any]")


class Fuzzer(Protocol[Item]):
    """What the driver needs of a target's world."""

    kinds: Counter[str]  # inputs by kind
    typed: Counter[str]  # the project's typed errors (refusals) met, by name
    stats: Counter[str]  # other outcomes

    def draw(self, rng: random.Random) -> Item: ...

    def apply(self, item: Item) -> None:
        """Run one input; a broken property or an unexpected exception propagates."""


@dataclass(frozen=True)
class Target(Generic[Item, F]):
    """What differs between the fuzz targets."""

    name: str
    """The module under fuzz/ ("esp"): names the program, the output lines and the saved files."""
    description: str
    """--help's description."""
    fuzzer: Callable[[], F]
    """A freshly built world (a replay builds one too)."""
    describe: Callable[[Item], str]
    """How a failure reason names the input, after its seed ("mutated, lane 2")."""
    to_json: Callable[[Item], dict[str, Any]]
    """The input's fields as saved; the reason and the traceback follow them."""
    from_json: Callable[[dict[str, Any]], Item]
    """The input back from those fields (`--replay`)."""
    progress: Callable[[F], str]
    """The progress line's counters."""
    totals: Callable[[F], str]
    """The summary's counts, between the seed and "other exceptions 0"."""
    typed: tuple[str, str]
    """What `typed` holds: its title in the summary, and its word in a replay's line."""


class Failure(Exception, Generic[Item]):
    """The run stopped at `item`."""

    def __init__(self, item: Item, reason: str, trace: str) -> None:
        super().__init__(reason)
        self.item, self.reason, self.trace = item, reason, trace


def input_rng(seed: int, index: int) -> random.Random:
    return random.Random(f"{seed}/{index}")  # noqa: S311 - test inputs, not keys


def run(target: Target[Item, F], inputs: int, seed: int, progress: int,
        out: Callable[[str], None]) -> tuple[F, float]:
    fuzzer = target.fuzzer()
    start = time.perf_counter()
    for index in range(inputs):
        item = fuzzer.draw(input_rng(seed, index))
        try:
            fuzzer.apply(item)
        except Exception as exc:  # any of them is a finding: it must stop the run, with its input
            reason = f"input {index} (seed {seed}, {target.describe(item)}): {type(exc).__name__}: {exc}"
            raise Failure(item, reason, traceback.format_exc()) from exc
        done = index + 1
        if progress and done % progress == 0:
            elapsed = time.perf_counter() - start
            out(f"{done:>9} inputs  {elapsed:8.1f} s  {done / elapsed:6.0f}/s  {target.progress(fuzzer)}  failures 0")
    return fuzzer, time.perf_counter() - start


def save(target: Target[Item, F], item: Item, reason: str, trace: str, directory: Path, seed: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{target.name}-seed{seed}-{int(time.time())}.json"
    record = {**target.to_json(item), "reason": reason, "traceback": trace}
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def replay(target: Target[Item, F], path: Path) -> int:
    item = target.from_json(json.loads(path.read_text()))
    fuzzer = target.fuzzer()
    try:
        fuzzer.apply(item)
    except Exception as exc:  # the finding again: show it, as the run did
        print(traceback.format_exc(), file=sys.stderr, end="")
        print(f"{path}: {item.kind} fails again: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"{path}: {item.kind} passed on a freshly built world; {dict(fuzzer.stats)}; "
          f"{target.typed[1]} {dict(fuzzer.typed)}")
    return 0


def main(target: Target[Item, F], argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m fuzz.{target.name}", description=target.description)
    parser.add_argument("--inputs", type=int, default=100_000, help="how many inputs (default 100000)")
    parser.add_argument("--seed", type=int, default=1, help="the run's seed (default 1)")
    parser.add_argument("--progress", type=int, default=100_000, help="print progress every N inputs (0: never)")
    parser.add_argument("--crash-dir", type=Path, default=Path("fuzz/crashes"),
                        help="where a failing input is saved (default fuzz/crashes)")
    parser.add_argument("--replay", type=Path, help="run one saved input against a freshly built world")
    args = parser.parse_args(argv)
    if args.inputs < 0 or args.progress < 0:
        parser.error("--inputs and --progress must not be negative")
    if args.replay is not None:
        return replay(target, args.replay)
    try:
        fuzzer, elapsed = run(target, args.inputs, args.seed, args.progress, print)
    except Failure as failure:
        path = save(target, failure.item, failure.reason, failure.trace, args.crash_dir, args.seed)
        print(failure.trace, file=sys.stderr, end="")
        print(f"fuzz {target.name}: FAILED at {failure.reason}; input saved to {path}", file=sys.stderr)
        return 1
    rate = args.inputs / elapsed if elapsed else 0.0
    print(f"fuzz {target.name}: {args.inputs} inputs in {elapsed:.1f} s ({rate:.0f}/s), seed {args.seed}: "
          f"{target.totals(fuzzer)}; other exceptions 0; property violations 0")
    for title, counter in (("inputs", fuzzer.kinds), (target.typed[0], fuzzer.typed), ("outcomes", fuzzer.stats)):
        print(f"  {title}: " + ", ".join(f"{k}={v}" for k, v in sorted(counter.items())))
    return 0
