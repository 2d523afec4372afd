"""enclave-ike's config, CLI and Child SA planner: bad input gives one line and exit 2; nothing needs root."""

from __future__ import annotations

import datetime
import json
import os
from ipaddress import ip_address
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from enclave_ike import cli
from enclave_ike import config as cfg
from enclave_ike.apply import AddSa, ApplyError, ChildSaTable, DeletePolicy, DeleteSa, SetPolicy
from enclave_ike.ikev2.config import ANONYMOUS_METHODS, Endpoint, Identity, Mode, PeerAuth, PeerCredential
from enclave_ike.ikev2.constants import AuthMethod, DhGroup, EncrId, IntegId, PrfId, ProtocolId
from enclave_ike.ikev2.crypto import ChildSuite, IkeSuite
from enclave_ike.ikev2.events import (
    ChildSaEstablished,
    ChildSaKeys,
    ChildSaRekeyed,
    IkeSaEstablished,
    NatStatus,
    SaDeleted,
)
from enclave_ike.ikev2.payloads import TrafficSelector
from enclave_ike.server import PublishedIdentity, describe, open_enclave
from ikecommon import keys

GOOD = """
[listen]
addresses = ["192.0.2.53"]

[identity]
backend = "software"
id = "@resolver.example"
publish = "{publish}"

[apply]
mode = "none"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "enclave-ike.toml"
    path.write_text(text.replace("{publish}", str(tmp_path / "identity.json")))
    return path


def test_good_config_becomes_typed_and_checked(tmp_path):
    config = cfg.load(write(tmp_path, GOOD))
    assert config.listen == cfg.Listen((ip_address("192.0.2.53"),), 500, 4500)
    assert config.dns_addresses == config.listen.addresses
    assert config.identity.auth is cfg.Auth.SIGNATURE
    assert config.identity.backend is cfg.Backend.SOFTWARE
    assert config.apply is cfg.ApplyMode.NONE
    responder = config.responder_config(None)
    assert str(responder.local_id) == "resolver.example"
    assert all(not suite.esn for suite in responder.esp_suites)


def test_minimal_config_is_null_auth_and_kernel_apply(tmp_path):
    config = cfg.load(write(tmp_path, '[listen]\naddresses = ["2001:db8::53"]\n'))
    assert config.identity.auth is cfg.Auth.NULL
    assert config.apply is cfg.ApplyMode.KERNEL
    assert config.limits.cookie_threshold == 64
    assert (config.timers.liveness, config.timers.liveness_timeout) == (30.0, 15.0)  # dead peers go by default


def test_limits_and_liveness_reach_the_core(tmp_path):
    config = cfg.load(write(tmp_path, '[listen]\naddresses = ["192.0.2.1"]\n[limits]\nmax_sas_per_peer = 4\n'
                                      'max_half_open = 10\nliveness_s = 2.5\nliveness_timeout_s = 1\n'))
    core = config.responder_config(None)
    assert (core.limits.max_sas_per_peer, core.limits.max_half_open, core.limits.max_sas) == (4, 10, 100_000)
    assert (core.timers.liveness, core.timers.liveness_timeout) == (2.5, 1.0)
    off = cfg.load(write(tmp_path, '[listen]\naddresses = ["192.0.2.1"]\n[limits]\nliveness_s = 0\n'))
    assert off.responder_config(None).timers.liveness is None


def test_a_slow_sim_enclave_is_configured_in_seconds_per_signature(tmp_path):
    body = '[listen]\naddresses = ["192.0.2.1"]\n[identity]\n'
    assert cfg.load(write(tmp_path, body)).identity.sim_sign_delay_s == 0.0
    assert cfg.load(write(tmp_path, body + "sim_sign_delay_s = 2.5\n")).identity.sim_sign_delay_s == 2.5


BAD = [
    ("", "listen.addresses: missing"),
    ('[listen]\naddresses = ["not-an-ip"]\n', "listen.addresses: 'not-an-ip' is not an IP address"),
    ('[listen]\naddresses = []\n', "listen.addresses: must not be empty"),
    ('[listen]\naddresses = ["192.0.2.1"]\nike_port = 70000\n', "listen.ike_port: 70000 is not a UDP port"),
    ('[listen]\naddresses = ["192.0.2.1"]\nnatt_port = 500\n', "listen.natt_port: must differ"),
    ('[listen]\naddresses = ["192.0.2.1"]\nike_port = "500"\n', "listen.ike_port: expected an integer"),
    ('[listen]\naddresses = ["192.0.2.1"]\nbogus = 1\n', "listen.bogus: unknown key"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[nope]\n', "[nope]: unknown section"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[identity]\nbackend = "sgx"\n',
     "identity.backend: 'sgx' is not one of software, sim, tsm"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[identity]\nkey_type = "rsa"\nid = "@x"\n',
     "identity.key_type: rsa is not available with the sim backend"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[identity]\nauth = "signature"\n',
     "identity.id: auth = \"signature\" needs an identity"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[identity]\nid = "bad id!"\n', "identity.id: 'bad id!' is not"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[identity]\nsim_sign_delay_s = 10\n',
     "identity.sim_sign_delay_s: 10 s: every signature would outlast the sim channel's 10 s timeout"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[identity]\nsim_sign_delay_s = -1\n',
     "identity.sim_sign_delay_s: expected seconds (0 or more"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[identity]\nbackend = "software"\nsim_sign_delay_s = 1\n',
     "identity.sim_sign_delay_s: belongs to the sim backend, not software"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[identity]\npublish = "relative.json"\n',
     "identity.publish: 'relative.json' must be an absolute path"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[apply]\nmode = "tunnel"\n',
     "apply.mode: 'tunnel' is not one of kernel, userspace, none"),
    ('[listen]\naddresses = ["192.0.2.1"]\nrelay = "/run/relay.sock"\n',
     "listen.relay: the forwarder relays UDP only: ESP must end in enclave-ike"),
    ('[listen]\naddresses = ["192.0.2.1"]\nrelay = "relay.sock"\n[apply]\nmode = "userspace"\n',
     "listen.relay: 'relay.sock' must be an absolute path"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[apply]\nmode = "userspace"\nresolver = "localhost:53"\n',
     "apply.resolver: 'localhost:53' is not \"address:port\""),
    ('[listen]\naddresses = ["192.0.2.1"]\n[apply]\nmode = "userspace"\nresolver = "127.0.0.1"\n',
     "apply.resolver: '127.0.0.1' is not \"address:port\""),
    ('[listen]\naddresses = ["192.0.2.1"]\n[apply]\nresolver = "127.0.0.1:0"\n',
     "apply.resolver: '127.0.0.1:0': port 0"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[apply]\nmax_queries_in_flight = 0\n',
     "apply.max_queries_in_flight: 0 is not between 1 and 32768"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[apply]\nquery_timeout_s = -1\n', "apply.query_timeout_s: expected seconds"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[metrics]\ntop_k = 1\n', "metrics.top_k: 1 is not between 2 and 1000"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[metrics]\ntop_epsilon = 0\n',
     "metrics.top_epsilon: expected a number from 0.01 to 100, got 0"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[metrics]\ntop_n = 0\n', "metrics.top_n: 0 is not between 1 and 1000"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[metrics]\nport = 0\n', "metrics.port: 0 is not a UDP port"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[metrics]\ntop_domains = "yes"\n',
     "metrics.top_domains: expected true or false, got 'yes'"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[apply]\nmode = "userspace"\n[suites]\nesn = true\n',
     "suites.esn: true needs ESN SAs, which apply.mode = \"userspace\" cannot install"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[suites]\nencryption = ["des"]\n', "suites.encryption: 'des' is not"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[suites]\nesn = true\n', "suites.esn: true needs ESN SAs"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[limits]\ncookie_threshold = -1\n', "limits.cookie_threshold: -1"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[limits]\nmax_sas = -5\n', "limits.max_sas: -5 is negative"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[limits]\nmax_sas_per_peer = 0\n',
     "limits.max_sas_per_peer: 0 would refuse every client"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[limits]\nmax_sas = true\n', "limits.max_sas: expected an integer"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[limits]\nliveness_s = -1\n',
     "limits.liveness_s: expected seconds (0 or more, at most 86400), got -1"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[limits]\nliveness_s = "30"\n', "limits.liveness_s: expected seconds"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[limits]\nliveness_s = nan\n', "limits.liveness_s: expected seconds"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[limits]\nliveness_timeout_s = 0\n',
     "limits.liveness_timeout_s: expected seconds (more than 0, at most 86400), got 0"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[limits]\nliveness = 30\n', "limits.liveness: unknown key"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[peers]\nallow_null = false\n',
     "peers.allow_null: no client could authenticate: no anonymous method is accepted and no client key is pinned"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[peers]\nanonymous = []\n', "peers.anonymous: no client could authenticate"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[peers]\nanonymous = ["psk"]\n',
     "peers.anonymous: 'psk' is not one of null, raw-key, certificate"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[peers]\nanonymous = ["null", "null"]\n',
     "peers.anonymous: lists a value twice"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[peers]\nanonymous = "null"\n', "peers.anonymous: expected a list"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[peers]\nallow_null = true\nanonymous = ["raw-key"]\n',
     "peers.allow_null: true contradicts peers.anonymous = ['raw-key'] (allow_null is the older spelling of "
     "\"null\" in anonymous; set one)"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[peers]\nallow_null = false\nanonymous = ["null"]\n',
     "peers.allow_null: false contradicts"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[peers]\nallow_nul = true\n', "peers.allow_nul: unknown key"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[peers]\npinned = 1\n', "peers.pinned: expected tables"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[[peers.pinned]]\npubkey_file = "/k.pem"\n',
     "peers.pinned[0].id: missing (required)"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[[peers.pinned]]\nid = "%null"\npubkey_file = "/k.pem"\n',
     "peers.pinned[0].id: %null names no one"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[[peers.pinned]]\nid = "@c"\n',
     "peers.pinned[0].pubkey_file: set exactly one of pubkey_file and certificate_file"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[[peers.pinned]]\nid = "@c"\npubkey_file = "k.pem"\n',
     "peers.pinned[0].pubkey_file: 'k.pem' must be an absolute path"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[[peers.pinned]]\nid = "@c"\npubkey_file = "/nonexistent/k.pem"\n',
     "peers.pinned[0].pubkey_file: /nonexistent/k.pem: cannot read it (No such file or directory)"),
    ('[listen]\naddresses = ["192.0.2.1"]\n[dns]\nprotocols = ["icmp"]\n', "dns.protocols: 'icmp' is not"),
    ("[listen\n", "not valid TOML"),
    ('listen = 1\n', "listen: expected a table"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_config_names_the_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(cfg.ConfigError) as info:
        cfg.load(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)
    assert info.value.exit_code == 2


@pytest.mark.parametrize("command", ["serve", "identity"])
def test_cli_bad_config_exits_2_with_one_line(tmp_path, capsys, command):
    path = write(tmp_path, '[listen]\naddresses = ["nope"]\n')
    assert cli.main([command, "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("enclave-ike: ") and "listen.addresses" in err


@pytest.mark.parametrize("command", ["serve", "identity"])
def test_cli_missing_config_exits_2(tmp_path, capsys, command):
    assert cli.main([command, "--config", str(tmp_path / "absent.toml")]) == 2
    assert "no such config file" in capsys.readouterr().err


def test_identity_bad_format_is_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["identity", "--config", str(write(tmp_path, GOOD)), "--format", "ssh"])
    assert info.value.code == 2
    assert "invalid choice: 'ssh'" in capsys.readouterr().err


def test_identity_without_a_running_server_fails_with_exit_1(tmp_path, capsys):
    assert cli.main(["identity", "--config", str(write(tmp_path, GOOD))]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no identity published" in err


def test_identity_of_a_dead_server_is_stale(tmp_path, capsys):
    path = write(tmp_path, GOOD)
    config = cfg.load(path)
    identity = PublishedIdentity.of(config, None)
    dead = PublishedIdentity(**{**identity.__dict__, "pid": _dead_pid()})
    dead.publish(config.identity.publish)
    assert cli.main(["identity", "--config", str(path)]) == 1
    assert "stale" in capsys.readouterr().err


def test_identity_prints_what_serve_published(tmp_path, capsys):
    path = write(tmp_path, GOOD)
    config = cfg.load(path)
    enclave = open_enclave(config)
    PublishedIdentity.of(config, enclave).publish(config.identity.publish)
    assert cli.main(["identity", "--config", str(path), "--format", "libreswan"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("leftecdsakey=0s")
    assert enclave is not None
    assert keys.parse(line) == keys.from_public_key(enclave.signer().public_key())  # type: ignore[arg-type]
    assert cli.main(["identity", "--config", str(path), "--format", "pem"]) == 0
    assert capsys.readouterr().out.startswith("-----BEGIN PUBLIC KEY-----")
    assert cli.main(["identity", "--config", str(path), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["id"], data["backend"], data["pid"]) == ("@resolver.example", "software", os.getpid())


def test_identity_of_a_null_auth_server_has_no_key_to_pin(tmp_path, capsys):
    path = write(tmp_path, '[listen]\naddresses = ["192.0.2.1"]\n[identity]\npublish = "{publish}"\n')
    config = cfg.load(path)
    PublishedIdentity.of(config, None).publish(config.identity.publish)
    assert cli.main(["identity", "--config", str(path)]) == 1
    assert "no key to pin" in capsys.readouterr().err


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


# --- the Child SA planner ---

LOCAL, PEER = ip_address("192.0.2.53"), ip_address("198.51.100.7")


def child(spi_in: bytes, spi_out: bytes, mode: Mode = Mode.TRANSPORT, suite: ChildSuite | None = None,
          nat: bool = False, peer_ports: tuple[int, int] = (0, 65535)) -> ChildSaEstablished:
    suite = suite or ChildSuite(EncrId.ENCR_AES_GCM_16, 256)
    integ = b"" if suite.integ_id == IntegId.NONE else b"i" * 32
    size = 36 if suite.encr_id == EncrId.ENCR_AES_GCM_16 else 32
    return ChildSaEstablished(
        b"I" * 8, b"R" * 8, spi_in, spi_out, ProtocolId.ESP, mode, suite,
        (TrafficSelector(LOCAL, LOCAL, 17, 53, 53),), (TrafficSelector(PEER, PEER, 17, *peer_ports),),
        Endpoint(LOCAL, 500), Endpoint(PEER, 500), nat, ChildSaKeys(b"a" * size, integ, b"b" * size, integ))


def test_planner_installs_two_sas_and_two_policies():
    ops = ChildSaTable().plan(child(b"\x00\x00\x10\x01", b"\x00\x00\x20\x02"))
    assert [type(op) for op in ops] == [AddSa, AddSa, SetPolicy, SetPolicy]
    sa_in, sa_out = ops[0].spec, ops[1].spec
    assert (sa_in.src, sa_in.dst, sa_in.spi) == (PEER, LOCAL, 0x1001)
    assert (sa_out.src, sa_out.dst, sa_out.spi) == (LOCAL, PEER, 0x2002)
    assert sa_in.algorithms[0].key == b"a" * 36 and sa_out.algorithms[0].key == b"b" * 36
    out_policy, in_policy = ops[2].policy, ops[3].policy
    assert (out_policy.selector.sport, out_policy.selector.dport) == (53, None)
    assert (in_policy.selector.sport, in_policy.selector.dport) == (None, 53)
    assert not out_policy.owned  # never in ikectl's band, which ikectl flushes as its own


def test_planner_tunnel_mode_templates_name_both_ends():
    ops = ChildSaTable().plan(child(b"\x00\x00\x10\x01", b"\x00\x00\x20\x02", Mode.TUNNEL,
                                    ChildSuite(EncrId.ENCR_AES_CBC, 256, IntegId.AUTH_HMAC_SHA2_256_128)))
    template = ops[2].policy.templates[0]
    assert (template.src, template.dst) == (LOCAL, PEER)
    assert sorted(a.kind for a in ops[0].spec.algorithms) == ["auth", "crypt"]


def test_planner_rekey_keeps_policies_and_delete_removes_them_last():
    table = ChildSaTable()
    table.plan(child(b"\x00\x00\x10\x01", b"\x00\x00\x20\x02"))
    new = child(b"\x00\x00\x10\x03", b"\x00\x00\x20\x04")
    ops = table.plan(ChildSaRekeyed(b"I" * 8, b"R" * 8, b"\x00\x00\x10\x01", b"\x00\x00\x20\x02", new))
    assert [type(op) for op in ops] == [AddSa, AddSa]  # same reqid: the policies already fit
    old_gone = table.plan(SaDeleted(b"I" * 8, b"R" * 8, ProtocolId.ESP, "rekeyed", b"\x00\x00\x10\x01",
                                    b"\x00\x00\x20\x02"))
    assert [type(op) for op in old_gone] == [DeleteSa, DeleteSa]
    assert [type(op) for op in table.teardown()] == [DeleteSa, DeleteSa, DeletePolicy, DeletePolicy]
    assert len(table) == 0


def test_planner_refuses_what_xfrm_cannot_hold():
    table = ChildSaTable()
    with pytest.raises(ApplyError, match="NAT"):
        table.plan(child(b"\x00\x00\x10\x01", b"\x00\x00\x20\x02", nat=True))
    with pytest.raises(ApplyError, match="ports 1000-2000"):
        table.plan(child(b"\x00\x00\x10\x01", b"\x00\x00\x20\x02", peer_ports=(1000, 2000)))
    assert len(table) == 0


def _pem_files(tmp_path: Path) -> tuple[Path, Path, bytes]:
    """A PEM public key and a self-signed PEM certificate of another key; the first key's SPKI DER."""
    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    pub = tmp_path / "client.pem"
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "other")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(other.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(other, hashes.SHA256()))
    crt = tmp_path / "other.crt"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return pub, crt, key.public_key().public_bytes(serialization.Encoding.DER,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo)


