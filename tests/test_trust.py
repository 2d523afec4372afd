"""`ikectl trust` as a library, against enclave-ike's evidence endpoint on 127.0.0.1 (and hostile ones): a verified
resolver is pinned with its key and ID; each way evidence can be wrong is its own test and pins nothing; re-attestation
re-pins a new key of the same measurement, and on failure marks the pin failed and fails closed (trusted conns
deleted, `up` refused); `reattest_due` picks what is due; `status` shows the attestation."""

from __future__ import annotations

import json
import multiprocessing
import re
import time
from dataclasses import replace
from ipaddress import ip_address
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from trust_servers import RESOLVER_ID, hostile_endpoint, https_server, port_of, running_endpoint, sim_spec

from enclave_ike.enclave.attest import attest
from enclave_ike.enclave.software import SoftwareEnclave
from ikecommon import keys
from ikecommon.attestation.binding import report_data
from ikecommon.attestation.envelope import Collateral, Envelope
from ikecommon.attestation.sim import DEFAULT_REGISTERS, build_sim_root_certificate
from ikectl import config, daemon, feed, pins, plan, render, session, status, trust, truststore
from ikectl.config import Mode
from ikectl.errors import UsageError
from ikectl.state import Baseline, Blocked, RunState, StateBusy, StateStore
from ikectl.whack import TrafficStatus, WhackError

LOCAL = ip_address("127.0.0.1")
OTHER_BUILD = bytes(range(48))


def spki(enclave: SoftwareEnclave) -> bytes:
    return enclave.signer().public_key().public_bytes(serialization.Encoding.DER,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)


def pinned_key(enclave: SoftwareEnclave) -> keys.PinnedKey:
    return keys.from_public_key(enclave.signer().public_key())  # type: ignore[arg-type]


@pytest.fixture
def enclave() -> SoftwareEnclave:
    return SoftwareEnclave()


@pytest.fixture
def endpoint(enclave):
    with running_endpoint(enclave) as running:
        yield running


def add(cfg, port, spec, **kwargs):
    return trust.add(cfg, "home", (LOCAL,), spec, time.time(), port=port, anchors=trust.Anchors.SIM, **kwargs)


def nothing_pinned(cfg: config.Config) -> bool:
    return not (cfg.trust_dir / "home.json").exists()


# --- add ---

def test_add_pins_the_attested_key_and_the_stated_id(cfg, endpoint, enclave, spec_file):
    pin = add(cfg, port_of(endpoint), spec_file)
    assert pin.key == pinned_key(enclave) and pin.id == RESOLVER_ID and pin.address == LOCAL
    assert pin.ok and pin.measurement_id == "sim-default" and pin.evidence_kind == "sim" and pin.anchors == "sim"
    assert truststore.load(cfg.trust_dir, "home") == pin
    assert pin.spec == str(Path(spec_file).resolve())
    assert oct((cfg.trust_dir / "home.json").stat().st_mode & 0o777) == "0o644"


def test_add_takes_an_inline_spec(cfg, endpoint):
    pin = add(cfg, port_of(endpoint), sim_spec().to_inline())
    assert pin.spec.startswith("inline:") and pin.ok


def test_each_attestation_uses_a_fresh_random_nonce(cfg, enclave, spec_file):
    seen: list[str] = []

    def answer(path, query):
        if path == "/identity":
            return 200, json.dumps({"version": 1, "id": RESOLVER_ID}).encode()
        seen.append(query["nonce"][0])
        return 200, attest(enclave, bytes.fromhex(query["nonce"][0])).encode()

    with hostile_endpoint(answer) as port:
        add(cfg, port, spec_file)
        trust.verify(cfg, "home", time.time())
    assert len(seen) == 2 and seen[0] != seen[1] and all(len(n) == 64 for n in seen)


