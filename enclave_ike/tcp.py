"""DNS over TCP (RFC 7766) inside userspace ESP: the server's side of TCP (RFC 9293), as much as DNS needs, sans-I/O.

A process enclave has no kernel of its own to end TCP in, so enclave-ike does it for port 53 only:

- The handshake: a SYN is answered with a SYN-ACK offering our MSS and nothing else (no window scaling, SACK or
  timestamps: the client then uses none of them, RFC 7323 and 2018). Our initial sequence number is random.
- Receiving: in-order data only; a segment ahead of what we expect is dropped and answered with an ACK of what we
  have (the client retransmits), data already received is trimmed. The stream is cut into DNS messages at their
  two-octet length prefixes. The window we offer is what the reassembly buffer has room for.
- Sending: answers are queued, cut into MSS-sized segments within the client's window, and sent again from the
  first unacknowledged octet when the retransmission timer fires (RFC 6298's initial 1 s, doubled each time); after
  `MAX_RETRANSMITS` the connection is reset.
- Closing: the client's FIN is acknowledged and ours follows once every answer is out. A connection idle for
  `IDLE_TIMEOUT_S` is closed by us (RFC 7766 6.2.3), where idle means that no DNS octet came in and nothing we
  sent was newly acknowledged (a bare or duplicate ACK, a keepalive, keeps nothing open): with nothing owed, with
  a FIN; with answers stuck behind a window the client keeps at 0, with a reset. A RST ends it at once.
- Bounded: at most `MAX_HELD` octets of answers wait for one client (past that the connection is reset: a client
  that does not read its answers gets no more), and the reassembly buffer holds one message at most.

`TcpConnection` is one connection; it returns the DNS messages a segment completed and keeps the segments to
send in `outbox` (see `Segment`). It never reads the clock: callers pass `now`.
"""

from __future__ import annotations

import enum
import struct
from collections import deque
from dataclasses import dataclass, field

from .ikev2.payloads import Address
from .inet import IP_PROTO_TCP, InetRefused, internet_checksum, pseudo_header

TCP_HEADER = struct.Struct("!HHIIBBHHH")  # ports, seq, ack, data offset, flags, window, checksum, urgent pointer
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
MSS_OPTION = 2
OUR_MSS = 1300  # below any path MTU ESP in UDP leaves over Ethernet (1500 - outer headers - ESP - inner headers)
DEFAULT_MSS = 536  # RFC 9293 3.7.1: when the peer sends none
RECEIVE_BUFFER = 2 + 0xFFFF  # one DNS message of the largest size, and its length prefix
INITIAL_RTO_S = 1.0
MAX_RTO_S = 60.0
MAX_RETRANSMITS = 6
IDLE_TIMEOUT_S = 30.0
MAX_HELD = 256 * 1024  # octets of answers unsent or unacknowledged per connection
MOD = 1 << 32


def _after(a: int, b: int) -> bool:
    """`a` comes after `b` in sequence space (RFC 9293 3.4: modulo 2**32)."""
    return 0 < (a - b) % MOD < MOD // 2


class TcpRefused(InetRefused):
    """A TCP segment too malformed to act on; the text names a drop counter."""


@dataclass(frozen=True)
class Segment:
    """One TCP segment, in or out."""

    source_port: int
    destination_port: int
    seq: int
    ack: int
    flags: int
    window: int
    payload: bytes = field(default=b"", repr=False)
    mss: int | None = None

    @classmethod
    def parse(cls, data: bytes) -> Segment:
        if len(data) < TCP_HEADER.size:
            raise TcpRefused("short TCP")
        sport, dport, seq, ack, offset, flags, window, _, _ = TCP_HEADER.unpack_from(data)
        header = (offset >> 4) * 4
        if header < TCP_HEADER.size or header > len(data):
            raise TcpRefused("TCP header length")
        return cls(sport, dport, seq, ack, flags & 0x3F, window, data[header:], _mss(data[TCP_HEADER.size:header]))

    def encode(self, source: Address, destination: Address) -> bytes:
        """The segment with its checksum over the pseudo-header of `source` and `destination`."""
        options = struct.pack("!BBH", MSS_OPTION, 4, self.mss) if self.mss is not None else b""
        offset = (TCP_HEADER.size + len(options)) // 4 << 4
        header = TCP_HEADER.pack(self.source_port, self.destination_port, self.seq, self.ack, offset, self.flags,
                                 self.window, 0, 0) + options
        length = len(header) + len(self.payload)
        checksum = internet_checksum(pseudo_header(source, destination, IP_PROTO_TCP, length) + header + self.payload)
        return header[:16] + checksum.to_bytes(2, "big") + header[18:] + self.payload


