"""A stopping server starts no new IKE SA: a client it just told (Delete) that comes straight back, or any other,
gets no answer and tries another replica (libreswan revives at once after a Delete). Exchanges of existing SAs are
still answered, and before `stop` every IKE_SA_INIT is."""

import asyncio
from ipaddress import IPv4Address
from pathlib import Path

from enclave_ike.apply import LogApplier
from enclave_ike.config import ApplyMode, Listen, ServeConfig
from enclave_ike.ikev2.config import Endpoint, Identity, InitiatorConfig, ResponderConfig
from enclave_ike.ikev2.initiator import Initiator
from enclave_ike.ikev2.payloads import TrafficSelector
from enclave_ike.ikev2.responder import Responder
from enclave_ike.server import Server
from tests.test_apply_worker import FakeSocket
from tests.test_ikev2_exchanges import DNS, R_END, UDP_TO_R, seeded


def _first_message(number: int) -> tuple[bytes, Endpoint]:
    client = Endpoint(IPv4Address(f"192.0.2.{number}"), 500)
    initiator = Initiator(InitiatorConfig(tsi=(TrafficSelector(client.address, client.address),), tsr=(UDP_TO_R,)),
                          local=client, peer=R_END, random=seeded(bytes([number])), now=0.0)
    [(data, _)] = initiator.datagrams_to_send()
    return data, client


def test_a_stopping_server_answers_no_new_ike_sa_init():
    async def scenario() -> tuple[int, int, int]:
        responder = Responder(ResponderConfig(local_id=Identity.null(), dns=DNS), local=R_END, random=seeded(b"r"))
        config = ServeConfig(path=Path("/nonexistent"), listen=Listen((R_END.address,)),
                             dns_addresses=(R_END.address,), apply=ApplyMode.NONE)
        server = Server(config, responder, LogApplier())
        sock = FakeSocket()
        server._sockets, server._by_local = [sock], {sock.local: sock}  # type: ignore[list-item, dict-item]
        data, client = _first_message(1)
        server.datagram_received(sock, data, client)  # type: ignore[arg-type]
        answered_before = len(sock.sent)
        await server.stop()
        sock.sent.clear()
        data, client = _first_message(2)
        server.datagram_received(sock, data, client)  # type: ignore[arg-type]
        return answered_before, len(sock.sent), server.diagnostics.counts["IKE_SA_INIT requests dropped while stopping"]

    before, after, dropped = asyncio.run(scenario())
    assert before == 1 and after == 0 and dropped == 1
