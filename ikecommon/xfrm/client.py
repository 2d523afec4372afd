"""The XFRM client: policies and SAs of one network namespace over NETLINK_XFRM, through pyroute2.

    with XfrmClient(netns="ikt-123-client") as xfrm:
        xfrm.add_policy(Policy(Selector.of("10.0.0.1/32", "10.0.0.53/32", "udp", dport=53),
                               Direction.OUT, priority=OWNED_PRIORITY_MIN, action=Action.BLOCK))
        for policy in xfrm.policies(): ...

Input is validated when the model objects are built; the kernel's refusals become KernelRefused
subclasses carrying the kernel's own message; replies that do not decode become XfrmDecodeError.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import struct
from collections.abc import AsyncGenerator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from ipaddress import ip_address

from pyroute2 import config as pyroute2_config
from pyroute2 import netns as pyroute2_netns
from pyroute2.netlink import NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nlsocket import NetlinkSocket

from . import codec, decode
from . import messages as m
from .constants import NETLINK_XFRM, Action, Direction, Group, MsgType
from .errors import InvalidXfrmInput, KernelRefused, XfrmDecodeError, XfrmError, refusal
from .model import Address, Policy, SaInfo, SaSpec, algorithm

SOL_NETLINK, NETLINK_ADD_MEMBERSHIP = 270, 1
DEFAULT_GROUPS = (Group.ACQUIRE, Group.EXPIRE, Group.SA, Group.POLICY)
ACK_TIMEOUT_S = 5.0  # Batches: the kernel answers at once, or something is badly wrong
# pyroute2 does its namespace work (create, sockets in another netns) in a forked helper and gives it 2 s to answer.
# A loaded machine is slower: under TCG, with two VMs side by side, the guest's ESP probe timed out there. Waiting
# longer costs nothing when the helper is quick.
NETNS_HELPER_TIMEOUT_S = 30
pyroute2_config.default_communicate_timeout = max(pyroute2_config.default_communicate_timeout,
                                                  NETNS_HELPER_TIMEOUT_S)


class XfrmClient:
    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        try:
            # flags=0: a missing namespace is an error, not something to create.
            self._sock = NetlinkSocket(family=NETLINK_XFRM, netns=netns, flags=0, ext_ack=True)
        except FileNotFoundError:
            raise XfrmError(f"no network namespace named {netns!r}") from None
        self._sock.set_marshal(m.XfrmMarshal())
        self._sock.bind()

    def __enter__(self) -> XfrmClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def _request(self, operation: str, msg: m.XfrmMsg, msg_type: MsgType, flags: int) -> list[decode.Record]:
        try:
            replies = list(self._sock.nlm_request(msg, msg_type=int(msg_type), msg_flags=flags))
        except NetlinkError as exc:
            raise refusal(operation, exc.code, exc.args[1] if len(exc.args) > 1 else None) from None
        return [decode.check(reply) for reply in replies if reply["header"]["type"] in m.MESSAGE_CLASSES]

    # --- policies ---

    def policies(self) -> list[Policy]:
        records = self._request("list policies", m.empty(), MsgType.GETPOLICY, NLM_F_REQUEST | NLM_F_DUMP)
        return [codec.policy_from(r.fields, r.attrs) for r in records]

    def add_policy(self, policy: Policy) -> None:
        _addable(policy)
        self._request(f"add policy {_describe(policy)}", codec.encode_policy(policy), MsgType.NEWPOLICY,
                      NLM_F_REQUEST | NLM_F_ACK)

    def update_policy(self, policy: Policy) -> None:
        """Add, or replace the policy with the same selector, direction and mark."""
        _addable(policy)
        self._request(f"update policy {_describe(policy)}", codec.encode_policy(policy), MsgType.UPDPOLICY,
                      NLM_F_REQUEST | NLM_F_ACK)

    def delete_policy(self, policy: Policy) -> None:
        _settable(policy)
        self._request(f"delete policy {_describe(policy)}", codec.encode_policy_id(policy), MsgType.DELPOLICY,
                      NLM_F_REQUEST | NLM_F_ACK)

    def flush_owned(self) -> list[Policy]:
        """Delete the policies this project owns (priority band) and return them; touch nothing else."""
        owned = [p for p in self.policies() if p.owned]
        for policy in owned:
            with contextlib.suppress(KernelRefused):  # gone meanwhile: that is what we wanted
                self.delete_policy(policy)
        return owned

    # --- SAs ---

    def sas(self, show_keys: bool = False) -> list[SaInfo]:
        """The namespace's SAs, read-only. Keys are left out unless `show_keys`."""
        records = self._request("list SAs", m.empty(), MsgType.GETSA, NLM_F_REQUEST | NLM_F_DUMP)
        return [codec.sa_from(r.fields, r.attrs, show_keys) for r in records]

    def add_sa(self, spec: SaSpec) -> None:
        self._request(f"add SA spi 0x{spec.spi:08x} {spec.src} -> {spec.dst}", codec.encode_sa(spec),
                      MsgType.NEWSA, NLM_F_REQUEST | NLM_F_ACK)

    def delete_sa(self, dst: Address, spi: int) -> None:
        self._request(f"delete SA spi 0x{spi:08x} to {dst}", codec.encode_sa_id(dst, spi), MsgType.DELSA,
                      NLM_F_REQUEST | NLM_F_ACK)


