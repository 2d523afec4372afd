"""Adversarial: the server signs for IKE SAs that are gone; a flood of IKE_AUTH starves later clients."""
import asyncio
import threading
import time
from ipaddress import IPv4Address
from pathlib import Path

from enclave_ike.config import ApplyMode, Listen, ServeConfig
from enclave_ike.ikev2 import crypto as c
from enclave_ike.ikev2.config import Endpoint, InitiatorConfig, ResponderConfig, Timers
from enclave_ike.ikev2.initiator import Initiator
from enclave_ike.ikev2.payloads import TrafficSelector
from enclave_ike.ikev2.responder import Responder
from enclave_ike.server import SIGNING_THREADS, LogApplier, Server
from tests.test_ikev2_exchanges import DNS, ECDSA_KEY, R_END, RESOLVER_ID, UDP_TO_R, seeded

SIGN_S = 0.1
HALF_OPEN_S = 0.5


class SlowSigner(c.SoftwareSigner):
    """A deferred signer that takes SIGN_S per signature, one at a time (the sim enclave's lock)."""

    deferred = True

    def __init__(self, key):
        super().__init__(key)
        self.lock, self.calls = threading.Lock(), 0

    def sign(self, data, scheme):
        with self.lock:
            self.calls += 1
            time.sleep(SIGN_S)
            return super().sign(data, scheme)


class FakeSocket:
    natt = False

    def __init__(self):
        self.local = R_END
        self.sent: dict[Endpoint, list[bytes]] = {}

    def send(self, data, peer):
        self.sent.setdefault(peer, []).append(data)


def client(n: int) -> Initiator:
    local = Endpoint(IPv4Address(f"10.0.{n // 250}.{n % 250 + 1}"), 500)
    icfg = InitiatorConfig(tsi=(TrafficSelector(local.address, local.address),), tsr=(UDP_TO_R,))
    return Initiator(icfg, local=local, peer=R_END, random=seeded(b"c%d" % n), now=0.0)


def test_signatures_are_not_made_for_ike_sas_that_are_gone():
    async def scenario():
        signer = SlowSigner(ECDSA_KEY)
        rcfg = ResponderConfig(local_id=RESOLVER_ID, dns=DNS, signer=signer,
                               timers=Timers(half_open=HALF_OPEN_S, liveness=30.0))
        responder = Responder(rcfg, local=R_END, random=seeded(b"r"))
        config = ServeConfig(path=Path("/nonexistent"), listen=Listen((R_END.address,)),
                             dns_addresses=(R_END.address,), apply=ApplyMode.NONE)
        server = Server(config, responder, LogApplier())
        sock = FakeSocket()
        server._sockets, server._by_local = [sock], {sock.local: sock}  # type: ignore[list-item,dict-item]
        loop = asyncio.get_running_loop()

        def handshake(ini):  # IKE_SA_INIT answered at once, IKE_AUTH handed to the signer
            for data, _ in ini.datagrams_to_send():
                server.datagram_received(sock, data, ini.local)
            for data in sock.sent.pop(ini.local, []):
                ini.receive(data, R_END, loop.time())
            for data, _ in ini.datagrams_to_send():
                server.datagram_received(sock, data, ini.local)

        flood = [client(n) for n in range(40)]  # 40 IKE_AUTH asking for our signature: 4 s of signing
        for ini in flood:
            handshake(ini)
        await asyncio.sleep(0.05)
        latecomer = client(999)
        handshake(latecomer)
        # let the half-open time pass for everyone, and the server's timer remove them
        for _ in range(int(6 / 0.1)):
            await asyncio.sleep(0.1)
            if server._timer is None:
                server._arm_timer()
        gone_by = len(responder)
        await asyncio.sleep(0.1)
        print(f"SAs left {gone_by}; signatures made {signer.calls}; signing tasks still pending "
              f"{len(server._signing)}; latecomer answered: {bool(sock.sent.get(latecomer.local))}")
        for task in list(server._signing):
            task.cancel()
        # At most HALF_OPEN_S / SIGN_S signatures can be of use, plus those already in a signing thread when their
        # SA's time ran out; the rest would be for SAs already removed (41 were made before: all of them)
        assert signer.calls <= HALF_OPEN_S / SIGN_S + SIGNING_THREADS, f"{signer.calls} signatures for 41 SAs"
        assert sock.sent.get(latecomer.local), "a client arriving after the flood is never answered"

    asyncio.run(scenario())
