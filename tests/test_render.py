"""`ikectl render`: golden trees for each mode, accepted by libreswan's own parser; bad input writes nothing.

Regenerate the golden files after an intended change with IKECTL_UPDATE_GOLDEN=1 (and read the diff)."""

import os
import re
from ipaddress import ip_address
from pathlib import Path

import pytest

from ikecommon import keys
from ikectl import cli, render
from ikectl.config import Mode, TrustedResolver

GOLDEN = Path(__file__).parent / "golden"
EC_KEY = keys.load(GOLDEN / "keys" / "ecdsa-p256.pub")
RSA_KEY = keys.load(GOLDEN / "keys" / "rsa3072.pub")

PROFILES = {
    "coffee-shop": render.Profile(Mode.COFFEE_SHOP,
                                  opportunistic=(ip_address("192.0.2.53"), ip_address("2001:db8::53")),
                                  sources={4: ip_address("192.0.2.7"), 6: ip_address("2001:db8::7")}),
    "trusted-ecdsa": render.Profile(Mode.TRUSTED,
                                    trusted=TrustedResolver(ip_address("192.0.2.53"), "@dns.example.net", EC_KEY)),
    "trusted-rsa-ipv6": render.Profile(Mode.TRUSTED, trusted=TrustedResolver(
        ip_address("2001:db8::53"), "@dns6.example.net", RSA_KEY)),
    "trusted-short-lifetimes": render.Profile(Mode.TRUSTED, sa_lifetime_s=60, trusted=TrustedResolver(
        ip_address("192.0.2.53"), "@dns.example.net", EC_KEY)),
    "trusted-encapsulated": render.Profile(Mode.TRUSTED, encapsulation=True, trusted=TrustedResolver(
        ip_address("192.0.2.53"), "@dns.example.net", EC_KEY)),
    # One service at several addresses: a conn pair per address, the first with the names one address has.
    "trusted-several-addresses": render.Profile(Mode.TRUSTED, trusted=TrustedResolver(
        ip_address("192.0.2.53"), "@dns.example.net", EC_KEY,
        also=(ip_address("198.51.100.53"), ip_address("2001:db8::53")))),
}


def compare_with_golden(name: str, files: dict[str, str]) -> None:
    root = GOLDEN / name
    if os.environ.get("IKECTL_UPDATE_GOLDEN"):
        render.write_tree(files, root)
    on_disk = {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}
    assert on_disk == files


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_tree_matches_golden_and_libreswan_accepts_it(name: str, tmp_path: Path):
    files = render.render_tree(PROFILES[name])
    compare_with_golden(name, files)
    render.write_tree(files, tmp_path)
    render.check_tree(tmp_path)


def test_every_opportunistic_conn_has_its_group_file():
    """pluto reads an OE group from the policies file named after the conn; a mismatch loads no group and
    DNS goes out in clear without any IKE attempt (the lab caught exactly that)."""
    files = render.render_tree(PROFILES["coffee-shop"])
    conns = re.findall(r"^conn (\S+)\n(?:\t.*\n)*?\tright=%opportunisticgroup$", files["ipsec.conf"], re.M)
    assert conns == ["private-or-clear", "private-or-clear6"]
    for conn in conns:
        assert " udp 0 53" in files[f"ipsec.d/policies/{conn}"]


def test_responder_conns_match_golden_and_libreswan_accepts_them(tmp_path: Path):
    for name, text in (("responder-null", render.render_responder("dns", ip_address("192.0.2.53"))),
                       ("responder-ecdsa", render.render_responder("dns", ip_address("192.0.2.53"),
                                                                   "@dns.example.net", EC_KEY))):
        compare_with_golden(name, {"ipsec.conf": "config setup\n\n" + text})
        (tmp_path / "ipsec.conf").write_text("config setup\n\n" + text)
        render.check_tree(tmp_path)


def test_no_conn_repeats_a_key_of_the_conn_it_includes():
    """libreswan refuses to load a conn that sets a key its also= base already set ("duplicate key"), yet
    addconn --checkconfig passes and addconn NAME exits 0: the first `up` worked, the second did not."""
    for name, profile in PROFILES.items():
        text = render.render_tree(profile)["ipsec.conf"]
        sections = dict(re.findall(r"^conn (\S+)\n((?:\t.*\n)*)", text, re.M))
        for conn, body in sections.items():
            base = re.search(r"^\talso=(\S+)$", body, re.M)
            if base:
                mine = set(re.findall(r"^\t([\w-]+)=", body, re.M)) - {"also"}
                theirs = set(re.findall(r"^\t([\w-]+)=", sections[base.group(1)], re.M))
                assert not mine & theirs, (name, conn, mine & theirs)


def test_libreswan_refusal_is_reported_with_its_words(tmp_path: Path):
    (tmp_path / "ipsec.conf").write_text("conn x\n\tleftauthby=null\n")
    with pytest.raises(render.RenderError, match="leftauthby"):
        render.check_tree(tmp_path)


def test_cli_renders_each_mode(tmp_path: Path, capsys):
    key = GOLDEN / "keys" / "ecdsa-p256.pub"
    assert cli.main(["render", "--mode", "trusted", "--resolver", "192.0.2.53", "--resolver-id", "@dns.example.net",
                     "--resolver-pubkey", str(key), "--output", str(tmp_path / "t")]) == 0
    assert (tmp_path / "t" / "ipsec.conf").read_text() == render.render_tree(PROFILES["trusted-ecdsa"])["ipsec.conf"]
    assert cli.main(["render", "--mode", "coffee-shop", "--resolver", "192.0.2.53", "--resolver", "2001:db8::53",
                     "--source", "192.0.2.7", "--source", "2001:db8::7", "--output", str(tmp_path / "c")]) == 0
    assert sorted(p.name for p in (tmp_path / "c" / "ipsec.d" / "policies").iterdir()) == sorted(render.POLICY_GROUPS)
    assert (tmp_path / "c" / "ipsec.conf").read_text() == render.render_tree(PROFILES["coffee-shop"])["ipsec.conf"]
    assert capsys.readouterr().err == ""


