"""The `sim` backend: the IKE key lives in a separate process that only signs, and hands it out only sealed.

enclave-ike starts `sim_child` with one end of a socketpair and keeps the other. The child generates the key and
answers the requests of channel.py: the public key, a signature, a sim report for given report data, and for key
release between replicas an ephemeral recipient key, a held key sealed to a public key, and the import of a
sealed key; for rotation, a next key made inside and the switch to it. No request returns a key unsealed, so no key
ever exists in enclave-ike's own memory. But the child seals to whatever public key enclave-ike names and imports
whatever sealed key it is given: enclave-ike decides, after verifying the other replica's evidence
(enclave_ike/release), as the code inside a real TEE would. The child exits when the channel closes, so it dies with
enclave-ike even when enclave-ike is killed (the kernel closes its end).

The process boundary shows the shape of a real enclave, not its protection: the child runs as the same user on the
same kernel, and its evidence is signed by the simulated root (NOT SECURE, see attestation/sim.py).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable, Sequence

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ikecommon.attestation.envelope import Evidence, EvidenceKind
from ikecommon.attestation.sim import DEFAULT_REGISTERS, MAX_REGISTERS, REGISTER_SIZE

from ..ikev2.crypto import PublicKey, SignatureScheme, Signer, ecdsa_schemes
from ..ikev2.errors import UnsupportedAlgorithm
from . import channel
from .channel import HASH_SIZE, Frame, Op, Status
from .errors import ChannelError, ChannelIdle, EnclaveError, EnclaveGone, EnclaveUnavailable
from .key_types import CURVES, KEY_TYPES
from .sealing import SealError

STOP_TIMEOUT = 2.0
STARTUP_TIMEOUT = 60.0
REPLY_TIMEOUT = 10.0  # a signature or a report slower than this is an error (the next request skips its reply)


class SimEnclave:
    kind = EvidenceKind.SIM

    def __init__(self, *, key_type: str = "ecdsa-p256", registers: Sequence[bytes] = DEFAULT_REGISTERS,
                 timeout: float = REPLY_TIMEOUT, startup_timeout: float = STARTUP_TIMEOUT,
                 sign_delay: float = 0.0) -> None:
        if not 1 <= len(registers) <= MAX_REGISTERS or any(len(r) != REGISTER_SIZE for r in registers):
            raise EnclaveError(f"registers: 1 to {MAX_REGISTERS} values of {REGISTER_SIZE} bytes each")
        if key_type not in KEY_TYPES:
            raise EnclaveError(f"key type {key_type!r}: expected one of {', '.join(sorted(KEY_TYPES))}")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        argv = [sys.executable, "-m", "enclave_ike.enclave.sim_child", "--fd", str(theirs.fileno()),
                "--key", key_type, *(f"--register={register.hex()}" for register in registers),
                *([f"--sign-delay={sign_delay}"] if sign_delay else [])]
        try:
            process = subprocess.Popen(argv, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL)
        except OSError as exc:
            ours.close()
            raise EnclaveUnavailable(f"sim enclave: cannot start {sys.executable}: {exc.strerror}") from None
        finally:
            theirs.close()
        # The first answer waits for the child's interpreter and imports: seconds on a slow machine, and more
        # than 10 s under TCG in the VM (seen in CI). Every later call gets `timeout`.
        ours.settimeout(startup_timeout)
        self._process, self._socket, self._lock = process, ours, threading.Lock()
        self._closed = False
        self._owed = 0  # replies to requests that timed out, still to come (and to be skipped) in order
        self._finalizer = weakref.finalize(self, _stop, process, ours)
        try:
            self._signer = _ProcessSigner(self._call, self._public(self._call(Op.PUBLIC_KEY)))
        except EnclaveError:
            self.close()
            raise
        ours.settimeout(timeout)

    def _public(self, spki: bytes) -> ec.EllipticCurvePublicKey:
        key = serialization.load_der_public_key(spki)
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in CURVES:
            raise EnclaveError(f"sim enclave: unexpected public key {type(key).__name__}")
        return key

    def problem(self) -> str | None:
        """None while the child runs and the channel is open; else what happened to it (for GET /health)."""
        code = self._process.poll()
        if code is not None:
            return f"the sim enclave (pid {self.pid}) exited with status {code}: its key is gone"
        return "the channel to the sim enclave is closed" if self._closed else None

    @property
    def pid(self) -> int:
        return self._process.pid

    def signer(self) -> Signer:
        return self._signer

    def evidence(self, report_data: bytes) -> Evidence:
        if len(report_data) != 64:
            raise EnclaveError(f"report data must be 64 bytes, got {len(report_data)}")
        return Evidence(EvidenceKind.SIM, self._call(Op.EVIDENCE, report_data))

    def release_recipient(self) -> bytes:
        return self._call(Op.RECIPIENT)

    def seal_identity(self, recipient_spki: bytes, info: bytes, key_spki: bytes | None = None) -> bytes:
        try:
            return self._call(Op.SEAL, channel.fields(recipient_spki, info, key_spki or b""))
        except EnclaveRefused as exc:
            raise SealError(exc.reason) from None

    def import_identity(self, sealed: bytes, info: bytes, expected_spki: bytes, *, as_next: bool = False) -> None:
        """The child opens the key and checks it (custody.py); its refusal is a SealError here."""
        try:
            self._call(Op.IMPORT, channel.fields(info, expected_spki, sealed, b"next" if as_next else b"current"))
        except EnclaveRefused as exc:
            raise SealError(exc.reason) from None
        if not as_next:
            self._signer.now_signs_with(self._public(expected_spki))

    def make_next(self) -> bytes:
        return self._call(Op.NEXT)

    def switch(self) -> bytes:
        key = self._call(Op.SWITCH)
        self._signer.now_signs_with(self._public(key))
        return key

    def close(self) -> None:
        """Close the channel and wait for the child to exit (killing it if it does not)."""
        with self._lock:
            self._closed = True
        self._finalizer()

    def __enter__(self) -> SimEnclave:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, op: Op, payload: bytes = b"") -> bytes:
        with self._lock:
            if self._closed:
                raise EnclaveGone("sim enclave: closed")
            try:
                # A slow or stopped enclave is not a dead one: a request that timed out before its reply began
                # leaves the stream in step, and its late reply is skipped here before the next request.
                while self._owed:
                    if channel.receive(self._socket) is None:
                        break
                    self._owed -= 1
                channel.send(self._socket, Frame(op, payload))
                self._owed += 1
                reply = channel.receive(self._socket)
                self._owed -= 1
            except ChannelIdle:
                raise EnclaveError(f"sim enclave (pid {self.pid}): timed out, no answer within "
                                   f"{self._socket.gettimeout():g} s") from None
            except (OSError, ChannelError) as exc:
                self._closed = True  # the stream may be out of step now: never read a stale reply as fresh
                raise EnclaveGone(f"sim enclave (pid {self.pid}){_exited(self._process) or f': {exc}'}") from None
            if reply is None:
                self._closed = True
                raise EnclaveGone(f"sim enclave (pid {self.pid}){_exited(self._process) or ' closed the channel'}")
        if reply.code == Status.ERROR:
            raise EnclaveRefused(reply.payload.decode("utf-8", "replace"))
        if reply.code != Status.OK:
            raise EnclaveError(f"sim enclave: unknown reply status {reply.code}")
        return reply.payload


class _ProcessSigner(Signer):
    """Signs by asking the sim enclave process; holds only the public key."""

    deferred = True  # a round trip to another process, which may be slow or stopped

    def __init__(self, call: Callable[[Op, bytes], bytes], key: ec.EllipticCurvePublicKey) -> None:
        self._call = call
        self.now_signs_with(key)

    def now_signs_with(self, key: ec.EllipticCurvePublicKey) -> None:
        """The child's current key changed (an import, a switch): one signer object serves the server's life."""
        self._key, self._schemes = key, ecdsa_schemes(key.curve.name)

    @property
    def schemes(self) -> tuple[SignatureScheme, ...]:
        return self._schemes

    def sign(self, data: bytes, scheme: SignatureScheme) -> bytes:
        if scheme not in self._schemes:
            raise UnsupportedAlgorithm(f"sim enclave: this key does not sign with {scheme.name}")
        return self._call(Op.SIGN, scheme.hash_algorithm.to_bytes(HASH_SIZE, "big") + data)

    def public_key(self) -> PublicKey:
        return self._key


class EnclaveRefused(EnclaveError):
    """The sim enclave answered with a refusal; `reason` is its words."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"sim enclave refused: {reason}")
        self.reason = reason


def _exited(process: subprocess.Popen[bytes]) -> str:
    """' exited with status N' once the process has ended (given a moment to), else ''."""
    try:
        code = process.wait(timeout=0.5)
    except subprocess.TimeoutExpired:
        return ""
    return f" exited with status {code}"


def _stop(process: subprocess.Popen[bytes], sock: socket.socket) -> None:
    sock.close()
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