def test_nonce_replay_is_refused_and_nothing_pinned(cfg, enclave, spec_file):
    replayed = attest(enclave, b"\x01" * 32).encode()  # a valid envelope, made for an earlier nonce

    def answer(path, query):
        if path == "/identity":
            return 200, json.dumps({"version": 1, "id": RESOLVER_ID}).encode()
        return 200, replayed

    with hostile_endpoint(answer) as port, pytest.raises(trust.AttestationFailed) as info:
        add(cfg, port, spec_file)
    fields = [m.field for m in info.value.mismatches]
    assert fields == ["report_data", "nonce"], fields
    assert str(info.value).splitlines()[0] == "resolver 127.0.0.1 failed attestation (2 mismatches): nothing pinned"
    assert nothing_pinned(cfg)


def test_evidence_binding_another_key_is_refused_and_nothing_pinned(cfg, enclave, spec_file):
    offered = SoftwareEnclave()  # the key the envelope offers; the evidence binds the enclave's own

    def answer(path, query):
        if path == "/identity":
            return 200, json.dumps({"version": 1, "id": RESOLVER_ID}).encode()
        nonce = bytes.fromhex(query["nonce"][0])
        evidence = enclave.evidence(report_data(nonce, spki(enclave)))
        return 200, Envelope(evidence, spki(offered), nonce, Collateral()).encode()

    with hostile_endpoint(answer) as port, pytest.raises(trust.AttestationFailed) as info:
        add(cfg, port, spec_file)
    assert [m.field for m in info.value.mismatches] == ["report_data"]
    assert nothing_pinned(cfg)


def test_a_wrong_measurement_is_refused_and_nothing_pinned(cfg, spec_file):
    with running_endpoint(SoftwareEnclave(registers=(OTHER_BUILD,))) as endpoint, \
            pytest.raises(trust.AttestationFailed) as info:
        add(cfg, port_of(endpoint), spec_file)
    [mismatch] = info.value.mismatches
    assert mismatch.field == "spec[sim-default].measurements.0"
    assert mismatch.expected.startswith(DEFAULT_REGISTERS[0].hex()) and mismatch.actual == OTHER_BUILD.hex()
    assert f"  spec[sim-default].measurements.0: expected {DEFAULT_REGISTERS[0].hex()}" in str(info.value)
    assert nothing_pinned(cfg)


def test_sim_evidence_is_refused_without_the_sim_anchors(cfg, endpoint, spec_file, tmp_path):
    with pytest.raises(trust.AttestationFailed) as shipped:  # the vendors' roots that ship with the package
        trust.add(cfg, "home", (LOCAL,), spec_file, time.time(), port=port_of(endpoint))
    assert [m.field for m in shipped.value.mismatches] == ["trust_anchors.sim_root"]
    root = tmp_path / "root.pem"
    other = build_sim_root_certificate()  # any root configured as a vendor root: sim evidence is not under it
    root.write_bytes(other.public_bytes(serialization.Encoding.PEM))
    vendor = replace(cfg, trust=config.TrustSettings(intel_root=root))
    with pytest.raises(trust.AttestationFailed) as info:
        trust.add(vendor, "home", (LOCAL,), spec_file, time.time(), port=port_of(endpoint))
    assert [m.field for m in info.value.mismatches] == ["trust_anchors.sim_root"]
    assert nothing_pinned(cfg)


def test_a_garbled_envelope_names_its_field_and_pins_nothing(cfg, spec_file):
    with hostile_endpoint(lambda path, query: (200, b'{"__cmwc_t": 1}')) as port, \
            pytest.raises(trust.AttestationFailed) as info:
        add(cfg, port, spec_file)
    assert info.value.what == "malformed evidence" and info.value.detail.startswith("envelope.__cmwc_t: ")
    assert nothing_pinned(cfg)


def test_an_unreachable_endpoint_pins_nothing(cfg, spec_file):
    with hostile_endpoint(lambda path, query: (503, b"busy")) as port, \
            pytest.raises(truststore.TrustError, match=r"cannot get its evidence: .*503 busy; nothing pinned"):
        add(cfg, port, spec_file)
    assert nothing_pinned(cfg)


def test_an_id_other_than_the_expected_one_is_a_mismatch(cfg, endpoint, spec_file):
    with pytest.raises(trust.AttestationFailed) as info:
        add(cfg, port_of(endpoint), spec_file, expected_id="@other.example")
    assert [(m.field, m.expected, m.actual) for m in info.value.mismatches] == [
        ("identity.id", "@other.example", RESOLVER_ID)]
    assert nothing_pinned(cfg)


