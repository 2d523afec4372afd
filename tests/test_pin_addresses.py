"""One pin for a resolver service at several addresses (docs/scale-out.md, "One pin, several addresses"):
`ikectl trust add --resolver A --resolver B` pins it only when every address attests to one key and ID; the config
takes `address = [...]`; trusted mode holds every address to the pin (a conn pair each, its traps and SAs kept, each
repaired alone) and blocks the rest; re-attestation asks the first address that answers."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from dataclasses import replace
from ipaddress import ip_address
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from trust_servers import RESOLVER_ID, port_of, running_endpoint

from enclave_ike.enclave.software import SoftwareEnclave
from ikecommon import keys
from ikecommon.xfrm import Direction, Policy, Selector, Template
from ikectl import config, daemon, execute, nm, pins, plan, protect, render, status, trust, truststore
from ikectl.config import ConfigError, Mode, TrustedResolver
from ikectl.errors import UsageError
from ikectl.plan import Facts, PlutoFacts, ReloadConns
from ikectl.state import Baseline, RunState, StateStore
from ikectl.whack import WhackError

FIRST, SECOND = ip_address("127.0.0.1"), ip_address("127.0.0.2")
A, B, OTHER = ip_address("192.0.2.53"), ip_address("198.51.100.53"), ip_address("203.0.113.9")
KEY = keys.from_public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
SERVICE = TrustedResolver(A, "@dns.example.net", KEY, also=(B,))


def add(cfg: config.Config, port: int, spec: str, resolvers=(FIRST, SECOND)) -> truststore.StoredPin:
    return trust.add(cfg, "svc", resolvers, spec, time.time(), port=port, anchors=trust.Anchors.SIM)


def pinned_nothing(cfg: config.Config) -> bool:
    return not (cfg.trust_dir / "svc.json").exists()


def pinned_at_both(cfg: config.Config, spec_file: str, service: SoftwareEnclave) -> int:
    """The service pinned at FIRST and SECOND (both answering then); the evidence endpoints' port."""
    with running_endpoint(service) as first, running_endpoint(service, port=port_of(first), host=str(SECOND)):
        add(cfg, port_of(first), spec_file)
        return port_of(first)


# --- ikectl trust add / verify -------------------------------------------------------------------------------

def test_a_service_at_two_addresses_is_one_pin(cfg, spec_file):
    service = SoftwareEnclave()
    with running_endpoint(service) as first, running_endpoint(service, port=port_of(first), host=str(SECOND)):
        pin = add(cfg, port_of(first), spec_file)
    assert pin.addresses == (FIRST, SECOND) and pin.also == (SECOND,)
    assert truststore.load(cfg.trust_dir, "svc") == pin
    assert json.loads((cfg.trust_dir / "svc.json").read_text())["also"] == ["127.0.0.2"]
    listed = trust.format_listing(trust.listing(cfg, time.time()))
    assert listed.startswith(f"svc  127.0.0.1,127.0.0.2  {RESOLVER_ID}  attested")
    # The config that names the pin carries every address into trusted mode.
    loaded = config.from_mapping({"mode": "trusted", "trusted": {"attested": "svc"},
                                  "paths": {"trust_dir": str(cfg.trust_dir)}}, "test")
    assert loaded.trusted is not None and loaded.trusted.addresses == (FIRST, SECOND)
    pins.require_usable(loaded)


def test_two_addresses_with_different_keys_are_not_one_service_and_pin_nothing(cfg, spec_file):
    refused = r"^resolver 127\.0\.0\.2 attests another key than 127\.0\.0\.1: they are not one service; nothing pinned$"
    with running_endpoint(SoftwareEnclave()) as first, \
            running_endpoint(SoftwareEnclave(), port=port_of(first), host=str(SECOND)), \
            pytest.raises(trust.TrustError, match=refused):
        add(cfg, port_of(first), spec_file)
    assert pinned_nothing(cfg)


def test_two_addresses_with_different_ids_pin_nothing(cfg, spec_file):
    service = SoftwareEnclave()
    with running_endpoint(service) as first, \
            running_endpoint(service, port=port_of(first), host=str(SECOND), ike_id="@other.example"), \
            pytest.raises(trust.TrustError, match=r"attests another ID than 127\.0\.0\.1"):
        add(cfg, port_of(first), spec_file)
    assert pinned_nothing(cfg)


