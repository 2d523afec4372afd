"""enclave-ike's evidence endpoint over real sockets on 127.0.0.1: the envelope it serves verifies and binds the
client's nonce and the enclave's key; every malformed, oversized, slow or unwanted request gets a bounded answer (or
none); the client refuses what is not a proper answer; `serve` runs the endpoint beside IKE; `enclave-ike evidence`
prints what the running server makes, and bad hex is one line and exit 2. TDX quotes go out with the collateral the
operator cached for their platform, which a client verifies under its own root; without it, expired, or not
verifying, the quote goes out anyway and one warning line says what to run; sim evidence is unchanged."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from trust_servers import BackgroundLoop, hostile_endpoint, port_of, running_endpoint, sim_spec

from enclave_ike import cli, collateral_store
from enclave_ike import config as cfg
from enclave_ike.collateral_store import ServedCollateral
from enclave_ike.enclave.errors import EnclaveError
from enclave_ike.enclave.software import SoftwareEnclave
from enclave_ike.evidence_endpoint import EvidenceEndpoint, Limits, for_config, parse_nonce
from enclave_ike.server import serve
from ikecommon.attestation.envelope import Collateral, Envelope, Evidence, EvidenceKind
from ikecommon.attestation.spec import MeasurementEntry, MeasurementSpec
from ikecommon.attestation.tdx import TdxQuote
from ikecommon.attestation.verify import TrustAnchors, appraise, verify_envelope
from ikecommon.evidence_client import CMW_JSON, EndpointError, fetch, fetch_evidence, fetch_identity
from netns_tests.harness.fake_intel import REAL_QUOTE, FakeIntel, dated, real_qe_identity, up_to_date_tcb_info

NONCE = bytes(range(32))


def spki(enclave: SoftwareEnclave) -> bytes:
    return enclave.signer().public_key().public_bytes(serialization.Encoding.DER,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)


def raw(port: int, request: bytes, *, read: bool = True, timeout: float = 5.0) -> bytes:
    """Send bytes as they are; everything the server answers before it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        try:
            while read and (chunk := sock.recv(65536)):
                chunks.append(chunk)
        except ConnectionResetError:  # closed with our request unread: what it sent before still counts
            pass
    return b"".join(chunks)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


@pytest.fixture
def enclave() -> SoftwareEnclave:
    return SoftwareEnclave()


@pytest.fixture
def port(enclave):
    with running_endpoint(enclave) as endpoint:
        yield port_of(endpoint)


def test_evidence_for_a_nonce_verifies_and_binds_that_nonce_and_the_enclave_key(enclave, port):
    body = fetch_evidence("127.0.0.1", port, NONCE)
    verified = verify_envelope(body, NONCE, sim_spec(), TrustAnchors.simulated(), datetime.now(UTC))
    assert verified.ike_key == spki(enclave) and verified.measurement_id == "sim-default"
    answer = raw(port, f"GET /evidence?nonce={NONCE.hex()} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = answer.split(b"\r\n\r\n")[0].decode()
    assert head.startswith("HTTP/1.1 200 OK") and f"Content-Type: {CMW_JSON}" in head
    assert "Connection: close" in head and "Cache-Control: no-store" in head
    assert Envelope.decode(answer.split(b"\r\n\r\n", 1)[1]).nonce == NONCE


def test_each_nonce_gets_its_own_evidence(port):
    other = bytes(16)
    first, second = fetch_evidence("127.0.0.1", port, NONCE), fetch_evidence("127.0.0.1", port, other)
    assert Envelope.decode(first).nonce == NONCE and Envelope.decode(second).nonce == other
    assert Envelope.decode(first).evidence.data != Envelope.decode(second).evidence.data


def test_identity_says_the_ike_id(port):
    assert fetch_identity("127.0.0.1", port) == "@resolver.example"


@pytest.mark.parametrize("target", [
    "/evidence", "/evidence?nonce=", "/evidence?nonce=zz", "/evidence?nonce=" + "00" * 15,
    "/evidence?nonce=" + "00" * 65, "/evidence?nonce=" + "0" * 33, f"/evidence?nonce={NONCE.hex()}&nonce=00",
    f"/evidence?nonce={NONCE.hex()}&other=1", "/identity?x=1",
])
def test_a_bad_query_is_400_with_one_line(port, target):
    answer = raw(port, f"GET {target} HTTP/1.1\r\n\r\n".encode())
    assert status_of(answer) == 400
    assert answer.split(b"\r\n\r\n", 1)[1].count(b"\n") == 1


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET /nothing HTTP/1.1\r\n\r\n", 404),
    (b"POST /evidence?nonce=00 HTTP/1.1\r\n\r\n", 405),
    (b"GET /evidence HTTP/2.0\r\n\r\n", 505),
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /\xff HTTP/1.1\r\n\r\n", 400),
    (f"GET /evidence?nonce={NONCE.hex()} HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello".encode(), 400),
    (b"GET /evidence?nonce=00 HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431),
])
def test_unwanted_requests_get_a_bounded_answer(port, request_bytes, status):
    assert status_of(raw(port, request_bytes)) == status


