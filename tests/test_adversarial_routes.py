"""Adversarial: spoofed junk from 65,536 sources makes the server send a NAT-T client's liveness check on the
wrong socket, so a live client is declared dead."""
import asyncio
from ipaddress import IPv4Address
from pathlib import Path

from enclave_ike.config import ApplyMode, Listen, ServeConfig
from enclave_ike.ikev2.config import Endpoint, Identity, InitiatorConfig, ResponderConfig, Timers
from enclave_ike.ikev2.initiator import Initiator
from enclave_ike.ikev2.payloads import TrafficSelector
from enclave_ike.ikev2.responder import Responder
from enclave_ike.server import NON_ESP_MARKER, LogApplier, Server
from tests.test_ikev2_exchanges import DNS, R_END, UDP_TO_R, seeded

JUNK_SOURCES = 65_536  # as many as the server once remembered routes for

NATTED = Endpoint(IPv4Address("192.0.2.7"), 61234)  # a client behind a NAT, floated to 4500: any source port


class FakeSocket:
    def __init__(self, port, natt):
        self.local, self.natt, self.sent = Endpoint(R_END.address, port), natt, []

    def send(self, data, peer):
        self.sent.append((data, peer))


def test_the_liveness_check_goes_out_on_the_socket_the_client_uses():
    async def scenario():
        rcfg = ResponderConfig(local_id=Identity.null(), dns=DNS, timers=Timers(liveness=30.0))
        responder = Responder(rcfg, local=R_END, random=seeded(b"r"))
        config = ServeConfig(path=Path("/nonexistent"), listen=Listen((R_END.address,)),
                             dns_addresses=(R_END.address,), apply=ApplyMode.NONE)
        server = Server(config, responder, LogApplier())
        ike, natt = FakeSocket(500, False), FakeSocket(4500, True)
        server._sockets = [ike, natt]
        server._by_local = {ike.local: ike, natt.local: natt}
        ini = Initiator(InitiatorConfig(tsi=(TrafficSelector(NATTED.address, NATTED.address),), tsr=(UDP_TO_R,)),
                        local=NATTED, peer=R_END, random=seeded(b"i"), now=0.0)
        for _ in range(3):  # the whole exchange over 4500 (with the non-ESP marker)
            for data, _ in ini.datagrams_to_send():
                server.datagram_received(natt, NON_ESP_MARKER + data, NATTED)
            for data, _ in natt.sent:
                ini.receive(data, R_END, 0.0)
            natt.sent.clear()
        assert len(responder) == 1 and responder.views()[0].state.name == "ESTABLISHED"
        # junk from 65,536 spoofed sources (dropped by the responder, but each one is remembered as a route)
        for n in range(JUNK_SOURCES):
            server.datagram_received(ike, b"x", Endpoint(IPv4Address(0x0A000000 + n), 500))
        deadline = responder.get_timer()
        server._timer = None
        responder.handle_timer(deadline)  # the client has been quiet for liveness_s: ask it
        server._flush()
        print("probe sent on port 500:", len(ike.sent), "on port 4500:", len(natt.sent))
        for task in server._signing:
            task.cancel()
        assert natt.sent and not ike.sent, "the liveness check left from port 500, without the non-ESP marker"

    asyncio.run(scenario())
