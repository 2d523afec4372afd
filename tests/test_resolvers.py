from ipaddress import ip_address

from ikectl import resolvers
from ikectl.config import Config


def test_resolv_conf_nameservers_without_loopback_stubs():
    text = """# generated
nameserver 127.0.0.53
nameserver 192.0.2.53  # the ISP's
nameserver fe80::1%eth0
nameserver 192.0.2.53
nameserver not-an-ip
search example.net
options edns0
"""
    assert resolvers.from_resolv_conf(text) == (ip_address("192.0.2.53"), ip_address("fe80::1"))


def test_explicit_resolvers_win_over_discovery(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 198.51.100.1\n")
    assert resolvers.discover(Config(), conf) == (ip_address("198.51.100.1"),)
    assert resolvers.discover(Config(resolvers=(ip_address("192.0.2.1"),)), conf) == (ip_address("192.0.2.1"),)
    assert resolvers.discover(Config(), tmp_path / "missing") == ()