def test_a_silent_or_half_request_is_closed_after_the_read_timeout(enclave):
    with running_endpoint(enclave, limits=Limits(read_timeout_s=0.3)) as endpoint:
        started = time.monotonic()
        assert raw(port_of(endpoint), b"GET /evidence?nonce=00") == b""  # closed, unanswered
        assert time.monotonic() - started < 3.0


def test_more_connections_than_allowed_are_closed_unanswered(enclave):
    with running_endpoint(enclave, limits=Limits(connections=1, read_timeout_s=3.0)) as endpoint:
        with socket.create_connection(("127.0.0.1", port_of(endpoint))) as holder:
            holder.sendall(b"GET /ident")  # holds the only slot
            time.sleep(0.2)
            assert raw(port_of(endpoint), b"GET /identity HTTP/1.1\r\n\r\n") == b""
        time.sleep(0.2)
        assert status_of(raw(port_of(endpoint), b"GET /identity HTTP/1.1\r\n\r\n")) == 200


def test_evidence_requests_beyond_the_in_flight_limit_get_503(enclave):
    with running_endpoint(enclave, limits=Limits(in_flight=0)) as endpoint:
        answer = raw(port_of(endpoint), f"GET /evidence?nonce={NONCE.hex()} HTTP/1.1\r\n\r\n".encode())
        assert status_of(answer) == 503 and b"Retry-After: 1" in answer


class BrokenEnclave(SoftwareEnclave):
    def evidence(self, report_data: bytes):
        raise EnclaveError("the TEE refused")


def test_an_enclave_that_cannot_make_evidence_is_503_and_the_client_says_so():
    with running_endpoint(BrokenEnclave()) as endpoint, \
            pytest.raises(EndpointError, match=r"127\.0\.0\.1:\d+: 503 no evidence: the TEE refused"):
        fetch_evidence("127.0.0.1", port_of(endpoint), NONCE)


def test_the_client_refuses_what_is_not_a_proper_answer():
    with hostile_endpoint(lambda path, query: (200, b"x" * 300_000)) as port, \
            pytest.raises(EndpointError, match="over 262144 bytes"):
        fetch_evidence("127.0.0.1", port, NONCE)
    with hostile_endpoint(lambda path, query: (500, b"oops\nmore")) as port, \
            pytest.raises(EndpointError, match=r": 500 oops$"):
        fetch("127.0.0.1", port, "/identity", 100, 5)
    with hostile_endpoint(lambda path, query: (200, b'{"version": 2}')) as port, \
            pytest.raises(EndpointError, match="not a version 1 identity"):
        fetch_identity("127.0.0.1", port)