@dataclass(frozen=True)
class Request:
    """One XFRM request encoded once, for `Batches.run`, which sends many in one datagram. `operation` is what a
    refusal calls it. Input is checked when the request is made (InvalidXfrmInput: nothing is ever sent)."""

    operation: str
    message: bytes  # the whole netlink message; its sequence number is set when it is sent

    @classmethod
    def add_sa(cls, spec: SaSpec) -> Request:
        return cls._of(f"add SA spi 0x{spec.spi:08x} {spec.src} -> {spec.dst}", codec.sa_parts(spec), MsgType.NEWSA)

    @classmethod
    def delete_sa(cls, dst: Address, spi: int) -> Request:
        return cls._of(f"delete SA spi 0x{spi:08x} to {dst}", codec.sa_id_parts(dst, spi), MsgType.DELSA)

    @classmethod
    def update_policy(cls, policy: Policy) -> Request:
        """Add the policy, or replace the one with the same selector, direction and mark."""
        _addable(policy)
        return cls._of(f"update policy {_describe(policy)}", codec.policy_parts(policy), MsgType.UPDPOLICY)

    @classmethod
    def delete_policy(cls, policy: Policy) -> Request:
        _settable(policy)
        return cls._of(f"delete policy {_describe(policy)}", codec.policy_id_parts(policy), MsgType.DELPOLICY)

    @classmethod
    def _of(cls, operation: str, parts: m.Parts, msg_type: MsgType) -> Request:
        return cls(operation, parts.pack(int(msg_type), NLM_F_REQUEST | NLM_F_ACK))


SEQUENCE_NUMBER = struct.Struct("=I")
SEQUENCE_OFFSET = 8  # in struct nlmsghdr: length (4), type (2), flags (2), then the sequence number
# Per datagram: well under the send buffer (212,992 bytes by default), and few enough answers for the receive
# buffer, which counts each answer at its allocated size: 136 answers at once overflowed it here (ENOBUFS).
MAX_DATAGRAM, MAX_REQUESTS = 32 << 10, 64
MAX_STALE_READS = 1024  # before a batch: more than any earlier batch can have left behind
NETLINK_CAP_ACK = 10  # a refusal quotes the request's header only, not all of it
NETLINK_EXT_ACK = 11  # and adds the kernel's own words