def test_an_address_that_does_not_answer_pins_nothing(cfg, spec_file):
    with running_endpoint(SoftwareEnclave()) as first, \
            pytest.raises(trust.TrustError, match=r"^resolver 127\.0\.0\.2: cannot get its evidence: .*; nothing "
                                                  r"pinned$"):
        add(cfg, port_of(first), spec_file)
    assert pinned_nothing(cfg)


def test_an_address_given_twice_or_too_many_is_bad_usage_and_fetches_nothing(cfg, spec_file):
    with pytest.raises(UsageError, match=r"^--resolver 127\.0\.0\.1 is given twice$"):
        add(cfg, 1, spec_file, (FIRST, SECOND, FIRST))
    many = tuple(ip_address(f"127.0.0.{n}") for n in range(1, truststore.MAX_ADDRESSES + 2))
    with pytest.raises(UsageError, match=r"^--resolver given 9 times: one resolver takes at most 8$"):
        add(cfg, 1, spec_file, many)
    assert pinned_nothing(cfg)


def test_reattestation_asks_the_next_address_when_the_first_does_not_answer(cfg, spec_file):
    service = SoftwareEnclave()
    port = pinned_at_both(cfg, spec_file, service)
    with running_endpoint(service, port=port, host=str(SECOND)):  # the first address's replica is gone
        outcome = trust.verify(cfg, "svc", time.time())
    assert outcome.ok and not outcome.key_changed
    with pytest.raises(trust.ReattestFailed, match=r"127\.0\.0\.1: cannot get its evidence"):
        trust.verify(cfg, "svc", time.time())  # neither answers: the first address's failure is said
    assert not truststore.load(cfg.trust_dir, "svc").ok


def test_reattestation_holds_every_address_that_answers_to_one_key(cfg, spec_file):
    """As `add` did: B presenting another key (one that verifies against the spec) than A fails the pin, rather
    than re-pinning the service to whichever address was asked."""
    service = SoftwareEnclave()
    port = pinned_at_both(cfg, spec_file, service)
    with running_endpoint(service, port=port), running_endpoint(SoftwareEnclave(), port=port, host=str(SECOND)), \
            pytest.raises(trust.ReattestFailed, match=r"resolver 127\.0\.0\.2 attests another key than 127\.0\.0\.1: "
                                                      r"they are not one service"):
        trust.verify(cfg, "svc", time.time())
    assert not truststore.load(cfg.trust_dir, "svc").ok


def test_evidence_that_fails_at_the_first_address_is_a_verdict_not_a_reason_to_ask_the_next(cfg, spec_file):
    service = SoftwareEnclave()
    port = pinned_at_both(cfg, spec_file, service)
    with running_endpoint(SoftwareEnclave(registers=(bytes(48),)), port=port), \
            running_endpoint(service, port=port, host=str(SECOND)), pytest.raises(trust.ReattestFailed):
        trust.verify(cfg, "svc", time.time())
    assert not truststore.load(cfg.trust_dir, "svc").ok
    with running_endpoint(service, port=port), running_endpoint(SoftwareEnclave(registers=(bytes(48),)), port=port,
                                                                 host=str(SECOND)), \
            pytest.raises(trust.ReattestFailed):
        trust.verify(cfg, "svc", time.time())  # nor at the second, while the first verifies
    assert not truststore.load(cfg.trust_dir, "svc").ok


def test_a_pin_whose_addresses_repeat_or_are_not_a_list_is_not_read(cfg, spec_file, tmp_path):
    service = SoftwareEnclave()
    pinned_at_both(cfg, spec_file, service)
    path = cfg.trust_dir / "svc.json"
    written = json.loads(path.read_text())
    for also in (["127.0.0.1"], "127.0.0.2", ["not an address"]):
        path.write_text(json.dumps({**written, "also": also}))
        with pytest.raises(truststore.TrustError, match="not a pin ikectl wrote"):
            truststore.load(cfg.trust_dir, "svc")
    path.write_text(json.dumps({k: v for k, v in written.items() if k != "also"}))  # a pin from before
    assert truststore.load(cfg.trust_dir, "svc").addresses == (FIRST,)


# --- the config ----------------------------------------------------------------------------------------------

def trusted_table(address: object) -> dict[str, object]:
    return {"mode": "trusted", "trusted": {"address": address, "id": "@dns.example.net", "pubkey": KEY.libreswan}}


