"""The daemon fixtures: a real unbound serving the lab zone, a real pluto per namespace."""

import os
import signal

import pytest

from netns_tests.harness.dnsclient import query
from netns_tests.harness.pluto import PlutoConfig
from netns_tests.harness.procs import HarnessError
from netns_tests.harness.topology import Topology

pytestmark = pytest.mark.host  # daemons start and stop; no ESP involved


@pytest.fixture
def pair(topology: Topology):
    client, server = topology.add_host("client"), topology.add_host("server")
    topology.link(client, server, "10.88.0.0/24", "fd88::/64", hosts=(1, 53))
    return client, server


def test_unbound_answers_the_lab_zone_over_udp_and_tcp_v4_and_v6(topology, pair, unbound):
    client, server = pair
    unbound(server)
    for address in ("10.88.0.53", "fd88::53"):
        for tcp in (False, True):
            answer = query(topology, client, address, tcp=tcp, timeout=5.0)
            assert answer.answered and answer.rcode == "NOERROR", (address, tcp, answer)
            assert answer.records == ("10.77.0.80",)
    aaaa = query(topology, client, "10.88.0.53", rdtype="AAAA")
    assert aaaa.records == ("fd77::80",)


def test_unbound_refuses_names_outside_the_lab_zone(topology, pair, unbound):
    client, server = pair
    unbound(server)
    answer = query(topology, client, "10.88.0.53", qname="example.com.")
    assert answer.answered and answer.rcode == "REFUSED"


def test_pluto_runs_in_its_namespace_with_its_own_dirs_and_stops_by_pid(topology, pair, pluto):
    client, _ = pair
    daemon = pluto(client, PlutoConfig(conns=""))
    status = daemon.whack("--status")
    assert "10.88.0.1:500" in status  # it listens on its namespace's address
    assert (daemon.rundir / "pluto.ctl").exists()
    assert (daemon.nss / "cert9.db").exists()
    pid = daemon.pid
    assert daemon.stop() is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_pluto_loads_conns_with_addconn_and_reports_bad_ones(topology, pair, pluto):
    client, _ = pair
    daemon = pluto(client, PlutoConfig(conns="""
conn ok
	left=10.88.0.1
	right=10.88.0.53
	authby=null
	leftid=%null
	rightid=%null
	auto=add
"""))
    daemon.addconn("--autoall")
    assert '"ok":' in daemon.whack("--status")
    with pytest.raises(HarnessError, match="no-such-conn"):
        daemon.addconn("no-such-conn")


def test_a_daemon_that_dies_at_start_is_reported_with_its_log(topology, pair, pluto):
    client, _ = pair
    daemon = pluto(client, PlutoConfig(conns=""), run=False)
    daemon.conf.write_text("config setup\n\tthis-is-not-a-keyword=yes\n")
    with pytest.raises(HarnessError, match="pluto@client"):
        daemon.start()
        daemon.whack("--status")
    daemon.stop(sig=signal.SIGKILL)
