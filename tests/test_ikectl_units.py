"""Pure parts of ikectl's runtime: the backstop's policies, status verdicts and their rendering."""

from ipaddress import ip_network

from ikecommon.xfrm import Action, Direction
from ikectl import backstop, cli, daemon, nm, opportunistic, status
from ikectl.config import Config
from ikectl.whack import BareShunt, TrafficStatus


def test_backstop_blocks_port_53_everywhere_but_loopback_and_loses_to_pluto():
    policies = backstop.policies()
    assert len(policies) == 16  # v4/v6 x udp/tcp x out/in x (allow loopback, block all)
    assert all(p.owned for p in policies)
    blocks = [p for p in policies if p.action == Action.BLOCK]
    allows = [p for p in policies if p.action == Action.ALLOW]
    assert {(p.selector.proto, p.direction, p.selector.src.version) for p in blocks} == {
        (proto, d, v) for proto in (6, 17) for d in (Direction.OUT, Direction.IN) for v in (4, 6)}
    assert all(p.selector.dport == 53 for p in blocks if p.direction == Direction.OUT)
    assert all(p.selector.sport == 53 for p in blocks if p.direction == Direction.IN)
    assert {str(p.selector.dst) for p in allows if p.direction == Direction.OUT} == {"127.0.0.0/8", "::1/128"}
    assert max(p.priority for p in allows) < min(p.priority for p in blocks)  # smaller wins in XFRM
    assert min(p.priority for p in blocks) > 3_500_000  # pluto's traps and SAs (1.3-3.5 million) win over them


TRUSTED_STATE = {"mode": "trusted", "trusted": "192.0.2.53", "up_at": 1000.0}
OE_STATE = {"mode": "coffee-shop", "trusted": None, "up_at": 1000.0}
ESTABLISHED = [TrafficStatus(2, "ikectl-trusted-udp", None, 10, 10, "@dns.example.net")]


def test_trusted_verdicts():
    def decide(address="192.0.2.53", pid=42, traffic=(), has_sa=False, log=()):
        return status._decide(TRUSTED_STATE, address, pid, list(traffic), [], has_sa, list(log))

    assert decide(traffic=ESTABLISHED, has_sa=True) == ("authenticated", "pinned key @dns.example.net")
    assert decide("198.51.100.1") == ("blocked", "not the trusted resolver")
    assert decide(pid=None)[0] == "blocked" and "pluto is not running" in decide(pid=None)[1]
    wrong_key = ['Nov 23 15:50:02.1: "ikectl-trusted-udp" #1: IKE SA authentication request rejected by peer: '
                 "AUTHENTICATION_FAILED"]
    assert decide(log=wrong_key) == ("blocked", "the resolver presented a different key")
    silent = ['"ikectl-trusted-udp" #1: STATE_V2_PARENT_I1: retransmission; will wait 0.5 seconds for response']
    assert decide(log=silent)[1].startswith("no IKE answer from the resolver")
    assert decide() == ("blocked", "no DNS sent yet; IKE starts with the first query")


def test_coffee_shop_verdicts():
    shunt = BareShunt(ip_network("10.0.0.1/32"), 0, 17, ip_network("192.0.2.53/32"), 53, "%pass", "oe-failed")
    oe = TrafficStatus(3, "private-or-clear#192.0.2.53/32-(0--17--53)", "192.0.2.53", 5, 5, "ID_NULL")
    assert status._decide(OE_STATE, "192.0.2.53", 42, [oe], [], True, [])[0] == "NULL-encrypted"
    assert status._decide(OE_STATE, "192.0.2.53", 42, [], [shunt], False, [])[0] == "clear"
    assert status._decide(OE_STATE, "192.0.2.53", 42, [], [], False, [])[0] == "pending"
    excluded = {**OE_STATE, "opportunistic": {"excluded": {"192.0.2.53": {"until": 2e9,
                                                                          "reason": opportunistic.REFUSED}}}}
    verdict = status._decide(excluded, "192.0.2.53", 42, [], [], False, [])
    assert verdict[0] == "clear" and "refused the DNS-only Child SA" in verdict[1]
    cleared = [f'"private-or-clear#192.0.2.53/32-(0--17--53)"[1] ...192.0.2.53 #1: {LIVENESS_LINE}']
    assert status._decide(OE_STATE, "192.0.2.53", 42, [], [], False, cleared)[1].startswith(opportunistic.LIVENESS)


