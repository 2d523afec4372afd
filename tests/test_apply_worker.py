"""The server's apply worker outlives an applier that raises: every answer that waits for its Child SA's install
still leaves, and each failed operation is counted and logged (enclave_ike/server.py `_apply_worker`)."""

import asyncio
from collections.abc import Sequence
from ipaddress import IPv4Address
from pathlib import Path

from enclave_ike.apply import ApplyError, Operation
from enclave_ike.config import ApplyMode, Listen, ServeConfig
from enclave_ike.ikev2.config import Endpoint, Identity, InitiatorConfig, ResponderConfig
from enclave_ike.ikev2.events import ChildSaEstablished
from enclave_ike.ikev2.initiator import Initiator
from enclave_ike.ikev2.payloads import TrafficSelector
from enclave_ike.ikev2.responder import Responder
from enclave_ike.server import Server
from tests.test_ikev2_exchanges import DNS, R_END, UDP_TO_R, seeded


class FakeSocket:
    def __init__(self) -> None:
        self.local, self.natt, self.sent = Endpoint(R_END.address, 500), False, list[tuple[bytes, Endpoint]]()

    def send(self, data: bytes, peer: Endpoint) -> None:
        self.sent.append((data, peer))


class BrokenApplier:
    """An applier with a bug: it raises instead of returning one result per operation."""

    def __init__(self) -> None:
        self.calls = 0

    def run(self, operations: Sequence[Operation]) -> list[ApplyError | None]:
        self.calls += 1
        raise RuntimeError("a bug in the applier")

    def close(self) -> None:
        pass


def test_an_applier_that_raises_stops_no_answer_and_no_later_install():
    async def scenario() -> None:
        responder = Responder(ResponderConfig(local_id=Identity.null(), dns=DNS), local=R_END, random=seeded(b"r"))
        config = ServeConfig(path=Path("/nonexistent"), listen=Listen((R_END.address,)),
                             dns_addresses=(R_END.address,), apply=ApplyMode.KERNEL)
        applier = BrokenApplier()
        server = Server(config, responder, applier)
        sock = FakeSocket()
        server._sockets, server._by_local = [sock], {sock.local: sock}  # type: ignore[list-item, dict-item]
        server._worker = asyncio.create_task(server._apply_worker())
        for number in (1, 2):  # two clients, one after the other: the second needs the worker alive
            client = Endpoint(IPv4Address(f"192.0.2.{number}"), 500)
            ini = Initiator(InitiatorConfig(tsi=(TrafficSelector(client.address, client.address),), tsr=(UDP_TO_R,)),
                            local=client, peer=R_END, random=seeded(bytes([number])), now=0.0)
            for _ in range(2):  # IKE_SA_INIT, then IKE_AUTH, whose answer waits for the install
                for data, _ in ini.datagrams_to_send():
                    server.datagram_received(sock, data, client)  # type: ignore[arg-type]
                for _ in range(50):
                    if sock.sent:
                        break
                    await asyncio.sleep(0.01)
                for data, _ in sock.sent:
                    ini.receive(data, R_END, 0.0)
                sock.sent.clear()
            events = ini.events()
            assert any(isinstance(e, ChildSaEstablished) for e in events), f"client {number}: no IKE_AUTH answer"
        assert applier.calls == 2 and server.apply_failures > 0
        await server.stop()

    asyncio.run(scenario())
