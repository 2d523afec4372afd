"""The XFRM layer against the real kernel, in namespaces: policies agree with iproute2, ACQUIRE events
arrive, flushing touches only what the project owns, and SAs carry traffic (where the kernel has ESP)."""

import asyncio
import errno
import re
import secrets
from dataclasses import replace
from ipaddress import ip_address

import pytest

from ikecommon.xfrm import (
    OWNED_PRIORITY_MIN,
    Acquire,
    Action,
    AlreadyExists,
    Batches,
    Direction,
    EspUnsupported,
    Flushed,
    InvalidXfrmInput,
    Lifetime,
    Mode,
    NotFound,
    Policy,
    PolicyAdded,
    PolicyDeleted,
    PreparedPolicies,
    Request,
    SaExpired,
    SaSpec,
    Selector,
    Template,
    XfrmClient,
    XfrmError,
    algorithm,
    larval_drop,
    monitor,
    probe_esp,
    set_larval_drop,
)
from netns_tests.harness.pluto import PlutoConfig
from netns_tests.harness.topology import Host, Topology

TRAP = Policy(Selector.of("10.88.0.1/32", "10.88.0.53/32", "udp", dport=53), Direction.OUT, priority=1000,
              templates=(Template(Mode.TRANSPORT),))
BACKSTOP = Policy(Selector.of("fd88::1/128", "::/0", "tcp", dport=53), Direction.OUT, priority=OWNED_PRIORITY_MIN,
                  action=Action.BLOCK)


@pytest.fixture
def pair(topology: Topology):
    client, server = topology.add_host("client"), topology.add_host("server")
    topology.link(client, server, "10.88.0.0/24", "fd88::/64", hosts=(1, 53))
    return client, server


def ip_policies(topology: Topology, host: Host) -> str:
    return str(topology.run(host, ["ip", "xfrm", "policy"]).stdout)




@pytest.mark.host  # policies and ACQUIREs only
def test_policies_added_here_appear_in_ip_xfrm_as_intended(topology, pair):
    client, _ = pair
    with XfrmClient(client.netns) as xfrm:
        xfrm.add_policy(TRAP)
        xfrm.add_policy(BACKSTOP)
    text = ip_policies(topology, client)
    assert re.search(r"src 10\.88\.0\.1/32 dst 10\.88\.0\.53/32 proto udp dport 53 \n\tdir out priority 1000 "
                     r"ptype main \n\ttmpl src 0\.0\.0\.0 dst 0\.0\.0\.0\n\t\tproto esp reqid 0 mode transport", text)
    assert re.search(r"src fd88::1/128 dst ::/0 proto tcp dport 53 \n\tdir out action block priority 2130706432 ",
                     text)


@pytest.mark.host  # policies and ACQUIREs only
def test_policies_added_with_ip_are_read_back(topology, pair):
    client, _ = pair
    topology.run(client, ["ip", "xfrm", "policy", "add", "src", "10.88.0.53/32", "dst", "10.88.0.1/32", "proto",
                          "udp", "sport", "53", "dir", "in", "priority", "777", "tmpl", "src", "10.88.0.53", "dst",
                          "10.88.0.1", "proto", "esp", "reqid", "42", "mode", "tunnel"])
    with XfrmClient(client.netns) as xfrm:
        (policy,) = xfrm.policies()
    assert policy == Policy(Selector.of("10.88.0.53/32", "10.88.0.1/32", "udp", sport=53), Direction.IN, 777,
                            templates=(Template(Mode.TUNNEL, 42, ip_address("10.88.0.53"), ip_address("10.88.0.1")),),
                            index=policy.index)


@pytest.mark.host  # policies and ACQUIREs only
def test_update_replaces_and_delete_removes(topology, pair):
    client, _ = pair
    with XfrmClient(client.netns) as xfrm:
        xfrm.add_policy(TRAP)
        with pytest.raises(AlreadyExists, match="File exists"):
            xfrm.add_policy(TRAP)
        xfrm.update_policy(Policy(TRAP.selector, Direction.OUT, 1000, Action.BLOCK))
        assert [p.action for p in xfrm.policies()] == [Action.BLOCK]
        xfrm.delete_policy(TRAP)
        assert xfrm.policies() == []


