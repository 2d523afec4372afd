"""Benchmark: re-attesting a pin of one resolver service at several addresses, against one attestation verify
measured in the same run.

    PYTHONPATH=. .venv/bin/python bench/pin_addresses.py [--runs 50]

`ikectl trust verify` (ikectl/trust.py; docs/scale-out.md, "One pin, several addresses") asks every address of a
pin at once and holds them to one key and ID. Timed here, each against a real evidence endpoint of one software
enclave on loopback: a pin at one address, at two, and at two whose second refuses the connection (a replica
down). The baseline, interleaved in the same run: one `verify_envelope` of a sim envelope. Medians and p95 in ms,
and each as a ratio to the baseline's median. Results: docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from ipaddress import ip_address
from pathlib import Path

from bench.key_release import SPEC, interleaved, summary
from bench.rotation import SIM_SPEC
from enclave_ike.enclave.attest import attest
from enclave_ike.enclave.software import SoftwareEnclave
from enclave_ike.evidence_endpoint import EvidenceEndpoint
from ikecommon.attestation.verify import TrustAnchors, verify_envelope
from ikectl import config, trust, truststore
from tests.trust_servers import BackgroundLoop

FIRST, SECOND = ip_address("127.0.0.1"), ip_address("127.0.0.2")


def pins(stack: ExitStack, loop: BackgroundLoop, scratch: Path) -> dict[str, Callable[[], object]]:
    """One resolver service answering at FIRST and SECOND (one enclave, an endpoint on each), and three pins of it
    in a client's trust store: one verify each."""
    service = SoftwareEnclave()
    first = EvidenceEndpoint(service, "@resolver.example", [FIRST], 0)
    loop.run(first.start())
    stack.callback(lambda: loop.run(first.stop()))
    port = first.bound[0][1]
    second = EvidenceEndpoint(service, "@resolver.example", [SECOND], port)
    loop.run(second.start())
    stack.callback(lambda: loop.run(second.stop()))
    spec_file = scratch / "spec.json"
    spec_file.write_bytes(SIM_SPEC.encode())
    cfg = config.Config(run_dir=scratch / "run", trust_dir=scratch / "trust")
    trust.add(cfg, "one", (FIRST,), str(spec_file), time.time(), port=port, anchors=trust.Anchors.SIM)
    both = trust.add(cfg, "two", (FIRST, SECOND), str(spec_file), time.time(), port=port,
                     anchors=trust.Anchors.SIM)
    # The same pin, its second address one where nothing listens (connection refused at once).
    truststore.save(cfg.trust_dir, truststore.StoredPin(**{**both.__dict__, "name": "down",
                                                           "also": (ip_address("127.0.0.3"),)}))
    return {name: (lambda name=name: trust.verify(cfg, name, time.time())) for name in ("one", "two", "down")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bench-pins-") as scratch:
        loop = BackgroundLoop()
        stack.callback(loop.close)
        verify = pins(stack, loop, Path(scratch))
        enclave = SoftwareEnclave()
        nonce = os.urandom(32)
        envelope = attest(enclave, nonce).encode()
        at = datetime.now(UTC)
        times = interleaved({
            "baseline: one verify_envelope": lambda: verify_envelope(envelope, nonce, SPEC, TrustAnchors.simulated(),
                                                                     at),
            "trust verify, one address": verify["one"],
            "trust verify, two addresses": verify["two"],
            "trust verify, two, one refusing": verify["down"]}, args.runs)
    baseline = statistics.median(times["baseline: one verify_envelope"])
    print(f"{args.runs} runs, one software enclave behind two evidence endpoints on loopback, cpus {os.cpu_count()}")
    for name, values in times.items():
        print(summary(name, values, baseline))


if __name__ == "__main__":
    main()
