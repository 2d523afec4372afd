"""Attacks on enclave-ike's userspace ESP behind the forwarder (docs/enclave-ike.md, "Userspace ESP and the
forwarder" and "Privacy"), with real processes: the topology of netns_tests/test_enclave_ike_userspace.py (client --
router -- resolver host with `enclave-ike forward`; serve and unbound in an enclave namespace with loopback only).

Hostile datagrams to UDP 500 and 4500 and garbage on TCP 4501 through the forwarder, and a second process on serve's
relay socket that sends frames of its own and a broken one: serve stays up, takes the real forwarder back, answers
the next client, and neither serve's log (privacy on) nor the forwarder's names the attacker's address or port.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from ipaddress import ip_address

import pytest

from enclave_ike.ikev2.config import Endpoint
from enclave_ike.relay import Relayed
from netns_tests import test_enclave_ike_userspace as base
from netns_tests.harness import procs
from netns_tests.harness.enclave_ike import NULL_IDENTITY, config_text, servers
from netns_tests.test_enclave_ike_userspace import CLIENT, RESOLVER, Site, summary

site, enclave = base.site, base.enclave  # the fixtures, by name

ATTACK_PORT = 41414

_HOSTILE = r'''
import os, socket, sys
server, port = sys.argv[1], int(sys.argv[2])
datagrams = {4500: [b"", b"\xff", b"\x00" * 4, b"\x00" * 8, os.urandom(7), b"\x00\x00\x00\x00" + os.urandom(40),
                    b"\x00\x00\x00\x00" + b"\x00" * 28, bytes.fromhex("00001001") + os.urandom(100),
                    os.urandom(1400), os.urandom(20000)] + [os.urandom(60) for _ in range(200)],
             500: [b"", os.urandom(28), b"\x00" * 28, os.urandom(3000)]}
for dport, payloads in datagrams.items():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    for payload in payloads:
        try:
            s.sendto(payload, (server, dport))
        except OSError:
            pass
    s.close()
for request in (b"GET //[ HTTP/1.1\r\n\r\n", os.urandom(5000), b"GET /evidence?nonce=" + b"ab" * 40000 + b"\r\n"):
    try:
        with socket.create_connection((server, 4501), timeout=3) as t:
            t.sendall(request)
            t.settimeout(2)
            try:
                t.recv(65536)
            except OSError:
                pass
    except OSError:
        pass
print("sent")
'''


def _forwarder_connections(site: Site) -> int:
    return len(re.findall(r"connected to the enclave at", site.forwarders[0].log_text()))


@pytest.mark.host  # userspace ESP: no kernel SA anywhere
def test_hostile_datagrams_and_a_rogue_relay_peer_neither_stop_serve_nor_name_the_attacker(
        site: Site, enclave: Callable[..., procs.Daemon]) -> None:
    """Attack: from the client's network, garbage on UDP 4500 (short, random, fake SPIs, oversized, behind the
    non-ESP marker) and UDP 500, and garbage on TCP 4501; on the resolver host, a second process connects to serve's
    relay socket, sends a well-formed frame naming the client's address with garbage inside, then a broken frame.
    Expected: serve keeps running, takes the real forwarder back (it reconnects at once), and answers the next
    client's queries; serve's log (privacy on) and the forwarder's name neither the attacker's address nor its port,
    and no traceback appears in either."""
    server = enclave(privacy=True)
    sent = subprocess.run(["ip", "netns", "exec", site.client.netns, sys.executable, "-c", _HOSTILE, RESOLVER,
                           str(ATTACK_PORT)], capture_output=True, text=True, timeout=60, check=False)
    assert "sent" in sent.stdout, sent.stderr
    frame = Relayed(Endpoint(ip_address(RESOLVER), 4500), Endpoint(ip_address(CLIENT), ATTACK_PORT),
                    b"\x00\x00\x10\x01" + b"\x00" * 60).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as rogue:
        rogue.connect(str(site.relay))
        with contextlib.suppress(OSError):  # serve drops the rogue as soon as the real forwarder reconnects
            rogue.sendall(frame * 3 + b"\x07broken")
        time.sleep(0.5)
    procs.wait_until(lambda: _forwarder_connections(site) >= 2, 15.0, "the forwarder connected again")
    time.sleep(0.5)
    assert server.running(), server.log_text()
    lines = site.queries("--queries", "3")
    assert summary(lines)["answered"] == 3, lines
    server.stop()
    site.forwarders[0].stop()
    written = server.log_text() + site.forwarders[0].log_text()
    assert "Traceback" not in written, written
    assert "10.88.1." not in written and str(ATTACK_PORT) not in written, written


@pytest.mark.host  # userspace ESP: no kernel SA anywhere
def test_serve_killed_and_started_again_gets_the_running_forwarder_back(site: Site) -> None:
    """Attack (a crash): serve is killed with SIGKILL (its relay socket, and the evidence socket beside it, stay on
    disk) and started again with the same config while the forwarder keeps running. Expected: the new serve replaces
    the stale sockets, the forwarder (which holds no key and no state) reconnects by itself within its 1 s retry, and
    a new client is answered; the forwarder's log names no client."""
    with servers(site.enclave, site.workdir) as serve:
        text = config_text(RESOLVER, identity=NULL_IDENTITY, workdir=site.workdir, apply="userspace", privacy=True)
        text = text.replace("[listen]\n", f'[listen]\nrelay = "{site.relay}"\n', 1)
        first = serve(text)
        try:
            site.forward()
            assert summary(site.queries("--queries", "2"))["answered"] == 2
            first.stop(sig=signal.SIGKILL)
            assert site.relay.exists()  # left behind by the killed serve
            serve(text)
            procs.wait_until(lambda: _forwarder_connections(site) >= 2, 15.0, "the forwarder connected again")
            assert summary(site.queries("--queries", "2"))["answered"] == 2
        finally:
            for forwarder in site.forwarders:
                forwarder.stop()
    text = site.forwarders[0].log_text()
    assert "10.88.1." not in text and "Traceback" not in text, text
