"""Pure parts of ikectl's runtime: the backstop's policies, status verdicts and their rendering."""

from dataclasses import replace
from ipaddress import ip_address
from pathlib import Path

from ikecommon.xfrm import Action, Direction
from ikectl import backstop, cli, daemon, nm, opportunistic, status
from ikectl.config import Config, Mode
from ikectl.state import Baseline, Blocked, Exclusion, RunState, Upkeep


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


NOW = 2000.0
PINNED, OTHER = ip_address("192.0.2.53"), ip_address("198.51.100.1")
TRUSTED = RunState(Mode.TRUSTED, (PINNED, OTHER), Path("/run/x"), 1000.0, Baseline(True), trusted=(PINNED,))
COFFEE = RunState(Mode.COFFEE_SHOP, (PINNED,), Path("/run/x"), 1000.0, Baseline(True))


def seen(record: RunState, address=PINNED, pluto: int | None = 42, **facts) -> status.Seen:
    return status.Seen(address, record, pluto, facts.pop("stopped", False), now=NOW, **facts)


def test_trusted_verdicts():
    def decide(**facts):
        verdict, reason = status.decide(seen(TRUSTED, **facts))
        return verdict.value, reason

    assert decide(established="@dns.example.net", has_sa=True, covered=True) == (
        "authenticated", "pinned key @dns.example.net")
    assert decide(address=OTHER) == ("blocked", "not the trusted resolver")
    assert decide(pluto=None)[0] == "blocked" and "pluto is not running" in decide(pluto=None)[1]
    assert "is stopped and negotiates nothing" in decide(stopped=True, covered=True)[1]
    moved = decide(covered=True, moved=("10.0.0.1", "10.0.0.9"))[1]
    assert "now sends from 10.0.0.9, pluto's conns are for 10.0.0.1" in moved
    assert "holds no policy for it" in decide(covered=False)[1]
    assert decide(covered=True, log_word="the resolver presented a different key") == (
        "blocked", "the resolver presented a different key")
    assert decide(covered=True) == ("blocked", "IKE starts with the next query; until then nothing leaves")
    # No backstop left at all (the supervisor killed, then both tables flushed): the rows say so, not "blocked".
    assert decide(address=OTHER, unguarded=True) == ("clear", status.UNGUARDED)
    assert decide(covered=False, unguarded=True) == ("clear", status.UNGUARDED)
    assert decide(covered=True, unguarded=True)[0] == "blocked"  # its own trap still catches its DNS
    blocked = replace(TRUSTED, blocked=Blocked("applying trusted mode failed: boom", 1500.0))
    assert status.decide(seen(blocked, established="@x", has_sa=True))[1].startswith(
        "applying trusted mode failed: boom")
    window = replace(TRUSTED, portal_until=NOW + 90)
    assert status.decide(seen(window, address=OTHER)) == (status.Verdict.CLEAR,
                                                          "captive-portal window open for 1 minute, 30 seconds more")


def test_coffee_shop_verdicts():
    def decide(record=COFFEE, **facts):
        return status.decide(seen(record, **facts))

    assert decide(established="ID_NULL", has_sa=True)[0] == status.Verdict.NULL_ENCRYPTED
    assert decide(covered=True) == (status.Verdict.PENDING, "IKE starts with the next query")
    assert decide(covered=False)[0] == status.Verdict.CLEAR
    moved = decide(covered=False, moved=("10.0.0.1", "10.0.0.9"))
    assert moved[0] == status.Verdict.CLEAR and "now sends from 10.0.0.9, pluto's opportunistic group is for " \
        "10.0.0.1: DNS passes in clear until `ikectl up`" in moved[1]
    assert decide(pluto=None)[1].startswith("pluto is not running; DNS passes in clear")
    assert decide(stopped=True)[0] == status.Verdict.PENDING
    fallback = replace(COFFEE, upkeep=Upkeep(clear_since={str(PINNED): NOW - 20}))
    assert decide(fallback, clear_pass=True)[1] == (
        "no IKE answer; DNS passes in clear, IKE is tried again in 40 seconds")
    late = replace(COFFEE, upkeep=Upkeep(clear_since={str(PINNED): NOW}, late_auth={str(PINNED): 3}))
    assert decide(late, clear_pass=True, log_word=opportunistic.LATE_AUTH)[1] == (
        f"{opportunistic.LATE_AUTH}: the resolver may drop DNS in clear until IKE is tried again in 4 seconds")
    overdue = replace(COFFEE, upkeep=Upkeep(clear_since={str(PINNED): NOW - 600}))
    assert decide(overdue, clear_pass=True)[1].endswith("IKE is tried again with the next query")
    excluded = replace(COFFEE, upkeep=Upkeep(excluded={str(PINNED): Exclusion(NOW + 30, opportunistic.REFUSED)}))
    verdict = decide(excluded)
    assert verdict[0] == status.Verdict.CLEAR and "refused the DNS-only Child SA" in verdict[1]
    assert "tried again in 30 seconds" in verdict[1]
    no_esp = replace(COFFEE, unprotected={str(PINNED): "this kernel cannot install ESP SAs (x); DNS passes in clear"})
    assert decide(no_esp, covered=True) == (status.Verdict.CLEAR,
                                            "this kernel cannot install ESP SAs (x); DNS passes in clear")
    assert decide(log_word=opportunistic.LIVENESS)[1].startswith(opportunistic.LIVENESS)


