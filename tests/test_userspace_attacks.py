"""Attacks on userspace ESP's promises (docs/enclave-ike.md, "Userspace ESP and the forwarder"): a hostile but
authenticated client's TCP games against enclave_ike/tcp.py through enclave_ike/datapath.py, and CLI mistakes of
`enclave-ike forward`. Each test names the attack and the behaviour the docs promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from enclave_ike import config as config_module
from enclave_ike.datapath import EspDatapath
from enclave_ike.ikev2.config import Endpoint
from enclave_ike.ikev2.constants import ProtocolId
from enclave_ike.ikev2.events import ChildSaRekeyed, SaDeleted
from enclave_ike.relay import FrameReader, Relayed
from tests.test_datapath import NOW, QUERY, Client, answered, child, installed, one
from tests.test_tcp import TcpClient, dns_child, framed


def _setup() -> tuple[EspDatapath, Client]:
    path = EspDatapath()
    event = dns_child()
    path.apply(event, NOW)
    return path, Client.of(event)


def _held(path: EspDatapath) -> int:
    """Octets the datapath's TCP connections hold for their clients (answers unsent, unacknowledged, reassembly)."""
    return sum(len(t.connection._unsent) + len(t.connection._sent) + len(t.connection._received)
               for t in path._tcp.values())


def test_a_zero_window_connection_holding_answers_is_closed_eventually() -> None:
    """Attack: an authenticated client opens a DNS-over-TCP connection, asks one query, then advertises a window of
    0 and goes silent forever (no window update, no RST). Expected: the connection is bounded in time (the docs:
    "idle connections closed after 30 s", a reset after the retransmissions): an hour later it is gone, else any
    client can pin its 64 connection slots (and their answers) for ever."""
    path, esp = _setup()
    client = TcpClient(path, esp)
    client.connect()
    [query] = client.send("PA", framed(QUERY), window=0)
    client.received()
    path.answer(query, b"x" * 500, NOW)
    assert client.received() == []  # the window is 0: nothing may be sent yet
    now = NOW
    for _ in range(400):  # an hour, looked at as serve's tick would, each time the timer is due
        deadline = path.get_timer()
        if deadline is None:
            break
        now = max(now, deadline)
        path.handle_timer(now)
        path.take_outgoing()
        if now > NOW + 3600:
            break
    assert path.tcp_connections == 0, f"a zero-window connection still open {now - NOW:.0f} s later"


def test_answers_queued_behind_a_zero_window_are_bounded() -> None:
    """Attack: an authenticated client advertises a window of 0 and keeps sending queries (its own window stays
    open: the server empties its reassembly buffer after each message) whose answers can never leave. Expected:
    what one connection holds for its client stays bounded (the docs promise bounded resources); here 2000 answers
    of 4000 octets each were asked for, and at most 1 MiB may be held."""
    path, esp = _setup()
    client = TcpClient(path, esp)
    client.connect()
    for i in range(2000):
        queries = client.send("PA", framed(QUERY), window=0)
        client.received()
        for query in queries:
            path.answer(query, bytes([i % 256]) * 4000, NOW)
        path.take_outgoing()
    assert _held(path) <= 1 << 20, f"{_held(path)} octets held for one zero-window connection"


def test_an_answer_for_a_reset_connection_does_not_reach_the_next_connection_on_that_port() -> None:
    """Attack: a client asks a query over TCP, resets the connection, and opens a new one from the same port before
    the resolver answers. Expected (datapath.answer's docstring and the docs): an answer whose connection is gone is
    dropped and counted ("answer after its TCP connection closed"), never written into another connection's
    stream, where it would break that connection's DNS framing and answer a question it never asked."""
    path, esp = _setup()
    first = TcpClient(path, esp, port=40001, isn=1000)
    first.connect()
    [query] = first.send("PA", framed(QUERY))
    first.received()
    first.send("R")
    assert path.tcp_connections == 0
    second = TcpClient(path, esp, port=40001, isn=900_000)
    second.connect()
    path.answer(query, b"the answer to the old connection", NOW)
    data = second.take(second.received())
    assert data == b"", "the first connection's answer was sent on the second"
    assert path.drops["answer after its TCP connection closed"] == 1


