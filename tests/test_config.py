"""ikectl.toml: valid files become typed config; every bad one is one ConfigError (exit 2) naming the key."""

import base64
import os
import re
from pathlib import Path

import pytest

from ikecommon import keys
from ikectl import config, render
from ikectl.config import ConfigError, Mode

EC_PUB = ("-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAERxw+dYxJBChbun5TEY7Q9SSt6wdX\n"
          "0lvS+Oew1236cUzdUg96yoqLkXrMN/Ud6PDJu+OthYOC5wLcJaEtCfeoWA==\n-----END PUBLIC KEY-----\n")
EC_RAW = "0sRxw+dYxJBChbun5TEY7Q9SSt6wdX0lvS+Oew1236cUzdUg96yoqLkXrMN/Ud6PDJu+OthYOC5wLcJaEtCfeoWA=="


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ikectl.toml"
    path.write_text(text)
    return path


def test_defaults_are_coffee_shop_with_discovery(tmp_path):
    cfg = config.load(write(tmp_path, ""))
    assert cfg.mode == Mode.COFFEE_SHOP and cfg.resolvers == () and cfg.discover == ("resolv.conf",)
    assert cfg.coffee_shop.ike_timeout_ms == 300


def test_trust_policy_defaults_and_values(tmp_path):
    default = config.load(write(tmp_path, "")).trust
    assert (default.collateral_grace_days, default.tdx_tcb_statuses) == (0, ("UpToDate",))
    given = config.load(write(tmp_path, '[trust]\ncollateral_grace_days = 7\n'
                                        'tdx_tcb_statuses = ["UpToDate", "SWHardeningNeeded", "UpToDate"]\n')).trust
    assert (given.collateral_grace_days, given.tdx_tcb_statuses) == (7, ("UpToDate", "SWHardeningNeeded"))


def test_snp_policy_keys(tmp_path):
    assert config.load(write(tmp_path, "")).trust.snp_minimum_tcb is None
    text = "[trust]\nsnp_vmpl = 0\nsnp_minimum_tcb = { microcode = 68, snp = 5, tee = 0, bootloader = 2 }\n"
    given = config.load(write(tmp_path, text)).trust
    assert given.snp_vmpl == 0
    assert given.snp_minimum_tcb == (("bootloader", 2), ("tee", 0), ("snp", 5), ("microcode", 68))


def test_trusted_with_inline_key_and_key_file(tmp_path):
    cfg = config.load(write(tmp_path, f'mode = "trusted"\n[trusted]\naddress = "192.0.2.53"\n'
                                      f'id = "@dns.example.net"\npubkey = "{EC_RAW}"\n'))
    assert cfg.trusted is not None and cfg.trusted.key.kind == "ecdsa"
    assert cfg.trusted.key.libreswan == EC_RAW and str(cfg.trusted.address) == "192.0.2.53"
    (tmp_path / "dns.pub").write_text(EC_PUB)
    cfg2 = config.load(write(tmp_path, f'mode = "trusted"\n[trusted]\naddress = "2001:db8::53"\n'
                                       f'id = "@dns.example.net"\npubkey_file = "{tmp_path / "dns.pub"}"\n'))
    assert cfg2.trusted is not None and cfg2.trusted.key == cfg.trusted.key