# Lines as pluto 4.10 wrote them in the VM (netns_tests/test_ikectl_coffee_faults.py).
REFUSED_LINES = [
    '"private-or-clear#192.0.2.53/32-(0--17--53)"[1] ...192.0.2.53 #1: initiator established IKE SA; '
    "authenticated peer using authby=null and ID_NULL 'ID_NULL'",
    '"private-or-clear#192.0.2.53/32-(0--17--53)"[1] ...192.0.2.53 #2: IKE_AUTH response rejected Child SA '
    "with TS_UNACCEPTABLE",
]
LIVENESS_LINE = "liveness action - clearing connection kind CK_INSTANCE"


def test_pluto_log_words_about_one_resolver():
    assert opportunistic.refused_child(REFUSED_LINES, "192.0.2.53")
    assert not opportunistic.refused_child(REFUSED_LINES, "192.0.2.5")  # another resolver's words
    assert not opportunistic.refused_child([line.replace("192.0.2.53", "192.0.2.54") for line in REFUSED_LINES],
                                           "192.0.2.53")
    later = [*REFUSED_LINES, '"private-or-clear#192.0.2.53/32-(0--17--53)"[1] ...192.0.2.53 #4: initiator '
             "established Child SA using #1; IPsec tunnel"]
    assert not opportunistic.refused_child(later, "192.0.2.53")  # the last word counts
    cleared = [*later, f'"private-or-clear#192.0.2.53/32-(0--17--53)"[1] ...192.0.2.53 #1: {LIVENESS_LINE}']
    assert opportunistic.liveness_failed(cleared, "192.0.2.53") and not opportunistic.refused_child(cleared,
                                                                                                     "192.0.2.53")


def test_status_reads_the_tail_of_pluto_s_log_from_its_end(tmp_path):
    run = daemon.RunDir(tmp_path)
    lines = [f"line {n} " + "x" * 200 for n in range(3000)]  # about 630 KiB: more than the tail read
    run.log.write_text("\n".join(lines) + "\n")
    assert status._log_tail(run) == lines[-400:]
    tail = status._log_tail(run, lines=5000)
    assert 400 < len(tail) < 3000 and tail == lines[-len(tail):]  # whole lines only, from the end
    run.log.write_text("a\nb\n")
    assert status._log_tail(run) == ["a", "b"]


def test_human_status_is_one_line_per_resolver_with_human_units():
    current = status.Status(up=True, mode="trusted", pluto_pid=42, resolvers=(
        status.ResolverStatus("192.0.2.53", "authenticated", "pinned key @dns.example.net", since=1000.0,
                              packets_in=12, packets_out=12, algorithms=("AES_GCM_16_256",)),
        status.ResolverStatus("198.51.100.1", "blocked", "not the trusted resolver")))
    lines = status.format_human(current, now=1062.0).splitlines()
    assert len(lines) == 3
    assert "since 1 minute, 2 seconds ago" in lines[0] and "12 in / 12 out packets" in lines[0]
    assert lines[1].split()[:3] == ["198.51.100.1", "trusted", "blocked"]
    assert lines[2] == "pluto pid 42"
    assert status.format_human(status.Status(up=False)) == "ikectl is down"
    assert status.Status(up=False).to_json() == {"version": 1, "up": False, "mode": None, "pluto_pid": None,
                                                 "resolvers": (), "portal": None}


def test_status_carries_the_portal_line_of_the_networkmanager_hook(tmp_path):
    config = Config(run_dir=tmp_path / "run")
    paths = nm.NmPaths.for_config(config)
    paths.root.mkdir()
    nm.write_record(paths, nm.Record(connectivity="PORTAL", portal_waiting_since=1000.0))
    waiting = nm.portal_summary(config, 1030.0)
    assert waiting is not None and waiting.startswith("captive portal waiting for 30 s")
    current = status.Status(up=True, mode="trusted", pluto_pid=42, portal=waiting)
    assert status.format_human(current).splitlines()[-1] == f"portal: {waiting}"
    assert current.to_json()["portal"] == waiting


def test_verify_refuses_bad_seconds_and_a_host_that_is_not_up(tmp_path, capsys):
    config = tmp_path / "ikectl.toml"
    config.write_text(f'[paths]\nrun_dir = "{tmp_path / "run"}"\n')
    assert cli.main(["--config", str(config), "verify", "--seconds", "0"]) == 2
    assert "--seconds 0.0: expected 0.5 to 300" in capsys.readouterr().err
    assert cli.main(["--config", str(config), "verify"]) == 1
    assert capsys.readouterr().err == "ikectl: error: ikectl is not up: run `ikectl up` first\n"
    assert not (tmp_path / "run").exists()