class Batches:
    """Requests sent in one datagram, the kernel's answer to each read back: one system call each way, where
    `XfrmClient` makes a round trip (and pyroute2 runs an event loop) per request. Not thread-safe: one caller
    at a time."""

    def __init__(self, netns: str | None = None) -> None:
        sock: socket.socket | None = None
        try:
            sock = _netlink_socket(netns)
            sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            sock.connect((0, 0))  # answers from the kernel only, never from another process
            sock.settimeout(ACK_TIMEOUT_S)
        except OSError as exc:  # out of descriptors or memory, or a kernel older than these options
            if sock is not None:
                sock.close()
            raise XfrmError(f"a netlink socket for XFRM requests: {exc.strerror or exc}") from None
        self._sock = sock
        self._sequence = 0  # numbers go on rising, so a late answer to a batch that timed out matches nothing

    def __enter__(self) -> Batches:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def run(self, requests: Sequence[Request]) -> list[XfrmError | None]:
        """Send them all and wait for every answer. For each request, in order: None (done), the kernel's refusal
        (a KernelRefused), or an XfrmError saying that no answer came (none within ACK_TIMEOUT_S, a socket error,
        an answer that does not decode), so whether the kernel did it is not known. The kernel carries out each
        request on its own: a refusal stops none of the others. Many requests (a shutdown's teardown) go in
        several datagrams; after one that failed, the rest are not sent. Never raises."""
        self._drain()
        results: list[XfrmError | None] = []
        failure: XfrmError | None = None
        for datagram in _datagrams(requests):
            if failure is not None:
                results += [XfrmError(f"{r.operation}: not sent: {failure}") for r in datagram]
            else:
                answers, failure = self._one_datagram(datagram)
                results += answers
        return results

    def _drain(self) -> None:
        """Answers to a batch that failed are not the next one's: read and drop whatever is queued."""
        self._sock.setblocking(False)  # a timeout would make every read wait for it
        try:
            for _ in range(MAX_STALE_READS):
                try:
                    self._sock.recv(1 << 16)
                except BlockingIOError:
                    return
                except OSError:  # a pending error (ENOBUFS) of that batch: reported there already
                    continue
        finally:
            self._sock.settimeout(ACK_TIMEOUT_S)

    def _one_datagram(self, requests: Sequence[Request]) -> tuple[list[XfrmError | None], XfrmError | None]:
        first = self._sequence + 1
        datagram = bytearray()
        for number, request in enumerate(requests, first):
            offset = len(datagram)
            datagram += request.message
            SEQUENCE_NUMBER.pack_into(datagram, offset + SEQUENCE_OFFSET, number & 0xFFFF_FFFF)
            datagram += bytes(-len(datagram) % 4)  # netlink messages start on 4-byte boundaries
        self._sequence = (self._sequence + len(requests)) & 0xFFFF_FFFF
        waiting = {(first + i) & 0xFFFF_FFFF: i for i in range(len(requests))}
        results: list[XfrmError | None] = [None] * len(requests)
        try:
            self._sock.send(datagram)
            while waiting:
                for number, error, words in decode.acks(self._sock.recv(1 << 16)):
                    index = waiting.pop(number, None)
                    if index is not None and error:
                        results[index] = refusal(requests[index].operation, -error, words)
        except TimeoutError:
            failure = XfrmError(f"the kernel did not answer within {ACK_TIMEOUT_S:g} s")
        except XfrmDecodeError as exc:
            failure = XfrmError(f"an answer from the kernel does not decode: {exc}")
        except OSError as exc:
            failure = XfrmError(f"the netlink socket failed: {exc.strerror or exc}")
        else:
            return results, None
        for index in waiting.values():
            results[index] = XfrmError(f"{requests[index].operation}: {failure}")
        return results, failure


def _datagrams(requests: Sequence[Request]) -> Iterator[list[Request]]:
    """The requests in runs of at most MAX_REQUESTS and MAX_DATAGRAM bytes (one request, however long, at least)."""
    chunk: list[Request] = []
    size = 0
    for request in requests:
        if chunk and (size + len(request.message) > MAX_DATAGRAM or len(chunk) == MAX_REQUESTS):
            yield chunk
            chunk, size = [], 0
        chunk.append(request)
        size += (len(request.message) + 3) & ~3
    if chunk:
        yield chunk


class PreparedPolicies:
    """Policies encoded once and put back, whenever asked, in one datagram of UPDPOLICY requests (each adds its
    policy or replaces it with itself). The supervisor's answer to a flush: under emulation, encoding the
    backstop with pyroute2 and reading the table first took hundreds of milliseconds, the kernel's work a few."""

    def __init__(self, policies: Iterable[Policy], netns: str | None = None) -> None:
        self.policies = tuple(policies)
        self._requests = [Request.update_policy(policy) for policy in self.policies]
        self._batches = Batches(netns)

    def __enter__(self) -> PreparedPolicies:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._batches.close()

    def put_back(self) -> None:
        """Send them all and wait for the kernel's answer to each: KernelRefused naming the first it refused,
        XfrmError if it did not answer within ACK_TIMEOUT_S."""
        failed = [error for error in self._batches.run(self._requests) if error is not None]
        if failed:
            raise failed[0]


def _settable(policy: Policy) -> None:
    if policy.direction > Direction.FWD:
        raise InvalidXfrmInput(f"{policy.direction.name.lower()} policies belong to a socket (setsockopt), not to "
                               "netlink")


def _addable(policy: Policy) -> None:
    _settable(policy)
    # The kernel holds such policies (pluto leaves one after a failed authentication, seen in the VM), so
    # they must read back; we never make one.
    if policy.action == Action.BLOCK and policy.templates:
        raise InvalidXfrmInput("a block policy takes no templates")


def _describe(policy: Policy) -> str:
    sel = policy.selector
    ports = "".join(f" {name} {port}" for name, port in (("sport", sel.sport), ("dport", sel.dport)) if port)
    return f"{sel.src} -> {sel.dst} proto {sel.proto}{ports} dir {policy.direction.name.lower()}"


# --- events ---

