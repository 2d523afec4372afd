"""Trusted mode fails closed: 0 plaintext port-53 packets on the wire, whatever happens, and `status`
says why DNS is blocked. Real pluto on both ends, real unbound, the capture on the router."""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from ikecommon import keys
from ikecommon.xfrm import XfrmClient
from ikectl import backstop
from netns_tests.conftest import IKECTL
from netns_tests.harness import procs
from netns_tests.harness.dnsclient import query
from netns_tests.lab import TRUSTED_ID, Lab

TRUSTED, PLAIN, COFFEE = "10.77.4.53", "10.77.3.53", "10.77.2.53"


def write_config(world: Lab, run_dir: Path, tmp_path: Path, address: str = TRUSTED,
                 pin: keys.PinnedKey | None = None) -> Path:
    pin = pin or world.trusted_pin
    assert pin is not None
    path = tmp_path / "ikectl.toml"
    path.write_text(f'mode = "trusted"\n[trusted]\naddress = "{address}"\nid = "{TRUSTED_ID}"\n'
                    f'pubkey = "{pin.libreswan}"\n[paths]\nrun_dir = "{run_dir}"\n')
    return path


def ikectl(world: Lab, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return world.topo.run(world.hosts["client"], [str(IKECTL), "--config", str(config), *args], check=False,
                          timeout=120)


def plaintext(world: Lab) -> dict[str, int]:
    assert world.capture is not None
    time.sleep(0.3)
    world.capture.stop()
    count = world.capture.count(world.hosts["client"].addresses())
    return {address: count.peer(address).plaintext_dns for address in (TRUSTED, PLAIN, COFFEE)}


def status(world: Lab, config: Path) -> dict[str, Any]:
    proc = ikectl(world, config, "status", "--json")
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    assert document["version"] == 1
    return {r["address"]: r for r in document["resolvers"]}


def test_backstop_blocks_dns_from_before_pluto_starts_until_the_sa_is_up(world, run_dir, tmp_path):
    config = write_config(world, run_dir, tmp_path)
    client = world.hosts["client"]
    sender = world.topo.socket(client)
    up = subprocess.Popen(["ip", "netns", "exec", client.netns, str(IKECTL), "--config", str(config), "up"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(backstop.installed(client.netns)) < len(backstop.policies()):  # from the backstop on, no leak
        assert up.poll() is None and time.monotonic() < deadline, up.communicate()
        time.sleep(0.005)
    sent = blocked = 0
    while up.poll() is None:  # the whole rest of `up`: pluto starting, conns loading
        for target in (TRUSTED, PLAIN):
            try:
                sender.sendto(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x01", (target, 53))
                sent += 1
            except PermissionError:
                blocked += 1
        time.sleep(0.01)
    assert up.returncode == 0, up.communicate()
    sender.close()
    assert blocked > 0  # the window was exercised
    answer = query(world.topo, client, TRUSTED, timeout=10)
    assert answer.answered
    assert plaintext(world) == {TRUSTED: 0, PLAIN: 0, COFFEE: 0}


def test_dns_sent_while_ike_is_still_negotiating_never_leaves_in_clear(world, run_dir, tmp_path):
    config = write_config(world, run_dir, tmp_path)
    client, router = world.hosts["client"], world.hosts["router"]
    # The router drops everything for the resolver, IKE included: pluto's negotiation stays in flight,
    # retransmitting, for as long as the queries below take.
    world.topo.run(router, ["ip", "route", "add", "blackhole", f"{TRUSTED}/32"])
    try:
        assert ikectl(world, config, "up").returncode == 0  # it starts the negotiation, it does not wait for it
        for target in (TRUSTED, PLAIN):
            assert not query(world.topo, client, target, timeout=2).answered
            assert not query(world.topo, client, target, tcp=True, timeout=1.5).answered
        assert status(world, config)[TRUSTED]["state"] != "authenticated"
    finally:
        world.topo.run(router, ["ip", "route", "del", "blackhole", f"{TRUSTED}/32"])
    # pluto's next retransmission gets through; a stub's resends are answered inside ESP from then on.
    assert query(world.topo, client, TRUSTED, timeout=40).answered
    assert status(world, config)[TRUSTED]["state"] == "authenticated"
    assert plaintext(world) == {TRUSTED: 0, PLAIN: 0, COFFEE: 0}


def test_dns_goes_to_the_trusted_resolver_over_esp_udp_and_tcp(world, run_dir, tmp_path):
    config = write_config(world, run_dir, tmp_path)
    assert ikectl(world, config, "up").returncode == 0
    client = world.hosts["client"]
    first = query(world.topo, client, TRUSTED, timeout=10)
    assert first.answered and first.records == ("10.77.0.80",)
    assert query(world.topo, client, TRUSTED, tcp=True, timeout=10).answered
    resolvers = status(world, config)
    assert resolvers[TRUSTED]["state"] == "authenticated"
    assert resolvers[TRUSTED]["packets_out"] >= 2 and resolvers[TRUSTED]["algorithms"] == ["AES_GCM_16_256"]
    assert plaintext(world) == {TRUSTED: 0, PLAIN: 0, COFFEE: 0}


def test_queries_to_port_53_servers_that_are_not_the_resolver_get_no_answer_and_send_no_packet(world, run_dir,
                                                                                             tmp_path):
    config = write_config(world, run_dir, tmp_path)
    assert ikectl(world, config, "up").returncode == 0
    client = world.hosts["client"]
    assert query(world.topo, client, TRUSTED, timeout=10).answered  # trusted mode is working meanwhile
    for other in (PLAIN, COFFEE):  # real DNS servers, one of them speaking IKE: not the pinned resolver
        assert not query(world.topo, client, other, timeout=1.5).answered
        assert not query(world.topo, client, other, tcp=True, timeout=1.5).answered
    resolvers = status(world, config)
    assert resolvers[TRUSTED]["state"] == "authenticated"
    assert plaintext(world) == {TRUSTED: 0, PLAIN: 0, COFFEE: 0}


def test_pluto_killed_mid_session_keeps_dns_off_the_wire_and_is_started_again(world, run_dir, tmp_path):
    """pluto dies: the backstops hold (its SAs may carry DNS until they go), and the supervisor starts it again
    from the tree on disk, which loads and routes the conns: DNS comes back inside ESP, and status says so."""
    config = write_config(world, run_dir, tmp_path)
    assert ikectl(world, config, "up").returncode == 0
    client = world.hosts["client"]
    assert query(world.topo, client, TRUSTED, timeout=10).answered
    pid = int((run_dir / "pluto" / "pluto.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    for target in (TRUSTED, PLAIN):
        query(world.topo, client, target, timeout=1.5)  # answered over the old SA, or not at all
    with XfrmClient(client.netns) as xfrm:  # the SA's kernel state outlives pluto: expire it
        for sa in xfrm.sas():
            if not sa.larval:  # an ACQUIRE's larval state (SPI 0) cannot be deleted by SPI; it holds nothing
                xfrm.delete_sa(sa.dst, sa.spi)
    assert not query(world.topo, client, PLAIN, timeout=1.5).answered
    assert query(world.topo, client, TRUSTED, timeout=30).answered  # a new pluto, a new SA
    new_pid = int((run_dir / "pluto" / "pluto.pid").read_text())
    assert new_pid != pid
    proc = ikectl(world, config, "status", "--json")
    notes = json.loads(proc.stdout)["notes"]
    assert any(f"pluto (pid {pid}) exited; started again as pid {new_pid}" in n for n in notes), notes
    assert status(world, config)[TRUSTED]["state"] == "authenticated"
    assert plaintext(world) == {TRUSTED: 0, PLAIN: 0, COFFEE: 0}


@pytest.mark.host  # IKE_AUTH fails on the key: no SA is ever installed
def test_a_resolver_answering_ike_with_another_key_is_blocked_and_status_says_so(world, run_dir, tmp_path):
    other = keys.from_public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
    config = write_config(world, run_dir, tmp_path, pin=other)
    assert ikectl(world, config, "up").returncode == 0
    assert not query(world.topo, world.hosts["client"], TRUSTED, timeout=4).answered
    row = status(world, config)[TRUSTED]
    assert row["state"] == "blocked"
    assert row["reason"] == "the resolver presented a different key", row
    assert plaintext(world) == {TRUSTED: 0, PLAIN: 0, COFFEE: 0}


@pytest.mark.host  # IKE never answers: no SA
def test_a_resolver_without_ike_is_blocked_and_status_says_so(world, run_dir, tmp_path):
    config = write_config(world, run_dir, tmp_path, address=PLAIN)
    assert ikectl(world, config, "up").returncode == 0
    assert not query(world.topo, world.hosts["client"], PLAIN, timeout=5).answered
    row = status(world, config)[PLAIN]
    assert row["state"] == "blocked" and row["reason"].startswith("no IKE answer from the resolver"), row
    assert plaintext(world) == {TRUSTED: 0, PLAIN: 0, COFFEE: 0}


def test_down_removes_what_up_installed_and_nothing_else(world, run_dir, tmp_path):
    client = world.hosts["client"]
    world.topo.run(client, ["ip", "xfrm", "policy", "add", "src", "10.77.1.1/32", "dst", "192.0.2.9/32", "dir",
                            "out", "priority", "500", "action", "block"])
    with XfrmClient(client.netns) as xfrm:
        before = xfrm.policies()
    config = write_config(world, run_dir, tmp_path)
    assert ikectl(world, config, "up").returncode == 0
    assert ikectl(world, config, "up").returncode == 0  # idempotent
    assert query(world.topo, client, TRUSTED, timeout=10).answered
    pid = int((run_dir / "pluto" / "pluto.pid").read_text())
    down = ikectl(world, config, "down")
    assert down.returncode == 0 and down.stdout == down.stderr == ""
    with XfrmClient(client.netns) as xfrm:
        # A query that met the trap before the SA was up leaves the kernel's larval state of its ACQUIRE (SPI
        # 0, no keys, no policy left to use it): the kernel drops it after xfrm_acq_expires (30 s), and no
        # XFRM request can delete it by SPI. Everything with keys is gone.
        assert xfrm.policies() == before and [sa for sa in xfrm.sas() if not sa.larval] == []
    assert not Path(f"/proc/{pid}").exists() and not run_dir.exists()
    assert query(world.topo, client, PLAIN, timeout=3).answered  # clear DNS is the user's again
    assert ikectl(world, config, "down").returncode == 0  # down when down: nothing to do


@pytest.mark.host  # refused before any SA
def test_bad_input_exits_with_one_line_and_changes_nothing(world, run_dir, tmp_path):
    client = world.hosts["client"]
    with XfrmClient(client.netns) as xfrm:
        before = xfrm.policies()
    bad = tmp_path / "bad.toml"
    for text, code, words in (("mode = [", 2, "not valid TOML"), ('mode = "paranoid"', 2, "mode = 'paranoid'"),
                              ('mode = "trusted"\n[trusted]\naddress = "10.77.4.300"\nid = "@x.example"\n'
                               f'pubkey = "{world.trusted_pin.libreswan}"', 2, "is not an IP address"),
                              ('mode = "trusted"\n[trusted]\naddress = "10.77.4.53"\nid = "@x.example"\n'
                               'pubkey = "0sAAAA"', 2, "pubkey: not an RFC 3110 RSA key")):
        bad.write_text(text)
        proc = ikectl(world, bad, "up")
        assert proc.returncode == code and words in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    readable = Path(tempfile.mkdtemp(prefix="ikt-cfg-", dir="/run"))  # pytest's tmp dirs are 0700
    readable.chmod(0o755)
    good = write_config(world, run_dir, readable)
    good.chmod(0o644)
    nobody = world.topo.run(client, ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(IKECTL),
                                     "--config", str(good), "up"], check=False)
    shutil.rmtree(readable)
    assert nobody.returncode == 1 and "needs root" in nobody.stderr and nobody.stderr.count("\n") == 1
    with XfrmClient(client.netns) as xfrm:
        assert xfrm.policies() == before and xfrm.sas() == []
    assert not (run_dir / "pluto").exists()


def test_verify_proves_from_the_wire_and_catches_a_leak(world, run_dir, tmp_path):
    config = write_config(world, run_dir, tmp_path)
    client = world.hosts["client"]
    assert ikectl(world, config, "up").returncode == 0
    assert query(world.topo, client, TRUSTED, timeout=10).answered
    proof = ikectl(world, config, "verify", "--seconds", "2")
    assert proof.returncode == 0, proof.stdout + proof.stderr
    line = next(row for row in proof.stdout.splitlines() if row.startswith(TRUSTED))
    assert " encrypted " in line and "0 plaintext port-53 packets out" in line and " 0 ESP" not in line
    # Take every protection away (the supervisor that restores them first, then pluto's policies, the XFRM
    # backstop and the nftables one): DNS now leaves in clear, and verify must say so.
    for pid in procs.pids_by_argv("ikectl.supervisor", str(run_dir)):
        os.kill(pid, signal.SIGKILL)
    world.topo.run(client, ["ip", "xfrm", "policy", "flush"])
    world.topo.run(client, ["ip", "xfrm", "state", "flush"])
    world.topo.run(client, ["nft", "delete", "table", "inet", "ikectl"])
    leak = ikectl(world, config, "verify", "--seconds", "2")
    assert leak.returncode == 1, leak.stdout + leak.stderr
    assert next(row for row in leak.stdout.splitlines() if row.startswith(TRUSTED)).split()[1] == "LEAK"



def test_child_sa_rekeys_with_enclave_ike_keep_dns_answered_inside_esp(world, run_dir, tmp_path):
    """enclave-ike is the responder: pluto rekeys the Child SA every ~20 s (30 s lifetimes) under queries."""
    config = write_config(world, run_dir, tmp_path)
    config.write_text(config.read_text() + "[ipsec]\nsa_lifetime_s = 30\n")
    assert ikectl(world, config, "up").returncode == 0
    client = world.hosts["client"]
    spis: set[int] = set()
    answers = []
    deadline = time.monotonic() + 50
    while time.monotonic() < deadline:
        answers.append(query(world.topo, client, TRUSTED, timeout=3, retry_every=0.5))
        with XfrmClient(client.netns) as xfrm:
            spis |= {sa.spi for sa in xfrm.sas() if str(sa.dst) == TRUSTED and not sa.larval}
    assert len(spis) >= 3, spis  # the first Child SA and at least two rekeys
    unanswered = [a for a in answers if not a.answered]
    assert not unanswered and len(answers) >= 100, (len(answers), unanswered)
    assert world.trusted_server is not None and "Child SA rekeyed" in world.trusted_server.log_text()
    assert plaintext(world) == {TRUSTED: 0, PLAIN: 0, COFFEE: 0}


def test_switching_modes_with_up_never_lets_dns_out_in_clear_where_trusted_holds(world, run_dir, tmp_path):
    """trusted -> coffee-shop -> trusted by rewriting the config and running `up` again, as a user would."""
    client = world.hosts["client"]
    assert world.capture is not None
    trusted = write_config(world, run_dir, tmp_path)
    coffee = tmp_path / "coffee.toml"
    coffee.write_text(f'mode = "coffee-shop"\n[resolvers]\naddresses = ["{COFFEE}", "{PLAIN}"]\n'
                      f'[paths]\nrun_dir = "{run_dir}"\n')

    def clear_to_plain() -> int:  # plaintext port-53 packets to the resolver without IKE, so far
        return int(world.capture.count(client.addresses()).peer(PLAIN).plaintext_dns)

    assert ikectl(world, trusted, "up").returncode == 0
    assert query(world.topo, client, TRUSTED, timeout=10).answered
    assert not query(world.topo, client, PLAIN, timeout=1.5).answered
    time.sleep(0.3)
    assert clear_to_plain() == 0

    switched = ikectl(world, coffee, "up")
    assert switched.returncode == 0, switched.stderr
    assert query(world.topo, client, PLAIN, timeout=5).answered  # coffee-shop: clear where there is no IKE
    assert query(world.topo, client, COFFEE, timeout=10).answered
    assert status(world, coffee)[PLAIN]["state"] == "clear"
    time.sleep(0.3)
    in_coffee_shop = clear_to_plain()
    assert in_coffee_shop > 0

    back = ikectl(world, trusted, "up")
    assert back.returncode == 0, back.stderr
    policies = world.topo.run(client, ["ip", "xfrm", "policy"]).stdout  # for the failure message
    assert not query(world.topo, client, PLAIN, timeout=2).answered
    assert not query(world.topo, client, COFFEE, timeout=1.5).answered
    assert query(world.topo, client, TRUSTED, timeout=10).answered
    rows = status(world, trusted)
    assert rows[TRUSTED]["state"] == "authenticated"
    wire = plaintext(world)
    if not (wire[PLAIN] == in_coffee_shop and wire[TRUSTED] == 0 and wire[COFFEE] == 0):
        pytest.fail(f"clear DNS after switching back: {wire} ({in_coffee_shop} to {PLAIN} before); {policies}")