@pytest.mark.host  # policies and ACQUIREs only
def test_prepared_policies_come_back_after_a_flush_and_replace_themselves_otherwise(topology, pair):
    """The supervisor's answer to a flush: one datagram of updates, encoded before the flush came."""
    client, _ = pair
    wanted = [BACKSTOP, replace(BACKSTOP, selector=Selector.of("0.0.0.0/0", "0.0.0.0/0", "udp", dport=53))]
    with XfrmClient(client.netns) as xfrm, PreparedPolicies(wanted, client.netns) as prepared:
        xfrm.add_policy(TRAP)
        prepared.put_back()
        prepared.put_back()  # again: each replaces itself, nothing doubles
        assert sorted((p.selector.proto, p.selector.dst.version) for p in xfrm.policies() if p.owned) == [(6, 6),
                                                                                                          (17, 4)]
        topology.run(client, ["ip", "xfrm", "policy", "flush"])
        prepared.put_back()
        back = [replace(p, index=0) for p in xfrm.policies()]
        assert sorted(back, key=str) == sorted(wanted, key=str)  # the trap was another's: not ours to restore


@pytest.mark.host  # policies (SA adds are refused here, which the test expects)
def test_a_batch_answers_each_request_and_a_refusal_stops_none_of_the_others(topology, pair):
    """One datagram, one answer per request in order; the kernel's refusals are typed and carry its words."""
    client, _ = pair
    out_sa, _ = sa_pair(secrets.token_bytes(20), 0x3001, 0x3002, "10.88.0.1", "10.88.0.53")
    with Batches(client.netns) as batches:
        results = batches.run([Request.update_policy(TRAP), Request.delete_policy(BACKSTOP), Request.add_sa(out_sa),
                               Request.update_policy(BACKSTOP), Request.update_policy(BACKSTOP),
                               Request.delete_sa(ip_address("10.88.0.53"), 0x3999)])
        assert [type(r) for r in results[:2]] == [type(None), NotFound] and results[3:5] == [None, None]
        assert isinstance(results[5], NotFound) and results[5].errno == errno.ESRCH  # no such SA: the kernel's word
        assert "delete policy fd88::1/128 -> ::/0 proto 6 dport 53 dir out" in str(results[1])
        if probe_esp().available:
            assert results[2] is None
        else:
            assert isinstance(results[2], EspUnsupported)
            assert str(results[2]).endswith("Requested AEAD algorithm not found")
        with XfrmClient(client.netns) as xfrm:
            assert sorted(str(replace(p, index=0)) for p in xfrm.policies()) == sorted(map(str, (TRAP, BACKSTOP)))
        assert batches.run([]) == []


@pytest.mark.host  # policies only
def test_a_batch_too_large_for_one_datagram_goes_in_several(topology, pair):
    """A shutdown's teardown: 1,000 policy updates (252 KB, more than a socket's buffer holds), then 2,000
    deletes, every one answered."""
    client, _ = pair
    policies = [Policy(Selector.of("10.88.0.1/32", f"10.{90 + n // 250}.{n % 250}.53/32", "udp", dport=53),
                       Direction.OUT, 1000, templates=(Template(Mode.TRANSPORT),)) for n in range(1000)]
    with Batches(client.netns) as batches:
        adds = [Request.update_policy(p) for p in policies]
        assert sum(len(r.message) for r in adds) > 1 << 17
        assert batches.run(adds) == [None] * 1000
        with XfrmClient(client.netns) as xfrm:
            assert len(xfrm.policies()) == 1000
        deletes = [Request.delete_policy(p) for p in policies] * 2  # the second 1,000 find nothing
        results = batches.run(deletes)
        assert results[:1000] == [None] * 1000 and all(isinstance(r, NotFound) for r in results[1000:])
        with XfrmClient(client.netns) as xfrm:
            assert xfrm.policies() == []


@pytest.mark.host  # policies and ACQUIREs only
def test_dns_hitting_a_trap_raises_an_acquire_with_its_selector(topology, pair):
    client, _ = pair
    with XfrmClient(client.netns) as xfrm:
        xfrm.add_policy(TRAP)

    async def first_acquire() -> tuple[Acquire, int]:
        events = monitor(client.netns)
        waiter = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0.2)  # the monitor's socket is bound before the packet goes
        with topology.socket(client) as sock:
            sock.bind(("10.88.0.1", 0))
            port = sock.getsockname()[1]
            sock.sendto(b"query", ("10.88.0.53", 53))
        while True:
            event = await asyncio.wait_for(waiter, 10)
            if isinstance(event, Acquire):
                await events.aclose()
                return event, port
            waiter = asyncio.ensure_future(anext(events))

    acquire, port = asyncio.run(first_acquire())
    ifindex = int(topology.run(client, ["ip", "-o", "link", "show", "to-server"]).stdout.split(":")[0])
    assert acquire.selector == Selector.of("10.88.0.1/32", "10.88.0.53/32", "udp", sport=port, dport=53,
                                           ifindex=ifindex)
    assert (acquire.src, acquire.dst) == (ip_address("10.88.0.1"), ip_address("10.88.0.53"))
    assert acquire.policy.selector == TRAP.selector and acquire.policy.priority == 1000