def test_every_mismatch_is_listed_at_once(cfg, spec_file):
    with running_endpoint(SoftwareEnclave(registers=(OTHER_BUILD,))) as endpoint, \
            pytest.raises(trust.AttestationFailed) as info:
        add(cfg, port_of(endpoint), spec_file, expected_id="@other.example")
    assert [m.field for m in info.value.mismatches] == ["spec[sim-default].measurements.0", "identity.id"]


def test_bad_input_is_a_usage_error_before_anything_is_fetched(cfg, tmp_path, spec_file):
    for name, spec, words in (("../x", spec_file, "a pin name"), ("home", "/nonexistent/spec.json", "no such file"),
                              ("home", "http://example/spec", "https URL"), ("home", "%%%", "not a file")):
        with pytest.raises(UsageError, match=words):
            trust.add(cfg, name, (LOCAL,), spec, time.time(), port=1, anchors=trust.Anchors.SIM)
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    with pytest.raises(UsageError, match="--spec: spec: expected a non-empty JSON list"):
        trust.add(cfg, "home", (LOCAL,), str(bad), time.time(), port=1, anchors=trust.Anchors.SIM)


def test_an_existing_pin_is_not_replaced(cfg, endpoint, spec_file):
    first = add(cfg, port_of(endpoint), spec_file)
    with pytest.raises(UsageError, match="pin 'home' exists"):
        add(cfg, port_of(endpoint), spec_file)
    assert truststore.load(cfg.trust_dir, "home") == first


# --- governance feeds ---

@pytest.fixture
def release(tmp_path, cfg):
    key = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "release.pem"
    path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo))
    tls = tmp_path / "tls"
    tls.mkdir()
    settings = config.TrustSettings(release_key=path, feed_ca_file=tls / "ca.pem", timeout_s=5)
    return key, tls, replace(cfg, trust=settings)


def feed_document(serial: int, registers: tuple[bytes, ...] = DEFAULT_REGISTERS) -> bytes:
    return json.dumps({"version": 1, "serial": serial, "expires": "2999-01-01T00:00:00Z",
                       "spec": json.loads(sim_spec(registers).encode())}).encode()


def test_a_signed_feed_is_a_spec(release, endpoint):
    key, tls, cfg = release
    doc = feed_document(5)
    with https_server(tls, {"/spec.json": doc, "/spec.json.sig": feed.sign(doc, key)}) as base:
        pin = add(cfg, port_of(endpoint), f"{base}/spec.json")
    assert pin.ok and pin.feed_serial == 5 and pin.spec.endswith("/spec.json")


def test_an_unsigned_feed_pins_nothing(release, endpoint):
    _, tls, cfg = release
    with https_server(tls, {"/spec.json": feed_document(5)}) as base, \
            pytest.raises(feed.FeedError, match=r"^feed\.signature: missing"):
        add(cfg, port_of(endpoint), f"{base}/spec.json")
    assert nothing_pinned(cfg)


def test_a_badly_signed_feed_pins_nothing(release, endpoint):
    key, tls, cfg = release
    doc = feed_document(5)
    files: dict[str, bytes | tuple[int, dict[str, str]]] = {
        "/spec.json": doc.replace(b'"serial": 5', b'"serial": 6'), "/spec.json.sig": feed.sign(doc, key)}
    with https_server(tls, files) as base, pytest.raises(feed.FeedError, match=r"^feed\.signature\.signature"):
        add(cfg, port_of(endpoint), f"{base}/spec.json")
    assert nothing_pinned(cfg)


def test_a_feed_signed_by_another_key_pins_nothing(release, endpoint):
    _, tls, cfg = release
    doc = feed_document(5)
    with https_server(tls, {"/spec.json": doc, "/spec.json.sig": feed.sign(doc, ed25519.Ed25519PrivateKey.generate())}
                      ) as base, pytest.raises(feed.FeedError, match=r"^feed\.signature\.key_id"):
        add(cfg, port_of(endpoint), f"{base}/spec.json")
    assert nothing_pinned(cfg)


