"""The holder's release endpoint over real TCP on loopback, and the joiner's walk over its peers (`obtain`): a key
obtained end to end, every malformed HTTP request answered with one line and nothing granted, and the outcome that
decides whether a lone replica may start a key of its own (did any peer answer?)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from enclave_ike.config import HostPort, ReleaseConfig, load
from enclave_ike.enclave.attest import envelopes
from enclave_ike.enclave.errors import EnclaveError
from enclave_ike.enclave.sealing import spki
from enclave_ike.enclave.software import SoftwareEnclave
from enclave_ike.release.appraise import Appraiser
from enclave_ike.release.endpoint import ReleaseEndpoint
from enclave_ike.release.holder import Holder
from enclave_ike.release.messages import MAX_MESSAGE
from enclave_ike.release.obtain import NoHolder, obtain
from enclave_ike.release.service import JoinFailed, join
from ikecommon.attestation.envelope import Envelope
from ikecommon.attestation.sim import DEFAULT_REGISTERS
from ikecommon.attestation.spec import MeasurementEntry, MeasurementSpec
from ikecommon.attestation.verify import TrustAnchors

SPEC = MeasurementSpec((MeasurementEntry("build", "sim", ((0, DEFAULT_REGISTERS[0]),)),))
APPRAISER = Appraiser(SPEC, TrustAnchors.simulated())
OTHER_BUILD = (bytes.fromhex("0b" * 48),)


class Running:
    def __init__(self, endpoint: ReleaseEndpoint) -> None:
        self.endpoint, self.counted = endpoint, []
        endpoint.counted = self.counted.append
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(endpoint.start(), self.loop).result(10)
        self.port = endpoint.bound[0][1]

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.endpoint.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def holder_enclave() -> SoftwareEnclave:
    return SoftwareEnclave()


@pytest.fixture
def running(holder_enclave: SoftwareEnclave) -> Iterator[Running]:
    endpoint = ReleaseEndpoint(Holder(holder_enclave, APPRAISER, envelopes(holder_enclave)), [("127.0.0.1", 0)])
    served = Running(endpoint)
    yield served
    served.close()


def exchange(port: int, request: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def test_a_joiner_obtains_the_key_over_tcp(running: Running, holder_enclave: SoftwareEnclave) -> None:
    joiner = SoftwareEnclave()
    obtained = obtain(joiner, APPRAISER, [HostPort("127.0.0.1", running.port)], within=5)
    assert obtained.source == f"127.0.0.1:{running.port}" and obtained.holder.measurement_id == "build"
    assert spki(joiner.signer().public_key()) == spki(holder_enclave.signer().public_key())
    assert running.counted == ["granted"] and str(running.endpoint.tally) == "1 granted, 0 refused since start"


def test_a_refusal_means_a_peer_answered(running: Running, holder_enclave: SoftwareEnclave) -> None:
    """Another build is refused: NoHolder says a peer answered, so the replica must not start a key of its own."""
    joiner = SoftwareEnclave(registers=OTHER_BUILD)
    before = spki(joiner.signer().public_key())
    said: list[str] = []
    with pytest.raises(NoHolder) as info:
        obtain(joiner, APPRAISER, [HostPort("127.0.0.1", running.port)], within=0, say=said.append)
    assert info.value.present
    assert "the holder said 403 refused: the joiner's evidence does not verify: spec[build].measurements.0" in \
        str(info.value)
    where = f"127.0.0.1:{running.port}"
    assert said == [f"key release from {where} refused: {info.value.reasons[where]}"]
    assert spki(joiner.signer().public_key()) == before and running.counted == ["refused"]


def test_we_refuse_a_holder_of_another_build() -> None:
    """A holder of another build that gives its key to ours too (its spec lists both): we do not take it."""
    other = SoftwareEnclave(registers=OTHER_BUILD)
    lenient = MeasurementSpec((*SPEC.entries, MeasurementEntry("other", "sim", ((0, OTHER_BUILD[0]),))))
    served = Running(ReleaseEndpoint(Holder(other, Appraiser(lenient, TrustAnchors.simulated()), envelopes(other)),
                                     [("127.0.0.1", 0)]))
    try:
        with pytest.raises(NoHolder, match=r"the holder's evidence does not verify: spec\[build\]") as info:
            obtain(SoftwareEnclave(), APPRAISER, [HostPort("127.0.0.1", served.port)], within=0)
        assert info.value.present and served.counted == ["granted"]  # it gave; we did not take
    finally:
        served.close()


def test_nobody_listening_is_no_answer() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    sleeps: list[float] = []
    clock = iter(range(100)).__next__
    with pytest.raises(NoHolder, match=r"within 3 s \(.*127\.0\.0\.1:\d+: Connection refused") as info:
        obtain(SoftwareEnclave(), APPRAISER, [HostPort("127.0.0.1", port), HostPort("no-such-host.invalid", 4502)],
               within=3, monotonic=lambda: float(clock()), sleep=sleeps.append)
    assert not info.value.present and "no-such-host.invalid:4502: does not resolve" in str(info.value)
    assert sleeps and all(0 <= pause <= 1 for pause in sleeps)


def test_a_peer_on_our_address_but_another_port_is_asked(running: Running) -> None:
    joiner = SoftwareEnclave()
    obtain(joiner, APPRAISER, [HostPort("127.0.0.1", running.port)], within=0, own={"127.0.0.1:4502"})
    assert running.counted == ["granted"]


def test_our_own_endpoint_is_not_asked(running: Running) -> None:
    with pytest.raises(NoHolder, match="no peer address to ask"):
        obtain(SoftwareEnclave(), APPRAISER, [HostPort("127.0.0.1", running.port)], within=0,
               own={f"127.0.0.1:{running.port}"})
    assert running.counted == []


@pytest.mark.parametrize(("request_bytes", "status", "said"), [
    (b"GET /release/key HTTP/1.1\r\n\r\n", 405, b"GET: only POST"),
    (b"POST /evidence HTTP/1.1\r\n\r\n", 404, b"/evidence: not here"),
    (b"POST /release/key\r\n\r\n", 400, b"expected a request line"),
    (b"POST /release/key HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (MAX_MESSAGE + 1), 413, b"at most"),
    (b"POST /release/key HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400, b"not a number"),
    (b"POST /release/key HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 400, b"Content-Length only"),
    (b"POST /release/key HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 400, b"refused: request: not strict JSON"),
    (b"POST /release/key HTTP/1.1\r\n\r\n", 400, b"refused: request"),
    (b"POST /release/challenge HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", 400, b"takes no body"),
    (b"POST /release/key HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431, b"head over"),
])
def test_a_bad_request_gets_one_line_and_nothing(running: Running, request_bytes: bytes, status: int,
                                                 said: bytes) -> None:
    code, body = exchange(running.port, request_bytes)
    assert code == status and said in body and body.count(b"\n") == 1
    assert running.endpoint.tally.granted == 0


def test_a_challenge_is_fresh_each_time(running: Running) -> None:
    first = exchange(running.port, b"POST /release/challenge HTTP/1.1\r\n\r\n")
    second = exchange(running.port, b"POST /release/challenge HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    assert first[0] == second[0] == 200 and first[1] != second[1]


def test_a_content_length_of_other_digits_is_one_line() -> None:
    holder = SoftwareEnclave()
    served = Running(ReleaseEndpoint(Holder(holder, APPRAISER, envelopes(holder)), [("127.0.0.1", 0)]))
    try:
        code, body = exchange(served.port, b"POST /release/key HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n")
        assert code == 400 and b"not a number" in body
    finally:
        served.close()


def test_past_the_connection_caps_a_joiner_is_told_and_sees_a_holder(running: Running) -> None:
    """Idle connections fill this address's share: the next one gets a 503 at once, not a reset, so a joiner knows
    a holder is there and does not start a key of its own."""
    idle = [socket.create_connection(("127.0.0.1", running.port)) for _ in range(4)]
    try:
        code, body = exchange(running.port, b"POST /release/challenge HTTP/1.1\r\n\r\n")
        assert code == 503 and b"too many connections" in body
        with pytest.raises(NoHolder, match="the holder said 503") as info:
            obtain(SoftwareEnclave(), APPRAISER, [HostPort("127.0.0.1", running.port)], within=0)
        assert info.value.present
    finally:
        for sock in idle:
            sock.close()


def test_a_slow_head_is_cut_off(running: Running) -> None:
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
        sock.sendall(b"POST /release/key HTTP/1.1\r\n")
        assert sock.recv(100) == b""  # closed after HEAD_TIMEOUT_S, unanswered


def test_a_holder_whose_enclave_fails_is_there() -> None:
    """Its 503 is an answer: a joiner must not take it for an empty service and start a key of its own."""
    enclave = SoftwareEnclave()

    def broken(nonce: bytes, label: bytes, key: bytes | None) -> Envelope:
        raise EnclaveError("sim enclave (pid 1): timed out")

    served = Running(ReleaseEndpoint(Holder(enclave, APPRAISER, broken), [("127.0.0.1", 0)]))
    try:
        with pytest.raises(NoHolder, match="the holder said 503 cannot grant now: sim enclave") as info:
            obtain(SoftwareEnclave(), APPRAISER, [HostPort("127.0.0.1", served.port)], within=0)
        assert info.value.present
    finally:
        served.close()


class FakePeer:
    """A TCP peer that answers every connection with `answer`, a byte every `drip` seconds if given."""

    def __init__(self, answer: bytes, drip: float = 0.0) -> None:
        self.answer, self.drip = answer, drip
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                try:
                    if not self.drip:
                        conn.sendall(self.answer)
                    for byte in self.answer if self.drip else b"":
                        conn.sendall(bytes([byte]))
                        time.sleep(self.drip)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("body", [b'{"challenge": "ab"}', b'""', b"[" * 100_000, b'{"challenge": "zz"}'])
def test_a_peer_answering_nonsense_is_skipped_for_the_next(running: Running, body: bytes) -> None:
    odd = FakePeer(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    said: list[str] = []
    try:
        obtained = obtain(SoftwareEnclave(), APPRAISER, [HostPort("127.0.0.1", odd.port),
                                                          HostPort("127.0.0.1", running.port)], within=5,
                          say=said.append)
    finally:
        odd.close()
    assert obtained.source == f"127.0.0.1:{running.port}"
    assert said == [f"key release from 127.0.0.1:{odd.port} refused: challenge: not a JSON object with a challenge "
                    "of 16 to 64 bytes as hex"]


def test_a_dripping_peer_cannot_hold_the_joiner_past_its_window() -> None:
    slow = FakePeer(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100, drip=0.2)
    began = time.monotonic()
    try:
        with pytest.raises(NoHolder) as info:
            obtain(SoftwareEnclave(), APPRAISER, [HostPort("127.0.0.1", slow.port)], within=1, timeout=10)
    finally:
        slow.close()
    assert time.monotonic() - began < 5  # the request's bound is the window's end (at least 1 s), not per read
    assert info.value.present


def test_a_peer_that_answered_the_challenge_and_vanished_is_there() -> None:
    """It answered, so it may hold the key: its later absence must not let a joiner start a key of its own."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def answer_once() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            body = b'{"challenge": "' + b"ab" * 40 + b'"}'
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        server.close()  # gone before the request

    threading.Thread(target=answer_once, daemon=True).start()
    with pytest.raises(NoHolder, match="answered the challenge, then not the request") as info:
        obtain(SoftwareEnclave(), APPRAISER, [HostPort("127.0.0.1", port)], within=0)
    assert info.value.present