def _mss(options: bytes) -> int | None:
    """The MSS option's value (RFC 9293 3.2), if any; other options are skipped."""
    at = 0
    while at < len(options):
        kind = options[at]
        if kind == 0:  # end of options
            return None
        if kind == 1:  # no-operation
            at += 1
            continue
        if at + 1 >= len(options) or options[at + 1] < 2:
            raise TcpRefused("TCP options")
        size = options[at + 1]
        if kind == MSS_OPTION and size == 4 and at + 4 <= len(options):
            value: int = struct.unpack_from("!H", options, at + 2)[0]
            return value
        at += size
    return None


class State(enum.Enum):
    SYN_RECEIVED = "syn-received"
    ESTABLISHED = "established"
    CLOSING = "closing"  # our FIN is out (after theirs, or because the connection was idle)
    CLOSED = "closed"


class TcpConnection:
    """The server's side of one connection, from the client's SYN; see the module's docstring."""

    def __init__(self, syn: Segment, isn: int, now: float) -> None:
        self.client_port, self.server_port = syn.source_port, syn.destination_port
        self.state = State.SYN_RECEIVED
        self.rcv_nxt = (syn.seq + 1) % MOD
        self.iss = isn
        self.snd_una = isn
        self.snd_nxt = (isn + 1) % MOD  # the SYN takes one
        self.peer_window = syn.window
        self.mss = min(syn.mss or DEFAULT_MSS, OUR_MSS)
        self.outbox: deque[Segment] = deque()
        self.pending_answers = 0  # queries handed out whose answers have not come back
        self._received = bytearray()
        self._unsent = bytearray()  # answers not sent yet
        self._sent = bytearray()  # sent and not acknowledged, from snd_una (the SYN and FIN aside)
        self._peer_fin = False  # the client closed its side
        self._fin_seq: int | None = None  # the sequence number of our FIN, once sent
        self._rto = INITIAL_RTO_S
        self._retransmits = 0
        self._retransmit_at: float | None = now + self._rto
        self.last_activity = now
        self._emit(SYN | ACK, self.iss, b"", mss=OUR_MSS)

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    # --- in ---

    def receive(self, segment: Segment, now: float) -> list[bytes]:
        """The DNS messages this segment completed (their length prefixes removed)."""
        if self.closed:
            return []
        if segment.flags & RST:
            if self._in_window(segment.seq):  # RFC 5961 3.2: a blind reset must hit the window
                self.state = State.CLOSED
            return []
        if segment.flags & SYN:
            if self.state is State.SYN_RECEIVED and (segment.seq + 1) % MOD == self.rcv_nxt:
                self._emit(SYN | ACK, self.iss, b"", mss=OUR_MSS)  # our SYN-ACK was lost: again
            else:
                self._ack()  # RFC 5961 4: a SYN inside a connection gets an ACK, never a reset of it
            return []
        if not segment.flags & ACK:
            return []
        self._acknowledged(segment, now)
        messages = self._data(segment, now)
        if segment.flags & FIN and not self._peer_fin \
                and (segment.seq + len(segment.payload)) % MOD == self.rcv_nxt and self.state is not State.SYN_RECEIVED:
            self._peer_fin = True
            self.rcv_nxt = (self.rcv_nxt + 1) % MOD
            self._ack()
        self._push(now)
        if self._peer_fin and self._fin_seq is not None and self.snd_una == self.snd_nxt:
            self.state = State.CLOSED  # both FINs are acknowledged (no TIME-WAIT: the client's side keeps it)
        return messages

    def _in_window(self, seq: int) -> bool:
        return (seq - self.rcv_nxt) % MOD < max(1, self._window())

    def _acknowledged(self, segment: Segment, now: float) -> None:
        ack = segment.ack
        if not (_after(ack, self.snd_una) and not _after(ack, self.snd_nxt)):
            if ack == self.snd_una:
                self.peer_window = segment.window  # a window update
            return
        acked = (ack - self.snd_una) % MOD
        if self.state is State.SYN_RECEIVED:
            self.state = State.ESTABLISHED
            acked -= 1  # our SYN
        if self._fin_seq is not None and ack == (self._fin_seq + 1) % MOD:
            acked -= 1  # our FIN
        del self._sent[:acked]
        self.snd_una, self.peer_window = ack, segment.window
        self.last_activity = now  # new octets acknowledged: the client reads
        self._retransmits, self._rto = 0, INITIAL_RTO_S
        self._retransmit_at = now + self._rto if self.snd_una != self.snd_nxt else None

    def _data(self, segment: Segment, now: float) -> list[bytes]:
        if not segment.payload or self.state is State.SYN_RECEIVED:
            return []
        behind = (self.rcv_nxt - segment.seq) % MOD
        if behind >= MOD // 2:  # ahead of what we have: dropped, the client sends it again
            self._ack()
            return []
        payload = segment.payload[behind:][:self._window()]
        if not payload:  # all of it seen before, or no room: say where we are
            self._ack()
            return []
        if self._fin_seq is not None or self._peer_fin:  # new data nothing can answer any more
            self._reset()
            return []
        self._received += payload
        self.rcv_nxt = (self.rcv_nxt + len(payload)) % MOD
        self.last_activity = now  # new DNS octets
        self._ack()
        messages = []
        while len(self._received) >= 2:
            size = int.from_bytes(self._received[:2], "big")
            if len(self._received) < 2 + size:
                break
            messages.append(bytes(self._received[2:2 + size]))
            del self._received[:2 + size]
        self.pending_answers += len(messages)
        return messages

    def _window(self) -> int:
        return RECEIVE_BUFFER - len(self._received)

    # --- out ---

    def answer(self, message: bytes | None, now: float) -> None:
        """One DNS answer for a query this connection gave out (its length prefix is added here); None: the
        resolver gave none (the client's own timeout handles that query)."""
        self.pending_answers = max(0, self.pending_answers - 1)
        if message is not None and self._fin_seq is None and not self.closed and len(message) <= 0xFFFF:
            if len(self._unsent) + len(self._sent) + 2 + len(message) > MAX_HELD:
                self._reset()  # the client does not read its answers: it gets no more
                return
            self._unsent += len(message).to_bytes(2, "big") + message
        self._push(now)

    def _push(self, now: float) -> None:
        """Send what the client's window allows; our FIN once the client closed and every answer is out."""
        if self.state is not State.ESTABLISHED:
            return
        while self._unsent:
            room = min(self.peer_window - len(self._sent), self.mss)
            if room <= 0:
                break
            chunk = bytes(self._unsent[:room])
            del self._unsent[:room]
            self._emit(PSH | ACK, self.snd_nxt, chunk)
            self._sent += chunk
            self.snd_nxt = (self.snd_nxt + len(chunk)) % MOD
            if self._retransmit_at is None:
                self._retransmit_at = now + self._rto
        if self._peer_fin and not self._unsent and self.pending_answers == 0:
            self._close(now)  # behind the last answer, acknowledged or not: a retransmission resends both

    def _close(self, now: float) -> None:
        self._fin_seq = self.snd_nxt
        self._emit(FIN | ACK, self.snd_nxt, b"")
        self.snd_nxt = (self.snd_nxt + 1) % MOD
        self.state = State.CLOSING
        self._retransmit_at = now + self._rto

    def _ack(self) -> None:
        self._emit(ACK, self.snd_nxt, b"")

    def _emit(self, flags: int, seq: int, payload: bytes, mss: int | None = None) -> None:
        self.outbox.append(Segment(self.server_port, self.client_port, seq, self.rcv_nxt if flags & ACK else 0,
                                   flags, min(self._window(), 0xFFFF), payload, mss))

    # --- the clock ---

    def get_timer(self) -> float | None:
        if self.closed:
            return None
        idle = self.last_activity + IDLE_TIMEOUT_S
        return idle if self._retransmit_at is None else min(self._retransmit_at, idle)

    def handle_timer(self, now: float) -> None:
        if self.closed:
            return
        if self._retransmit_at is not None and now >= self._retransmit_at:
            self._retransmit(now)
        elif now >= self.last_activity + IDLE_TIMEOUT_S:
            self.last_activity = now
            if self.state is State.ESTABLISHED and not self._unsent and not self._sent and self.pending_answers == 0:
                self._close(now)  # idle: RFC 7766 6.2.3 lets the server close
            elif self.state is State.ESTABLISHED:
                self._reset()  # answers stuck behind a window the client keeps shut
            else:
                self.state = State.CLOSED  # a half-open or half-closed connection that went quiet

    def _reset(self) -> None:
        self._emit(RST | ACK, self.snd_nxt, b"")
        self.state = State.CLOSED
        self._unsent.clear()
        self._sent.clear()

    def _retransmit(self, now: float) -> None:
        if self._retransmits >= MAX_RETRANSMITS:
            self._reset()
            return
        self._retransmits += 1
        self._rto = min(self._rto * 2, MAX_RTO_S)
        self._retransmit_at = now + self._rto
        if self.state is State.SYN_RECEIVED:
            self._emit(SYN | ACK, self.iss, b"", mss=OUR_MSS)
        elif self._sent:
            self._emit(PSH | ACK, self.snd_una, bytes(self._sent[:self.mss]))
        elif self._fin_seq is not None and self.snd_una != self.snd_nxt:
            self._emit(FIN | ACK, self._fin_seq, b"")
        else:
            self._retransmit_at = None


def reset_for(segment: Segment) -> Segment | None:
    """RFC 9293 3.10.7.1: the RST answering a segment that belongs to no connection (none answers a RST)."""
    if segment.flags & RST:
        return None
    if segment.flags & ACK:
        return Segment(segment.destination_port, segment.source_port, segment.ack, 0, RST, 0)
    length = len(segment.payload) + (1 if segment.flags & SYN else 0) + (1 if segment.flags & FIN else 0)
    return Segment(segment.destination_port, segment.source_port, 0, (segment.seq + length) % MOD, RST | ACK, 0)