def test_a_feed_needs_the_release_key_configured(cfg, endpoint):
    with pytest.raises(UsageError, match="release_key"):
        add(cfg, port_of(endpoint), "https://127.0.0.1:1/spec.json")


def test_a_rolled_back_feed_fails_reattestation(release, endpoint):
    key, tls, cfg = release
    new, old = feed_document(7), feed_document(6)
    files: dict[str, bytes | tuple[int, dict[str, str]]] = {"/spec.json": new, "/spec.json.sig": feed.sign(new, key)}
    with https_server(tls, files) as base:
        add(cfg, port_of(endpoint), f"{base}/spec.json")
        files.update({"/spec.json": old, "/spec.json.sig": feed.sign(old, key)})
        with pytest.raises(trust.ReattestFailed, match=r"feed\.serial: 6 is below 7"):
            trust.verify(cfg, "home", time.time())
    assert not truststore.load(cfg.trust_dir, "home").ok


def test_a_feed_that_drops_the_measurement_fails_reattestation(release, endpoint):
    key, tls, cfg = release
    first, second = feed_document(1), feed_document(2, (OTHER_BUILD,))
    files: dict[str, bytes | tuple[int, dict[str, str]]] = {"/s.json": first, "/s.json.sig": feed.sign(first, key)}
    with https_server(tls, files) as base:
        add(cfg, port_of(endpoint), f"{base}/s.json")
        files.update({"/s.json": second, "/s.json.sig": feed.sign(second, key)})
        with pytest.raises(trust.ReattestFailed, match=r"spec\[sim-default\]\.measurements\.0"):
            trust.verify(cfg, "home", time.time())


# --- verify, fail closed, re-pin ---

class FakeWhack:
    def __init__(self) -> None:
        self.deleted: list[str] = []

    def delete(self, conn: str) -> None:
        self.deleted.append(conn)

    def traffic_status(self) -> list[TrafficStatus]:
        return []


@pytest.fixture
def up_trusted(cfg, monkeypatch):
    """ikectl 'up' in trusted mode with 127.0.0.1, pluto 'running': what verify acts on, faked at whack's edge."""
    run = daemon.RunDir(cfg.run_dir)
    run.root.mkdir(parents=True)
    StateStore.here().write(RunState(Mode.TRUSTED, (LOCAL,), run.root, time.time(), Baseline(True), trusted=(LOCAL,),
                                     pluto_pid=4242))
    whack = FakeWhack()
    ups: list[config.Config] = []
    monkeypatch.setattr(daemon, "pluto_pid", lambda run: 4242)
    monkeypatch.setattr(daemon.RunDir, "whack", lambda self, timeout_s=15.0: whack)
    monkeypatch.setattr(session, "up", lambda config, say=None, config_path=None: ups.append(config))
    return whack, ups


def attested_config(cfg: config.Config) -> config.Config:
    """What config.load gives for `[trusted] attested = "home"` now."""
    return config.from_mapping({"mode": "trusted", "trusted": {"attested": "home"},
                                "paths": {"run_dir": str(cfg.run_dir), "trust_dir": str(cfg.trust_dir)}}, "test")


def test_verify_of_the_same_enclave_changes_nothing(cfg, endpoint, spec_file, up_trusted):
    whack, ups = up_trusted
    pin = add(cfg, port_of(endpoint), spec_file)
    outcome = trust.verify(attested_config(cfg), "home", pin.attested_at + 5)
    assert outcome == trust.Reattestation("home", True)
    assert truststore.load(cfg.trust_dir, "home").attested_at == pin.attested_at + 5
    assert whack.deleted == [] and ups == []