def test_peers_default_to_every_anonymous_method(tmp_path):
    config = cfg.load(write(tmp_path, GOOD))
    assert config.anonymous == ANONYMOUS_METHODS and config.pinned == ()
    assert config.responder_config(None).anonymous == ANONYMOUS_METHODS
    only_null = cfg.load(write(tmp_path, GOOD + '[peers]\nanonymous = ["null"]\nallow_null = true\n'))
    assert only_null.anonymous == {PeerAuth.NULL}
    assert cfg.load(write(tmp_path, GOOD + "[peers]\nallow_null = true\n")).anonymous == ANONYMOUS_METHODS


def test_pinned_clients_from_a_public_key_and_a_certificate(tmp_path):
    pub, crt, der = _pem_files(tmp_path)
    text = GOOD + (f'[peers]\nanonymous = []\n\n[[peers.pinned]]\nid = "@client.example"\npubkey_file = "{pub}"\n\n'
                   f'[[peers.pinned]]\nid = "192.0.2.7"\ncertificate_file = "{crt}"\n')
    config = cfg.load(write(tmp_path, text))
    assert config.anonymous == frozenset()
    assert [str(peer.identity) for peer in config.pinned] == ["client.example", "192.0.2.7"]
    assert config.pinned[0].public_key.public_bytes(serialization.Encoding.DER,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo) == der
    responder = config.responder_config(None)
    assert responder.pinned_key(Identity.fqdn("client.example")) is config.pinned[0].public_key
    # allow_null = false alone, the older spelling of a private resolver, works once a key is pinned
    private = cfg.load(write(tmp_path, GOOD + f'[peers]\nallow_null = false\n[[peers.pinned]]\nid = "@c"\n'
                                             f'pubkey_file = "{pub}"\n'))
    assert private.anonymous == frozenset() and len(private.pinned) == 1


