"""Coffee-shop mode with a half-working resolver: IKE answers but the Child SA is refused, the resolver's
IPsec dies mid-session, or its IKE_AUTH answer comes too late. DNS is answered within seconds and from then on,
and `status` says what happened.

The site: client -- router (capture) -- dns (unbound + pluto, NULL auth).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from ikectl import render
from netns_tests.harness.pluto import Pluto, PlutoConfig
from netns_tests.harness.topology import Host, Topology
from netns_tests.scenarios.site import Site, add_resolver, build_site

RESOLVER = "10.78.2.53"
RETRY_AFTER_S = 8  # short, so the test sees IKE tried again
pytestmark = pytest.mark.timing  # answers within 2 s: run where the host is quiet


@pytest.fixture
def cafe(topology: Topology, unbound: Callable[..., Any], capture: Callable[..., Any], run_dir: Path,
         tmp_path: Path) -> Iterator[tuple[Site, Host]]:
    site = build_site(topology, capture, tmp_path / "ikectl.toml", client_v4="10.78.1.0/24", client_v6=None)
    resolver = add_resolver(site, "dns", "10.78.2.0/24")
    unbound(resolver)
    configure(site, run_dir, retry_after_s=60)
    yield site, resolver
    site.ikectl("down")


def configure(site: Site, run_dir: Path, retry_after_s: int) -> None:
    site.write_config(f'mode = "coffee-shop"\n[resolvers]\naddresses = ["{RESOLVER}"]\n'
                      f'[coffee_shop]\nretry_after_s = {retry_after_s}\n[paths]\nrun_dir = "{run_dir}"\n')


def responder_conns(dns_port: int = 53) -> str:
    """The resolver's NULL-auth conns; another port than 53 makes it refuse every DNS Child SA."""
    conns = render.render_responder("dns", ip_address(RESOLVER))
    return conns.replace("leftprotoport=udp/53", f"leftprotoport=udp/{dns_port}").replace(
        "leftprotoport=tcp/53", f"leftprotoport=tcp/{dns_port}")


def test_a_resolver_that_refuses_the_child_sa_is_answered_in_clear_within_2_s(cafe: tuple[Site, Host],
                                                                              pluto: Callable[..., Pluto]):
    site, resolver = cafe
    server = pluto(resolver, PlutoConfig(conns=responder_conns(dns_port=5353)))
    server.addconn("--autoall")
    site.up()
    first = site.query(RESOLVER, timeout=5)
    assert first.answered and first.seconds < 2.0, first
    later = site.queries_for(RESOLVER, 3.0) + site.queries_for(RESOLVER, 1.0, tcp=True)
    assert all(a.answered for a in later), later
    row = site.status()[RESOLVER]
    assert row["state"] == "clear" and "refused the DNS-only Child SA" in row["reason"], row
    assert "TS_UNACCEPTABLE" in server.log_text()  # the resolver did speak IKE, and said no
    assert site.plaintext([RESOLVER])[RESOLVER] >= 2  # in clear, as coffee-shop allows


