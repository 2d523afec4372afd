"""Benchmark: what a rotation of the service key costs, against one attestation verify measured in the same run.

    PYTHONPATH=. .venv/bin/python bench/rotation.py [--runs 50]

Two sides (enclave_ike/release/rotation.py, ikectl/trust.py; docs/scale-out.md, "Rotation"):

- a replica following a rotation: one poll of a peer that lists a next key (GET /release/keys), the release of
  that key by name over TCP (both evidences verified, HPKE), its import as the next key; then the switch. Sim
  enclave processes on both sides, as in serve.
- a client: `ikectl trust verify` of a resolver whose rotation is under way (its evidence and the next key's, both
  verified, the next key staged), against moving a pin to its staged key at the switch (`trust.promote`: no
  evidence fetched). The promote is what a client pays at the switch when it staged; the verify, what it pays
  when it did not (once the key changed), and in the window when it stages.

The baseline, timed in the same run and interleaved: one `verify_envelope` of a sim envelope. Medians and p95 in
ms, and each as a ratio to the baseline's median. Results: docs/performance.md.
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

from bench.key_release import APPRAISER, SPEC, interleaved, summary
from enclave_ike.config import HostPort
from enclave_ike.enclave.attest import attest, envelopes
from enclave_ike.enclave.sim import SimEnclave
from enclave_ike.enclave.software import SoftwareEnclave
from enclave_ike.evidence_endpoint import EvidenceEndpoint
from enclave_ike.release.endpoint import ReleaseEndpoint
from enclave_ike.release.holder import Holder
from enclave_ike.release.joiner import Joiner
from enclave_ike.release.keyring import KeyRing
from enclave_ike.release.rotation import Rotation
from ikecommon.attestation.sim import DEFAULT_REGISTERS
from ikecommon.attestation.spec import MeasurementEntry, MeasurementSpec
from ikecommon.attestation.verify import TrustAnchors, verify_envelope
from ikectl import config, trust, truststore
from tests.trust_servers import BackgroundLoop

SIM_SPEC = MeasurementSpec((MeasurementEntry("sim-default", "sim", ((0, DEFAULT_REGISTERS[0]),)),))


def replica_side(stack: ExitStack, loop: BackgroundLoop) -> Callable[[], None]:
    """A holder and a follower (sim enclave processes, the holder's endpoint on loopback): one rotation followed."""
    holder_enclave, follower_enclave = stack.enter_context(SimEnclave()), stack.enter_context(SimEnclave())
    joiner = Joiner(follower_enclave, APPRAISER)
    holder = Holder(holder_enclave, APPRAISER, envelopes(holder_enclave), keys=KeyRing(holder_enclave))
    joiner.accept(holder.grant(joiner.request(holder.challenge()), time.time()).grant, time.time())
    endpoint = ReleaseEndpoint(holder, [("127.0.0.1", 0)])
    loop.run(endpoint.start())
    stack.callback(lambda: loop.run(endpoint.stop()))
    peer = HostPort("127.0.0.1", endpoint.bound[0][1])

    def follow_one_rotation() -> None:
        """The holder starts a rotation; the follower polls, obtains and imports it, and both switch."""
        ring = KeyRing(follower_enclave)
        follower = Rotation(ring, follower_enclave, notice_s=60, poll_s=1, peers=[peer], appraiser=APPRAISER)
        holder.keys.start_rotation(int(time.time()) + 60)
        follower.poll()
        assert ring.next is not None
        holder.keys.switch()
        ring.switch()

    return follow_one_rotation


def client_side(stack: ExitStack, loop: BackgroundLoop, scratch: Path) -> dict[str, Callable[[], object]]:
    """A resolver (a software enclave behind a real evidence endpoint) with a rotation under way, a client's trust
    store: its re-attestation (which stages the next key), its move to the staged key, and how to stage it again."""
    resolver = SoftwareEnclave()
    ring = KeyRing(resolver)
    evidence = EvidenceEndpoint(resolver, "@resolver.example", [ip_address("127.0.0.1")], 0)
    evidence.keys = ring
    loop.run(evidence.start())
    stack.callback(lambda: loop.run(evidence.stop()))
    ring.start_rotation(int(time.time()) + 3600)
    spec_file = scratch / "spec.json"
    spec_file.write_bytes(SIM_SPEC.encode())
    cfg = config.Config(run_dir=scratch / "run", trust_dir=scratch / "trust")
    pin = trust.add(cfg, "home", (ip_address("127.0.0.1"),), str(spec_file), time.time(),
                    port=evidence.bound[0][1], anchors=trust.Anchors.SIM)
    assert pin.next_key is not None  # staged at add: the rotation is under way
    return {"verify": lambda: trust.verify(cfg, "home", time.time()),
            "promote": lambda: trust.promote(cfg, "home", time.time()),
            "stage again": lambda: truststore.save(cfg.trust_dir, pin)}  # the pin as `add` left it


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bench-rotation-") as scratch:
        loop = BackgroundLoop()
        stack.callback(loop.close)
        follow_one_rotation = replica_side(stack, loop)
        client = client_side(stack, loop, Path(scratch))
        holder_enclave = SoftwareEnclave()
        nonce = os.urandom(32)
        envelope = attest(holder_enclave, nonce).encode()
        at = datetime.now(UTC)
        work: dict[str, Callable[[], object]] = {
            "baseline: one verify_envelope": lambda: verify_envelope(envelope, nonce, SPEC, TrustAnchors.simulated(),
                                                                     at),
            "replica: follow one rotation (TCP)": follow_one_rotation,
            "client: trust verify, next staged": client["verify"],
            "client: move to the staged key": client["promote"]}
        before = {"client: move to the staged key": client["stage again"]}  # untimed
        times = interleaved(work, args.runs, before)
    baseline = statistics.median(times["baseline: one verify_envelope"])
    print(f"{args.runs} runs, sim enclaves (replicas), software enclave (client's resolver), cpus {os.cpu_count()}")
    for name, values in times.items():
        print(summary(name, values, baseline))


if __name__ == "__main__":
    main()
