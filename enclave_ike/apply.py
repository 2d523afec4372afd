"""Child SAs from the IKE core's events into XFRM: a planner that decides, and executors that act.

`ChildSaTable` is pure bookkeeping: it turns `ChildSaEstablished`, `ChildSaRekeyed` and `SaDeleted` into a list of
XFRM operations (add two SAs and the policies of their traffic selectors; delete them again) and remembers what is
installed, so a rekey keeps the policies (the new SAs share the old reqid) and a deletion removes a policy only when
no other Child SA still needs it. It touches nothing.

`KernelApplier` runs the operations through `ikecommon.xfrm` in the current network namespace, an event's in one
netlink datagram (synchronously: the server calls it through `asyncio.to_thread`); `LogApplier` only describes them
(hosts without ESP). Kernel errors come back as `ApplyError` lines; they never stop the server.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_network, summarize_address_range
from typing import Protocol

from ikecommon import xfrm

from .errors import EnclaveIkeError
from .ikev2 import config as ike
from .ikev2.constants import EncrId, IntegId, ProtocolId
from .ikev2.events import ChildSaEstablished, ChildSaRekeyed, Event, SaDeleted
from .ikev2.payloads import Address, TrafficSelector

POLICY_PRIORITY = 1_500_000
"""Below ikectl's owned band (0x7f000000 and up, which ikectl flushes as its own), above nothing in particular:
these are the only policies of a resolver host."""
REQID_BASE = 0x4E_0000  # enclave-ike's reqids, so they are told apart from pluto's in `ip xfrm state`


class ApplyError(EnclaveIkeError):
    """A Child SA that cannot be expressed in XFRM, or that the kernel refused."""


@dataclass(frozen=True)
class AddSa:
    spec: xfrm.SaSpec

    def __str__(self) -> str:
        s = self.spec
        return (f"add SA spi 0x{s.spi:08x} {s.src} -> {s.dst} {s.mode.name.lower()} reqid {s.reqid} "
                f"{'+'.join(a.name for a in s.algorithms)}")


@dataclass(frozen=True)
class DeleteSa:
    dst: Address
    spi: int

    def __str__(self) -> str:
        return f"delete SA spi 0x{self.spi:08x} to {self.dst}"


@dataclass(frozen=True)
class SetPolicy:
    policy: xfrm.Policy

    def __str__(self) -> str:
        return f"set policy {_describe(self.policy)} reqid {self.policy.templates[0].reqid}"


@dataclass(frozen=True)
class DeletePolicy:
    policy: xfrm.Policy

    def __str__(self) -> str:
        return f"delete policy {_describe(self.policy)}"


Operation = AddSa | DeleteSa | SetPolicy | DeletePolicy


def _describe(policy: xfrm.Policy) -> str:
    sel = policy.selector
    ports = "".join(f" {name} {port}" for name, port in (("sport", sel.sport), ("dport", sel.dport)) if port)
    return f"{policy.direction.name.lower()} {sel.src} -> {sel.dst} proto {sel.proto}{ports}"


@dataclass
class _Child:
    reqid: int
    local: Address
    peer: Address
    spi_in: int
    spi_out: int
    policies: tuple[xfrm.Policy, ...]


@dataclass
class ChildSaTable:
    """What is installed, by inbound SPI; see the module's docstring."""

    _children: dict[bytes, _Child] = field(default_factory=dict)
    _policy_owner: dict[tuple[xfrm.Selector, xfrm.Direction], int] = field(default_factory=dict)
    _reqids: itertools.count[int] = field(default_factory=lambda: itertools.count(REQID_BASE))

    def __len__(self) -> int:
        return len(self._children)

    def plan(self, event: Event) -> list[Operation]:
        """The operations that apply one event (none for events that install nothing). Raises ApplyError for a
        Child SA XFRM cannot hold; nothing is remembered then."""
        if isinstance(event, ChildSaEstablished):
            return self._establish(event, None)
        if isinstance(event, ChildSaRekeyed):
            old = self._children.get(event.old_spi_in)
            return self._establish(event.new, old.reqid if old is not None else None)
        if isinstance(event, SaDeleted) and event.protocol == ProtocolId.ESP:
            return self._delete(event.spi_in)
        return []

    def teardown(self) -> list[Operation]:
        """Everything still installed, to remove at shutdown."""
        out: list[Operation] = []
        for spi_in in list(self._children):
            out += self._delete(spi_in)
        return out

    def _establish(self, event: ChildSaEstablished, reqid: int | None) -> list[Operation]:
        if event.udp_encapsulation:
            raise ApplyError(f"Child SA 0x{event.spi_in.hex()}: a NAT was detected and ESP in UDP is not supported "
                             "by the kernel applier")
        if event.suite.esn:
            raise ApplyError(f"Child SA 0x{event.spi_in.hex()}: ESN SAs are not supported by the kernel applier")
        algorithms_in, algorithms_out = _algorithms(event)
        mode = xfrm.Mode.TUNNEL if event.mode is ike.Mode.TUNNEL else xfrm.Mode.TRANSPORT
        local, peer = event.local.address, event.peer.address
        reqid = reqid if reqid is not None else next(self._reqids)
        spi_in, spi_out = int.from_bytes(event.spi_in, "big"), int.from_bytes(event.spi_out, "big")
        try:
            sa_in = xfrm.SaSpec(src=peer, dst=local, spi=spi_in, algorithms=algorithms_in, mode=mode, reqid=reqid)
            sa_out = xfrm.SaSpec(src=local, dst=peer, spi=spi_out, algorithms=algorithms_out, mode=mode, reqid=reqid)
            policies = tuple(_policies(event, mode, reqid))
        except xfrm.InvalidXfrmInput as exc:
            raise ApplyError(f"Child SA 0x{event.spi_in.hex()}: {exc}") from None
        self._children[event.spi_in] = _Child(reqid, local, peer, spi_in, spi_out, policies)
        ops: list[Operation] = [AddSa(sa_in), AddSa(sa_out)]
        for policy in policies:
            key = (policy.selector, policy.direction)
            if self._policy_owner.get(key) != reqid:
                self._policy_owner[key] = reqid
                ops.append(SetPolicy(policy))
        return ops

    def _delete(self, spi_in: bytes) -> list[Operation]:
        child = self._children.pop(spi_in, None)
        if child is None:
            return []
        ops: list[Operation] = [DeleteSa(child.local, child.spi_in), DeleteSa(child.peer, child.spi_out)]
        still_used = {c.reqid for c in self._children.values()}
        for policy in child.policies:
            key = (policy.selector, policy.direction)
            if self._policy_owner.get(key) == child.reqid and child.reqid not in still_used:
                del self._policy_owner[key]
                ops.append(DeletePolicy(policy))
        return ops


