"""TEE backends behind one interface: software (in-process), sim (the key in a separate process) and tsm (configfs-tsm,
tested against a fake configfs tree in tmp_path that behaves as the kernel's ABI document says; no TDX or SEV-SNP
machine was available).

For the sim process: it signs, its evidence verifies, it answers every request with a public key, a signature, a
report or a refusal, and never with private key material (checked against a known key through the same request
handler, and by trying every request code on the real process); it dies when its parent dies."""

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from attestation_vectors import VECTORS
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave_ike.enclave import channel
from enclave_ike.enclave.attest import attest
from enclave_ike.enclave.base import Enclave
from enclave_ike.enclave.cert_table import ARK, ASK, VCEK, VLEK, build_cert_table, parse_cert_table, snp_certificates
from enclave_ike.enclave.channel import HASH_SIZE, MAX_FRAME, Frame, Op, Status
from enclave_ike.enclave.custody import Custody
from enclave_ike.enclave.errors import EnclaveError, EnclaveGone, EnclaveUnavailable
from enclave_ike.enclave.sim import SimEnclave
from enclave_ike.enclave.sim_child import answer
from enclave_ike.enclave.software import SoftwareEnclave
from enclave_ike.enclave.tsm import ConfigFs, TsmEnclave
from enclave_ike.ikev2.crypto import ECDSA_SHA256, ECDSA_SHA384, ECDSA_SHA512, RSA_PSS_SHA256
from enclave_ike.ikev2.errors import UnsupportedAlgorithm
from ikecommon.attestation.binding import report_data
from ikecommon.attestation.envelope import EvidenceKind
from ikecommon.attestation.sim import DEFAULT_REGISTERS, SimReport, sim_root_certificate, verify_sim_report
from ikecommon.attestation.snp import load_ask_ark
from ikecommon.attestation.spec import MeasurementEntry, MeasurementSpec
from ikecommon.attestation.verify import TrustAnchors, appraise, verify_envelope

NOW = datetime(2026, 11, 23, tzinfo=UTC)
SIM_SPEC = MeasurementSpec((MeasurementEntry("sim-default", "sim", ((0, DEFAULT_REGISTERS[0]),)),))


def verify_ecdsa(enclave: Enclave, data: bytes, signature: bytes) -> None:
    key = enclave.signer().public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(signature, data, ec.ECDSA(enclave.signer().algorithm.hasher()))


@pytest.fixture
def sim() -> Iterator[SimEnclave]:
    with SimEnclave() as enclave:
        yield enclave


# --- the interface --------------------------------------------------------------------------------------------


def test_every_backend_is_an_enclave(sim: SimEnclave, tmp_path: Path) -> None:
    assert isinstance(SoftwareEnclave(), Enclave)
    assert isinstance(sim, Enclave)
    assert isinstance(TsmEnclave(reports=FakeKernel.tree(tmp_path), fs=FakeKernel("tdx_guest")), Enclave)


# --- software -------------------------------------------------------------------------------------------------


def test_software_enclave_signs_and_attests() -> None:
    enclave, nonce = SoftwareEnclave(), os.urandom(32)
    verify_ecdsa(enclave, b"octets", enclave.signer().sign(b"octets", enclave.signer().algorithm))
    verified = verify_envelope(attest(enclave, nonce), nonce, SIM_SPEC, TrustAnchors.simulated(), NOW)
    assert verified.public_key() == enclave.signer().public_key()


# --- sim: a separate process ----------------------------------------------------------------------------------


def test_sim_key_lives_in_another_process(sim: SimEnclave) -> None:
    assert sim.pid != os.getpid()
    assert Path(f"/proc/{sim.pid}/cmdline").read_bytes().split(b"\0")[2] == b"enclave_ike.enclave.sim_child"
    signer = sim.signer()
    assert not hasattr(signer, "private_bytes") and not hasattr(signer, "private_key")
    assert not any(isinstance(value, ec.EllipticCurvePrivateKey) for value in vars(signer).values())
    assert not any(isinstance(value, ec.EllipticCurvePrivateKey) for value in vars(sim).values())


