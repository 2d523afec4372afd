"""[release] in enclave-ike's config: where the identity key comes from, who it is given to, and every mistake as one
line naming the key (exit status 2), before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from enclave_ike import config as cfg
from ikecommon.attestation.sim import DEFAULT_REGISTERS
from ikecommon.attestation.spec import MeasurementEntry, MeasurementSpec

BASE = """
[listen]
addresses = ["192.0.2.53"]

[identity]
backend = "sim"
id = "@dns.service.example"
publish = "{dir}/identity.json"

[release]
"""
SPEC = MeasurementSpec((MeasurementEntry("build", "sim", ((0, DEFAULT_REGISTERS[0]),)),))


def load(tmp_path: Path, release: str, base: str = BASE) -> cfg.ServeConfig:
    (tmp_path / "spec.json").write_bytes(SPEC.encode())
    path = tmp_path / "enclave-ike.toml"
    path.write_text(base.replace("{dir}", str(tmp_path)) + release.replace("{dir}", str(tmp_path)))
    return cfg.load(path)


def test_no_release_section_means_a_new_key_given_to_nobody(tmp_path: Path) -> None:
    release = load(tmp_path, "").release
    assert release == cfg.ReleaseConfig()
    assert (release.source, release.listen, release.spec) == (cfg.KeySource.NEW, (), None)


def test_a_joining_replica(tmp_path: Path) -> None:
    release = load(tmp_path, 'source = "peers"\npeers = ["enclave-ike-0.enclave-ike:4502", "10.0.0.1", '
                             '"[2001:db8::1]:9000", "[2001:db8::2]"]\nwhen_alone = "new-key"\njoin_timeout_s = 5\n'
                             'listen = ["10.0.0.2", "[2001:db8::3]:4600"]\nspec = "{dir}/spec.json"\n'
                             'anchors = "sim"\n').release
    assert release.source is cfg.KeySource.PEERS and release.when_alone is cfg.WhenAlone.NEW_KEY
    assert [str(p) for p in release.peers] == ["enclave-ike-0.enclave-ike:4502", "10.0.0.1:4502",
                                               "[2001:db8::1]:9000", "[2001:db8::2]:4502"]
    assert [str(p) for p in release.listen] == ["10.0.0.2:4502", "[2001:db8::3]:4600"]
    assert release.spec == SPEC and release.anchors is cfg.Anchors.SIM and release.join_timeout_s == 5


def test_a_first_replica_follows_its_peers_rotations(tmp_path: Path) -> None:
    """source = "new" may name peers: not to ask for a key at start, only to follow a rotation one of them starts."""
    release = load(tmp_path, 'peers = ["enclave-ike-peers"]\nlisten = ["10.0.0.2"]\nspec = "{dir}/spec.json"\n'
                             'rotate_notice_s = 600\npoll_s = 2\n').release
    assert release.source is cfg.KeySource.NEW and [str(p) for p in release.peers] == ["enclave-ike-peers:4502"]
    assert release.rotate_notice_s == 600 and release.poll_s == 2
    assert load(tmp_path, "").release.rotate_notice_s == 86_400


BAD = [
    ('source = "vault"\n', "release.source: 'vault' is not one of new, peers"),
    ('source = "peers"\nspec = "{dir}/spec.json"\n', "release.peers: missing: source = \"peers\" needs"),
    ('source = "peers"\npeers = ["10.0.0.1"]\n', "release.spec: missing: key release needs the measurement spec"),
    ('listen = ["10.0.0.2"]\n', "release.spec: missing"),
    ('spec = "{dir}/spec.json"\n', "release.spec: key release is off"),
    ('peers = ["10.0.0.1"]\n', "release.spec: missing: key release needs the measurement spec"),
    ('source = "kbs"\nkbs_resource = "a/b/c"\npeers = ["10.0.0.1"]\nspec = "{dir}/spec.json"\n',
     "release.peers: belongs to source = \"peers\" or \"new\" (the key broker holds the key)"),
    ('listen = ["10.0.0.2"]\nspec = "{dir}/spec.json"\nrotate_notice_s = 2\n',
     "release.rotate_notice_s: at least 5 s and 3 times poll_s"),
    ('listen = ["10.0.0.2"]\nspec = "{dir}/spec.json"\nrotate_notice_s = 2600000\n',
     "release.rotate_notice_s: expected seconds (more than 0, at most 2592000)"),
    ('peers = ["10.0.0.1"]\nspec = "{dir}/spec.json"\nrotate_notice_s = 60\npoll_s = 30\n',
     "release.rotate_notice_s: at least 5 s and 3 times poll_s (30 s)"),
    ('listen = ["10.0.0.2"]\nspec = "{dir}/spec.json"\npoll_s = 5\n', "release.poll_s: belongs to peers"),
    ('source = "peers"\npeers = ["10.0.0.1"]\nspec = "{dir}/spec.json"\npoll_s = 0\n', "release.poll_s: expected"),
    ('when_alone = "new-key"\n', "release.when_alone: belongs to source"),
    ('source = "peers"\npeers = ["10.0.0.1:99999"]\nspec = "{dir}/spec.json"\n',
     "release.peers: '10.0.0.1:99999' is not host[:port]"),
    ('source = "peers"\npeers = ["2001:db8::1:4502"]\nspec = "{dir}/spec.json"\n',
     "release.peers: '2001:db8::1:4502' is not host[:port] or [IPv6 address][:port]"),
    ('source = "peers"\npeers = ["r:\u00b2"]\nspec = "{dir}/spec.json"\n', "release.peers: 'r:\u00b2' is not"),
    ('source = "peers"\npeers = ["r:\u0664\u0665"]\nspec = "{dir}/spec.json"\n', "is not host[:port]"),
    ('source = "peers"\npeers = ["[::1"]\nspec = "{dir}/spec.json"\n', "release.peers: '[::1' is not"),
    ('source = "peers"\npeers = ["[1:2:3]"]\nspec = "{dir}/spec.json"\n', "'1:2:3' is not an IPv6 address"),
    ('source = "peers"\npeers = ["[2001:db8::1]x"]\nspec = "{dir}/spec.json"\n', "is not host[:port]"),
    ('source = "peers"\npeers = ["a b:1"]\nspec = "{dir}/spec.json"\n', "is not host[:port]"),
    ('source = "peers"\npeers = [":4502"]\nspec = "{dir}/spec.json"\n', "release.peers: ':4502' is not"),
    ('listen = ["resolver.example"]\nspec = "{dir}/spec.json"\n', "release.listen: 'resolver.example' is not an IP"),
    ('listen = ["10.0.0.2"]\nspec = "spec.json"\n', "release.spec: 'spec.json' must be an absolute path"),
    ('listen = ["10.0.0.2"]\nspec = "{dir}/absent.json"\n', "absent.json: No such file or directory"),
    ('listen = ["10.0.0.2"]\nspec = "{dir}/enclave-ike.toml"\n', "release.spec: "),
    ('listen = ["10.0.0.2"]\nspec = "{dir}/spec.json"\nanchors = "none"\n', "release.anchors: 'none' is not one"),
    ('source = "peers"\npeers = ["10.0.0.1"]\nspec = "{dir}/spec.json"\njoin_timeout_s = -1\n',
     "release.join_timeout_s: expected seconds"),
    ('listen = ["10.0.0.2"]\nspec = "{dir}/spec.json"\nport = 4502\n', "release.port: unknown key"),
    ('listen = ["10.0.0.2:4501"]\nspec = "{dir}/spec.json"\n', "release.listen: '10.0.0.2:4501': port 4501 is "
                                                              "evidence.port already"),
    ('listen = ["10.0.0.2:9464"]\nspec = "{dir}/spec.json"\n', "port 9464 is metrics.port already"),
    ('listen = ["10.0.0.2", "10.0.0.2:4502"]\nspec = "{dir}/spec.json"\n', "release.listen: lists an address twice"),
    ('source = "peers"\npeers = ["10.0.0.1"]\nspec = "{dir}/spec.json"\nfounder = "r-0"\n',
     "release.founder: belongs to when_alone = \"new-key\""),
    ('founder = "r-0"\n', "release.founder: belongs to source = \"peers\""),
]


@pytest.mark.parametrize(("release", "message"), BAD)
def test_bad_release_config_names_the_key(tmp_path: Path, release: str, message: str) -> None:
    with pytest.raises(cfg.ConfigError) as info:
        load(tmp_path, release)
    assert message in str(info.value)
    assert "\n" not in str(info.value) and info.value.exit_code == 2


def test_a_port_only_clashes_with_an_endpoint_that_is_on(tmp_path: Path) -> None:
    release = load(tmp_path, 'listen = ["10.0.0.2:9464"]\nspec = "{dir}/spec.json"\n',
                   BASE.replace("[release]", "[metrics]\nenabled = false\n\n[release]")).release
    assert [str(where) for where in release.listen] == ["10.0.0.2:9464"]


def test_sim_anchors_with_a_real_tee_are_refused(tmp_path: Path) -> None:
    """Sim evidence can be made by anyone: trusting it on a tsm backend would release the real key to anyone."""
    with pytest.raises(cfg.ConfigError, match=r"release\.anchors: \"sim\" trusts evidence anyone can make"):
        load(tmp_path, 'listen = ["10.0.0.2"]\nspec = "{dir}/spec.json"\nanchors = "sim"\n',
             BASE.replace('backend = "sim"', 'backend = "tsm"'))


def test_null_auth_has_no_key_to_release(tmp_path: Path) -> None:
    base = BASE.replace('id = "@dns.service.example"\n', 'auth = "null"\n')
    with pytest.raises(cfg.ConfigError, match=r"release\.listen: NULL authentication has no identity key"):
        load(tmp_path, 'listen = ["10.0.0.2"]\nspec = "{dir}/spec.json"\n', base)