def test_verify_failure_marks_the_pin_failed_and_fails_closed(cfg, endpoint, enclave, spec_file, up_trusted):
    whack, ups = up_trusted
    add(cfg, port_of(endpoint), spec_file)
    current = attested_config(cfg)
    endpoint.enclave = SoftwareEnclave(registers=(OTHER_BUILD,))  # restarted as another build
    with pytest.raises(trust.ReattestFailed) as info:
        trust.verify(current, "home", time.time())
    lines = str(info.value).splitlines()
    assert lines[0] == ("resolver 127.0.0.1 failed attestation (1 mismatch); pin 'home' marked failed, trusted "
                        "mode's conns to it are deleted: DNS is blocked")
    assert lines[1].startswith("  spec[sim-default].measurements.0: expected ") and info.value.blocked
    assert whack.deleted == list(render.trusted_conns(1)) and ups == []
    stored = truststore.load(cfg.trust_dir, "home")
    assert stored.result == truststore.FAILED and stored.mismatches[0][0] == "spec[sim-default].measurements.0"
    assert stored.key == pinned_key(enclave)  # the failed evidence's key is never pinned
    with pytest.raises(truststore.TrustError, match=r"pin 'home' failed attestation: .*keeps DNS blocked"):
        pins.require_usable(attested_config(cfg))  # `ikectl up` refuses it: nothing reopened
    # The record says blocked, so the supervisor's watch does not load the deleted conns again from the tree on
    # disk (which still holds the key that just failed): their policies missing is no longer something to repair.
    record = StateStore.here().read()
    assert isinstance(record, RunState) and record.blocked is not None
    assert record.blocked.reason.startswith("pin 'home' failed attestation: ")
    assert plan.unrouted(record, plan.Facts(pluto=plan.PlutoFacts(pid=4242))) == ()
    assert "failed attestation" in status.decide(status.Seen(LOCAL, record, 4242, False, now=time.time()))[1]


def test_conns_that_cannot_be_deleted_are_said_and_the_pin_still_fails(cfg, endpoint, spec_file, up_trusted,
                                                                        monkeypatch):
    class StuckWhack(FakeWhack):
        def delete(self, conn: str) -> None:
            raise WhackError("delete", "permission denied")

        def traffic_status(self) -> list[TrafficStatus]:
            return [TrafficStatus(1, render.trusted_conns(1)[0], None, 0, 0, RESOLVER_ID)]

    add(cfg, port_of(endpoint), spec_file)
    monkeypatch.setattr(daemon.RunDir, "whack", lambda self: StuckWhack())
    endpoint.enclave = SoftwareEnclave(registers=(OTHER_BUILD,))
    with pytest.raises(trust.ReattestFailed, match=r"could not be deleted .*: run `ikectl down`") as info:
        trust.verify(attested_config(cfg), "home", time.time())
    assert not info.value.blocked and not truststore.load(cfg.trust_dir, "home").ok


def test_an_unreachable_endpoint_fails_closed_too(cfg, spec_file, up_trusted, enclave):
    whack, _ = up_trusted
    with running_endpoint(enclave) as endpoint:
        add(cfg, port_of(endpoint), spec_file)
    with pytest.raises(trust.ReattestFailed, match="cannot get its evidence"):
        trust.verify(attested_config(cfg), "home", time.time())
    assert whack.deleted == list(render.trusted_conns(1))
    assert not truststore.load(cfg.trust_dir, "home").ok


def test_verify_with_a_new_key_of_the_same_measurement_repins_and_reloads(cfg, endpoint, spec_file, up_trusted):
    whack, ups = up_trusted
    add(cfg, port_of(endpoint), spec_file)
    restarted = SoftwareEnclave()  # same build, new key (made inside the TEE at every start)
    endpoint.enclave = restarted
    outcome = trust.verify(attested_config(cfg), "home", time.time())
    assert outcome.ok and outcome.key_changed and outcome.reapplied
    assert truststore.load(cfg.trust_dir, "home").key == pinned_key(restarted)
    [reloaded] = ups
    assert reloaded.mode == Mode.TRUSTED and reloaded.trusted is not None
    assert reloaded.trusted.key == pinned_key(restarted) and reloaded.trusted.attested == "home"
    assert whack.deleted == list(render.trusted_conns(1))  # the old conns go before `up` loads the new ones