def test_sim_signs_with_its_key(sim: SimEnclave) -> None:
    assert sim.signer().algorithm == ECDSA_SHA256
    for data in (b"", b"IKE_AUTH octets", os.urandom(MAX_FRAME - 1 - HASH_SIZE)):
        verify_ecdsa(sim, data, sim.signer().sign(data, sim.signer().algorithm))
    with pytest.raises(InvalidSignature):
        verify_ecdsa(sim, b"other", sim.signer().sign(b"octets", sim.signer().algorithm))


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGHUP], ids=["usr1", "hup"])
def test_sim_enclave_outlives_the_operators_signals(sim: SimEnclave, sig: int) -> None:
    """`systemctl kill -s USR1 enclave-ike` (serve's ring dump) and `-s HUP` (a reload serve declines) reach the sim
    enclave's process too."""
    os.kill(sim.pid, sig)
    time.sleep(0.2)
    verify_ecdsa(sim, b"IKE_AUTH octets", sim.signer().sign(b"IKE_AUTH octets", sim.signer().algorithm))


def test_sim_signs_under_the_hash_it_is_asked_for(sim: SimEnclave) -> None:
    """RFC 7427: the hash is the peer's choice; the child signs under the one named in the SIGN request."""
    signer = sim.signer()
    assert signer.schemes == (ECDSA_SHA256, ECDSA_SHA512, ECDSA_SHA384)
    key = signer.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    for scheme in signer.schemes:
        key.verify(signer.sign(b"octets", scheme), b"octets", ec.ECDSA(scheme.hasher()))
    with pytest.raises(UnsupportedAlgorithm):
        signer.sign(b"octets", RSA_PSS_SHA256)
    refused = answer(Frame(Op.SIGN, (1).to_bytes(HASH_SIZE, "big") + b"octets"), Custody(
        ec.generate_private_key(ec.SECP256R1())), DEFAULT_REGISTERS)
    assert refused.code == Status.ERROR and b"hash 1" in refused.payload


def test_sim_with_a_p384_key() -> None:
    with SimEnclave(key_type="ecdsa-p384") as enclave:
        assert enclave.signer().algorithm == ECDSA_SHA384
        verify_ecdsa(enclave, b"x", enclave.signer().sign(b"x", enclave.signer().algorithm))


def test_sim_evidence_verifies_end_to_end(sim: SimEnclave) -> None:
    nonce = os.urandom(32)
    verified = verify_envelope(attest(sim, nonce).encode(), nonce, SIM_SPEC, TrustAnchors.simulated(), NOW)
    assert verified.measurement_id == "sim-default"
    assert verified.public_key() == sim.signer().public_key()


def test_sim_reports_the_registers_it_was_started_with() -> None:
    registers = (b"\x11" * 48, b"\x22" * 48)
    with SimEnclave(registers=registers) as enclave:
        nonce = os.urandom(32)
        result = appraise(attest(enclave, nonce), nonce, SIM_SPEC, TrustAnchors.simulated(), NOW)
    assert result.registers == {0: registers[0], 1: registers[1]}
    assert [m.field for m in result.mismatches] == ["spec[sim-default].measurements.0"]


def test_a_slow_sim_start_is_waited_for_by_the_startup_timeout_not_the_call_timeout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The child's interpreter and imports took more than 10 s under TCG; a slow start is not a hung call."""
    slow_python = tmp_path / "slow-python"
    slow_python.write_text(f'#!/bin/sh\nsleep 1.5\nexec {sys.executable} "$@"\n')
    slow_python.chmod(0o755)
    monkeypatch.setattr("enclave_ike.enclave.sim.sys.executable", str(slow_python))
    with SimEnclave(timeout=1.0, startup_timeout=30.0) as enclave:
        verify_ecdsa(enclave, b"data", enclave.signer().sign(b"data", enclave.signer().algorithm))
    with pytest.raises(EnclaveError, match="timed out"):
        SimEnclave(timeout=30.0, startup_timeout=0.5)


def test_a_slow_sim_enclave_takes_its_delay_for_each_signature() -> None:
    with SimEnclave(sign_delay=0.3) as enclave:
        for _ in range(2):
            started = time.monotonic()
            signature = enclave.signer().sign(b"data", enclave.signer().algorithm)
            assert time.monotonic() - started >= 0.3
            verify_ecdsa(enclave, b"data", signature)


