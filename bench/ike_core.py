"""Benchmark: CPU per handshake of enclave-ike's sans-I/O IKE core alone, in memory (no sockets, no root).

    PYTHONPATH=. .venv/bin/python bench/ike_core.py [--auth null|ecdsa] [--handshakes 300] [--runs 5]
    PYTHONPATH=. .venv/bin/python bench/ike_core.py --against /tmp/perf-base   # before/after, interleaved

The loop is bench/ike_handshakes.py's "core alone" figure (`core_cpu_ms`): enclave-ike's `Responder`, built from the
config that bench gives the server (IKE AES-GCM-16-256, PRF HMAC-SHA2-256, Curve25519; NULL auth or ECDSA P-256
both ways), answers whole handshakes (IKE_SA_INIT, IKE_AUTH with a Child SA, a Delete) from our `Initiator`. Two
figures per run: the responder's CPU per handshake (thread time around its calls, as that bench reports it) and
the process's CPU for the whole loop, initiator and responder together. Every run is a fresh process (after 30
handshakes of warm-up); the medians are printed.

With `--against TREE` (another checkout, e.g. `git worktree add /tmp/perf-base HEAD` before a change) every run is
made in both trees, one after the other, alternating which goes first: on a shared machine a before/after
comparison must be interleaved. Results: docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

import bench.ike_handshakes as bench

WARM_UP = 30


def one_run(auth: str, handshakes: int) -> dict[str, float]:
    """In this process: the loop with this tree's core (imported from PYTHONPATH)."""
    with tempfile.TemporaryDirectory(prefix="ike-core-") as name:
        work = Path(name)
        client_key = ec.generate_private_key(ec.SECP256R1())
        (work / "client-pub.pem").write_bytes(bench.pem_public(client_key))
        if auth == "null":
            identity, peers = 'auth = "null"', ""
        else:
            identity = f'backend = "software"\nkey_type = "ecdsa-p256"\nid = "@{bench.RESOLVER_ID}"\nauth = "signature"'
            peers = (f'[peers]\nanonymous = []\n\n[[peers.pinned]]\nid = "@{bench.CLIENT_ID}"\n'
                     f'pubkey_file = "{work / "client-pub.pem"}"\n\n')
        config = work / "enclave-ike.toml"  # as bench/ike_handshakes.py writes it for --host
        address = bench.ADDRESSES["enclave-ike"]
        config.write_text(f'[listen]\naddresses = ["{address}"]\n\n[dns]\nprotocols = ["udp"]\n\n'
                          f'[identity]\n{identity}\npublish = "{work / "identity.json"}"\n\n{peers}'
                          '[suites]\nencryption = ["aes-gcm-16-256"]\nprf = ["sha2-256"]\ngroups = ["curve25519"]\n\n'
                          '[evidence]\nenabled = false\n\n[apply]\nmode = "none"\n')
        key = client_key if auth == "ecdsa" else None
        bench.core_cpu_ms(config, key, WARM_UP)
        started = time.process_time()
        responder = bench.core_cpu_ms(config, key, handshakes)
        both = (time.process_time() - started) * 1e3 / handshakes
    return {"responder_ms": responder, "both_ms": both}


def spawn(tree: Path, auth: str, handshakes: int) -> dict[str, float]:
    """One run in a fresh process with `tree` first on the path."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--one", "--auth", auth,
                          "--handshakes", str(handshakes)], env=env, cwd=tree, check=True, capture_output=True,
                         text=True).stdout
    result: dict[str, float] = json.loads(out.splitlines()[-1])
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--auth", choices=("null", "ecdsa"), action="append",
                        help="null, ecdsa (repeatable; default both)")
    parser.add_argument("--handshakes", type=int, default=300)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--against", type=Path, help="another tree to compare with, run by run")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    auths = args.auth or ["null", "ecdsa"]
    if args.one:
        print(json.dumps(one_run(auths[0], args.handshakes)))
        return 0
    trees = {"this": Path(__file__).resolve().parents[1]}
    if args.against is not None:
        trees = {"against": args.against.resolve(), **trees}
    runs: dict[tuple[str, str], list[dict[str, float]]] = {(tree, auth): [] for tree in trees for auth in auths}
    for number in range(args.runs):
        order = list(trees) if number % 2 == 0 else list(reversed(trees))
        for auth in auths:
            for tree in order:
                runs[(tree, auth)].append(result := spawn(trees[tree], auth, args.handshakes))
                print(f"run {number + 1} {auth:5} {tree:7} responder {result['responder_ms']:.3f} ms, "
                      f"initiator and responder {result['both_ms']:.3f} ms CPU per handshake", flush=True)
    for auth in auths:
        for figure, label in (("responder_ms", "responder"), ("both_ms", "initiator and responder")):
            medians = {tree: statistics.median(r[figure] for r in runs[(tree, auth)]) for tree in trees}
            line = ", ".join(f"{tree} ({trees[tree]}) {value:.3f} ms" for tree, value in medians.items())
            if "against" in medians:
                line += f" ({medians['this'] / medians['against'] - 1:+.1%})"
            print(f"{auth} {label}, median of {args.runs}: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