async def monitor(netns: str | None = None,
                  groups: Iterable[Group] = DEFAULT_GROUPS) -> AsyncGenerator[codec.XfrmEvent, None]:
    """ACQUIRE, EXPIRE and policy/SA add/delete events of a namespace, as typed events, until cancelled."""
    sock = event_socket(netns, groups)
    loop = asyncio.get_running_loop()
    try:
        while True:
            for event in events(await loop.sock_recv(sock, 1 << 16)):
                yield event
    finally:
        sock.close()


def events(data: bytes) -> list[codec.XfrmEvent]:
    """The typed events in a datagram (or several, joined) from an event socket; XfrmDecodeError if any message
    does not decode. Message types this layer does not report are left out."""
    found = (codec.event_from(r.msg_type, r.fields, r.attrs) for r in decode.parse(data))
    return [event for event in found if event is not None]


def _netlink_socket(netns: str | None) -> socket.socket:
    """A bound NETLINK_XFRM socket in `netns` (None: this process's), without pyroute2's machinery."""
    try:
        sock: socket.socket = pyroute2_netns.create_socket(netns, family=socket.AF_NETLINK,
                                                           socket_type=socket.SOCK_RAW, proto=NETLINK_XFRM,
                                                           flags=0)
    except FileNotFoundError:
        raise XfrmError(f"no network namespace named {netns!r}") from None
    sock.bind((0, 0))
    return sock


def event_socket(netns: str | None, groups: Iterable[Group] = DEFAULT_GROUPS) -> socket.socket:
    """A non-blocking netlink socket that receives the namespace's events of `groups`, for a caller that
    waits with select() (`monitor` decodes them for asyncio code)."""
    sock = _netlink_socket(netns)
    for group in groups:
        sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, int(group))
    sock.setblocking(False)
    return sock


# --- the ESP probe and the larval-drop sysctl ---

@dataclass(frozen=True)
class EspSupport:
    available: bool
    detail: str  # the kernel's answer when it said no


def probe_esp() -> EspSupport:
    """Can this kernel install ESP SAs? Tries one AES-GCM SA in a throw-away namespace."""
    name = f"ikectl-probe-{os.getpid()}"
    pyroute2_netns.create(name)
    try:
        with XfrmClient(netns=name) as xfrm:
            spec = SaSpec(src=ip_address("192.0.2.1"), dst=ip_address("192.0.2.2"), spi=0x1000,
                          algorithms=(algorithm("aes-gcm-16", secrets.token_bytes(20)),))
            try:
                xfrm.add_sa(spec)
            except KernelRefused as exc:
                return EspSupport(False, exc.detail or str(exc))
            return EspSupport(True, "")
    finally:
        # Gone already is what we want: under `ip netns exec` (a mount namespace of its own) the unlink after the
        # unmount found no file once (CI, the host suite), and a traceback then failed `ikectl up`.
        with contextlib.suppress(FileNotFoundError):
            pyroute2_netns.remove(name)


LARVAL_DROP = "/proc/sys/net/core/xfrm_larval_drop"
ACQ_EXPIRES = "/proc/sys/net/core/xfrm_acq_expires"


@contextlib.contextmanager
def _in_netns(netns: str | None) -> Iterator[None]:
    # /proc/sys/net shows the namespace of the thread that opens it.
    if netns is None:
        yield
        return
    pyroute2_netns.pushns(netns)
    try:
        yield
    finally:
        pyroute2_netns.popns()


def _read_sysctl(path: str, netns: str | None) -> str:
    with _in_netns(netns), open(path) as sysctl:
        return sysctl.read().strip()


def _write_sysctl(path: str, value: str, netns: str | None) -> None:
    with _in_netns(netns), open(path, "w") as sysctl:
        sysctl.write(value)


def larval_drop(netns: str | None = None) -> bool:
    """Whether the namespace drops packets that trigger an ACQUIRE (True, the kernel's default) or
    queues them until the SA is there (False)."""
    return _read_sysctl(LARVAL_DROP, netns) != "0"


def set_larval_drop(drop: bool, netns: str | None = None) -> None:
    _write_sysctl(LARVAL_DROP, "1" if drop else "0", netns)


def acq_expires(netns: str | None = None) -> int:
    """How long (seconds) the kernel keeps the larval state of an ACQUIRE (30 by default). Until it expires, packets
    of that flow that meet the trap again wait on it, and no new ACQUIRE is sent."""
    return int(_read_sysctl(ACQ_EXPIRES, netns))


def set_acq_expires(seconds: int, netns: str | None = None) -> None:
    _write_sysctl(ACQ_EXPIRES, str(seconds), netns)


