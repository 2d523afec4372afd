"""The sim enclave process. It generates the IKE key, answers the requests of channel.py on one socket, and exits when
that socket closes, which happens when enclave-ike exits, however it exits. The key is created here (or released to
it sealed, by another replica) and no request returns it unsealed. SimEnclave starts it:

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

from cryptography.hazmat.primitives.asymmetric import ec

from ikecommon.attestation.sim import DEFAULT_REGISTERS, make_sim_report

from ..ikev2.crypto import Signer
from .channel import HASH_SIZE, Frame, Op, Status, receive, send, split_fields
from .custody import Custody
from .errors import ChannelError, EnclaveError
from .key_types import CURVES, KEY_TYPES

REPORT_DATA_SIZE = 64
_PR_SET_DUMPABLE = 4


def answer(request: Frame, custody: Custody, registers: tuple[bytes, ...], sign_delay: float = 0.0) -> Frame:
    """The reply to one request. Every reply is a public key, a signature, a sim report, a sealed key or a
    refusal."""
    code, payload = request.code, request.payload
    if code in (Op.PUBLIC_KEY, Op.RECIPIENT, Op.NEXT, Op.SWITCH):
        if payload:
            return _refuse(f"{Op(code).name} takes no payload")
        return _keys(Op(code), custody)
    if code == Op.SIGN:
        time.sleep(sign_delay)
        return _sign(payload, custody.signer)
    if code == Op.EVIDENCE:
        return _evidence(payload, registers)
    if code in (Op.SEAL, Op.IMPORT):
        return _release(request, custody)
    return _refuse(f"unknown request {code}")


def _keys(op: Op, custody: Custody) -> Frame:
    try:
        if op == Op.PUBLIC_KEY:
            return Frame(Status.OK, custody.current_spki())
        if op == Op.RECIPIENT:
            return Frame(Status.OK, custody.release_recipient())
        return Frame(Status.OK, custody.make_next() if op == Op.NEXT else custody.switch())
    except EnclaveError as exc:
        return _refuse(str(exc))


def _evidence(report_data: bytes, registers: tuple[bytes, ...]) -> Frame:
    if len(report_data) != REPORT_DATA_SIZE:
        return _refuse(f"EVIDENCE takes {REPORT_DATA_SIZE} bytes of report data, got {len(report_data)}")
    return Frame(Status.OK, make_sim_report(report_data, registers).encode())


def _release(request: Frame, custody: Custody) -> Frame:
    """SEAL: a held key sealed to a recipient key; IMPORT: a sealed key becomes the current or the next key."""
    sealing = request.code == Op.SEAL
    parts = split_fields(request.payload, 3 if sealing else 4)
    if parts is None:
        return _refuse("SEAL takes three fields: recipient key, info, key (empty: the current one)" if sealing
                       else "IMPORT takes four fields: info, expected key, sealed key, slot")
    try:
        if sealing:
            return Frame(Status.OK, custody.seal_identity(parts[0], parts[1], parts[2] or None))
        if parts[3] not in (b"current", b"next"):
            return _refuse("IMPORT's slot is 'current' or 'next'")
        custody.import_identity(parts[2], parts[0], parts[1], as_next=parts[3] == b"next")
    except EnclaveError as exc:
        return _refuse(str(exc))
    return Frame(Status.OK, parts[1])


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


def serve(sock: socket.socket, custody: Custody, registers: tuple[bytes, ...], sign_delay: float = 0.0) -> None:
    while (request := receive(sock)) is not None:
        send(sock, answer(request, custody, registers, sign_delay))


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
    # The operator's SIGUSR1 asks serve for its diagnostics ring, SIGUSR2 starts a rotation, SIGHUP is a reload serve
    # declines; `systemctl kill` sends them to every process of the unit, and their default action would end the
    # enclave (and the service key with it).
    for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    _harden()
    registers = tuple(args.register) or DEFAULT_REGISTERS
    custody = Custody(ec.generate_private_key(KEY_TYPES[args.key]()), curves=CURVES)
    with socket.socket(fileno=args.fd) as sock:
        try:
            serve(sock, custody, registers, args.sign_delay)
        except (ChannelError, OSError) as exc:
            print(f"sim enclave: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
