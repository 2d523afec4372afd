"""DNS over TCP inside userspace ESP (enclave_ike/tcp.py through enclave_ike/datapath.py): a client made of scapy's
TCP segments, sealed with the ESP core, talks to the datapath; every segment that comes back is opened and read
by scapy (its checksums recomputed and compared). Handshake, queries split and reordered, answers cut to the MSS
and the window, retransmission and its limit, closing from both sides, resets, limits, and random segments."""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP

from enclave_ike import datapath as datapath_module
from enclave_ike import tcp
from enclave_ike.datapath import DnsQuery, EspDatapath
from enclave_ike.ikev2.config import Mode
from enclave_ike.ikev2.constants import ProtocolId
from enclave_ike.ikev2.events import ChildSaEstablished, SaDeleted
from enclave_ike.ikev2.payloads import TrafficSelector
from tests.test_datapath import CLIENT, LOCAL, NOW, QUERY, RESOLVER, SOURCE, Client, child

CLIENT_PORT = 40001


class TcpClient:
    """One client connection: scapy builds its segments, the ESP core seals them; what comes back is parsed."""

    def __init__(self, path: EspDatapath, esp: Client, port: int = CLIENT_PORT, isn: int = 1000) -> None:
        self.path, self.esp, self.port = path, esp, port
        self.seq, self.ack = isn, 0
        self.now = NOW

    def send(self, flags: str, payload: bytes = b"", seq: int | None = None, window: int = 65535,
             options: list[tuple[str, int]] | None = None) -> list[DnsQuery]:
        segment = TCP(sport=self.port, dport=53, seq=self.seq if seq is None else seq, ack=self.ack, flags=flags,
                      window=window, options=options or [])
        packet = bytes(IP(src=str(CLIENT), dst=str(RESOLVER)) / segment / payload)
        if seq is None:
            self.seq += len(payload) + ("S" in flags) + ("F" in flags)
        return self.path.receive(self.esp.out.seal(packet, 4, self.now), SOURCE, LOCAL, self.now)

    def received(self) -> list[TCP]:
        """The segments the datapath sent, checked: addresses, ports, and both checksums as scapy computes them."""
        out = []
        for outgoing in self.path.take_outgoing():
            assert (outgoing.peer, outgoing.local) == (SOURCE, LOCAL)
            inner, next_header = self.esp.into.open(outgoing.packet, self.now)
            assert next_header == 4
            packet = IP(inner)
            assert (packet.src, packet.dst, packet[TCP].sport, packet[TCP].dport) == (
                str(RESOLVER), str(CLIENT), 53, self.port)
            del packet.chksum, packet[TCP].chksum
            assert bytes(packet) == inner, "a checksum is wrong"
            out.append(packet[TCP])
        return out

    def connect(self) -> TCP:
        assert self.send("S", options=[("MSS", 1460)]) == []
        [syn_ack] = self.received()
        assert syn_ack.flags == "SA" and syn_ack.ack == self.seq
        self.ack = syn_ack.seq + 1
        assert self.send("A") == []
        assert self.received() == []
        return syn_ack

    def take(self, segments: list[TCP]) -> bytes:
        """What the segments carry, acknowledged (in order, as they came)."""
        data = b""
        for segment in segments:
            payload = bytes(segment.payload)
            if payload:
                assert segment.seq == self.ack, (segment.seq, self.ack)
                data += payload
                self.ack += len(payload)
        return data


def framed(message: bytes) -> bytes:
    return struct.pack("!H", len(message)) + message


@pytest.fixture
def path() -> EspDatapath:
    return EspDatapath()


def dns_child() -> ChildSaEstablished:
    """A tunnel-mode Child SA for udp and tcp port 53 (ikectl's conns have one per protocol; one for both here)."""
    return replace(child(0x1001, 0x2001, mode=Mode.TUNNEL),
                   local_ts=(TrafficSelector(RESOLVER, RESOLVER, 0, 53, 53),),
                   remote_ts=(TrafficSelector(CLIENT, CLIENT, 0, 0, 65535),))


@pytest.fixture
def esp(path: EspDatapath) -> Client:
    event = dns_child()
    path.apply(event, NOW)
    return Client.of(event)


def test_a_query_over_tcp_is_answered_and_the_connection_closed_by_the_client(path: EspDatapath, esp: Client):
    client = TcpClient(path, esp)
    syn_ack = client.connect()
    assert dict(syn_ack.options)["MSS"] == tcp.OUR_MSS and len(syn_ack.options) == 1  # no SACK, scaling, stamps
    [query] = client.send("PA", framed(QUERY))
    assert query == DnsQuery(1, SOURCE, LOCAL, CLIENT, RESOLVER, CLIENT_PORT, 53, QUERY, 6, connection=1)
    [ack] = client.received()
    assert ack.flags == "A" and ack.ack == client.seq
    path.answer(query, b"the answer", NOW)
    assert client.take(client.received()) == framed(b"the answer")
    client.send("A")
    client.send("FA")
    ack_and_fin = client.received()
    assert [str(s.flags) for s in ack_and_fin] == ["A", "FA"] and ack_and_fin[-1].ack == client.seq
    client.ack += 1
    client.send("A")
    assert path.tcp_connections == 0


def test_our_fin_waits_for_the_answers_still_owed(path: EspDatapath, esp: Client):
    client = TcpClient(path, esp)
    client.connect()
    [query] = client.send("PA", framed(QUERY))
    client.send("FA")  # the client is done sending; the answer is still to come
    assert [str(s.flags) for s in client.received()] == ["A", "A"]
    path.answer(query, b"late", NOW)
    segments = client.received()
    assert [str(s.flags) for s in segments] == ["PA", "FA"]
    assert client.take(segments) == framed(b"late")