def test_sim_refuses_bad_registers_and_key_types() -> None:
    with pytest.raises(EnclaveError, match="registers"):
        SimEnclave(registers=(b"short",))
    with pytest.raises(EnclaveError, match="key type"):
        SimEnclave(key_type="rsa-1024")


def test_every_request_gets_a_public_answer(sim: SimEnclave) -> None:
    """All 256 request codes, with payloads of several sizes: each answer is the public key, a valid signature
    over the payload, a valid sim report of the payload, a fresh recipient key, a next key's public key (NEXT) and
    the switch to it (SWITCH), or a refusal (SEAL and IMPORT refuse payloads that are not a P-256 key and a sealed
    key)."""
    public = sim.signer().public_key().public_bytes(serialization.Encoding.DER,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo)
    answers = {"public key": 0, "signature": 0, "report": 0, "recipient": 0, "next": 0, "switch": 0, "refused": 0}
    next_key = b""
    for code in range(256):
        for payload in (b"", b"\x01", bytes(64), b"\xff" + os.urandom(64), b"\xff" + os.urandom(4095),
                        b"\x00\x02" + os.urandom(100), b"\x00\x04IKE_AUTH octets"):
            try:
                reply = sim._call(code, payload)  # type: ignore[arg-type]
            except EnclaveError as refused:
                assert not isinstance(refused, EnclaveGone)
                answers["refused"] += 1
                continue
            if code == Op.PUBLIC_KEY:
                assert reply == public and payload == b""
                answers["public key"] += 1
            elif code == Op.SIGN:  # the hash (SHA2-256 = 2, SHA2-512 = 4), then the data
                scheme = {2: ECDSA_SHA256, 4: ECDSA_SHA512}[int.from_bytes(payload[:HASH_SIZE], "big")]
                key = sim.signer().public_key()
                assert isinstance(key, ec.EllipticCurvePublicKey)
                key.verify(reply, payload[HASH_SIZE:], ec.ECDSA(scheme.hasher()))
                answers["signature"] += 1
            elif code == Op.RECIPIENT:
                recipient = serialization.load_der_public_key(reply)
                assert isinstance(recipient, ec.EllipticCurvePublicKey) and recipient.curve.name == "secp256r1"
                assert reply != public and payload == b""
                answers["recipient"] += 1
            elif code == Op.NEXT:
                found = serialization.load_der_public_key(reply)
                assert isinstance(found, ec.EllipticCurvePublicKey) and reply != public and payload == b""
                next_key = reply
                answers["next"] += 1
            elif code == Op.SWITCH:
                assert reply == next_key and payload == b""
                assert sim._call(Op.PUBLIC_KEY) == next_key
                answers["switch"] += 1
            else:
                assert code == Op.EVIDENCE and len(payload) == 64
                assert SimReport.decode(reply).report_data == payload
                assert verify_sim_report(reply, root=sim_root_certificate(), at=NOW).ok
                answers["report"] += 1
    assert answers == {"public key": 1, "signature": 2, "report": 1, "recipient": 1, "next": 1, "switch": 1,
                       "refused": 256 * 7 - 7}


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 255), st.binary(max_size=300))
def test_no_answer_contains_the_private_key(code: int, payload: bytes) -> None:
    """The child's request handler, run here with a key whose private parts we know."""
    key = ec.derive_private_key(0x1234567890ABCDEF << 128 | 0xFEDCBA, ec.SECP256R1())
    secrets = [key.private_numbers().private_value.to_bytes(32, "big"),
               key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()),
               key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption())]
    reply = answer(Frame(code, payload), Custody(key), DEFAULT_REGISTERS)
    assert reply.code in (Status.OK, Status.ERROR)
    assert not any(secret in reply.payload for secret in secrets)
    assert b"PRIVATE" not in reply.payload