def test_the_client_gives_up_on_a_silent_server_and_a_closed_port():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()  # accepts in the backlog, never answers
        started = time.monotonic()
        with pytest.raises(EndpointError, match=r"no answer within 0\.5 s"):
            fetch_evidence("127.0.0.1", listener.getsockname()[1], NONCE, timeout=0.5)
        assert time.monotonic() - started < 3
        closed = listener.getsockname()[1]
    with pytest.raises(EndpointError, match=r"127\.0\.0\.1:"):
        fetch_evidence("127.0.0.1", closed, NONCE)


def test_a_port_in_use_is_one_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(EndpointError, match=r"cannot listen on 127\.0\.0\.1:\d+ \(tcp\)"), \
                running_endpoint(SoftwareEnclave(), port=taken.getsockname()[1]):
            pass


def test_parse_nonce_names_the_input():
    assert parse_nonce(NONCE.hex()) == NONCE
    with pytest.raises(EnclaveError, match=r"--nonce 'zz': expected 16 to 64 bytes as hex") as info:
        parse_nonce("zz", "--nonce")
    assert info.value.exit_code == 2


# --- config, serve and the command line ---

def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(tmp_path: Path, extra: str = "", evidence_port: int | None = None) -> Path:
    path = tmp_path / "enclave-ike.toml"
    evidence = f"\n[evidence]\nport = {evidence_port}\n" if evidence_port else ""
    path.write_text(f'[listen]\naddresses = ["127.0.0.1"]\nike_port = {free_port(socket.SOCK_DGRAM)}\n'
                    f'natt_port = {free_port(socket.SOCK_DGRAM)}\n\n[identity]\nbackend = "software"\n'
                    f'id = "@resolver.example"\npublish = "{tmp_path / "identity.json"}"\n{extra}\n'
                    f'[apply]\nmode = "none"\n{evidence}')
    return path


def test_evidence_config_defaults_and_checks(tmp_path):
    config = cfg.load(write_config(tmp_path))
    assert config.evidence == cfg.EvidenceConfig(True, 4501)
    assert config.identity.sim_registers == ()
    good = "ab" * 48
    config = cfg.load(write_config(tmp_path, f'sim_registers = ["{good}", "{"00" * 48}"]'))
    assert config.identity.sim_registers == (bytes.fromhex(good), bytes(48))
    for extra, words in ((f'sim_registers = ["{"ab" * 47}"]', "identity.sim_registers[0]: 'abab"),
                         ('sim_registers = ["zz"]', "sim_registers[0]: 'zz' is not 48 bytes of hex"),
                         (f'sim_registers = ["{"a b" * 32}"]', "sim_registers[0]"),
                         ("sim_registers = []", "identity.sim_registers: must not be empty"),
                         (f'sim_registers = [{", ".join([chr(34) + good + chr(34)] * 17)}]', "at most 16")):
        with pytest.raises(cfg.ConfigError, match=re.escape(words)):
            cfg.load(write_config(tmp_path, extra))
    for evidence, words in (("port = 0", "evidence.port: 0 is not a TCP port"), ("port = true", "evidence.port"),
                            ("enabled = 1", "evidence.enabled: expected true or false"),
                            ("where = 1", "evidence.where: unknown key")):
        path = write_config(tmp_path)
        path.write_text(path.read_text() + f"\n[evidence]\n{evidence}\n")
        with pytest.raises(cfg.ConfigError, match=words):
            cfg.load(path)