# Lines as pluto 4.10 wrote them in the VM (netns_tests/test_ikectl_coffee_faults.py) and on this host.
REFUSED_LINES = [
    '"private-or-clear#192.0.2.53/32-(0--17--53)"[1] ...192.0.2.53 #1: initiator established IKE SA; '
    "authenticated peer using authby=null and ID_NULL 'ID_NULL'",
    '"private-or-clear#192.0.2.53/32-(0--17--53)"[1] ...192.0.2.53 #2: IKE_AUTH response rejected Child SA '
    "with TS_UNACCEPTABLE",
]
LIVENESS_LINE = "liveness action - clearing connection kind CK_INSTANCE"


def test_pluto_log_words_about_one_resolver():
    word = opportunistic.last_word
    assert word(REFUSED_LINES, "192.0.2.53") == opportunistic.REFUSED
    assert word(REFUSED_LINES, "192.0.2.5") is None  # another resolver's words
    assert word([line.replace("192.0.2.53", "192.0.2.54") for line in REFUSED_LINES], "192.0.2.53") is None
    later = [*REFUSED_LINES, '"private-or-clear#192.0.2.53/32-(0--17--53)"[1] ...192.0.2.53 #4: initiator '
             "established Child SA using #1; IPsec tunnel"]
    assert word(later, "192.0.2.53") is None  # the last word counts
    cleared = [*later, f'"private-or-clear#192.0.2.53/32-(0--17--53)"[1] ...192.0.2.53 #1: {LIVENESS_LINE}']
    assert word(cleared, "192.0.2.53") == opportunistic.LIVENESS


def test_pluto_s_words_about_the_trusted_conns():
    """Lines pluto 4.10 wrote on this host for each failure (client side), newest last."""
    other_id = ['"ikectl-trusted-udp" #1: Peer ID \'@other.example\' mismatched on first found connection and no '
                "better connection found"]
    assert status.trusted_failure(other_id) == "the resolver presented another ID (@other.example) than the pinned one"
    wrong_key = ['"ikectl-trusted-udp" #1: authentication failed: using ECDSA with SHA2_512 for \'@dns.site.example\' '
                 "tried preloaded: *NoWRJN7sl"]
    assert status.trusted_failure(wrong_key) == status.OTHER_KEY
    no_esp = ['ERROR: "ikectl-trusted-tcp" #2: netlink response for Add SA esp.1a80baec@10.81.2.53: Function not '
              "implemented (errno 38)"]
    assert status.trusted_failure(no_esp) == "the kernel refused the ESP SA (no ESP in this kernel)"
    silent = ['"ikectl-trusted-udp" #1: STATE_V2_PARENT_I1: retransmission; will wait 0.5 seconds for response']
    assert status.trusted_failure(silent).startswith("no IKE answer from the resolver")
    assert status.trusted_failure([*silent, '"ikectl-trusted-udp" #2: initiator established Child SA using #1']) is None
    unreachable = ['ERROR: "ikectl-trusted-udp" #1: asynchronous network error report on to-router (10.79.9.53:500), '
                   "complainant 10.79.1.1: Network is unreachable [errno 101, origin ICMP type 3 code 0 (not "
                   "authenticated)]"]
    # With the short IKE timeout the next try's retransmissions come after the ICMP error: it still says why.
    retrying = [*unreachable, '"ikectl-trusted-udp" #1: STATE_V2_PARENT_I1: 3 second timeout exceeded',
                silent[0].replace("#1", "#3"), silent[0].replace("#1", "#3")]
    assert status.trusted_failure(retrying) == "the resolver is unreachable from this host (Network is unreachable)"
    recovered = [*unreachable, '"ikectl-trusted-udp" #2: initiator established Child SA using #1', *silent]
    assert status.trusted_failure(recovered).endswith("pluto keeps trying")  # an old error before an SA: forgotten


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
                                                 "resolvers": (), "portal": None, "protection": None, "notes": (),
                                                 "system_plutos": ()}


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