def test_verify_after_a_failure_reopens_trusted_mode(cfg, endpoint, enclave, spec_file, up_trusted):
    _, ups = up_trusted
    add(cfg, port_of(endpoint), spec_file)
    endpoint.enclave = SoftwareEnclave(registers=(OTHER_BUILD,))
    with pytest.raises(trust.ReattestFailed):
        trust.verify(attested_config(cfg), "home", time.time())
    assert StateStore.here().read().blocked is not None  # type: ignore[union-attr]
    endpoint.enclave = enclave  # the right build is back
    outcome = trust.verify(attested_config(cfg), "home", time.time())
    assert outcome.ok and not outcome.key_changed and outcome.reapplied and len(ups) == 1  # `up` replaces the record
    pins.require_usable(attested_config(cfg))


def test_verify_when_not_up_only_updates_the_pin(cfg, endpoint, spec_file):
    add(cfg, port_of(endpoint), spec_file)
    endpoint.enclave = SoftwareEnclave(registers=(OTHER_BUILD,))
    with pytest.raises(trust.ReattestFailed) as info:
        trust.verify(cfg, "home", time.time())
    assert not info.value.blocked and "trusted mode refuses it until it verifies" in str(info.value)


def test_verify_and_remove_of_an_unknown_pin_are_usage_errors(cfg):
    for call in (lambda: trust.verify(cfg, "nope", time.time()), lambda: trust.remove(cfg, "nope")):
        with pytest.raises(UsageError, match="no pin 'nope'"):
            call()


def test_remove_forgets_the_pin_and_fails_closed_when_in_use(cfg, endpoint, spec_file, up_trusted):
    whack, _ = up_trusted
    add(cfg, port_of(endpoint), spec_file)
    assert trust.remove(attested_config(cfg), "home") is True
    assert nothing_pinned(cfg) and whack.deleted == list(render.trusted_conns(1))
    record = StateStore.here().read()
    assert isinstance(record, RunState) and record.blocked is not None and "was removed" in record.blocked.reason


# --- reattest_due ---

def test_reattest_due_picks_what_the_interval_says(cfg, endpoint, spec_file, up_trusted):
    pin = add(cfg, port_of(endpoint), spec_file)
    t0 = pin.attested_at
    assert trust.reattest_due(cfg, t0 + 10) == []
    [result] = trust.reattest_due(cfg, t0 + 3600)
    assert result == trust.Reattestation("home", True)
    assert truststore.load(cfg.trust_dir, "home").attested_at == t0 + 3600
    shorter = replace(cfg, trust=config.TrustSettings(interval_s=60))
    assert trust.reattest_due(shorter, t0 + 3600 + 59) == []
    assert len(trust.reattest_due(shorter, t0 + 3600 + 60)) == 1


def test_reattest_due_on_a_key_change_reattests_the_pin_in_use_now(cfg, endpoint, spec_file, up_trusted):
    _, ups = up_trusted
    pin = add(cfg, port_of(endpoint), spec_file)
    endpoint.enclave = SoftwareEnclave()
    [result] = trust.reattest_due(attested_config(cfg), pin.attested_at + 1, key_changed=True)
    assert result.ok and result.key_changed and result.reapplied and len(ups) == 1


def test_reattest_due_reports_failures_and_blocks(cfg, endpoint, spec_file, up_trusted):
    whack, _ = up_trusted
    pin = add(cfg, port_of(endpoint), spec_file)
    endpoint.enclave = SoftwareEnclave(registers=(OTHER_BUILD,))
    [result] = trust.reattest_due(attested_config(cfg), pin.attested_at + 3600)
    assert not result.ok and result.blocked and result.reason.startswith("resolver 127.0.0.1 failed attestation")
    assert whack.deleted == list(render.trusted_conns(1))
    assert trust.reattest_due(attested_config(cfg), pin.attested_at + 3600 + 59) == []  # failed: retried after 60 s
    endpoint.enclave = SoftwareEnclave()
    [again] = trust.reattest_due(attested_config(cfg), pin.attested_at + 3600 + 60)
    assert again.ok


def test_reattest_due_goes_on_past_an_unreadable_pin(cfg, endpoint, spec_file):
    pin = add(cfg, port_of(endpoint), spec_file)
    (cfg.trust_dir / "broken.json").write_text("{")
    results = trust.reattest_due(cfg, pin.attested_at + 3600)
    assert [(r.name, r.ok) for r in results] == [("broken", False), ("home", True)]


