"""The holder's release endpoint over real TCP on loopback, and the joiner's walk over its peers (`obtain`): a key
obtained end to end, every malformed HTTP request answered with one line and nothing granted, and the outcome that
decides whether a lone replica may start a key of its own (did any peer answer?)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest

from enclave_ike.config import HostPort
from enclave_ike.enclave.attest import envelopes
from enclave_ike.enclave.sealing import spki
from enclave_ike.enclave.software import SoftwareEnclave
from enclave_ike.release.appraise import Appraiser
from enclave_ike.release.endpoint import ReleaseEndpoint
from enclave_ike.release.holder import Holder
from enclave_ike.release.messages import MAX_MESSAGE
from enclave_ike.release.obtain import NoHolder, obtain
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
    assert info.value.answered
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
        assert info.value.answered and served.counted == ["granted"]  # it gave; we did not take
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
               within=3, clock=lambda: float(clock()), sleep=sleeps.append)
    assert not info.value.answered and "no-such-host.invalid:4502: does not resolve" in str(info.value)
    assert sleeps and all(0 <= pause <= 1 for pause in sleeps)


def test_our_own_addresses_are_not_asked(running: Running) -> None:
    with pytest.raises(NoHolder, match="no peer address to ask"):
        obtain(SoftwareEnclave(), APPRAISER, [HostPort("127.0.0.1", running.port)], within=0, own={"127.0.0.1"})
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