@pytest.mark.parametrize(("text", "message"), [
    ("mode = [", "not valid TOML"),
    ('mode = "paranoid"', "mode = 'paranoid': expected 'coffee-shop' or 'trusted'"),
    ('[resolvers]\naddresses = ["192.0.2.300"]', "resolvers.addresses\\[0\\]: '192.0.2.300' is not an IP address"),
    ('[resolvers]\naddresses = ["0.0.0.0"]', "0.0.0.0 cannot be a resolver"),
    ('[resolvers]\naddresses = "192.0.2.53"', "addresses must be a list"),
    ('[resolvers]\ndiscover = ["carrier-pigeon"]', "discover\\[0\\] = 'carrier-pigeon'"),
    ('colour = "blue"', "unknown key 'colour'"),
    ('mode = "trusted"', "needs a \\[trusted\\] table"),
    ('[trusted]\naddress = "192.0.2.53"\nid = "@x.example"', "exactly one of 'pubkey' and 'pubkey_file'"),
    (f'[trusted]\naddress = "192.0.2.53"\nid = "bad id"\npubkey = "{EC_RAW}"', "'bad id' is not an IKE ID"),
    ('[trusted]\naddress = "192.0.2.53"\nid = "@x.example"\npubkey = "0s!!!"', "expected a PEM public key"),
    ('[trusted]\naddress = "192.0.2.53"\nid = "@x.example"\npubkey = "0sAAAA"', "rsa|RFC 3110"),
    ('[trusted]\naddress = "192.0.2.53"\nid = "@x.example"\npubkey_file = "/no/such.pub"', "cannot read"),
    ("[coffee_shop]\nike_timeout_ms = 5", "ike_timeout_ms = 5: expected a whole number from 100 to 10000"),
    ("[ipsec]\nsa_lifetime_s = 5", "ipsec.sa_lifetime_s = 5: expected a whole number from 30 to 86400"),
    ("[ipsec]\nencapsulation = \"yes\"", "ipsec.encapsulation = 'yes': expected true or false"),
    ("[ipsec]\ntrusted_liveness_s = 0", "ipsec.trusted_liveness_s = 0: expected a whole number from 1"),
    ("[coffee_shop]\nliveness_ms = 500", "coffee_shop.liveness_ms = 500: expected a whole number from 1000"),
    ("[coffee_shop]\nliveness_ms = 1500", "coffee_shop.liveness_ms = 1500: expected whole seconds"),
    ("[ipsec]\ntrusted_dead_after_ms = 100", "ipsec.trusted_dead_after_ms = 100: expected a whole number from 1000"),
    ("[ipsec]\nike_lifetime_s = 60", "\\[ipsec\\]: unknown key 'ike_lifetime_s'"),
    ("[trust]\ncollateral_grace_days = 91", "trust.collateral_grace_days = 91: expected a whole number from 0 to 90"),
    ("[trust]\ncollateral_grace_days = -1", "collateral_grace_days = -1"),
    ('[trust]\ntdx_tcb_statuses = ["Revoked"]', "'Revoked' is not a TCB status to accept"),
    ("[trust]\ntdx_tcb_statuses = []", "tdx_tcb_statuses is empty: no TDX platform would ever be accepted"),
    ('[trust]\ntdx_tcb_statuses = "UpToDate"', "tdx_tcb_statuses must be a list"),
    ("[trust]\nsnp_minimum_tcb = 5", "snp_minimum_tcb: expected a table"),
    ("[trust]\nsnp_minimum_tcb = { bootloader = 2, tee = 0, snp = 5 }", "; missing microcode"),
    ("[trust]\nsnp_minimum_tcb = { bootloader = 2, tee = 0, snp = 5, microcode = 68, psp = 1 }", "; unknown 'psp'"),
    ("[trust]\nsnp_minimum_tcb = { bootloader = 2, tee = 0, snp = 500, microcode = 68 }",
     "snp_minimum_tcb.snp = 500: expected a whole number from 0 to 255"),
    ("[trust]\nsnp_vmpl = 4", "trust.snp_vmpl = 4: expected a whole number from 0 to 3"),
])
def test_bad_config_is_one_clear_error(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as error:
        config.load(write(tmp_path, text))
    assert error.value.exit_code == 2
    assert "\n" not in str(error.value)
    assert str(tmp_path / "ikectl.toml") in str(error.value) or "/no/such.pub" in str(error.value)


def test_short_sa_lifetimes_and_the_coffee_shop_retry_reach_the_rendered_conns(tmp_path):
    cfg = config.load(write(tmp_path, '[ipsec]\nsa_lifetime_s = 60\n[coffee_shop]\nretry_after_s = 30\n'
                                      '[resolvers]\naddresses = ["192.0.2.53"]'))
    assert cfg.sa_lifetime_s == 60
    conf = render.render_tree(render.Profile.from_config(cfg, cfg.resolvers))["ipsec.conf"]
    assert "\tsalifetime=60s\n\trekeymargin=20s\n" in conf and "\tshuntlifetime=30s\n" in conf
    assert "salifetime" not in render.render_tree(render.Profile.from_config(
        config.load(write(tmp_path, '[resolvers]\naddresses = ["192.0.2.53"]')), cfg.resolvers))["ipsec.conf"]


def test_encapsulation_reaches_both_modes_conns(tmp_path):
    cfg = config.load(write(tmp_path, '[ipsec]\nencapsulation = true\n[resolvers]\naddresses = ["192.0.2.53"]'))
    assert cfg.encapsulation
    conf = render.render_tree(render.Profile.from_config(cfg, cfg.resolvers))["ipsec.conf"]
    assert "\tencapsulation=yes\n" in conf
    plain = config.load(write(tmp_path, '[resolvers]\naddresses = ["192.0.2.53"]'))
    assert "encapsulation" not in render.render_tree(render.Profile.from_config(plain, cfg.resolvers))["ipsec.conf"]


def test_trusted_liveness_reaches_the_trusted_conn(tmp_path):
    """A resolver that stops answering is found and negotiated again (a replica of the same service takes over)."""
    pin = f'[trusted]\naddress = "192.0.2.53"\nid = "@dns.example"\npubkey = "{EC_RAW}"\n'
    default = config.load(write(tmp_path, 'mode = "trusted"\n' + pin))
    conf = render.render_tree(render.Profile.from_config(default, ()))["ipsec.conf"]
    assert "\tretransmit-timeout=3000ms\n\tdpddelay=1s\n\tdpdaction=restart\n" in conf
    tuned = config.load(write(tmp_path, 'mode = "trusted"\n' + pin + '[ipsec]\ntrusted_liveness_s = 2\n'
                                        'trusted_dead_after_ms = 4000\n'))
    conf = render.render_tree(render.Profile.from_config(tuned, ()))["ipsec.conf"]
    assert "\tretransmit-timeout=4000ms\n\tdpddelay=2s\n\tdpdaction=restart\n" in conf


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        config.load(tmp_path / "absent.toml")


def test_keys_refuse_points_off_the_curve_and_short_rsa():
    off_curve = base64.b64encode(bytes(range(64))).decode()
    with pytest.raises(keys.PinError, match="not a point on secp256r1"):
        keys.parse("0s" + off_curve, "ecdsa")
    short = base64.b64encode(bytes([3, 1, 0, 1]) + b"\xff" * 128).decode()
    with pytest.raises(keys.PinError, match="RSA modulus of 1024 bits"):
        keys.parse(f"rightrsasigkey=0s{short}")


def test_a_pem_key_and_its_libreswan_form_pin_the_same_key():
    assert keys.parse(EC_PUB) == keys.parse(f"rightecdsakey={EC_RAW}") == keys.parse(EC_RAW)


# --- per-network policy ([[networks]], [pins.NAME], default_mode) and [portal] ---------------------------

HOME = "3fd2a33a-d81b-423f-ae99-e6baba742311"
PIN = f'[pins.home]\naddress = "192.0.2.53"\nid = "@dns.example.net"\npubkey = "{EC_RAW}"\n'


def test_networks_pins_and_portal(tmp_path):
    cfg = config.load(write(tmp_path, f'''
default_mode = "coffee-shop"
[resolvers]
discover = ["networkmanager", "systemd-resolved", "resolv.conf"]
[[networks]]
uuid = "{HOME.upper()}"
mode = "trusted"
pin = "home"
[[networks]]
id = "Cafe"
ssid = "cafe-guest"
mode = "coffee-shop"
[portal]
allow_minutes = 5
[nm]
budget_s = 30
{PIN}'''))
    assert cfg.discover == ("networkmanager", "systemd-resolved", "resolv.conf")
    home, cafe = cfg.networks
    assert home.uuid == HOME and home.mode == Mode.TRUSTED and home.pin == "home"
    assert cafe.id == "Cafe" and cafe.ssid == "cafe-guest" and cafe.pin is None
    assert home.matches(HOME.upper(), "whatever", None) and not home.matches("0" * 8 + HOME[8:], None, None)
    assert cafe.matches("x", "Cafe", "cafe-guest") and not cafe.matches("x", "Cafe", "other")
    assert cfg.pin("home").address == config.address("192.0.2.53", "x") and cfg.portal.allow_minutes == 5
    assert cfg.default_mode == Mode.COFFEE_SHOP and cfg.default_pin is None
    assert cfg.nm.budget_s == 30 and config.load(write(tmp_path, "")).nm.budget_s == 10


def test_default_mode_follows_mode_and_can_name_a_pin(tmp_path):
    assert config.load(write(tmp_path, "")).default_mode == Mode.COFFEE_SHOP
    trusted = config.load(write(tmp_path, f'mode = "trusted"\n[trusted]\naddress = "192.0.2.53"\n'
                                          f'id = "@dns.example.net"\npubkey = "{EC_RAW}"\n'))
    assert trusted.default_mode == Mode.TRUSTED and trusted.default_pin is None  # never silently coffee-shop
    pinned = config.load(write(tmp_path, f'default_mode = "trusted"\ndefault_pin = "home"\n{PIN}'))
    assert pinned.default_mode == Mode.TRUSTED and pinned.default_pin == "home" and pinned.mode == Mode.COFFEE_SHOP


@pytest.mark.parametrize(("text", "message"), [
    ('default_mode = "paranoid"', "default_mode = 'paranoid': expected 'coffee-shop' or 'trusted'"),
    ('default_mode = "trusted"', "default_mode = 'trusted' needs default_pin or a \\[trusted\\] table"),
    ('default_pin = "home"\n' + PIN, "default_pin belongs to default_mode = 'trusted'"),
    ('default_mode = "trusted"\ndefault_pin = "work"\n' + PIN, "default_pin = 'work': no such \\[pins.NAME\\]"),
    ('networks = "home"', "networks must be an array of tables"),
    ('[[networks]]\nmode = "trusted"', "networks\\[0\\]: give at least one of 'uuid', 'id' and 'ssid'"),
    ('[[networks]]\nid = "Home"', "networks\\[0\\]: missing 'mode'"),
    ('[[networks]]\nid = "Home"\nmode = "fortress"', "networks\\[0\\].mode = 'fortress'"),
    ('[[networks]]\nid = "Home"\nmode = "trusted"', "networks\\[0\\]: mode = 'trusted' needs pin"),
    ('[[networks]]\nid = "Home"\nmode = "trusted"\npin = "nope"\n' + PIN, "networks\\[0\\].pin = 'nope': no such"),
    ('[[networks]]\nid = "Cafe"\nmode = "coffee-shop"\npin = "home"\n' + PIN, "pin belongs to mode = 'trusted'"),
    ('[[networks]]\nuuid = "not-a-uuid"\nmode = "coffee-shop"', "networks\\[0\\].uuid = 'not-a-uuid': not a "
                                                                 "connection UUID"),
    ('[[networks]]\nid = ""\nmode = "coffee-shop"', "networks\\[0\\].id = '': expected a non-empty string"),
    ('[[networks]]\nid = "Cafe"\nmode = "coffee-shop"\nbssid = "x"', "networks\\[0\\]: unknown key 'bssid'"),
    ('[pins.home]\naddress = "192.0.2.53"\nid = "@x.example"', "\\[pins.home\\]: give exactly one of 'pubkey'"),
    ('[pins."bad name"]\naddress = "192.0.2.53"', "a pin name is letters, digits"),
    ('[pins]\nhome = "192.0.2.53"', "pins.home must be a table"),
    ("[portal]\nallow_minutes = 500", "portal.allow_minutes = 500: expected a whole number from 0 to 120"),
    ('[portal]\nallow = true', "\\[portal\\]: unknown key 'allow'"),
    ("[nm]\nbudget_s = 1", "nm.budget_s = 1: expected a whole number from 2 to 120"),
    ('[nm]\nbudget_s = "10"', "nm.budget_s = '10': expected a whole number"),
    ("[nm]\ntimeout_s = 10", "\\[nm\\]: unknown key 'timeout_s'"),
    ('[resolvers]\ndiscover = ["dhcp"]', "known sources are resolv.conf, networkmanager, systemd-resolved"),
])
def test_bad_network_policy_is_one_clear_error(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as error:
        config.load(write(tmp_path, text))
    assert error.value.exit_code == 2 and "\n" not in str(error.value)
    assert str(tmp_path / "ikectl.toml") in str(error.value)


def test_a_config_that_is_not_text_is_one_clear_error(tmp_path):
    path = tmp_path / "ikectl.toml"
    path.write_bytes(b"\xff\xfe\x00mode")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        config.load(path)


def test_a_config_that_is_not_a_regular_file_is_one_clear_error(tmp_path):
    """/dev/zero or a FIFO as --config hung every command and ate gigabytes of memory."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, said in ((Path("/dev/zero"), "not a regular file"), (fifo, "not a regular file"),
                       (tmp_path, "not a regular file")):
        with pytest.raises(ConfigError, match=said):
            config.load(path)
    huge = tmp_path / "huge.toml"
    huge.write_text("# " + "x" * (1 << 20) + "\n")
    with pytest.raises(ConfigError, match="over 1048576 bytes"):
        config.load(huge)


@pytest.mark.parametrize(("text", "message"), [
    ('[resolvers]\naddresses = ["fe80::1%eth0"]\n', "a scoped address (%IFACE) cannot be a resolver here"),
    ('[resolvers]\naddresses = ["127.0.0.53"]\n', "a loopback address"),
    ('[resolvers]\naddresses = ["::1"]\n', "a loopback address"),
    ('[resolvers]\naddresses = ["fe80::1"]\n', "a link-local address needs its interface"),
    ('[resolvers]\naddresses = ["169.254.1.1"]\n', "a link-local address needs its interface"),
    ('[resolvers]\naddresses = ["::ffff:192.0.2.1"]\n', "give the IPv4 address 192.0.2.1"),
    ('[resolvers]\naddresses = ["255.255.255.255"]\n', "cannot be a resolver"),
    ('[paths]\nrun_dir = "/"\n', "must be an absolute path two levels down at least"),
    ('[paths]\nrun_dir = "/run"\n', "must be an absolute path two levels down at least"),
    ('[paths]\nrun_dir = "/etc/x/.."\n', "without '..'"),  # /etc, two levels down by its parts
    ('[paths]\nrun_dir = "/run/' + "x" * 100 + '"\n', "too long: pluto's control socket"),
])
def test_resolver_and_run_dir_refusals(tmp_path, text, message):
    path = tmp_path / "ikectl.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        config.load(path)


def test_a_resolver_listed_twice_is_listed_once(tmp_path):
    path = tmp_path / "ikectl.toml"
    path.write_text('[resolvers]\naddresses = ["192.0.2.53", "192.0.2.54", "192.0.2.53"]\n')
    assert [str(a) for a in config.load(path).resolvers] == ["192.0.2.53", "192.0.2.54"]