@pytest.mark.parametrize(("entry", "message"), [
    ('id = "@c"\npubkey_file = "{crt}"\n', "peers.pinned[0].pubkey_file: {crt}: not a PEM public key"),
    ('id = "@c"\ncertificate_file = "{pub}"\n', "peers.pinned[0].certificate_file: {pub}: not a PEM or DER X.509"),
    ('id = "@c"\npubkey_file = "{pub}"\ncertificate_file = "{crt}"\n', "set exactly one of"),
    ('id = "@c"\npubkey_file = "{pub}"\nkey = 1\n', "peers.pinned[0].key: unknown key"),
    ('id = "@c"\npubkey_file = "{pub}"\n\n[[peers.pinned]]\nid = "@c"\npubkey_file = "{pub}"\n',
     "peers.pinned[1].id: '@c' is pinned twice"),
    ('id = 7\npubkey_file = "{pub}"\n', "peers.pinned[0].id: expected a string"),
])
def test_bad_pinned_client_names_the_key(tmp_path, entry, message):
    pub, crt, _ = _pem_files(tmp_path)
    text = GOOD + "[[peers.pinned]]\n" + entry.replace("{pub}", str(pub)).replace("{crt}", str(crt))
    path = write(tmp_path, text)
    with pytest.raises(cfg.ConfigError) as info:
        cfg.load(path)
    assert message.replace("{pub}", str(pub)).replace("{crt}", str(crt)) in str(info.value)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