def test_an_ipv6_resolver_gets_a_group_of_its_own_from_the_address_this_host_sends_from():
    """libreswan 4.10: a group conn is of one address family, and %defaultroute resolves towards the default
    gateway, for IPv6 usually link-local: no trap for an IPv6 line in the IPv4 group (errno 22, measured), and no
    usable left in an IPv6 one. Each family gets its group and files; IPv6 needs the address."""
    files = render.render_tree(PROFILES["coffee-shop"])
    assert re.search(r"^conn private-or-clear\n\tleft=192\.0\.2\.7$", files["ipsec.conf"], re.M)
    assert re.search(r"^conn private-or-clear6\n\tleft=2001:db8::7$", files["ipsec.conf"], re.M)
    assert files["ipsec.d/policies/private-or-clear"] == "192.0.2.53/32 udp 0 53\n192.0.2.53/32 tcp 0 53\n"
    assert files["ipsec.d/policies/private-or-clear6"] == "2001:db8::53/128 udp 0 53\n2001:db8::53/128 tcp 0 53\n"
    with pytest.raises(render.RenderError, match="no IPv6 address to reach 2001:db8::53"):
        render.render_tree(render.Profile(Mode.COFFEE_SHOP, opportunistic=(ip_address("2001:db8::53"),)))


def test_a_family_whose_resolvers_are_all_out_for_now_keeps_its_conn_with_an_empty_group():
    """Excluded resolvers come back when their exclusion ends, by their group file alone: their family's conn
    must be loaded (found by the walk: a readmitted IPv4 resolver had no conn to come back to)."""
    only_v6 = render.Profile(Mode.COFFEE_SHOP, opportunistic=(ip_address("2001:db8::53"),),
                             sources={4: ip_address("192.0.2.7"), 6: ip_address("2001:db8::7")})
    files = render.render_tree(only_v6)
    assert re.search(r"^conn private-or-clear\n\tleft=192\.0\.2\.7$", files["ipsec.conf"], re.M)
    assert files["ipsec.d/policies/private-or-clear"] == ""


def test_every_resolver_out_for_now_keeps_both_group_conns():
    """The walk (seed 422190952): a second `up` while every resolver was excluded rendered no conn at all, and
    failed loading one (`add conn private-or-clear: pluto says: conn 'private-or-clear': not found`)."""
    none_in = render.Profile(Mode.COFFEE_SHOP, sources={4: ip_address("192.0.2.7"), 6: ip_address("2001:db8::7")})
    files = render.render_tree(none_in)
    assert re.search(r"^conn private-or-clear\n\tleft=192\.0\.2\.7$", files["ipsec.conf"], re.M)
    assert re.search(r"^conn private-or-clear6\n\tleft=2001:db8::7$", files["ipsec.conf"], re.M)
    assert "shuntlifetime=" in files["ipsec.conf"]
    assert files["ipsec.d/policies/private-or-clear"] == files["ipsec.d/policies/private-or-clear6"] == ""


@pytest.mark.parametrize(("args", "message"), [
    (["--mode", "trusted", "--resolver", "192.0.2.53"], "needs exactly one --resolver, with --resolver-id"),
    (["--mode", "coffee-shop", "--resolver", "192.0.2.300"], "--resolver 192.0.2.300: '192.0.2.300' is not an IP"),
    (["--mode", "coffee-shop", "--resolver", "192.0.2.53", "--resolver-id", "@x.example"], "belong to --mode trusted"),
    (["--mode", "trusted", "--resolver", "192.0.2.53", "--resolver-id", "@x.example", "--resolver-pubkey",
      "/no/such/key"], "cannot read the resolver's public key"),
    (["--mode", "trusted", "--resolver", "192.0.2.53", "--resolver-id", "x y", "--resolver-pubkey",
      str(GOLDEN / "keys" / "ecdsa-p256.pub")], "'x y' is not an IKE ID"),
])
def test_cli_bad_input_is_exit_2_one_line_and_writes_nothing(tmp_path: Path, capsys, args, message):
    out = tmp_path / "out"
    assert cli.main(["render", *args, "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ikectl: error: ")
    assert message in err
    assert not out.exists()


def test_cli_unknown_mode_is_a_usage_error(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["render", "--mode", "paranoid", "--resolver", "192.0.2.53", "--output", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    assert "invalid choice: 'paranoid'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_the_trusted_conns_named_are_the_conns_rendered():
    profile = PROFILES["trusted-several-addresses"]
    assert profile.trusted is not None
    conf = render.render_tree(profile)["ipsec.conf"]
    rendered = re.findall(r"^conn (ikectl-trusted-\S+)$", conf, re.MULTILINE)
    assert tuple(rendered) == render.trusted_conns(3) == (
        "ikectl-trusted-udp", "ikectl-trusted-tcp", "ikectl-trusted-2-udp", "ikectl-trusted-2-tcp",
        "ikectl-trusted-3-udp", "ikectl-trusted-3-tcp")
    assert all(render.is_trusted_conn(name) for name in rendered)
    others = ("ikectl-trusted", "private-or-clear", "ikectl-trusted-x-udp")
    assert not any(render.is_trusted_conn(name) for name in others)