# --- config, up, status ---

def test_trusted_attested_config_resolves_the_pin_and_loads_without_it(cfg, endpoint, enclave, spec_file):
    missing = attested_config(cfg)
    assert missing.trusted is None and missing.attested == "home"
    with pytest.raises(truststore.PinMissing, match="no pin 'home'"):
        pins.require_usable(missing)
    add(cfg, port_of(endpoint), spec_file)
    present = attested_config(cfg)
    assert present.trusted == config.TrustedResolver(LOCAL, RESOLVER_ID, pinned_key(enclave), attested="home")
    pins.require_usable(present)
    pins.require_usable(replace(present, mode=Mode.COFFEE_SHOP, trusted=None))  # not trusted: no check


@pytest.mark.parametrize(("data", "words"), [
    ({"trusted": {"attested": "home", "address": "10.0.0.1"}}, "unknown key 'address'"),
    ({"trusted": {"attested": "../x"}}, "trusted.attested = '../x': expected a pin name"),
    ({"paths": {"trust_dir": "relative"}}, "paths.trust_dir = 'relative': expected an absolute path"),
    ({"trust": {"interval_s": 5}}, "trust.interval_s = 5: expected a whole number from 60"),
    ({"trust": {"release_key": "k.pem"}}, "trust.release_key = 'k.pem': expected an absolute path"),
    ({"trust": {"amd_arks": ["/a", 3]}}, "trust.amd_arks[1]"),
    ({"trust": {"nope": 1}}, "unknown key 'nope'"),
])
def test_trust_config_is_checked(data, words):
    with pytest.raises(config.ConfigError, match=re.escape(words)):
        config.from_mapping(data, "ikectl.toml")


def test_a_changed_pin_after_the_config_was_read_is_refused(cfg, endpoint, spec_file):
    add(cfg, port_of(endpoint), spec_file)
    current = attested_config(cfg)
    endpoint.enclave = SoftwareEnclave()
    trust.verify(cfg, "home", time.time())  # re-pinned with a new key meanwhile
    with pytest.raises(truststore.TrustError, match="changed after the config was read"):
        pins.require_usable(current)


def test_status_shows_the_attestation_of_the_trusted_resolver(cfg, endpoint, spec_file, up_trusted):
    pin = add(cfg, port_of(endpoint), spec_file)
    blocked = status.ResolverStatus("127.0.0.1", "blocked", "no DNS sent yet")
    state = StateStore.here().read()
    assert isinstance(state, RunState)
    shown = status._attested(blocked, state, attested_config(cfg), time.time())
    assert shown.attestation is not None and shown.attestation.result == "ok" and shown.reason == "no DNS sent yet"
    assert shown.attestation.anchors == "sim" and shown.attestation.measurement_id == "sim-default"
    assert 0 <= (shown.attestation.age_s or 0) < 60 and shown.attestation.attested_at == pin.attested_at
    endpoint.enclave = SoftwareEnclave(registers=(OTHER_BUILD,))
    with pytest.raises(trust.ReattestFailed):
        trust.verify(cfg, "home", time.time())
    failed = status._attested(blocked, state, attested_config(cfg), time.time())
    assert failed.state == "blocked" and failed.reason.startswith("pin 'home' failed attestation: resolver 127.0.0.1")
    line = status.format_human(status.Status(True, "trusted", 4242, (failed,)))
    assert "attestation FAILED 0 seconds ago (sim: NOT SECURE)" in line
    document = status.Status(True, "trusted", 4242, (failed,)).to_json()
    assert document["version"] == 1 and document["resolvers"][0]["attestation"]["result"] == "failed"
    other = status.ResolverStatus("10.9.9.9", "blocked", "not the trusted resolver")
    assert status._attested(other, state, attested_config(cfg), time.time()).attestation is None