def _algorithms(event: ChildSaEstablished) -> tuple[tuple[xfrm.Algorithm, ...], tuple[xfrm.Algorithm, ...]]:
    suite, keys = event.suite, event.keys
    try:
        if suite.encr_id == EncrId.ENCR_AES_GCM_16:
            return ((xfrm.algorithm("aes-gcm-16", keys.encr_in),), (xfrm.algorithm("aes-gcm-16", keys.encr_out),))
        if suite.encr_id == EncrId.ENCR_AES_CBC and suite.integ_id in _INTEGRITY:
            integ = _INTEGRITY[suite.integ_id]
            return ((xfrm.algorithm("aes-cbc", keys.encr_in), xfrm.algorithm(integ, keys.integ_in)),
                    (xfrm.algorithm("aes-cbc", keys.encr_out), xfrm.algorithm(integ, keys.integ_out)))
    except xfrm.InvalidXfrmInput as exc:
        raise ApplyError(f"Child SA 0x{event.spi_in.hex()}: {exc}") from None
    raise ApplyError(f"Child SA 0x{event.spi_in.hex()}: no XFRM algorithm for {suite}")


_INTEGRITY: dict[int, str] = {
    IntegId.AUTH_HMAC_SHA2_256_128: "hmac-sha256-128",
    IntegId.AUTH_HMAC_SHA2_384_192: "hmac-sha384-192",
    IntegId.AUTH_HMAC_SHA2_512_256: "hmac-sha512-256",
}