def test_a_split_query_reordered_and_retransmitted_is_read_once(path: EspDatapath, esp: Client):
    client = TcpClient(path, esp)
    client.connect()
    message = framed(QUERY)
    start = client.seq
    assert client.send("PA", message[10:], seq=start + 10) == []  # ahead of what it has: dropped, ACK of where
    [dup_ack] = client.received()
    assert dup_ack.ack == start
    assert client.send("PA", message[:10], seq=start) == []
    assert client.send("PA", message[:10], seq=start) == []  # again: nothing new
    queries = client.send("PA", message[5:], seq=start + 5)  # overlapping: the new part is taken
    client.seq = start + len(message)
    assert [q.payload for q in queries] == [QUERY]
    assert client.received()[-1].ack == client.seq


def test_two_queries_in_one_segment_and_a_large_answer_cut_to_the_mss_and_window(path: EspDatapath, esp: Client):
    client = TcpClient(path, esp)
    client.connect()
    queries = client.send("PA", framed(QUERY) + framed(QUERY[:12] + b"second"), window=2000)
    assert [q.payload for q in queries] == [QUERY, QUERY[:12] + b"second"]
    client.received()
    big = bytes(range(256)) * 20  # 5120 octets
    path.answer(queries[0], big, NOW)
    first = client.received()
    assert [len(s.payload) for s in first] == [tcp.OUR_MSS, 2000 - tcp.OUR_MSS]  # within the 2000-octet window
    data = client.take(first)
    client.send("A", window=65535)
    data += client.take(client.received())
    assert data == framed(big)


def test_an_unacknowledged_answer_is_sent_again_then_the_connection_is_reset(path: EspDatapath, esp: Client):
    client = TcpClient(path, esp)
    client.connect()
    [query] = client.send("PA", framed(QUERY))
    client.received()
    path.answer(query, b"answer", NOW)
    [first] = client.received()
    now, rto = NOW, tcp.INITIAL_RTO_S
    for _ in range(tcp.MAX_RETRANSMITS):
        now += rto * 2
        client.now = now
        path.handle_timer(now)
        [again] = client.received()
        assert (again.seq, bytes(again.payload)) == (first.seq, bytes(first.payload))
        rto *= 2
    client.now = now = now + tcp.MAX_RTO_S * 2
    path.handle_timer(now)
    [reset] = client.received()
    assert "R" in str(reset.flags) and path.tcp_connections == 0


def test_an_idle_connection_is_closed_by_us(path: EspDatapath, esp: Client):
    client = TcpClient(path, esp)
    client.connect()
    assert path.get_timer() == NOW + tcp.IDLE_TIMEOUT_S
    client.now = NOW + tcp.IDLE_TIMEOUT_S
    path.handle_timer(client.now)
    [fin] = client.received()
    assert str(fin.flags) == "FA"
    client.ack += 1
    client.send("FA")  # the client's ACK of our FIN, with its own FIN
    [last_ack] = client.received()
    assert last_ack.ack == client.seq and path.tcp_connections == 0


def test_segments_for_no_connection_get_a_reset_and_open_nothing(path: EspDatapath, esp: Client):
    client = TcpClient(path, esp)
    assert client.send("PA", framed(QUERY)) == []
    [reset] = client.received()
    assert str(reset.flags) == "R" and path.tcp_connections == 0
    assert path.drops["TCP segment for no connection"] == 1
    client.send("R")
    assert client.received() == []  # a reset is never answered


def test_connections_past_the_limit_are_reset(path: EspDatapath, esp: Client, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(datapath_module, "MAX_TCP_PER_FLOW", 3)
    for port in range(3):
        TcpClient(path, esp, port=50000 + port).connect()
    late = TcpClient(path, esp, port=50010)
    late.send("S")
    [reset] = late.received()
    assert str(reset.flags) == "RA" and path.drops["TCP connections past the limit"] == 1
    assert path.tcp_connections == 3


def test_a_blind_reset_outside_the_window_is_ignored(path: EspDatapath, esp: Client):
    client = TcpClient(path, esp)
    client.connect()
    client.send("R", seq=client.seq + 100_000)
    assert path.tcp_connections == 1
    client.send("R")
    assert path.tcp_connections == 0


def test_connections_go_with_their_child_sa(path: EspDatapath, esp: Client):
    TcpClient(path, esp).connect()
    path.apply(SaDeleted(b"I" * 8, b"R" * 8, ProtocolId.ESP, "gone", (0x1001).to_bytes(4, "big"),
                         (0x2001).to_bytes(4, "big")), NOW)
    assert path.tcp_connections == 0 and path.get_timer() is None


FLAGS = st.sampled_from(["S", "A", "PA", "FA", "R", "RA", "SA", "", "FPA", "U"])


@given(st.lists(st.tuples(FLAGS, st.binary(max_size=80), st.integers(-3000, 3000), st.booleans(),
                          st.floats(0, 100)), max_size=25))
@settings(max_examples=300, deadline=None)
def test_any_sequence_of_segments_is_handled_without_an_exception(steps):
    """Whatever a client sends, in whatever order and at whatever time: no exception, every segment that comes back
    is well formed, and no more connections than SYNs."""
    path = EspDatapath()
    event = dns_child()
    path.apply(event, NOW)
    client = TcpClient(path, Client.of(event))
    syns = 0
    for flags, payload, offset, answer, later in steps:
        client.now += later
        syns += flags == "S"
        for query in client.send(flags, payload, seq=(client.seq + offset) % 2**32):
            if answer:
                path.answer(query, b"x" * len(payload), client.now)
        path.handle_timer(client.now)
        client.received()
        assert path.tcp_connections <= min(syns, 1)  # one client port: one connection at most, and only from a SYN