def test_a_query_split_across_the_sequence_wrap_is_read_once() -> None:
    """Attack: a client whose initial sequence number sits just below 2**32 sends a query cut in two across the
    wrap, then the first half again. Expected: one query (RFC 9293's modulo arithmetic), no exception."""
    path, esp = _setup()
    client = TcpClient(path, esp, isn=(1 << 32) - 5)
    client.connect()
    client.seq %= 1 << 32
    message = framed(QUERY)
    assert client.send("A", message[:10]) == []
    client.seq %= 1 << 32
    assert client.send("A", message[:10], seq=((1 << 32) - 4)) == []  # again, across the wrap
    queries = client.send("PA", message[10:])
    assert [q.payload for q in queries] == [QUERY]


def test_data_after_the_clients_fin_resets_and_is_not_a_query() -> None:
    """Attack: a client sends FIN, then more data (a query) after it. Expected: the data is no query (it would be
    answered on a half-closed connection); the connection is reset and gone."""
    path, esp = _setup()
    client = TcpClient(path, esp)
    client.connect()
    client.send("FA")
    client.received()
    assert client.send("PA", framed(QUERY)) == []
    flags = [str(s.flags) for s in client.received()]
    assert any("R" in f for f in flags) or path.tcp_connections == 0, flags


def test_a_flood_of_zero_length_dns_messages_is_read_without_holding_anything() -> None:
    """Attack: one segment carries 20000 DNS messages of length 0. Expected: no exception; each is handed out as a
    query (serve's max_queries_in_flight bounds them) and the reassembly buffer is empty afterwards."""
    path, esp = _setup()
    client = TcpClient(path, esp)
    client.connect()
    queries = []
    for _ in range(40):
        queries += client.send("PA", b"\x00\x00" * 500)
    client.received()
    assert len(queries) == 20000
    assert _held(path) == 0


def test_frame_reader_refuses_garbage_at_once_and_holds_at_most_one_frame() -> None:
    """Attack: the stream to serve carries an endless partial frame, then garbage. Expected: at most one frame's
    size is buffered; a wrong first octet is refused at once."""
    frame = Relayed(Endpoint.parse("192.0.2.53", 4500), Endpoint.parse("198.51.100.9", 4500), b"x" * 0xFFFF).encode()
    reader = FrameReader()
    assert reader.feed(frame[:-1]) == []
    assert reader.pending == len(frame) - 1
    assert len(reader.feed(frame[-1:] + frame[:5])) == 1
    assert reader.pending == 5


def _forward(*args: str, timeout: float = 5.0) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([sys.executable, "-m", "enclave_ike.cli", "forward", *args], capture_output=True,
                              text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"`enclave-ike forward {' '.join(args)}` still ran after {timeout} s; stderr: "
                             f"{exc.stderr!r}") from None


def test_forward_with_an_enclave_socket_path_too_long_for_a_unix_socket_is_a_usage_error() -> None:
    """Attack (an operator's mistake): `enclave-ike forward --enclave` names a path longer than a Unix socket
    address can hold (108 octets on Linux). Expected: one clear error line and exit code 2, at once, instead of
    retrying every second for ever a connection that can never be made."""
    result = _forward("--listen", "127.0.0.1", "--ike-port", "47500", "--natt-port", "47501", "--no-evidence",
                      "--enclave", "/tmp/" + "x" * 200 + "/relay.sock")
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_forward_with_one_address_twice_is_one_error_line_not_a_traceback() -> None:
    """Attack (an operator's mistake): `--listen 127.0.0.1 127.0.0.1`. Expected: one error line (no traceback) and
    a non-zero exit code (today 1, "cannot listen on ...: Address already in use")."""
    result = _forward("--listen", "127.0.0.1", "127.0.0.1", "--ike-port", "47504", "--natt-port", "47505",
                      "--no-evidence", "--enclave", "/tmp/nonexistent-enclave-ike-relay.sock")
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.returncode != 0, (result.returncode, result.stderr)


def _config(tmp_path: Path, relay: str) -> Path:
    path = tmp_path / "enclave-ike.toml"
    path.write_text(f'[listen]\naddresses = ["192.0.2.1"]\nrelay = "{relay}"\n[apply]\nmode = "userspace"\n')
    return path


