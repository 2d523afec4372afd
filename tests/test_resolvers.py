from ipaddress import ip_address

import pytest

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


# --- NetworkManager's dispatcher environment, systemd-resolved, and merging ------------------------------

def ips(*text):
    return tuple(ip_address(t) for t in text)


def test_dispatcher_env_in_order_without_duplicates_or_stubs():
    env = {"IP4_NAMESERVERS": "198.51.100.1 127.0.0.53", "IP6_NAMESERVERS": "2001:db8::53",
           "DHCP4_DOMAIN_NAME_SERVERS": "198.51.100.1 198.51.100.2", "DHCP6_DHCP6_NAME_SERVERS": "2001:db8::54",
           "VPN_IP4_NAMESERVERS": "10.8.0.53", "IP4_DOMAINS": "example.net"}
    assert resolvers.from_dispatcher_env(env) == ips("198.51.100.1", "2001:db8::53", "198.51.100.2",
                                                     "2001:db8::54", "10.8.0.53")
    assert resolvers.from_dispatcher_env({}) == ()


def test_a_malformed_dispatcher_variable_is_an_error_not_a_guess():
    with pytest.raises(resolvers.MalformedNameservers, match="IP6_NAMESERVERS='2001:db8::zz'"):
        resolvers.from_dispatcher_env({"IP6_NAMESERVERS": "2001:db8::zz"})


RESOLVECTL_DNS = """Global:
Link 2 (wlan0): 198.51.100.1 2001:db8::53%wlan0 1.1.1.1#cloudflare-dns.com
Link 3 (eth0): 203.0.113.53 [2001:db8::1]:853
Link 4 (docker0):
"""


def test_resolvectl_dns_per_link():
    assert resolvers.from_resolvectl_dns(RESOLVECTL_DNS) == ips("198.51.100.1", "2001:db8::53", "1.1.1.1",
                                                                "203.0.113.53", "2001:db8::1")
    assert resolvers.from_resolvectl_dns(RESOLVECTL_DNS, link="eth0") == ips("203.0.113.53", "2001:db8::1")
    assert resolvers.from_resolvectl_dns("Global: 127.0.0.1\nnonsense\n") == ()


def test_systemd_resolved_reads_its_upstream_file_never_the_stub(tmp_path):
    upstream = tmp_path / "resolv.conf"
    upstream.write_text("# This is /run/systemd/resolve/resolv.conf\nnameserver 198.51.100.1\n"
                        "nameserver 2001:db8::53\nsearch example.net\n")
    assert resolvers.from_systemd_resolved(upstream, lambda: "Global: 203.0.113.1\n") == ips("198.51.100.1",
                                                                                           "2001:db8::53")
    # without the file, resolvectl's per-link DNS; without either, nothing
    assert resolvers.from_systemd_resolved(tmp_path / "absent", lambda: RESOLVECTL_DNS)[0] == ip_address(
        "198.51.100.1")
    assert resolvers.from_systemd_resolved(tmp_path / "absent", lambda: None) == ()


def test_discovery_merges_the_configured_sources_in_order(tmp_path):
    etc = tmp_path / "etc-resolv.conf"
    etc.write_text("nameserver 127.0.0.53\n")  # the usual stub-resolv.conf: nothing usable
    resolved = tmp_path / "resolved.conf"
    resolved.write_text("nameserver 203.0.113.53\nnameserver 198.51.100.1\n")
    nm_conf = tmp_path / "nm-resolv.conf"
    nm_conf.write_text("nameserver 198.51.100.7\n")
    env = {"IP4_NAMESERVERS": "198.51.100.1"}
    config = Config(discover=("resolv.conf", "networkmanager", "systemd-resolved"))

    def found(cfg, dispatcher_env=None):
        return resolvers.discover(cfg, etc, dispatcher_env=dispatcher_env, nm_resolv_conf=nm_conf,
                                  resolved_conf=resolved, resolvectl=lambda: None)

    assert found(config, env) == ips("198.51.100.1", "203.0.113.53")
    assert found(config) == ips("198.51.100.7", "203.0.113.53", "198.51.100.1")  # outside a dispatcher call
    assert found(Config(discover=("systemd-resolved", "networkmanager")), env) == ips("203.0.113.53",
                                                                                       "198.51.100.1")
    assert found(Config(discover=("resolv.conf",)), env) == ()