def test_serve_runs_the_endpoint_beside_ike_with_the_configured_measurement(tmp_path, capsys):
    registers = bytes(range(48))
    port = free_port()
    config = cfg.load(write_config(tmp_path, f'sim_registers = ["{registers.hex()}"]', evidence_port=port))

    async def scenario() -> None:
        stop = asyncio.Event()
        server = asyncio.create_task(serve(config, stop))
        try:
            for _ in range(400):
                if (tmp_path / "identity.json").exists() or server.done():
                    break
                await asyncio.sleep(0.05)
            identity = json.loads((tmp_path / "identity.json").read_text())
            body = await asyncio.to_thread(fetch_evidence, "127.0.0.1", port, NONCE)
            verified = verify_envelope(body, NONCE, sim_spec((registers,)), TrustAnchors.simulated(),
                                       datetime.now(UTC))
            pem = serialization.load_der_public_key(verified.ike_key).public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
            assert pem == identity["public_key_pem"]  # the key IKE signs with is the key the evidence binds
            argv = ["evidence", "--nonce", NONCE.hex(), "--config", str(config.path)]
            assert await asyncio.to_thread(cli.main, argv) == 0
            printed = capsys.readouterr().out
            assert printed.endswith("\n") and Envelope.decode(printed.strip().encode()).ike_key == verified.ike_key
        finally:
            stop.set()
            await server
        with pytest.raises(EndpointError):
            await asyncio.to_thread(fetch_evidence, "127.0.0.1", port, NONCE, 1.0)  # stopped with the server

    asyncio.run(scenario())


def test_serve_with_null_auth_or_disabled_evidence_has_no_endpoint(tmp_path):
    config = cfg.load(write_config(tmp_path))
    assert for_config(config, None) is None
    path = write_config(tmp_path)
    path.write_text(path.read_text() + "\n[evidence]\nenabled = false\n")
    assert for_config(cfg.load(path), SoftwareEnclave()) is None
    assert for_config(config, SoftwareEnclave()) is not None