def _policies(event: ChildSaEstablished, mode: xfrm.Mode, reqid: int) -> list[xfrm.Policy]:
    """An out policy (ours -> theirs) and an in policy (theirs -> ours) for every pair of selectors that share a
    protocol. Tunnel-mode templates name the SA's outer addresses."""
    local, peer = event.local.address, event.peer.address
    tunnel = mode is xfrm.Mode.TUNNEL
    out_template = xfrm.Template(mode=mode, reqid=reqid, src=local if tunnel else None, dst=peer if tunnel else None)
    in_template = xfrm.Template(mode=mode, reqid=reqid, src=peer if tunnel else None, dst=local if tunnel else None)
    policies = []
    for ours, theirs in itertools.product(event.local_ts, event.remote_ts):
        if ours.protocol and theirs.protocol and ours.protocol != theirs.protocol:
            continue
        proto = ours.protocol or theirs.protocol
        for src, dst in itertools.product(_prefixes(ours), _prefixes(theirs)):
            policies.append(xfrm.Policy(
                xfrm.Selector(src, dst, proto, _port(ours, proto), _port(theirs, proto)),
                xfrm.Direction.OUT, POLICY_PRIORITY, templates=(out_template,)))
            policies.append(xfrm.Policy(
                xfrm.Selector(dst, src, proto, _port(theirs, proto), _port(ours, proto)),
                xfrm.Direction.IN, POLICY_PRIORITY, templates=(in_template,)))
    if not policies:
        raise ApplyError(f"Child SA 0x{event.spi_in.hex()}: its traffic selectors share no protocol")
    return policies


def _prefixes(ts: TrafficSelector) -> list[xfrm.model.Network]:
    """An address range as the prefixes that cover it exactly."""
    if ts.start_address == ts.end_address:
        return [ip_network(ts.start_address)]
    return list(summarize_address_range(ts.start_address, ts.end_address))


def _port(ts: TrafficSelector, proto: int) -> int | None:
    """XFRM selectors take one port or any: a range in between cannot be installed exactly."""
    if ts.start_port == 0 and ts.end_port == 0xFFFF:
        return None
    if ts.start_port == ts.end_port and proto:
        return ts.start_port
    raise ApplyError(f"ports {ts.start_port}-{ts.end_port} are neither one port nor all ports")


# --- executors ---

class Applier(Protocol):
    def run(self, operations: Sequence[Operation]) -> list[ApplyError | None]:
        """Carry out the operations in order: for each, None (done) or why it failed. A failure stops none of the
        others."""
        ...

    def close(self) -> None:
        ...


class KernelApplier:
    """Operations into XFRM of the current network namespace, through ikecommon.xfrm, all of one call in one
    netlink datagram (synchronous: call it from a thread in asyncio code)."""

    def __init__(self, batches: Callable[[], xfrm.Batches] = xfrm.Batches) -> None:
        self._factory = batches  # the socket is made on first use
        self._batches: xfrm.Batches | None = None

    def run(self, operations: Sequence[Operation]) -> list[ApplyError | None]:
        results: list[ApplyError | None] = [None] * len(operations)
        sent: list[int] = []
        requests: list[xfrm.Request] = []
        for index, op in enumerate(operations):
            try:
                requests.append(_request(op))
            except xfrm.InvalidXfrmInput as exc:  # nothing to send for this one; the others go
                results[index] = ApplyError(str(exc))
            else:
                sent.append(index)
        try:
            if self._batches is None:
                self._batches = self._factory()
        except xfrm.XfrmError as exc:  # no socket: nothing was sent
            answers: list[xfrm.XfrmError | None] = [exc] * len(requests)
        else:
            answers = self._batches.run(requests)
        for index, answer in zip(sent, answers, strict=True):
            if answer is not None and not _gone_already(operations[index], answer):
                results[index] = ApplyError(str(answer))
        return results

    def close(self) -> None:
        if self._batches is not None:
            self._batches.close()
            self._batches = None


def _request(op: Operation) -> xfrm.Request:
    if isinstance(op, AddSa):
        return xfrm.Request.add_sa(op.spec)
    if isinstance(op, DeleteSa):
        return xfrm.Request.delete_sa(op.dst, op.spi)
    if isinstance(op, SetPolicy):
        return xfrm.Request.update_policy(op.policy)
    return xfrm.Request.delete_policy(op.policy)


def _gone_already(op: Operation, answer: xfrm.XfrmError) -> bool:
    """Deleting what is not there (an SA that expired) is what was wanted."""
    return isinstance(answer, xfrm.NotFound) and isinstance(op, DeleteSa | DeletePolicy)


class LogApplier:
    """Applies nothing: for hosts without ESP (apply.mode = "none"). The server logs every operation anyway."""

    def run(self, operations: Sequence[Operation]) -> list[ApplyError | None]:
        return [None] * len(operations)

    def close(self) -> None:
        return None