@pytest.mark.parametrize(("credential", "text"), [
    (PeerCredential(PeerAuth.NULL), "peer ID_NULL, NULL auth, unauthenticated; we are resolver.example"),
    (PeerCredential(PeerAuth.PINNED, bytes(32)), f"signature auth, pinned key sha256 {'00' * 32}; we are"),
    (PeerCredential(PeerAuth.RAW_KEY, b"\xab" * 32), f"signature auth, unauthenticated: raw key sha256 {'ab' * 32};"),
    (PeerCredential(PeerAuth.CERTIFICATE, b"\x01" * 32, "CN=c", self_signed=True),
     f"signature auth, unauthenticated: certificate 'CN=c' (self-signed), key sha256 {'01' * 32}; we are"),
])
def test_serve_logs_what_the_client_proved(credential, text):
    peer_id = Identity.null() if credential.kind is PeerAuth.NULL else Identity.fqdn("client.example")
    event = IkeSaEstablished(b"\x01" * 8, b"\x02" * 8, Endpoint(ip_address("192.0.2.53"), 500),
                             Endpoint(ip_address("192.0.2.7"), 4500), Identity.fqdn("resolver.example"), peer_id,
                             AuthMethod.NULL if credential.kind is PeerAuth.NULL else AuthMethod.DIGITAL_SIGNATURE,
                             IkeSuite(EncrId.ENCR_AES_GCM_16, 256, PrfId.PRF_HMAC_SHA2_256, IntegId.NONE,
                                      DhGroup.CURVE25519), NatStatus(), False, credential)
    line = describe(event)
    assert line.startswith("IKE SA 0101010101010101/0202020202020202 established with 192.0.2.7:4500 (peer ")
    assert text in line
    assert ("unauthenticated" in line) is (credential.kind is not PeerAuth.PINNED)