@pytest.mark.parametrize("nonce", ["zz", "00", "0" * 31, "00" * 65, "", "00 11" * 16])
def test_evidence_command_with_bad_hex_is_one_line_and_exit_2(tmp_path, capsys, nonce):
    code = cli.main(["evidence", "--nonce", nonce, "--config", str(tmp_path / "absent.toml")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("enclave-ike: --nonce ") and err.count("\n") == 1, err


def test_evidence_command_without_a_running_server_fails_with_exit_1(tmp_path, capsys):
    config = write_config(tmp_path, evidence_port=free_port())
    assert cli.main(["evidence", "--nonce", NONCE.hex(), "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("enclave-ike: evidence endpoint 127.0.0.1:") and err.count("\n") == 1


def test_evidence_command_refuses_null_auth_and_a_disabled_endpoint(tmp_path, capsys):
    null = tmp_path / "null.toml"
    null.write_text('[listen]\naddresses = ["127.0.0.1"]\n')
    assert cli.main(["evidence", "--nonce", NONCE.hex(), "--config", str(null)]) == 1
    assert "identity.auth is \"null\"" in capsys.readouterr().err
    path = write_config(tmp_path)
    path.write_text(path.read_text() + "\n[evidence]\nenabled = false\n")
    assert cli.main(["evidence", "--nonce", NONCE.hex(), "--config", str(path)]) == 1
    assert "evidence.enabled is false" in capsys.readouterr().err


def test_the_endpoint_serves_concurrent_clients(enclave, port):
    results: list[bytes] = []
    nonces = [bytes([i]) * 16 for i in range(6)]

    def client(nonce: bytes) -> None:
        for _ in range(5):
            try:
                results.append(fetch_evidence("127.0.0.1", port, nonce))
                return
            except EndpointError as exc:  # 503 busy: retry, as a client would
                assert "503" in str(exc)
                time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(n,)) for n in nonces]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(Envelope.decode(r).nonce for r in results) == sorted(nonces)
    assert ip_address("127.0.0.1")  # the endpoint is still up
    assert fetch_identity("127.0.0.1", port) == "@resolver.example"


# --- TDX evidence with Intel's collateral from the cache ---

class FakeTdxEnclave(SoftwareEnclave):
    """A software key whose evidence is a TDX quote of the test PKI in Intel's place, binding the report data."""

    def __init__(self, pki: FakeIntel) -> None:
        super().__init__()
        self.pki = pki

    @property
    def kind(self) -> EvidenceKind:
        return EvidenceKind.TDX

    def evidence(self, report_data: bytes) -> Evidence:
        return Evidence(EvidenceKind.TDX, self.pki.quote(report_data=report_data))


def tdx_spec() -> MeasurementSpec:
    body = TdxQuote.parse(REAL_QUOTE).body
    return MeasurementSpec((MeasurementEntry("td-a", "dcap-tdx", tuple(enumerate((body.mr_td, *body.rtmrs)))),))


def fake_collateral(pki: FakeIntel, next_update: datetime) -> dict[str, bytes]:
    issued = next_update - timedelta(days=30)
    return pki.documents(tcb_info=dated(up_to_date_tcb_info(), issued, next_update),
                         qe_identity=dated(real_qe_identity(), issued, next_update),
                         crls=(pki.crl(pki.ca, last_update=issued, next_update=next_update),
                               pki.crl(pki.root, last_update=issued, next_update=next_update)))


@contextmanager
def tdx_endpoint(pki: FakeIntel, cache: Path) -> Iterator[int]:
    loop = BackgroundLoop()
    endpoint = EvidenceEndpoint(FakeTdxEnclave(pki), "@resolver.example", [ip_address("127.0.0.1")], 0,
                                tdx_collateral=ServedCollateral(cache, pki.root))
    try:
        loop.run(endpoint.start())
        yield port_of(endpoint)
    finally:
        loop.run(endpoint.stop())
        loop.close()


def put(cache: Path, documents: dict[str, bytes]) -> None:
    collateral_store.install(documents, cache / "tdx" / "50806f000000")


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "enclave_ike.evidence" and r.levelname == "WARNING"]


def test_tdx_evidence_goes_out_with_the_cached_collateral_and_verifies(tmp_path, caplog):
    pki, now = FakeIntel.instance(), datetime.now(UTC)
    put(tmp_path, fake_collateral(pki, now + timedelta(days=20)))
    caplog.set_level(logging.INFO, "enclave_ike.evidence")
    with tdx_endpoint(pki, tmp_path) as port:
        envelope = Envelope.decode(fetch_evidence("127.0.0.1", port, NONCE))
        fetch_evidence("127.0.0.1", port, NONCE)
    assert envelope.collateral.tdx_tcb_info == (tmp_path / "tdx/50806f000000/tcb-info.json").read_bytes()
    assert len(envelope.collateral.crls) == 2
    appraisal = appraise(envelope, NONCE, tdx_spec(), TrustAnchors(intel_root=pki.root), now)
    assert appraisal.ok, appraisal.mismatches  # every check, the collateral's included, under the client's root
    assert appraisal.measurement_id == "td-a"
    assert warnings_of(caplog) == []
    said = [r.getMessage() for r in caplog.records if "goes out with its collateral" in r.getMessage()]
    assert said == ["TDX evidence for FMSPC 50806f000000 goes out with its collateral"]  # once, not per request


def test_without_collateral_the_quote_goes_out_alone_one_warning_and_an_import_is_served_at_once(tmp_path, caplog):
    pki, now = FakeIntel.instance(), datetime.now(UTC)
    caplog.set_level(logging.INFO, "enclave_ike.evidence")
    with tdx_endpoint(pki, tmp_path) as port:
        for _ in range(3):
            bare = Envelope.decode(fetch_evidence("127.0.0.1", port, NONCE))
            assert bare.collateral.tdx_tcb_info is None and bare.collateral.crls == ()
        assert warnings_of(caplog) == [
            f"no TDX collateral for FMSPC 50806f000000 in {tmp_path / 'tdx'}: serving quotes without it, which clients "
            "refuse; run `enclave-ike collateral fetch --fmspc 50806f000000 --pck-ca platform` (or fetch elsewhere "
            "with --out DIR and `enclave-ike collateral import DIR` here)"]
        refused = appraise(bare, NONCE, tdx_spec(), TrustAnchors(intel_root=pki.root), now)
        assert not refused.ok and "collateral.tdx-tcb-info" in {m.field for m in refused.mismatches}
        put(tmp_path, fake_collateral(pki, now + timedelta(days=20)))  # the operator imports; no restart
        served = Envelope.decode(fetch_evidence("127.0.0.1", port, NONCE))
        assert appraise(served, NONCE, tdx_spec(), TrustAnchors(intel_root=pki.root), now).ok
        # Expired collateral goes out too (the client decides), with one warning naming what expired.
        put(tmp_path, fake_collateral(pki, now - timedelta(days=2)))
        for _ in range(2):
            stale = Envelope.decode(fetch_evidence("127.0.0.1", port, NONCE))
        assert stale.collateral.tdx_tcb_info == (tmp_path / "tdx/50806f000000/tcb-info.json").read_bytes()
    expired = warnings_of(caplog)[1:]
    assert len(expired) == 1 and expired[0].startswith("TDX collateral for FMSPC 50806f000000 expired: ")
    assert "expired 2 days ago: serving it, clients refuse it unless their [trust] collateral_grace_days covers " \
        "it; run `enclave-ike collateral fetch" in expired[0]


def test_collateral_that_does_not_parse_verify_or_match_the_quote_is_said_once(tmp_path, caplog):
    pki, now = FakeIntel.instance(), datetime.now(UTC)
    caplog.set_level(logging.INFO, "enclave_ike.evidence")
    cached = tmp_path / "tdx" / "50806f000000"
    with tdx_endpoint(pki, tmp_path) as port:
        # Planted by hand: garbage is not served; a set under another root is, and the client refuses it.
        put(tmp_path, {**fake_collateral(pki, now + timedelta(days=20)), "qe-identity.json": b"{"})
        assert Envelope.decode(fetch_evidence("127.0.0.1", port, NONCE)).collateral == Collateral()
        forged = fake_collateral(FakeIntel(), now + timedelta(days=20))
        for name, data in forged.items():
            (cached / name).write_bytes(data)
        served = Envelope.decode(fetch_evidence("127.0.0.1", port, NONCE))
        assert served.collateral.tdx_tcb_signing_chain == forged["tcb-signing-chain.pem"]
        refused = appraise(served, NONCE, tdx_spec(), TrustAnchors(intel_root=pki.root), now)
        assert not refused.ok and "tcb_signing_chain.root" in {m.field for m in refused.mismatches}
        # The CRL of a PCK CA other than the quote's: served, said.
        other_ca = fake_collateral(pki, now + timedelta(days=20))
        other_ca["pck-crl.der"] = pki.crl(pki.ca, key=pki.tcb_key).public_bytes(serialization.Encoding.DER)
        put(tmp_path, other_ca)
        for _ in range(2):
            served = Envelope.decode(fetch_evidence("127.0.0.1", port, NONCE))
    assert served.collateral.crls[0] == other_ca["pck-crl.der"]
    garbage, foreign, other = warnings_of(caplog)
    assert garbage.startswith("TDX collateral for FMSPC 50806f000000 unusable (") and "qe-identity.json" in garbage
    assert foreign.startswith("TDX collateral for FMSPC 50806f000000 does not verify under evidence.intel_root (")
    assert "tcb-signing-chain.pem: root" in foreign and "serving it, clients will refuse it" in foreign
    assert "pck-crl.der: signature: not made by the quote's PCK CA CN=Test SGX PCK Platform CA" in other


def test_a_directory_where_a_collateral_file_should_be_is_said_and_the_quote_goes_out_alone(tmp_path, caplog):
    pki, now = FakeIntel.instance(), datetime.now(UTC)
    caplog.set_level(logging.INFO, "enclave_ike.evidence")
    cached = tmp_path / "tdx" / "50806f000000"
    put(tmp_path, fake_collateral(pki, now + timedelta(days=20)))
    (cached / "qe-identity.json").unlink()
    (cached / "qe-identity.json").mkdir()  # by hand
    with tdx_endpoint(pki, tmp_path) as port:
        for _ in range(2):  # answered, not closed unanswered
            assert Envelope.decode(fetch_evidence("127.0.0.1", port, NONCE)).collateral == Collateral()
    (line,) = warnings_of(caplog)
    assert line.startswith(f"TDX collateral for FMSPC 50806f000000 unusable ({cached / 'qe-identity.json'}: not a "
                           "regular file): serving quotes without it; run `enclave-ike collateral fetch")


def test_collateral_of_a_version_clients_refuse_is_unusable(tmp_path, caplog):
    pki, now = FakeIntel.instance(), datetime.now(UTC)
    caplog.set_level(logging.INFO, "enclave_ike.evidence")
    issued, due = now - timedelta(days=10), now + timedelta(days=20)
    with tdx_endpoint(pki, tmp_path) as port:
        for name, member, document in (
                ("tcb-info.json", "tcbInfo", {**dated(up_to_date_tcb_info(), issued, due), "version": 2}),
                ("qe-identity.json", "enclaveIdentity", {**dated(real_qe_identity(), issued, due), "version": 1})):
            put(tmp_path, {**fake_collateral(pki, due), name: pki.signed_json(member, document)})  # planted by hand
            assert Envelope.decode(fetch_evidence("127.0.0.1", port, NONCE)).collateral == Collateral()
    tcb_info, qe_identity = warnings_of(caplog)
    assert "unusable (" in tcb_info and "tcb-info.json: tcbInfo.version: expected 3, got 2" in tcb_info
    assert "unusable (" in qe_identity and "qe-identity.json: enclaveIdentity.version: expected 2, got 1" in qe_identity


class FailingEnclave(SoftwareEnclave):
    def evidence(self, report_data: bytes):
        raise PermissionError(13, "Permission denied", "/sys/kernel/config/tsm/report")


def test_an_os_error_making_evidence_is_503_and_logged_not_a_silent_close(caplog):
    with running_endpoint(FailingEnclave()) as endpoint, \
            pytest.raises(EndpointError, match=r"503 no evidence: .*Permission denied"):
        fetch_evidence("127.0.0.1", port_of(endpoint), NONCE)
    assert any("Permission denied" in r.getMessage() for r in caplog.records if r.levelname == "ERROR")


def test_sim_evidence_is_unchanged_by_a_collateral_cache(tmp_path):
    put(tmp_path, fake_collateral(FakeIntel.instance(), datetime.now(UTC) + timedelta(days=20)))
    loop = BackgroundLoop()
    endpoint = EvidenceEndpoint(SoftwareEnclave(), "@resolver.example", [ip_address("127.0.0.1")], 0,
                                tdx_collateral=ServedCollateral(tmp_path, FakeIntel.instance().root))
    try:
        loop.run(endpoint.start())
        envelope = Envelope.decode(fetch_evidence("127.0.0.1", port_of(endpoint), NONCE))
    finally:
        loop.run(endpoint.stop())
        loop.close()
    assert envelope.evidence.kind is EvidenceKind.SIM and envelope.collateral == Collateral()


def test_a_tdx_server_reads_its_root_at_start(tmp_path):
    pki = FakeIntel.instance()
    (tmp_path / "root.pem").write_bytes(pki.root_pem())
    path = write_config(tmp_path)
    path.write_text(path.read_text() + f'\n[evidence]\ncollateral_dir = "{tmp_path / "cache"}"\n'
                                       f'intel_root = "{tmp_path / "root.pem"}"\n')
    endpoint = for_config(cfg.load(path), FakeTdxEnclave(pki))
    assert endpoint is not None and endpoint.tdx_collateral is not None
    assert endpoint.tdx_collateral.root == pki.root and endpoint.tdx_collateral.collateral_dir == tmp_path / "cache"
    assert for_config(cfg.load(path), SoftwareEnclave()).tdx_collateral is None  # sim: nothing to look up
    (tmp_path / "root.pem").write_text("garbage")
    with pytest.raises(cfg.ConfigError, match=r"evidence\.intel_root: .*root\.pem"):
        for_config(cfg.load(path), FakeTdxEnclave(pki))