def test_a_trusted_table_takes_a_list_of_addresses():
    loaded = config.from_mapping(trusted_table(["192.0.2.53", "198.51.100.53"]), "t.toml")
    assert loaded.trusted is not None and loaded.trusted.addresses == (A, B)
    assert config.from_mapping(trusted_table("192.0.2.53"), "t.toml").trusted == replace(SERVICE, also=())


@pytest.mark.parametrize(("address", "said"), [
    ([], "t.toml: [trusted]: address: an empty list: give the resolver's address"),
    (["192.0.2.53", "192.0.2.53"], "t.toml: [trusted]: address: 192.0.2.53 is listed twice"),
    (["192.0.2.53", "nope"], "t.toml: [trusted]: address[1]: 'nope' is not an IP address"),
    (["192.0.2.53", 53], "t.toml: [trusted]: address[1]: expected an IP address as a string, got int"),
    # One address in two spellings would be two conns for one peer.
    (["192.0.2.53", "::ffff:192.0.2.53"], "t.toml: [trusted]: address[1]: ::ffff:192.0.2.53: an IPv4-mapped "
                                          "address: give the IPv4 address 192.0.2.53"),
    ([f"192.0.2.{n}" for n in range(1, 10)], "t.toml: [trusted]: address: 9 addresses: one resolver takes at most 8"),
])
def test_a_bad_list_of_addresses_is_one_clear_line(address, said):
    with pytest.raises(ConfigError) as info:
        config.from_mapping(trusted_table(address), "t.toml")
    assert str(info.value) == said


# --- trusted mode ----------------------------------------------------------------------------------------------

def record(**changes) -> RunState:
    return replace(RunState(Mode.TRUSTED, (A, B, OTHER), Path("/run/ikectl"), 1.0, Baseline(True), trusted=(A, B),
                            pluto_pid=42), **changes)


def trap(address, proto=17) -> Policy:
    return Policy(Selector.of("10.0.0.1/32", f"{address}/32", proto, dport=53), Direction.OUT, 3457217,
                  templates=(Template(),))


def clear_pass(address, proto=17) -> Policy:
    return Policy(Selector.of("10.0.0.1/32", f"{address}/32", proto), Direction.OUT, 0)


def test_the_intent_lists_every_pinned_address_first_and_keeps_their_traps():
    intent = plan.Intent(Mode.TRUSTED, Path("/run/ikectl"), (A, B, OTHER), render.Profile(Mode.TRUSTED,
                                                                                         trusted=SERVICE))
    assert intent.pinned == (A, B)
    table = (trap(A), trap(B), clear_pass(B), trap(OTHER))
    steps = plan.up(intent, Facts(policies=table, pluto=PlutoFacts(pid=42)), record())
    doomed = next(s for s in steps if isinstance(s, plan.DeletePolicies)).policies
    # B's trap is the trusted conns', kept; a clear pass to B is never kept; the other resolver's trap goes.
    assert set(doomed) == {clear_pass(B), trap(OTHER)}
    assert protect.kept((A, B), Path("/run/ikectl"), record()) == {A, B}
    assert protect.kept((A,), Path("/run/ikectl"), record()) == frozenset()  # another pin: nothing of it kept


def test_only_the_address_whose_policies_went_is_loaded_again():
    facts = Facts(policies=(trap(A, 17), trap(A, 6)), pluto=PlutoFacts(pid=42))
    assert plan.unrouted(record(), facts) == ("ikectl-trusted-2-udp", "ikectl-trusted-2-tcp")
    assert plan.unrouted(record(), replace(facts, policies=(trap(B, 17), trap(B, 6)))) == render.trusted_pair(0)
    whole = replace(facts, policies=tuple(trap(a, p) for a in (A, B) for p in (6, 17)))
    assert plan.unrouted(record(), whole) == ()
    assert plan.repair(record(), whole, backstop_wanted=False, route=render.trusted_pair(1)) == (
        ReloadConns(render.trusted_pair(1)),)


