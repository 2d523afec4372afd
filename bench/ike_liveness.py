"""Benchmark: what an idle client's liveness checks cost enclave-ike, against one handshake in the same run.

    PYTHONPATH=. .venv/bin/python bench/ike_liveness.py [--clients 200] [--checks 20] [--runs 5]

ikectl's trusted mode checks an SA that has heard nothing for `trusted_liveness_ms` (1 s by default; coffee-shop's
`liveness_ms` too): an empty INFORMATIONAL request, answered by the responder (RFC 7296 2.4). So an idle client
costs the resolver one such exchange per second, and a replica's capacity for idle clients is the inverse of its
CPU per check. The loop runs enclave-ike's sans-I/O `Responder` in memory, as bench/ike_core.py does: `--clients`
IKE SAs established (ECDSA P-256 signatures both ways, as trusted mode), then `--checks` liveness rounds over all
of them; the responder's own thread CPU per handshake (the baseline) and per check, and their ratio, per run and
as medians. Results: docs/performance.md and docs/operator-guide.md (capacity).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from ipaddress import IPv4Address
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

import bench.ike_handshakes as bench
from enclave_ike import config as serve_config
from enclave_ike.ikev2.config import Endpoint
from enclave_ike.ikev2.initiator import Initiator
from enclave_ike.ikev2.responder import Responder
from enclave_ike.server import open_enclave


def one_run(clients: int, checks: int) -> tuple[float, float]:
    """(responder CPU per handshake, per liveness check), in ms."""
    with tempfile.TemporaryDirectory(prefix="ike-liveness-") as name:
        work = Path(name)
        client_key = ec.generate_private_key(ec.SECP256R1())
        (work / "client-pub.pem").write_bytes(bench.pem_public(client_key))
        address = bench.ADDRESSES["enclave-ike"]
        (work / "enclave-ike.toml").write_text(
            f'[listen]\naddresses = ["{address}"]\n\n[dns]\nprotocols = ["udp"]\n\n[identity]\nbackend = "software"\n'
            f'id = "@{bench.RESOLVER_ID}"\nauth = "signature"\npublish = "{work / "identity.json"}"\n\n'
            f'[peers]\nanonymous = []\n\n[[peers.pinned]]\nid = "@{bench.CLIENT_ID}"\n'
            f'pubkey_file = "{work / "client-pub.pem"}"\n\n[evidence]\nenabled = false\n\n[apply]\nmode = "none"\n')
        config = serve_config.load(work / "enclave-ike.toml")
        enclave = open_enclave(config)
        assert enclave is not None
        server_end = Endpoint(config.listen.addresses[0], bench.IKE_PORT)
        responder = Responder(config.responder_config(enclave.signer()), local=server_end, random=os.urandom)
        public = enclave.signer().public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)
        target = config.listen.addresses[0]
        assert isinstance(target, IPv4Address)
        spent = 0.0
        now = 1000.0

        answered = 0

        def deliver(initiator: Initiator, client: Endpoint) -> float:
            nonlocal answered
            cpu = 0.0
            while outgoing := initiator.datagrams_to_send():
                for data, _ in outgoing:
                    started = time.thread_time()
                    responder.receive(data, client, now)
                    answers = responder.datagrams_to_send()
                    while responder.next_event() is not None:
                        pass
                    cpu += time.thread_time() - started
                    answered += len(answers)
                    for answer, _ in answers:
                        initiator.receive(answer, server_end, now)
                initiator.events()
            return cpu

        initiators = []
        for number in range(clients):
            client_address = IPv4Address(int(IPv4Address("10.81.0.1")) + number)
            client = Endpoint(client_address, bench.IKE_PORT)
            initiator = Initiator(bench.initiator_config(client_address, target, (client_key, public)), local=client,
                                  peer=server_end, random=os.urandom, now=now)
            spent += deliver(initiator, client)
            initiators.append((initiator, client))
        per_handshake = spent * 1e3 / clients
        spent, answered = 0.0, 0
        for _ in range(checks):
            now += 1.0
            for initiator, client in initiators:
                initiator.check_liveness(now)
                spent += deliver(initiator, client)
        assert answered == clients * checks, f"{answered} answers to {clients * checks} liveness checks"
        return per_handshake, spent * 1e3 / (clients * checks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--checks", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    handshakes, checks, ratios = [], [], []
    for run in range(args.runs):
        handshake, check = one_run(args.clients, args.checks)
        handshakes.append(handshake)
        checks.append(check)
        ratios.append(check / handshake)
        print(f"run {run + 1}: handshake {handshake:.3f} ms, liveness check {check * 1e3:.1f} us "
              f"({check / handshake:.3f} of a handshake)")
    check = statistics.median(checks)
    print(f"median: handshake {statistics.median(handshakes):.3f} ms, liveness check {check * 1e3:.1f} us, ratio "
          f"{statistics.median(ratios):.3f}; one core answers about {1e3 / check:,.0f} checks/s, so that many idle "
          "clients at 1 s liveness")


if __name__ == "__main__":
    main()