def delay_ike_auth_answers(site: Site, delay_ms: int) -> Callable[[], None]:
    """The router holds the resolver's IKE_AUTH answers (IKE exchange type 35, UDP from port 500) for
    `delay_ms` on their way to the client; everything else passes at once. Returns what lifts the delay."""
    dev = site.router.interface_to(site.client).ifname
    run = site.topo.run
    run(site.router, ["tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "prio"])
    run(site.router, ["tc", "qdisc", "add", "dev", dev, "parent", "1:3", "handle", "30:", "netem", "delay",
                      f"{delay_ms}ms"])
    # 46 = 20 (IPv4 header) + 8 (UDP) + 18 (the exchange type's offset in the IKE header).
    run(site.router, ["tc", "filter", "add", "dev", dev, "protocol", "ip", "parent", "1:0", "prio", "1", "u32",
                      "match", "ip", "protocol", "17", "0xff", "match", "ip", "sport", "500", "0xffff",
                      "match", "u8", "35", "0xff", "at", "46", "flowid", "1:3"])

    def lift() -> None:
        run(site.router, ["tc", "qdisc", "del", "dev", dev, "root"])
    return lift


def test_a_resolver_whose_ike_auth_answer_came_too_late_is_answered_encrypted_soon(cafe: tuple[Site, Host],
                                                                                  pluto: Callable[..., Pluto],
                                                                                  run_dir: Path):
    """pluto gives up IKE_AUTH after ike_timeout_ms (300) and passes DNS in clear; the resolver, whose answer
    was on its way, completed the exchange and drops clear DNS from this client. Before the upkeep knew the case,
    DNS to it went unanswered until retry_after_s (60 s here). Now IKE is tried again after 1 s."""
    site, resolver = cafe
    server = pluto(resolver, PlutoConfig(conns=responder_conns()))
    server.addconn("--autoall")
    lift = delay_ike_auth_answers(site, delay_ms=600)
    site.up()
    site.query(RESOLVER, timeout=2)  # meets the trap if `up` did not negotiate already
    client_log = run_dir / "pluto.log"
    deadline = time.monotonic() + 10
    while "no acceptable response to our first encrypted message" not in client_log.read_text(errors="replace"):
        assert time.monotonic() < deadline, site.diagnosis(run_dir)
        time.sleep(0.2)
    assert "established Child SA" in server.log_text()  # the resolver's half, requiring ESP from the client
    lift()  # the resolver answers in time from now on
    lifted = time.monotonic()
    answer = site.query(RESOLVER, timeout=40, retry_every=0.5)
    recovered = time.monotonic() - lifted
    # Before the fix the outage lasted retry_after_s (60 s). Quiet guests recover in 2-4 s; one in CI took 8 s
    # (pluto's own "assign_holdpass failed" on the second try), so the bound separates the cases, not speeds.
    assert answer.answered and recovered < 20.0, (recovered, answer, site.diagnosis(run_dir))
    later = site.queries_for(RESOLVER, 2.0) + site.queries_for(RESOLVER, 1.0, tcp=True)
    assert all(a.answered for a in later), later
    assert site.status()[RESOLVER]["state"] == "NULL-encrypted", site.diagnosis(run_dir)


def test_a_resolver_whose_ipsec_dies_mid_session_is_answered_again_within_2_s(cafe: tuple[Site, Host],
                                                                              pluto: Callable[..., Pluto],
                                                                              run_dir: Path):
    site, resolver = cafe
    configure(site, run_dir, retry_after_s=RETRY_AFTER_S)
    server = pluto(resolver, PlutoConfig(conns=responder_conns()))
    server.addconn("--autoall")
    site.up()
    assert site.query(RESOLVER, timeout=5).answered
    assert site.status()[RESOLVER]["state"] == "NULL-encrypted"
    # The resolver's IPsec crashes and the stack is reset (as systemd's ExecStopPost does for libreswan):
    # pluto gone, its SAs and policies flushed. The client still holds SAs the resolver no longer has.
    os.kill(server.pid, signal.SIGKILL)
    site.topo.run(resolver, ["ip", "xfrm", "state", "flush"])
    site.topo.run(resolver, ["ip", "xfrm", "policy", "flush"])
    died = time.monotonic()
    answer = site.query(RESOLVER, timeout=10, retry_every=0.5)  # a stub resending every half second
    recovered = time.monotonic() - died
    assert answer.answered and recovered < 2.0, (recovered, answer)
    later = site.queries_for(RESOLVER, 2.0)
    assert all(a.answered for a in later), later
    # Liveness dropped the SA; the next query found no IKE: its clear fallback. Which of the two status names
    # depends on whether the fallback is in place at the moment it looks (under TCG, either).
    row = site.status()[RESOLVER]
    assert row["state"] == "clear" and row["reason"].startswith(
        ("no IKE answer; DNS passes in clear, IKE is tried again in ",
         "the resolver stopped answering IKE liveness checks; DNS passes in clear")), row
    # The resolver's IPsec comes back; after retry_after_s the supervisor reloads the group, and the next
    # query negotiates ESP again.
    server.stop()
    server.start()
    server.addconn("--autoall")
    time.sleep(RETRY_AFTER_S + 2)
    assert site.query(RESOLVER, timeout=5).answered, site.diagnosis(run_dir)
    assert site.status()[RESOLVER]["state"] == "NULL-encrypted"
