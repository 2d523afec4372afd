"""`ikectl trust` during a rotation of the resolver's key (enclave_ike/release/rotation.py): the announced next key
is attested like the current one and staged in the pin; when pluto sees the resolver sign with another key and the
switch time has come, the pin moves to the staged key without fetching evidence again. A next key that does not
verify is not staged, and the pin stands. Against enclave-ike's evidence endpoint on 127.0.0.1."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from ipaddress import ip_address

import pytest
from cryptography.hazmat.primitives import serialization
from trust_servers import port_of, running_endpoint, sim_spec

from enclave_ike.enclave.attest import attest
from enclave_ike.enclave.errors import EnclaveError
from enclave_ike.enclave.software import SoftwareEnclave
from enclave_ike.release.keyring import KeyRing, NextKey
from ikecommon import keys
from ikecommon.attestation.binding import LABEL
from ikecommon.attestation.envelope import Envelope
from ikectl import config, trust, truststore
from ikectl.truststore import StoredPin, TrustError

LOCAL = ip_address("127.0.0.1")


def pinned(key_spki: bytes) -> keys.PinnedKey:
    public = serialization.load_der_public_key(key_spki)
    return keys.from_public_key(public)  # type: ignore[arg-type]


def add(cfg: config.Config, port: int, spec: str) -> StoredPin:
    return trust.add(cfg, "home", (LOCAL,), spec, time.time(), port=port, anchors=trust.Anchors.SIM)


def pinned_during_a_rotation(cfg: config.Config, spec_file: str) -> StoredPin:
    """`ikectl trust add` of a resolver whose rotation is under way."""
    enclave = SoftwareEnclave()
    ring = KeyRing(enclave)
    with running_endpoint(enclave) as endpoint:
        endpoint.keys = ring
        ring.start_rotation(int(time.time()) + 3600)
        return add(cfg, port_of(endpoint), spec_file)


def test_a_rotation_under_way_is_staged_in_the_pin_and_listed(cfg: config.Config, spec_file: str) -> None:
    enclave = SoftwareEnclave()
    ring = KeyRing(enclave)
    with running_endpoint(enclave) as endpoint:
        endpoint.keys = ring
        pin = add(cfg, port_of(endpoint), spec_file)
        assert pin.next_key is None and pin.next_switch_at is None
        nxt, _ = ring.start_rotation(int(time.time()) + 3600)
        result = trust.verify(cfg, "home", time.time())
        assert result.ok and not result.key_changed  # the current key still signs
    stored = truststore.load(cfg.trust_dir, "home")
    assert stored.key == pinned(ring.current) and stored.next_key == pinned(nxt.spki)
    assert stored.next_switch_at == nxt.switch_at
    listed = trust.format_listing(trust.listing(cfg, time.time()))
    assert "rotation: next key staged, the resolver switches to it at" in listed
    assert StoredPin.from_json(json.loads(json.dumps(stored.to_json())), "pin") == stored


@pytest.mark.parametrize("staged_before", [False, True])
def test_an_announced_next_key_that_does_not_verify_is_not_staged(cfg: config.Config, spec_file: str,
                                                                    staged_before: bool) -> None:
    """The resolver announces a rotation, but the next key's evidence comes from another build's enclave: the pin
    keeps its current key, stages nothing (and drops what it staged before: a verdict, not a busy endpoint), and
    says why."""
    enclave, other_build = SoftwareEnclave(), SoftwareEnclave(registers=(bytes(range(48)),))
    ring = KeyRing(enclave)
    with running_endpoint(enclave) as endpoint:
        endpoint.keys = ring
        if staged_before:
            ring.start_rotation(int(time.time()) + 3600)
        pin = add(cfg, port_of(endpoint), spec_file)
        assert (pin.next_key is not None) == staged_before
        ring.start_rotation(int(time.time()) + 3600)
        served = endpoint.envelope

        def envelope(nonce: bytes, label: bytes = LABEL, key_spki: bytes | None = None) -> Envelope:
            if key_spki is None:
                return served(nonce, label, key_spki)
            return attest(other_build, nonce, None, label, key_spki)  # the next key, vouched for by another build

        endpoint.envelope = envelope  # type: ignore[method-assign]
        result = trust.verify(cfg, "home", time.time())
    assert result.ok and not result.key_changed
    assert any("announced next key did not attest, so it is not staged: spec[sim-default]" in note
               for note in result.notes)
    stored = truststore.load(cfg.trust_dir, "home")
    assert stored.key == pin.key and stored.next_key is None and stored.next_switch_at is None


def test_the_pin_moves_to_its_staged_key_when_the_rotation_is_due(cfg: config.Config, spec_file: str) -> None:
    enclave = SoftwareEnclave()
    ring = KeyRing(enclave)
    with running_endpoint(enclave) as endpoint:
        endpoint.keys = ring
        add(cfg, port_of(endpoint), spec_file)
        nxt, _ = ring.start_rotation(int(time.time()) + 3600)
        trust.verify(cfg, "home", time.time())
    staged = truststore.load(cfg.trust_dir, "home")
    assert not trust._rotation_due(staged, nxt.switch_at - trust.SWITCH_SLACK_S - 1)
    assert trust._rotation_due(staged, nxt.switch_at - trust.SWITCH_SLACK_S)
    result = trust.promote(cfg, "home", nxt.switch_at)  # no endpoint now: nothing is fetched
    assert result.ok and result.key_changed and "moved to the next key staged" in result.notes[0]
    moved = truststore.load(cfg.trust_dir, "home")
    assert moved.key == pinned(nxt.spki) and moved.next_key is None and moved.next_switch_at is None
    assert moved.attested_at == staged.attested_at  # moved, not attested again
    with pytest.raises(TrustError, match="no staged next key"):
        trust.promote(cfg, "home", nxt.switch_at)


@pytest.mark.parametrize("damage", [{"next_switch_at": None}, {"next_key": None}, {"next_switch_at": 1.5},
                                    {"next_key": "0sAAAA"}])
def test_a_pin_with_half_a_staged_key_is_not_read(cfg: config.Config, spec_file: str, damage: dict) -> None:
    pin = pinned_during_a_rotation(cfg, spec_file)
    assert pin.next_key is not None
    with pytest.raises(TrustError, match="not a pin ikectl wrote"):
        StoredPin.from_json({**pin.to_json(), **damage}, "pin")


def test_a_pin_written_before_rotations_existed_is_read(cfg: config.Config, spec_file: str) -> None:
    with running_endpoint(SoftwareEnclave()) as endpoint:
        pin = add(cfg, port_of(endpoint), spec_file)
    older = {k: v for k, v in pin.to_json().items() if not k.startswith("next_")}
    assert StoredPin.from_json(older, "pin") == pin


@pytest.mark.parametrize("switch_at", [1, 10**20, "past", "far"])
def test_a_switch_time_out_of_range_stages_nothing(cfg: config.Config, spec_file: str, switch_at: object) -> None:
    """/identity is not attested: a switch time in the past (which would make the staged key due at once) or beyond
    the longest notice enclave-ike takes is not believed, and nothing is staged."""
    now = time.time()
    value = {"past": int(now) - 3600, "far": int(now) + 31 * 86_400}.get(str(switch_at), switch_at)
    enclave = SoftwareEnclave()
    ring = KeyRing(enclave)
    with running_endpoint(enclave) as endpoint:
        endpoint.keys = ring
        ring.start_rotation(int(now) + 3600)
        endpoint._next_key = lambda: NextKey(ring.next.spki, value)  # type: ignore[method-assign, union-attr]
        attested = trust.attest(LOCAL, port_of(endpoint), sim_spec(),
                                trust.trust_anchors(trust.Anchors.SIM, cfg.trust), now)
    assert attested.next_key is None and attested.next_switch_at is None
    assert any("its next key is not staged" in note for note in attested.notes)


def test_a_staged_key_survives_a_busy_endpoint(cfg: config.Config, spec_file: str) -> None:
    """Staged once; at the next re-attestation the same rotation is announced but the next key's evidence is not
    to be had (503, the endpoint busy): the staged key stays, verified when it was staged."""
    enclave = SoftwareEnclave()
    ring = KeyRing(enclave)
    with running_endpoint(enclave) as endpoint:
        endpoint.keys = ring
        pin = add(cfg, port_of(endpoint), spec_file)
        nxt, _ = ring.start_rotation(int(time.time()) + 3600)
        trust.verify(cfg, "home", time.time())
        assert truststore.load(cfg.trust_dir, "home").next_key == pinned(nxt.spki)
        served = endpoint.envelope

        def busy(nonce: bytes, label: bytes = LABEL, key_spki: bytes | None = None) -> Envelope:
            if key_spki is not None:
                raise EnclaveError("busy making evidence")
            return served(nonce, label, key_spki)

        endpoint.envelope = busy  # type: ignore[method-assign]
        result = trust.verify(cfg, "home", time.time())
    assert result.ok and any("announced next key: no evidence for it now" in note for note in result.notes)
    stored = truststore.load(cfg.trust_dir, "home")
    assert stored.key == pin.key and stored.next_key == pinned(nxt.spki) and stored.next_switch_at == nxt.switch_at


def test_the_listing_of_a_pin_with_a_far_switch_time_does_not_break(cfg: config.Config, spec_file: str) -> None:
    pin = pinned_during_a_rotation(cfg, spec_file)
    truststore.save(cfg.trust_dir, StoredPin.from_json({**pin.to_json(), "next_switch_at": 2**40 - 1}, "pin"))
    assert "switches to it at Unix time 1099511627775" in trust.format_listing(trust.listing(cfg, time.time()))


def test_status_shows_a_staged_rotation(cfg: config.Config, spec_file: str) -> None:
    from ikectl import pins, status  # noqa: PLC0415

    pin = pinned_during_a_rotation(cfg, spec_file)
    assert pin.next_switch_at is not None
    at = 1_800_000_000.0
    view = pins.AttestationView(pin.name, pin.result, at, 60.0, pin.evidence_kind, pin.anchors, pin.measurement_id,
                                "", int(at) + 3660)
    assert status._attestation(view) == ("attestation ok 1 minute, 0 seconds ago (sim: NOT SECURE); next key "
                                          "staged, the resolver switches in 1 hour, 0 minutes")
    assert status._attestation(replace(view, age_s=7200.0)).endswith("the resolver switches now")
