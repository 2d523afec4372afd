"""`ikectl trust` during a rotation of the resolver's key (enclave_ike/release/rotation.py): the announced next key
is attested like the current one and staged in the pin; when pluto sees the resolver sign with another key and the
switch time has come, the pin moves to the staged key without fetching evidence again. A next key that does not
verify is not staged, and the pin stands. Against enclave-ike's evidence endpoint on 127.0.0.1."""

from __future__ import annotations

import json
import time
from ipaddress import ip_address
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from trust_servers import port_of, running_endpoint, sim_spec

from enclave_ike.enclave.attest import attest
from enclave_ike.enclave.software import SoftwareEnclave
from enclave_ike.release.keyring import KeyRing
from ikecommon import keys
from ikecommon.attestation.binding import LABEL
from ikecommon.attestation.envelope import Envelope
from ikectl import config, trust, truststore
from ikectl.truststore import StoredPin, TrustError

LOCAL = ip_address("127.0.0.1")


def pinned(key_spki: bytes) -> keys.PinnedKey:
    public = serialization.load_der_public_key(key_spki)
    return keys.from_public_key(public)  # type: ignore[arg-type]


@pytest.fixture
def cfg(tmp_path: Path) -> config.Config:
    return config.Config(run_dir=tmp_path / "run", trust_dir=tmp_path / "trust")


@pytest.fixture
def spec_file(tmp_path: Path) -> str:
    path = tmp_path / "spec.json"
    path.write_bytes(sim_spec().encode())
    return str(path)


def add(cfg: config.Config, port: int, spec: str) -> StoredPin:
    return trust.add(cfg, "home", LOCAL, spec, time.time(), port=port, anchors=trust.Anchors.SIM)


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


def test_an_announced_next_key_that_does_not_verify_is_not_staged(cfg: config.Config, spec_file: str) -> None:
    """The resolver announces a rotation, but the next key's evidence comes from another build's enclave: the pin
    keeps its current key, stages nothing, and says why."""
    enclave, other_build = SoftwareEnclave(), SoftwareEnclave(registers=(bytes(range(48)),))
    ring = KeyRing(enclave)
    with running_endpoint(enclave) as endpoint:
        endpoint.keys = ring
        pin = add(cfg, port_of(endpoint), spec_file)
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
    enclave = SoftwareEnclave()
    ring = KeyRing(enclave)
    with running_endpoint(enclave) as endpoint:
        endpoint.keys = ring
        ring.start_rotation(int(time.time()) + 3600)
        pin = add(cfg, port_of(endpoint), spec_file)
    assert pin.next_key is not None
    with pytest.raises(TrustError, match="not a pin ikectl wrote"):
        StoredPin.from_json({**pin.to_json(), **damage}, "pin")


def test_a_pin_written_before_rotations_existed_is_read(cfg: config.Config, spec_file: str) -> None:
    with running_endpoint(SoftwareEnclave()) as endpoint:
        pin = add(cfg, port_of(endpoint), spec_file)
    older = {k: v for k, v in pin.to_json().items() if not k.startswith("next_")}
    assert StoredPin.from_json(older, "pin") == pin
