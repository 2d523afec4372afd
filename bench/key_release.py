"""Benchmark: one replica join by key release, end to end, against one attestation verify measured in the same run.

    PYTHONPATH=. .venv/bin/python bench/key_release.py [--runs 100] [--backend sim|software]

Each join is what a new replica does at start (enclave_ike/release): its enclave makes an ephemeral key and sim
evidence binding it and the holder's challenge; the holder verifies that evidence against the spec, makes its own
evidence and seals the identity key (HPKE); the joiner verifies the holder's evidence, opens the sealed key and
imports it. Two ways: in memory (`Holder` and `Joiner` called directly), and over TCP on loopback (the holder's
HTTP endpoint, the joiner's `obtain`, two requests). With `--backend sim` (the default) both enclaves are real sim
enclave processes, so every evidence, seal and import is a round trip to another process, as in serve.

The baseline, timed in the same run and interleaved with the joins: one `verify_envelope` of a sim envelope (what a
client's `ikectl trust add` does once). A join verifies two such envelopes and makes two, so about 4x the baseline
plus HPKE and the round trips is the floor. Medians and p95 in ms, and each as a ratio to the baseline's median.
Results: docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime

from enclave_ike.config import HostPort
from enclave_ike.enclave.attest import attest, envelopes
from enclave_ike.enclave.base import Enclave
from enclave_ike.enclave.sim import SimEnclave
from enclave_ike.enclave.software import SoftwareEnclave
from enclave_ike.release.appraise import Appraiser
from enclave_ike.release.endpoint import ReleaseEndpoint
from enclave_ike.release.holder import Holder
from enclave_ike.release.joiner import Joiner
from enclave_ike.release.obtain import obtain
from ikecommon.attestation.sim import DEFAULT_REGISTERS
from ikecommon.attestation.spec import MeasurementEntry, MeasurementSpec
from ikecommon.attestation.verify import TrustAnchors, verify_envelope

SPEC = MeasurementSpec((MeasurementEntry("build", "sim", ((0, DEFAULT_REGISTERS[0]),)),))
APPRAISER = Appraiser(SPEC, TrustAnchors.simulated())


def timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return (time.perf_counter() - start) * 1e3


def interleaved(work: dict[str, Callable[[], object]], runs: int,
                before: dict[str, Callable[[], object]] | None = None) -> dict[str, list[float]]:
    """Each item's times in ms: three warm-up calls (imports, first connections), then `runs` rounds of every item
    in turn, so a busy moment hits every item alike. `before[name]` runs untimed before each call of that item."""
    before = before or {}
    for name, item in work.items():
        for _ in range(3):
            before.get(name, lambda: None)()
            item()
    times: dict[str, list[float]] = {name: [] for name in work}
    for _ in range(runs):
        for name, item in work.items():
            before.get(name, lambda: None)()
            times[name].append(timed(item))
    return times


def summary(name: str, times: list[float], baseline: float) -> str:
    times = sorted(times)
    median, p95 = statistics.median(times), times[max(0, int(len(times) * 0.95) - 1)]
    return f"{name:<34} median {median:7.2f} ms  p95 {p95:7.2f} ms  {median / baseline:6.1f}x the baseline"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--backend", choices=("sim", "software"), default="sim")
    args = parser.parse_args()
    with ExitStack() as stack:
        def enclave() -> Enclave:
            return stack.enter_context(SimEnclave()) if args.backend == "sim" else SoftwareEnclave()

        holder_enclave, joiner_enclave = enclave(), enclave()
        holder = Holder(holder_enclave, APPRAISER, envelopes(holder_enclave))
        nonce = os.urandom(32)
        envelope = attest(holder_enclave, nonce).encode()
        at = datetime.now(UTC)

        def join_in_memory() -> None:
            joiner = Joiner(joiner_enclave, APPRAISER)
            joiner.accept(holder.grant(joiner.request(holder.challenge()), time.time()).grant, time.time())

        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()
        endpoint = ReleaseEndpoint(holder, [("127.0.0.1", 0)])
        asyncio.run_coroutine_threadsafe(endpoint.start(), loop).result(10)
        peer = HostPort("127.0.0.1", endpoint.bound[0][1])

        def join_over_tcp() -> None:
            obtain(joiner_enclave, APPRAISER, [peer], within=10)

        work = {"baseline: one verify_envelope": lambda: verify_envelope(envelope, nonce, SPEC,
                                                                         TrustAnchors.simulated(), at),
                "join, in memory": join_in_memory, "join, over TCP (endpoint, obtain)": join_over_tcp}
        times = interleaved(work, args.runs)
        asyncio.run_coroutine_threadsafe(endpoint.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
    baseline = statistics.median(times["baseline: one verify_envelope"])
    print(f"{args.runs} runs, {args.backend} enclaves, cpus {os.cpu_count()}")
    for name, values in times.items():
        print(summary(name, values, baseline))


if __name__ == "__main__":
    main()