def test_the_store_refuses_what_it_did_not_write(cfg, endpoint, spec_file):
    add(cfg, port_of(endpoint), spec_file)
    path = cfg.trust_dir / "home.json"
    data = json.loads(path.read_text())
    for change in ({"result": "maybe"}, {"port": 0}, {"key": "0sAAAA"}, {"version": 2}, {"name": "other"}):
        path.write_text(json.dumps({**data, **change}))
        with pytest.raises(truststore.TrustError, match=r"home\.json"):
            truststore.load(cfg.trust_dir, "home")
    listed = trust.listing(cfg, time.time())
    assert listed[0]["name"] == "home" and "error" in listed[0]


# --- a failed pin, and what else holds the record (the second review) ---

def _hold_the_state_lock(state_dir: str, netns: int, seconds: float) -> None:
    with StateStore(Path(state_dir), netns).lock():
        time.sleep(seconds)


def test_a_busy_state_lock_does_not_keep_a_failed_pins_conns_in(cfg, endpoint, spec_file, up_trusted, monkeypatch):
    whack, _ = up_trusted
    add(cfg, port_of(endpoint), spec_file)
    store = StateStore.here()
    holder = multiprocessing.get_context("fork").Process(target=_hold_the_state_lock,
                                                         args=(str(store.root), store.netns, 3.0))
    holder.start()
    try:
        time.sleep(0.5)
        monkeypatch.setattr(session, "LOCK_WAIT_S", 0.2)
        endpoint.enclave = SoftwareEnclave(registers=(OTHER_BUILD,))
        said: list[str] = []
        with pytest.raises(trust.ReattestFailed) as info:
            trust.verify(attested_config(cfg), "home", time.time(), say=said.append)
    finally:
        holder.join()
    assert info.value.blocked and whack.deleted == list(render.trusted_conns(1))
    assert any(line.startswith("cannot record trusted mode as blocked") for line in said), said


def test_a_pin_verified_again_whose_reapply_failed_is_reapplied_at_the_next_verify(cfg, endpoint, enclave, spec_file,
                                                                                  up_trusted, monkeypatch):
    _, ups = up_trusted
    add(cfg, port_of(endpoint), spec_file)
    endpoint.enclave = SoftwareEnclave(registers=(OTHER_BUILD,))
    with pytest.raises(trust.ReattestFailed):
        trust.verify(attested_config(cfg), "home", time.time())
    endpoint.enclave = enclave

    def busy(config, say=None, config_path=None):
        raise StateBusy("another `up` holds the record")

    monkeypatch.setattr(session, "up", busy)
    with pytest.raises(StateBusy):
        trust.verify(attested_config(cfg), "home", time.time())
    assert truststore.load(cfg.trust_dir, "home").ok  # verified; trusted mode is still blocked by it
    monkeypatch.setattr(session, "up", lambda config, say=None, config_path=None: ups.append(config))
    outcome = trust.verify(attested_config(cfg), "home", time.time())
    assert outcome.reapplied and len(ups) == 1


def test_a_pin_that_fails_during_a_captive_portal_window_closes_it(cfg, endpoint, spec_file, up_trusted,
                                                                   monkeypatch):
    """The window lifts both backstops; without the trusted conns the pinned resolver's DNS would pass in clear."""
    add(cfg, port_of(endpoint), spec_file)
    store = StateStore.here()
    record = store.read()
    assert isinstance(record, RunState)
    store.write(replace(record, portal_until=time.time() + 600))
    installed: list[bool] = []
    monkeypatch.setattr(session.backstop, "install", lambda: installed.append(True))
    endpoint.enclave = SoftwareEnclave(registers=(OTHER_BUILD,))
    with pytest.raises(trust.ReattestFailed):
        trust.verify(attested_config(cfg), "home", time.time())
    after = store.read()
    assert isinstance(after, RunState) and after.portal_until is None and after.blocked is not None
    assert installed == [True]


def test_the_status_of_a_pin_blocked_record_says_how_to_reopen_it():
    record = RunState(Mode.TRUSTED, (LOCAL,), Path("/run/x"), 1.0, Baseline(True), trusted=(LOCAL,),
                      blocked=Blocked("pin 'home' failed attestation: x", 2.0, pin="home"))
    reason = status.decide(status.Seen(LOCAL, record, 42, False, now=3.0))[1]
    assert reason.endswith("until `ikectl trust verify home` succeeds"), reason