def test_a_pin_with_fewer_addresses_unloads_the_conns_of_the_ones_it_dropped():
    """Loading by name replaces only the conns the new pin has: ikectl-trusted-2-* (the old key, B) would stay."""
    fewer = plan.Intent(Mode.TRUSTED, Path("/run/ikectl"), (B, OTHER),
                        render.Profile(Mode.TRUSTED, trusted=TrustedResolver(B, "@other.example", KEY)))
    steps = plan.up(fewer, Facts(pluto=PlutoFacts(pid=42)), record())
    assert plan.UnloadConns(render.trusted_pair(1), Mode.TRUSTED) in steps
    assert steps.index(plan.UnloadConns(render.trusted_pair(1), Mode.TRUSTED)) < steps.index(plan.WriteTree())
    assert not any(isinstance(s, plan.UnloadConns) for s in plan.up(
        plan.Intent(Mode.TRUSTED, Path("/run/ikectl"), (A, B), render.Profile(Mode.TRUSTED, trusted=SERVICE)),
        Facts(pluto=PlutoFacts(pid=42)), record()))


def test_leaving_trusted_mode_unloads_every_addresses_conns():
    steps = plan.up(plan.Intent(Mode.COFFEE_SHOP, Path("/run/ikectl"), (OTHER,),
                                render.Profile(Mode.COFFEE_SHOP, opportunistic=(OTHER,))),
                    Facts(pluto=PlutoFacts(pid=42)), record())
    assert plan.UnloadConns(render.trusted_conns(2), Mode.TRUSTED) in steps


def test_status_counts_each_pinned_address_as_the_trusted_resolver():
    for address in (A, B):
        verdict, reason = status.decide(status.Seen(address, record(), 42, False, now=2.0, established="@x",
                                                    has_sa=True, covered=True))
        assert verdict == status.Verdict.AUTHENTICATED, reason
    assert status.decide(status.Seen(OTHER, record(), 42, False, now=2.0))[1] == "not the trusted resolver"


def test_pluto_s_word_on_one_address_is_not_said_of_the_other():
    log = ['"ikectl-trusted-2-udp" #3: initiator established Child SA using #1',
           '"ikectl-trusted-udp" #4: authentication failed: ECDSA signature check failed']
    assert status.trusted_failure(log, render.trusted_pair(0)) == status.OTHER_KEY
    assert status.trusted_failure(log, render.trusted_pair(1)) is None


def test_networkmanager_puts_every_pinned_address_first():
    cfg = config.Config(mode=Mode.TRUSTED, trusted=SERVICE, default_mode=Mode.TRUSTED)
    target = nm._target(cfg, Mode.TRUSTED, None, (OTHER, B))
    assert target is not None and target.resolvers == (A, B, OTHER)


def test_blocking_a_pin_deletes_every_addresses_conns(cfg, monkeypatch):
    deleted: list[str] = []

    class Whack:
        def delete(self, name: str) -> None:
            deleted.append(name)

    class Run:
        def whack(self) -> Whack:
            return Whack()

    monkeypatch.setattr(trust, "read_here", record)
    monkeypatch.setattr(trust.daemon, "RunDir", lambda _root: Run())
    monkeypatch.setattr(trust.daemon, "pluto_pid", lambda _run: 42)
    pin = truststore.StoredPin("svc", A, 4501, "@dns.example.net", KEY, "inline:x", "sim", "sim", None, 0.0, 0.0,
                               also=(B,))
    using = replace(cfg, attested="svc")  # [trusted] attested = "svc"
    assert trust.block(using, pin)
    assert deleted == list(render.trusted_conns(2))
    assert not trust.block(using, replace(pin, also=()))  # a pin of A alone is not the one trusted mode uses
    # Nor is another pin of the same addresses: its failure is not trusted mode's (the review: an unused pin at
    # the pinned addresses, failing, blocked trusted mode for good).
    assert not trust.block(using, replace(pin, name="spare"), why="pin 'spare' failed attestation", failed=True)
    assert deleted == list(render.trusted_conns(2))


def test_a_supervisor_started_before_the_code_was_replaced_is_told_apart(tmp_path):
    """An upgrade in place keeps the supervisor running; one that runs the older code does not know what a newer
    `up` records (it read one address of a pin of two, and deleted the other's policies as strays)."""
    package = tmp_path / "ikectl"
    (package / "templates").mkdir(parents=True)
    (package / "plan.py").write_text("")
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        assert not daemon.runs_older_code(sleeper.pid, package)
        time.sleep(2.2)  # the process's start is known to the clock tick, the boot time to the second
        (package / "templates" / "trusted.conf.j2").write_text("")  # replaced after the process started
        assert daemon.runs_older_code(sleeper.pid, package)
        assert not daemon.runs_older_code(os.getpid() + 10**7, package)  # no such process: nothing to replace
    finally:
        sleeper.kill()
        sleeper.wait()