@pytest.mark.host  # policies and ACQUIREs only
def test_flush_removes_only_owned_policies_with_pluto_and_user_policies_present(topology, pair, pluto):
    client, _ = pair
    daemon = pluto(client, PlutoConfig(conns="""
conn dns
	left=10.88.0.1
	right=10.88.0.53
	authby=null
	leftid=%null
	rightid=%null
	leftprotoport=udp/0
	rightprotoport=udp/53
	leftupdown=%disabled
	auto=ondemand
"""))
    daemon.addconn("--autoall")
    topology.run(client, ["ip", "xfrm", "policy", "add", "src", "10.88.0.1/32", "dst", "10.88.0.9/32", "dir", "out",
                          "priority", "500", "action", "block"])
    with XfrmClient(client.netns) as xfrm:
        others = xfrm.policies()
        assert any(p.priority == 500 for p in others)
        assert any(p.selector.dport == 53 and p.templates for p in others)  # pluto's trap
        xfrm.add_policy(BACKSTOP)
        xfrm.add_policy(Policy(Selector.of("10.88.0.1/32", "0.0.0.0/0", "udp", dport=53), Direction.OUT,
                               OWNED_PRIORITY_MIN + 1, Action.BLOCK))
        flushed = xfrm.flush_owned()
        assert len(flushed) == 2 and all(p.owned for p in flushed)
        assert xfrm.policies() == others


@pytest.mark.host  # policies and ACQUIREs only
def test_bad_input_installs_nothing(topology, pair):
    client, _ = pair
    with XfrmClient(client.netns) as xfrm:
        xfrm.add_policy(TRAP)
        before = ip_policies(topology, client)
        with pytest.raises(InvalidXfrmInput):
            xfrm.add_policy(Policy(Selector.of("10.88.0.1/32", "10.88.0.53/32", "udp", dport=65536),
                                   Direction.OUT, 5))
        with pytest.raises(InvalidXfrmInput):
            xfrm.add_sa(SaSpec(ip_address("10.88.0.1"), ip_address("10.88.0.53"), 0x1000,
                               (algorithm("no-such-cipher", bytes(16)),)))
        with pytest.raises(AlreadyExists):
            xfrm.add_policy(TRAP)
        assert ip_policies(topology, client) == before
        assert topology.run(client, ["ip", "xfrm", "state"]).stdout == ""


@pytest.mark.host  # policies and ACQUIREs only
def test_larval_drop_is_per_namespace(topology, pair):
    client, server = pair
    assert larval_drop(client.netns) and larval_drop(server.netns)
    set_larval_drop(False, client.netns)
    assert not larval_drop(client.netns) and larval_drop(server.netns)
    assert topology.run(client, ["sysctl", "-n", "net.core.xfrm_larval_drop"]).stdout.strip() == "0"


def sa_pair(key: bytes, spi_out: int, spi_in: int, a: str, b: str) -> tuple[SaSpec, SaSpec]:
    algos = (algorithm("aes-gcm-16", key),)
    return (SaSpec(ip_address(a), ip_address(b), spi_out, algos, Mode.TRANSPORT, reqid=1),
            SaSpec(ip_address(b), ip_address(a), spi_in, algos, Mode.TRANSPORT, reqid=1))


def test_esp_sa_carries_traffic_and_its_counters_move(topology, pair):
    """Needs a kernel with ESP: runs in the VM on machines whose kernel has none."""
    client, server = pair
    assert probe_esp().available
    key = secrets.token_bytes(20)
    out_sa, in_sa = sa_pair(key, 0x1001, 0x1002, "10.88.0.1", "10.88.0.53")
    for host, local, remote in ((client, "10.88.0.1/32", "10.88.0.53/32"), (server, "10.88.0.53/32", "10.88.0.1/32")):
        with XfrmClient(host.netns) as xfrm:
            xfrm.add_sa(out_sa)
            xfrm.add_sa(in_sa)
            template = (Template(Mode.TRANSPORT, reqid=1),)
            xfrm.add_policy(Policy(Selector.of(local, remote, "udp"), Direction.OUT, 100, templates=template))
            xfrm.add_policy(Policy(Selector.of(remote, local, "udp"), Direction.IN, 100, templates=template))
    with topology.socket(server) as rx, topology.socket(client) as tx:
        rx.bind(("10.88.0.53", 5300))
        rx.settimeout(5)
        for _ in range(3):
            tx.sendto(b"inside ESP", ("10.88.0.53", 5300))
            assert rx.recvfrom(100)[0] == b"inside ESP"
    with XfrmClient(client.netns) as xfrm:
        sas = {sa.spi: sa for sa in xfrm.sas()}
        assert sas[0x1001].counters.packets == 3 and sas[0x1001].counters.bytes > 0
        assert sas[0x1001].algorithms[0].name == "rfc4106(gcm(aes))" and sas[0x1001].algorithms[0].key is None
        assert xfrm.sas(show_keys=True)[0].algorithms[0].key == key
        xfrm.delete_sa(ip_address("10.88.0.53"), 0x1001)
        assert 0x1001 not in {sa.spi for sa in xfrm.sas()}
    with XfrmClient(server.netns) as xfrm:
        assert {sa.spi: sa for sa in xfrm.sas()}[0x1001].counters.packets == 3


