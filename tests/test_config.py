"""ikectl.toml: valid files become typed config; every bad one is one ConfigError (exit 2) naming the key."""

import base64
from pathlib import Path

import pytest

from ikectl import config, keys
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
])
def test_bad_config_is_one_clear_error(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as error:
        config.load(write(tmp_path, text))
    assert error.value.exit_code == 2
    assert "\n" not in str(error.value)
    assert str(tmp_path / "ikectl.toml") in str(error.value) or "/no/such.pub" in str(error.value)


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
