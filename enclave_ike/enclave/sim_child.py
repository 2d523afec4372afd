"""The sim enclave process. It generates the IKE key, answers PUBLIC_KEY, SIGN and EVIDENCE (channel.py) on one
socket, and exits when that socket closes, which happens when enclave-ike exits, however it exits. The key is
created here and no request returns it. SimEnclave starts it:

    python -m enclave_ike.enclave.sim_child --fd N [--key ecdsa-p256|ecdsa-p384] [--register HEX]...
                                            [--sign-delay SECONDS]

`--sign-delay` makes every signature that much slower: a slow enclave, for tests of the server around it.
"""

from __future__ import annotations

import argparse
import ctypes
import resource
import signal
import socket
import sys
import time
from collections.abc import Sequence

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ikecommon.attestation.sim import DEFAULT_REGISTERS, make_sim_report

from ..ikev2.crypto import Signer, SoftwareSigner
from .channel import HASH_SIZE, Frame, Op, Status, receive, send
from .errors import ChannelError
from .key_types import KEY_TYPES

REPORT_DATA_SIZE = 64
_PR_SET_DUMPABLE = 4


def answer(request: Frame, signer: Signer, registers: tuple[bytes, ...], sign_delay: float = 0.0) -> Frame:
    """The reply to one request. Every reply is a public key, a signature, a sim report or a refusal."""
    if request.code == Op.PUBLIC_KEY:
        if request.payload:
            return _refuse("PUBLIC_KEY takes no payload")
        return Frame(Status.OK, signer.public_key().public_bytes(serialization.Encoding.DER,
                                                                 serialization.PublicFormat.SubjectPublicKeyInfo))
    if request.code == Op.SIGN:
        time.sleep(sign_delay)
        return _sign(request.payload, signer)
    if request.code == Op.EVIDENCE:
        if len(request.payload) != REPORT_DATA_SIZE:
            return _refuse(f"EVIDENCE takes {REPORT_DATA_SIZE} bytes of report data, got {len(request.payload)}")
        return Frame(Status.OK, make_sim_report(request.payload, registers).encode())
    return _refuse(f"unknown request {request.code}")


def _sign(payload: bytes, signer: Signer) -> Frame:
    """SIGN: the RFC 7427 hash number, then the data; a hash this key does not sign with is refused."""
    if len(payload) < HASH_SIZE:
        return _refuse(f"SIGN takes a {HASH_SIZE}-byte hash number before the data")
    hash_algorithm = int.from_bytes(payload[:HASH_SIZE], "big")
    scheme = next((s for s in signer.schemes if s.hash_algorithm == hash_algorithm), None)
    if scheme is None:
        return _refuse(f"this key does not sign with hash {hash_algorithm}")
    return Frame(Status.OK, signer.sign(payload[HASH_SIZE:], scheme))


def _refuse(reason: str) -> Frame:
    return Frame(Status.ERROR, reason.encode())


def serve(sock: socket.socket, signer: Signer, registers: tuple[bytes, ...], sign_delay: float = 0.0) -> None:
    while (request := receive(sock)) is not None:
        send(sock, answer(request, signer, registers, sign_delay))


def _harden() -> None:
    """Keep the key out of core dumps, and away from ptrace and /proc/PID/mem of other processes of the same user.
    Best effort: if prctl fails, the process is only as protected as any other."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="enclave_ike.enclave.sim_child")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--key", choices=sorted(KEY_TYPES), default="ecdsa-p256")
    parser.add_argument("--register", action="append", default=[], type=bytes.fromhex)
    parser.add_argument("--sign-delay", type=float, default=0.0)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is enclave-ike's to handle; it closes the channel
    # The operator's SIGUSR1 asks serve for its diagnostics ring, SIGHUP is a reload serve declines; `systemctl kill`
    # sends them to every process of the unit, and their default action here would end the enclave.
    for sig in (signal.SIGUSR1, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    _harden()
    registers = tuple(args.register) or DEFAULT_REGISTERS
    signer = SoftwareSigner(ec.generate_private_key(KEY_TYPES[args.key]()))
    with socket.socket(fileno=args.fd) as sock:
        try:
            serve(sock, signer, registers, args.sign_delay)
        except (ChannelError, OSError) as exc:
            print(f"sim enclave: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
