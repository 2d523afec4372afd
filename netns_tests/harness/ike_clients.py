"""Many IKE clients in one process, made of the project's own initiator core: run inside a client namespace.

    python -m netns_tests.harness.ike_clients --server 10.84.2.53 --source 10.84.1.2 --count 1000 --vanish

Each client binds its own UDP socket on `--source` (an ephemeral port, so many share one address like clients
behind a NAT), runs IKE_SA_INIT and IKE_AUTH (NULL auth; the server's key pinned with `--pin` when it signs) for a
udp/53 Child SA, and then, with `--vanish`, closes its socket without a Delete (a crashed or suspended client), or
else deletes its IKE SA. `--concurrency` clients run at a time. One JSON line per milestone goes to stdout:

    {"client": 3, "event": "init_answered" | "established" | "failed", "t": <monotonic seconds>, "detail": "..."}

("established" also gives the client's UDP port and its IKE SA's SPIs, "spi": "<SPIi hex>/<SPIr hex>".)

and a last line {"summary": {"established": N, "failed": M}}. The tests read these lines; nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import sys
import time
from collections.abc import Sequence
from ipaddress import ip_address

from cryptography.hazmat.primitives import serialization

from enclave_ike.config import parse_id
from enclave_ike.ikev2.config import Endpoint, InitiatorConfig
from enclave_ike.ikev2.crypto import PublicKey
from enclave_ike.ikev2.events import ChildSaEstablished, PeerErrorNotified, ProtocolErrorEvent
from enclave_ike.ikev2.initiator import Initiator
from enclave_ike.ikev2.payloads import TrafficSelector
from enclave_ike.ikev2.state import State

IKE_PORT = 500


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


class Client:
    def __init__(self, number: int, config: InitiatorConfig, source: str, server: Endpoint, *, vanish: bool,
                 timeout: float) -> None:
        self.number, self.vanish, self.timeout = number, vanish, timeout
        self.sock = socket.socket(socket.AF_INET6 if ":" in source else socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((source, 0))
        self.sock.setblocking(False)
        local = Endpoint(ip_address(source), self.sock.getsockname()[1])
        self.started = time.monotonic()
        self.initiator = Initiator(config, local=local, peer=server, random=os.urandom, now=self.started)
        self.answered = self.established = False
        self.done = False
        self.flush()

    def flush(self) -> None:
        for data, to in self.initiator.datagrams_to_send():
            self.sock.sendto(data, (str(to.address), to.port))

    def receive(self, now: float) -> None:
        while True:
            try:
                data, source = self.sock.recvfrom(65535)
            except BlockingIOError:
                return
            self.initiator.receive(data, Endpoint(ip_address(source[0].split("%")[0]), source[1]), now)

    def step(self, now: float) -> bool:
        """Follow timers and events; True when this client is finished."""
        initiator = self.initiator
        deadline = initiator.get_timer()
        if deadline is not None and deadline <= now:
            initiator.handle_timer(now)
        if not self.answered and initiator.sa.state not in (State.EXPECT_IKE_SA_INIT_RESPONSE, State.DELETED):
            self.answered = True
            emit(client=self.number, event="init_answered", t=now)
        while (event := initiator.next_event()) is not None:
            if isinstance(event, ChildSaEstablished) and not self.established:
                self.established = True
                sa = initiator.sa
                emit(client=self.number, event="established", t=now, port=initiator.local.port,
                     spi=f"{sa.spi_i.hex()}/{sa.spi_r.hex()}")
                if self.vanish:
                    return self.finish()
                initiator.delete(now)
            elif isinstance(event, PeerErrorNotified | ProtocolErrorEvent) and not self.established:
                return self.finish("failed", str(event))
        if initiator.sa.state is State.DELETED:
            return self.finish() if self.established else self.finish("failed", "deleted")
        if not self.established and now - self.started > self.timeout:
            return self.finish("failed", f"no Child SA after {self.timeout} s")
        self.flush()
        return False

    def finish(self, event: str | None = None, detail: str = "") -> bool:
        if event is not None:
            emit(client=self.number, event=event, t=time.monotonic(), detail=detail)
        self.flush()
        self.sock.close()
        self.done = True
        return True


def run(args: argparse.Namespace) -> int:
    server = Endpoint(ip_address(args.server), IKE_PORT)
    source = ip_address(args.source)
    pin: PublicKey | None = None
    if args.pin:
        with open(args.pin, "rb") as pem:
            pin = serialization.load_pem_public_key(pem.read())  # type: ignore[assignment]
    config = InitiatorConfig(tsi=(TrafficSelector(source, source, 17),),
                             tsr=(TrafficSelector(server.address, server.address, 17, 53, 53),),
                             responder_key=pin, responder_id=parse_id(args.server_id, "--server-id")
                             if args.server_id else None, initial_contact=False)
    if args.go_on_stdin:  # started ahead, so that the caller's timing excludes this interpreter's start
        emit(event="ready", t=time.monotonic())
        sys.stdin.readline()
    started = {"count": 0}
    running: list[Client] = []
    established = failed = 0

    def start_more() -> None:
        while len(running) < args.concurrency and started["count"] < args.count:
            running.append(Client(started["count"], config, args.source, server, vanish=args.vanish,
                                  timeout=args.timeout))
            started["count"] += 1

    start_more()
    while running:
        timers = [t for c in running if (t := c.initiator.get_timer()) is not None]
        now = time.monotonic()
        wait = max(0.0, min([*timers, now + 0.05]) - now)
        readable, _, _ = select.select([c.sock for c in running], [], [], wait)
        now = time.monotonic()
        for client in running:
            if client.sock in readable:
                client.receive(now)
        for client in list(running):
            if client.step(now):
                running.remove(client)
                established += client.established
                failed += not client.established
        start_more()
    emit(summary={"established": established, "failed": failed})
    return 0 if failed == 0 else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--pin", help="the server's public key (PEM) when it signs")
    parser.add_argument("--server-id", help="the server's ID, e.g. @resolver.example")
    parser.add_argument("--vanish", action="store_true", help="close the socket after IKE_AUTH, without a Delete")
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("--go-on-stdin", action="store_true", help="say ready, then begin when a line comes in")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