def test_a_malformed_frame_ends_the_child(sim: SimEnclave) -> None:
    sim._socket.sendall((MAX_FRAME + 1).to_bytes(4, "big"))
    with pytest.raises(EnclaveGone):
        sim.signer().sign(b"x", sim.signer().algorithm)
    assert wait_gone(sim.pid)


def test_close_stops_the_child() -> None:
    enclave = SimEnclave()
    pid = enclave.pid
    enclave.close()
    assert wait_gone(pid)
    with pytest.raises(EnclaveGone, match="closed"):
        enclave.signer().sign(b"x", enclave.signer().algorithm)


def test_a_killed_child_is_reported() -> None:
    with SimEnclave() as enclave:
        os.kill(enclave.pid, signal.SIGKILL)
        with pytest.raises(EnclaveGone, match="exited"):
            enclave.evidence(bytes(64))


def test_the_child_dies_with_its_parent(tmp_path: Path) -> None:
    """A parent killed with SIGKILL closes nothing on purpose; the kernel closes its end and the child exits."""
    script = textwrap.dedent("""
        import sys, time
        from enclave_ike.enclave.sim import SimEnclave
        enclave = SimEnclave()
        print(enclave.pid, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        child = int(parent.stdout.readline())  # type: ignore[union-attr]
        assert not wait_gone(child, timeout=0.2)
    finally:
        parent.kill()
        parent.wait()
    assert wait_gone(child)


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    """True once `pid` has exited (a zombie counts: it no longer runs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return True
        if status.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            return True
        time.sleep(0.02)
    return False


def test_channel_frames_round_trip_and_are_bounded() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        channel.send(ours, Frame(Op.SIGN, b"data"))
        assert channel.receive(theirs) == Frame(Op.SIGN, b"data")
        ours.sendall(b"\0\0\0\0")
        with pytest.raises(EnclaveError, match="outside"):
            channel.receive(theirs)
        ours.sendall(b"\0\0\0\x05ab")
        ours.shutdown(socket.SHUT_WR)
        with pytest.raises(EnclaveError, match="closed inside a frame"):
            channel.receive(theirs)
    with pytest.raises(EnclaveError):
        Frame(Op.SIGN, bytes(MAX_FRAME)).encode()


# --- tsm: configfs-tsm against a fake kernel ------------------------------------------------------------------

QUOTE = (VECTORS / "tdx" / "tdx_quote_v4_spr_e4.dat").read_bytes()
SNP_REPORT = (VECTORS / "sev-snp" / "snp_report_milan.bin").read_bytes()
VCEK_DER = (VECTORS / "sev-snp" / "snp_vcek_milan.der").read_bytes()
ASK_CERT, ARK_CERT = load_ask_ark((VECTORS / "sev-snp" / "amd_ask_ark_milan.pem").read_bytes())
ASK_DER, ARK_DER = (cert.public_bytes(serialization.Encoding.DER) for cert in (ASK_CERT, ARK_CERT))
TDX_REPORT_DATA, SNP_REPORT_DATA = 568, 0x50  # offsets of the 64 bytes in the quote and the report


class FakeKernel(ConfigFs):
    """configfs-tsm as Documentation/ABI/testing/configfs-tsm-report describes it, on plain files: mkdir creates
    the attributes, a write to inblob or privlevel bumps generation, outblob is the evidence for the last inblob
    (a real quote or report with that report data patched in, so its signature no longer verifies)."""

    def __init__(self, provider: str, *, auxblob: bytes | None = None, race: bool = False,
                 fail_inblob: bool = False) -> None:
        self.provider, self.auxblob, self.race, self.fail_inblob = provider, auxblob, race, fail_inblob
        self.writes: list[tuple[str, bytes]] = []

    @staticmethod
    def tree(tmp_path: Path) -> Path:
        reports = tmp_path / "sys/kernel/config/tsm/report"
        reports.mkdir(parents=True)
        return reports

    def make_entry(self, path: Path) -> None:
        path.mkdir()
        (path / "provider").write_text(self.provider + "\n")
        (path / "generation").write_text("0\n")
        if self.auxblob is not None:
            (path / "auxblob").write_bytes(self.auxblob)

    def remove_entry(self, path: Path) -> None:
        for child in path.iterdir():
            child.unlink()
        path.rmdir()

    def write(self, path: Path, data: bytes) -> None:
        if path.name == "inblob" and (self.fail_inblob or len(data) > 64):
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        self.writes.append((path.name, data))
        path.write_bytes(data)
        self._bump(path.parent)
        if path.name == "inblob":
            evidence, at = (QUOTE, TDX_REPORT_DATA) if self.provider == "tdx_guest" else (SNP_REPORT, SNP_REPORT_DATA)
            (path.parent / "outblob").write_bytes(evidence[:at] + data + evidence[at + 64:])

    def read(self, path: Path, limit: int) -> bytes | None:
        data = super().read(path, limit)
        if path.name == "outblob" and self.race:
            self._bump(path.parent)  # another writer got in between
        return data

    @staticmethod
    def _bump(entry: Path) -> None:
        generation = entry / "generation"
        generation.write_text(f"{int(generation.read_text()) + 1}\n")


def test_tsm_tdx_outblob_is_the_quote_for_our_report_data(tmp_path: Path) -> None:
    reports, fake = FakeKernel.tree(tmp_path), FakeKernel("tdx_guest")
    enclave = TsmEnclave(reports=reports, fs=fake)
    assert enclave.kind == EvidenceKind.TDX
    wanted = os.urandom(64)
    evidence = enclave.evidence(wanted)
    assert evidence.kind == EvidenceKind.TDX and evidence.certificates == ()
    assert evidence.data[TDX_REPORT_DATA:TDX_REPORT_DATA + 64] == wanted
    assert fake.writes == [("inblob", wanted)]
    assert list(reports.iterdir()) == []  # every entry removed


def test_tsm_snp_envelope_binds_and_carries_the_host_certificates(tmp_path: Path) -> None:
    auxblob = build_cert_table({VCEK: VCEK_DER, ASK: ASK_DER, ARK: ARK_DER})
    enclave = TsmEnclave(reports=FakeKernel.tree(tmp_path), fs=FakeKernel("sev_guest", auxblob=auxblob))
    nonce = os.urandom(32)
    envelope = attest(enclave, nonce)
    assert envelope.evidence.kind == EvidenceKind.SEV_SNP
    assert envelope.evidence.certificates == (VCEK_DER, ASK_DER, ARK_DER)
    spec = MeasurementSpec((MeasurementEntry("milan", "sev-snp", ((0, SNP_REPORT[0x90:0xC0]),)),))
    result = appraise(envelope.encode(), nonce, spec, TrustAnchors(amd_arks=(ARK_CERT,)),
                      datetime(2023, 7, 1, tzinfo=UTC))
    assert result.binding.passed and result.measurements.passed  # our nonce and key are in the report
    assert [m.field for m in result.evidence.check("report signature").mismatches] == ["signature"]  # a fake
    assert result.evidence.check("VCEK certificate chain").passed


def test_tsm_writes_privlevel_when_asked(tmp_path: Path) -> None:
    fake = FakeKernel("sev_guest")
    TsmEnclave(reports=FakeKernel.tree(tmp_path), fs=fake, privlevel=2).evidence(bytes(64))
    assert fake.writes == [("privlevel", b"2"), ("inblob", bytes(64))]


def test_tsm_detects_another_writer(tmp_path: Path) -> None:
    enclave = TsmEnclave(reports=FakeKernel.tree(tmp_path), fs=FakeKernel("tdx_guest", race=True))
    with pytest.raises(EnclaveError, match="generation went from 0 to 2"):
        enclave.evidence(bytes(64))


def test_tsm_unknown_provider(tmp_path: Path) -> None:
    enclave = TsmEnclave(reports=FakeKernel.tree(tmp_path), fs=FakeKernel("arm_cca_guest"))
    with pytest.raises(EnclaveUnavailable, match="arm_cca_guest"):
        enclave.evidence(bytes(64))


def test_tsm_without_configfs(tmp_path: Path) -> None:
    with pytest.raises(EnclaveUnavailable, match="no configfs-tsm"):
        TsmEnclave(reports=tmp_path / "absent")


def test_tsm_failed_write_names_the_attribute_and_cleans_up(tmp_path: Path) -> None:
    reports = FakeKernel.tree(tmp_path)
    enclave = TsmEnclave(reports=reports, fs=FakeKernel("tdx_guest", fail_inblob=True))
    with pytest.raises(EnclaveError, match="inblob: Invalid argument"):
        enclave.evidence(bytes(64))
    assert list(reports.iterdir()) == []


def test_tsm_refuses_report_data_of_the_wrong_size(tmp_path: Path) -> None:
    enclave = TsmEnclave(reports=FakeKernel.tree(tmp_path), fs=FakeKernel("tdx_guest"))
    with pytest.raises(EnclaveError, match="64 bytes"):
        enclave.evidence(bytes(65))


def test_tsm_with_the_real_configfs_operations_on_a_tree(tmp_path: Path) -> None:
    """The real ConfigFs on plain files: mkdir makes no attributes there, so the provider is missing."""
    enclave = TsmEnclave(reports=FakeKernel.tree(tmp_path))
    with pytest.raises(EnclaveError, match="provider: missing"):
        enclave.evidence(bytes(64))


def test_tsm_keeps_its_key_in_the_guest(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    enclave = TsmEnclave(key, reports=FakeKernel.tree(tmp_path), fs=FakeKernel("tdx_guest"))
    assert enclave.signer().public_key() == key.public_key()
    envelope = attest(enclave, os.urandom(16))
    assert envelope.evidence.data[TDX_REPORT_DATA:TDX_REPORT_DATA + 64] == report_data(envelope.nonce,
                                                                                        envelope.ike_key)


# --- the SEV-SNP certificate table ----------------------------------------------------------------------------


def test_cert_table_round_trip_and_order() -> None:
    blob = build_cert_table({ARK: b"ark", VCEK: b"vcek", ASK: b"ask"})
    assert parse_cert_table(blob) == {ARK: b"ark", VCEK: b"vcek", ASK: b"ask"}
    assert snp_certificates(blob) == (b"vcek", b"ask", b"ark")
    assert snp_certificates(build_cert_table({VLEK: b"vlek", ASK: b"ask"})) == (b"vlek", b"ask")
    assert snp_certificates(b"") == () and snp_certificates(bytes(100)) == ()


def test_cert_table_without_terminator() -> None:
    with pytest.raises(EnclaveError, match="terminating"):
        parse_cert_table(build_cert_table({VCEK: b"vcek"})[:24] + b"\x01")


def test_cert_table_entry_outside_the_blob() -> None:
    blob = bytearray(build_cert_table({VCEK: b"vcek"}))
    blob[20:24] = (1000).to_bytes(4, "little")
    with pytest.raises(EnclaveError, match="outside"):
        parse_cert_table(bytes(blob))


def test_cert_table_entry_pointing_into_the_table() -> None:
    blob = bytearray(build_cert_table({VCEK: b"vcek"}))
    blob[16:20] = (0).to_bytes(4, "little")
    with pytest.raises(EnclaveError, match="outside"):
        parse_cert_table(bytes(blob))


def test_cert_table_duplicate_entry() -> None:
    one = build_cert_table({VCEK: b"vcek"})
    entry = one[:24]
    blob = entry + entry + bytes(24) + b"vcek"
    blob = bytearray(blob)
    for at in (16, 40):
        blob[at:at + 4] = (72).to_bytes(4, "little")
    with pytest.raises(EnclaveError, match="twice"):
        parse_cert_table(bytes(blob))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_cert_table_fuzz(blob: bytes) -> None:
    with contextlib.suppress(EnclaveError):
        parse_cert_table(blob)


def test_sign_after_replace_is_still_the_same_key(sim: SimEnclave) -> None:
    """An envelope rebuilt around another key does not change what the enclave signs with."""
    nonce = os.urandom(32)
    envelope = attest(sim, nonce)
    other = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    result = appraise(replace(envelope, ike_key=other), nonce, SIM_SPEC, TrustAnchors.simulated(), NOW)
    assert [m.field for m in result.mismatches] == ["report_data"]
    verify_ecdsa(sim, b"still", sim.signer().sign(b"still", sim.signer().algorithm))