def test_a_peer_whose_connection_never_opens_is_not_absence() -> None:
    """SYNs dropped (here: a full accept queue; in life a partition or a firewall) may hide a holder."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    queued = [socket.create_connection(("127.0.0.1", port), timeout=2)]  # the queue (of one) is full
    try:
        with pytest.raises(NoHolder, match="no connection within the time") as info:
            obtain(SoftwareEnclave(), APPRAISER, [HostPort("127.0.0.1", port)], within=1)
        assert info.value.present
    finally:
        for sock in queued:
            sock.close()
        server.close()


def test_what_a_peer_says_reaches_the_log_as_one_printable_line() -> None:
    body = b"refused: \x1b[31mnothing\rkey release: granted the service key to you"
    liar = FakePeer(b"HTTP/1.1 403 Forbidden\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    said: list[str] = []
    try:
        with pytest.raises(NoHolder):
            obtain(SoftwareEnclave(), APPRAISER, [HostPort("127.0.0.1", liar.port)], within=0, say=said.append)
    finally:
        liar.close()
    assert len(said) == 1 and all(c.isprintable() for c in said[0]) and "\x1b" not in said[0]


def test_only_the_founder_starts_a_key_when_alone(tmp_path: Path) -> None:
    """Every replica has the same config; the founder's host name decides which one may start the key."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    (tmp_path / "spec.json").write_bytes(SPEC.encode())

    def config(founder: str) -> ReleaseConfig:
        path = tmp_path / "enclave-ike.toml"
        path.write_text(f'[listen]\naddresses = ["192.0.2.53"]\n[identity]\nbackend = "software"\nid = "@x.example"\n'
                        f'publish = "{tmp_path / "identity.json"}"\n[release]\nsource = "peers"\n'
                        f'peers = ["127.0.0.1:{port}"]\nwhen_alone = "new-key"\nfounder = "{founder}"\n'
                        f'join_timeout_s = 0\nspec = "{tmp_path / "spec.json"}"\nanchors = "sim"\n')
        return load(path).release

    enclave = SoftwareEnclave()
    with pytest.raises(JoinFailed, match=r"only replica-0 may start the service's key \(founder\), and this is"):
        join(config("replica-0"), enclave, envelopes(enclave), lambda line: None)
    assert join(config(socket.gethostname()), enclave, envelopes(enclave), lambda line: None).said == \
        "a new service key (no replica answered)"