# --- the executor: what a supervisor or an undo must not do ----------------------------------------------------

class RecordingWhack:
    """pluto at whack's edge: `loaded` conns delete, the others do not."""

    def __init__(self, loaded: set[str]) -> None:
        self.loaded, self.calls = loaded, []

    def delete(self, name: str) -> None:
        if name not in self.loaded:
            raise WhackError("delete", f"no such conn {name}")
        self.loaded.discard(name)
        self.calls.append(("delete", name))

    def add(self, name: str) -> None:
        self.loaded.add(name)
        self.calls.append(("add", name))

    def route(self, name: str) -> None:
        self.calls.append(("route", name))


def execution(tmp_path: Path, whack: RecordingWhack, monkeypatch, record_: RunState | None = None) -> execute.Execution:
    monkeypatch.setattr(daemon.RunDir, "whack", lambda self, timeout_s=15.0: whack)
    return execute.Execution(daemon.RunDir(tmp_path / "run"), StateStore.here(), record_, lambda _line: None,
                             contextlib.ExitStack())


def test_undoing_an_unload_loads_again_only_the_conns_it_unloaded(tmp_path, monkeypatch):
    """The review: a failed pin's conns, deleted when it failed, were loaded again (with its key) by the undo of a
    later `up` that had 'unloaded' them."""
    whack = RecordingWhack({"ikectl-trusted-udp", "ikectl-trusted-tcp"})  # B's pair went when the pin failed
    ex = execution(tmp_path, whack, monkeypatch)
    with ex.stack:
        execute.run([plan.UnloadConns(render.trusted_conns(2), Mode.TRUSTED)], ex)
        assert whack.loaded == set()
    assert whack.loaded == {"ikectl-trusted-udp", "ikectl-trusted-tcp"}  # put back; the other pair stays out


def test_a_supervisor_reapplying_trusted_mode_never_replaces_itself(tmp_path, monkeypatch):
    """trust._reapply runs `up` inside the supervisor, whose pid the record holds: replacing it as one running
    older code killed the process mid-`up`, and no supervisor was left."""
    mine = replace(record(), supervisor_pid=os.getpid())
    ex = execution(tmp_path, RecordingWhack(set()), monkeypatch, mine)
    monkeypatch.setattr(daemon, "supervisor_running", lambda pid: True)
    monkeypatch.setattr(daemon, "supervisors_of", lambda run: [os.getpid()])
    monkeypatch.setattr(daemon, "runs_older_code", lambda pid, package=None: True)
    monkeypatch.setattr(daemon, "start_supervisor", lambda run: pytest.fail("a second supervisor"))
    monkeypatch.setattr(daemon, "stop_supervisor", lambda pid, timeout=5.0: pytest.fail(f"stopped {pid}"))
    execute.run([plan.EnsureSupervisor()], ex)
    assert ex.supervisor_pid == os.getpid()
    stopped: list[int | None] = []
    other = replace(mine, supervisor_pid=os.getpid() + 1)  # another process's, started before the upgrade
    ex = execution(tmp_path, RecordingWhack(set()), monkeypatch, other)
    monkeypatch.setattr(daemon, "supervisors_of", lambda run: [os.getpid() + 1])
    monkeypatch.setattr(daemon, "start_supervisor", lambda run: 4242)
    monkeypatch.setattr(daemon, "stop_supervisor", lambda pid, timeout=5.0: stopped.append(pid))
    with ex.stack:
        execute.run([plan.EnsureSupervisor()], ex)
        ex.stack.pop_all()
    assert ex.supervisor_pid == 4242 and stopped == [os.getpid() + 1]


def test_a_pin_file_with_an_ipv4_mapped_address_is_not_read(cfg, spec_file):
    pinned_at_both(cfg, spec_file, SoftwareEnclave())
    path = cfg.trust_dir / "svc.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "also": ["::ffff:127.0.0.1"]}))
    with pytest.raises(truststore.TrustError, match="an IPv4-mapped address"):
        truststore.load(cfg.trust_dir, "svc")