@pytest.mark.host
def test_on_this_host_an_sa_installs_or_fails_with_a_typed_error(topology):
    """On the host itself: where the kernel has no ESP (these machines) adding an SA raises
    EspUnsupported quoting the kernel; where it has ESP, the SA is installed."""
    host = topology.add_host("esphost")
    spec, _ = sa_pair(secrets.token_bytes(20), 0x2001, 0x2002, "192.0.2.1", "192.0.2.2")
    with XfrmClient(host.netns) as xfrm:
        if probe_esp().available:
            xfrm.add_sa(spec)
            assert [sa.spi for sa in xfrm.sas()] == [0x2001]
        else:
            with pytest.raises(EspUnsupported, match="Requested AEAD algorithm not found"):
                xfrm.add_sa(spec)
            assert xfrm.sas() == []


@pytest.mark.host  # policies and ACQUIREs only
def test_a_missing_namespace_is_a_clear_error():
    with pytest.raises(XfrmError, match="no network namespace named 'ikt-no-such-ns'"):
        XfrmClient("ikt-no-such-ns")
    with pytest.raises(XfrmError, match="no network namespace named 'ikt-no-such-ns'"):
        Batches("ikt-no-such-ns")


@pytest.mark.host  # policies and ACQUIREs only
def test_policy_events_arrive_typed(topology, pair):
    client, _ = pair

    def add_delete_flush() -> None:
        with XfrmClient(client.netns) as xfrm:
            xfrm.add_policy(TRAP)
            xfrm.delete_policy(TRAP)
            xfrm.add_policy(BACKSTOP)  # a flush of an empty database sends no event
        topology.run(client, ["ip", "xfrm", "policy", "flush"])

    async def collect() -> list[object]:
        events = monitor(client.netns)
        first = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0.2)
        await asyncio.to_thread(add_delete_flush)  # XfrmClient is synchronous: keep it off the loop
        seen: list[object] = [await asyncio.wait_for(first, 10)]
        while len(seen) < 4:
            seen.append(await asyncio.wait_for(anext(events), 10))
        await events.aclose()
        return seen

    added, deleted, backstop, flushed = asyncio.run(collect())
    assert isinstance(added, PolicyAdded) and added.policy.selector == TRAP.selector
    assert isinstance(deleted, PolicyDeleted) and deleted.policy.priority == TRAP.priority
    assert isinstance(backstop, PolicyAdded) and backstop.policy.owned
    assert flushed == Flushed("policies")


def test_sa_lifetimes_raise_soft_then_hard_expire_events(topology, pair):
    """Needs a kernel with ESP: runs in the VM on machines whose kernel has none."""
    client, _ = pair
    spec, _ = sa_pair(secrets.token_bytes(20), 0x3001, 0x3002, "10.88.0.1", "10.88.0.53")
    spec = replace(spec, lifetime=Lifetime(soft_seconds=1, hard_seconds=2))

    async def expiries() -> list[SaExpired]:
        events = monitor(client.netns)
        first = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0.2)
        await asyncio.to_thread(lambda: XfrmClient(client.netns).add_sa(spec))
        seen = [await asyncio.wait_for(first, 15)]
        while sum(isinstance(e, SaExpired) for e in seen) < 2:
            seen.append(await asyncio.wait_for(anext(events), 15))
        await events.aclose()
        return [e for e in seen if isinstance(e, SaExpired)]

    soft, hard = asyncio.run(expiries())
    assert (soft.hard, hard.hard) == (False, True)
    assert soft.sa.spi == hard.sa.spi == 0x3001
    with XfrmClient(client.netns) as xfrm:
        assert xfrm.sas() == []  # the hard expiry removed it