def test_a_relay_path_with_a_nul_is_a_config_error(tmp_path: Path) -> None:
    """Attack (a config mistake): `listen.relay = "/run/a\\u0000b.sock"`, a path no socket can have. Expected: the
    config is refused at load (ConfigError, exit code 2); today it loads, and serve then dies at start with a
    Python traceback (ValueError: embedded null byte, from relay_server.listen_unix) and exit code 1."""
    with pytest.raises(config_module.ConfigError):
        config_module.load(_config(tmp_path, "/run/a\\u0000b.sock"))


def test_serve_with_a_relay_path_with_a_nul_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """The same through `enclave-ike serve`: one clear error line and exit code 2, no traceback."""
    config = _config(tmp_path, str(tmp_path) + "/a\\u0000b.sock")
    try:
        result = subprocess.run([sys.executable, "-m", "enclave_ike.cli", "serve", "--config", str(config)],
                                capture_output=True, text=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        raise AssertionError("serve ran with a relay path holding a NUL") from None
    assert "Traceback" not in result.stderr, result.stderr[-600:]
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr[-600:]
    assert result.returncode == 2, result.returncode


def test_a_relay_path_too_long_for_a_unix_socket_is_a_config_error(tmp_path: Path) -> None:
    """Attack (a config mistake): `listen.relay` longer than a Unix socket address holds (108 octets on Linux; the
    evidence socket beside it, `<relay>.evidence`, is 9 octets longer still). Expected: refused at load as config
    (exit code 2); today it loads and serve stops at start with "cannot listen for the forwarder on ...: AF_UNIX
    path too long" and exit code 1."""
    with pytest.raises(config_module.ConfigError):
        config_module.load(_config(tmp_path, "/run/" + "r" * 150 + ".sock"))


def test_after_the_new_pair_of_a_rekey_is_deleted_answers_go_back_to_the_old_pair() -> None:
    """Attack (an ordering the peer chooses): a Child SA A is rekeyed to B, the peer sends on B (answers move to
    B's outbound SA), then deletes B while A lives on (RFC 7296 2.8.1: the loser of a simultaneous rekey is deleted
    by its initiator, which may have used it meanwhile). Expected: answers never go out on a deleted SA; the query
    that arrives on A is answered on A's outbound SA, which the peer still has."""
    path, old_client, old = installed()
    new = child(0x1002, 0x2002)
    path.apply(ChildSaRekeyed(b"I" * 8, b"R" * 8, old.spi_in, old.spi_out, new), NOW)
    new_client = Client.of(new)
    assert one(path, new_client.query()) is not None  # the peer uses B: answers move to it
    path.take_outgoing()
    path.apply(SaDeleted(b"I" * 8, b"R" * 8, ProtocolId.ESP, "redundant", new.spi_in, new.spi_out), NOW)
    query = one(path, old_client.query())
    assert query is not None
    out = answered(path, query, b"an answer")
    assert out is not None
    spi = int.from_bytes(out.packet[:4], "big")
    assert spi != 0x2002, "the answer went out on the outbound SA the peer deleted"
    assert old_client.into.open(out.packet, NOW)[0].endswith(b"an answer")


def test_a_connection_kept_alive_by_bare_acks_but_asking_nothing_is_closed_as_idle() -> None:
    """Attack: an authenticated client opens DNS-over-TCP connections and asks nothing, sending only a bare ACK
    (a TCP keepalive) every 20 s. Expected: the docs' "idle connections closed after 30 s" (RFC 7766 6.2.3: idle
    means no DNS message); ten minutes later the connection is closed. Otherwise one client address (32 IKE SAs x 8
    Child SAs x 64 connections) holds all 4096 connection slots for ever and every other client's SYN is reset."""
    path, esp = _setup()
    client = TcpClient(path, esp)
    client.connect()
    for step in range(1, 31):
        client.now = NOW + 20 * step
        while (deadline := path.get_timer()) is not None and deadline <= client.now:
            path.handle_timer(deadline)
        client.received()
        if path.tcp_connections == 0:
            break
        client.send("A", seq=client.seq - 1)  # a keepalive: one octet before what was sent, no data
        client.received()
    assert path.tcp_connections == 0, "a connection that asked nothing for 10 minutes is still open"
