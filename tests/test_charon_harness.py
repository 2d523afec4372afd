"""The pieces of the strongSwan interop harness that need no root and no charon: reading `swanctl --list-sas --raw`,
the unpacked tree's stamp, and the environment that runs charon from the cache."""

from pathlib import Path

import pytest

from buildtools import strongswan
from netns_tests.harness.charon import CHARON_PLUGINS, USERSPACE_IPSEC, HarnessError, _before, parse_raw

# `swanctl --list-sas --raw` as charon 5.9.8 printed it in netns_tests/test_enclave_ike_charon.py (one line each).
LIST_SAS = (
    "list-sa event {dns {uniqueid=1 version=2 state=ESTABLISHED local-host=10.84.1.2 local-port=4500 "
    "local-id=client.charon.example remote-host=10.84.2.53 remote-port=4500 remote-id=resolver.enclave.example "
    "initiator=yes initiator-spi=a98753bb51a079d9 responder-spi=0d3fc39a7f847a42 nat-fake=yes nat-any=yes "
    "encr-alg=AES_CBC encr-keysize=256 integ-alg=HMAC_SHA2_256_128 prf-alg=PRF_HMAC_SHA2_256 dh-group=CURVE_25519 "
    "established=0 rekey-time=13111 child-sas {dns-1 {name=dns uniqueid=1 reqid=1 state=INSTALLED mode=TUNNEL "
    "protocol=ESP encap=yes spi-in=5f0e6592 spi-out=afb5a2cb encr-alg=AES_GCM_16 encr-keysize=256 bytes-in=0 "
    "packets-in=0 bytes-out=0 packets-out=0 rekey-time=3269 life-time=3960 install-time=0 "
    "local-ts=[10.84.1.2/32[udp]] remote-ts=[10.84.2.53/32[udp/domain]]}}}}\n"
    "list-sas reply {}\n"
)


def test_parse_raw_reads_sections_lists_and_values() -> None:
    event, reply = parse_raw(LIST_SAS)
    sa = event["dns"]
    assert sa["state"] == "ESTABLISHED" and sa["remote-id"] == "resolver.enclave.example"
    assert sa["initiator-spi"] == "a98753bb51a079d9"
    child = sa["child-sas"]["dns-1"]
    assert child["state"] == "INSTALLED" and child["spi-in"] == "5f0e6592"
    assert child["local-ts"] == ["10.84.1.2/32[udp]"] and child["remote-ts"] == ["10.84.2.53/32[udp/domain]"]
    assert reply == {}


def test_parse_raw_splits_lists_outside_inner_brackets() -> None:
    (message,) = parse_raw("x {ts=[10.0.0.1/32[udp/53] 10.0.0.0/8 fd00::/8[tcp]] empty=[] v=}")
    assert message == {"ts": ["10.0.0.1/32[udp/53]", "10.0.0.0/8", "fd00::/8[tcp]"], "empty": [], "v": ""}


@pytest.mark.parametrize("broken", ["x {a=1", "x {a {b=2}", "x {ts=[1 2", "x {=1}"])
def test_parse_raw_refuses_truncated_output(broken: str) -> None:
    with pytest.raises(HarnessError, match="cannot parse swanctl --raw output"):
        parse_raw(broken)


def test_userspace_ipsec_goes_before_kernel_netlink() -> None:
    plugins = _before(USERSPACE_IPSEC, "kernel-netlink", CHARON_PLUGINS)
    assert plugins.index(USERSPACE_IPSEC) + 1 == plugins.index("kernel-netlink")
    assert USERSPACE_IPSEC not in CHARON_PLUGINS and "vici" in CHARON_PLUGINS


def test_installed_wants_a_complete_stamp(tmp_path: Path) -> None:
    assert strongswan.installed(tmp_path) is None
    tree_dir = tmp_path / "5.9.8-5+deb12u6"
    (tree_dir / "root").mkdir(parents=True)
    (tree_dir / strongswan.STAMP).write_text("libstrongswan=5.9.8-5+deb12u6\n")  # an older package list
    assert strongswan.installed(tmp_path) is None
    (tree_dir / strongswan.STAMP).write_text("".join(f"{p}=5.9.8-5+deb12u6\n" for p in strongswan.PACKAGES))
    tree = strongswan.installed(tmp_path)
    assert tree is not None and tree.root == tree_dir / "root"
    assert tree.missing() == [tree.charon, tree.swanctl]


def test_env_runs_the_unpacked_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LD_PRELOAD", "/elsewhere/libfoo.so")
    tree = strongswan.Tree(tmp_path / "root")
    env = tree.env(tmp_path / "strongswan.conf", ("openssl", "vici"), {"SWANCTL_DIR": "/d"})
    assert env["STRONGSWAN_CONF"] == str(tmp_path / "strongswan.conf")
    assert env["LD_LIBRARY_PATH"] == str(tmp_path / "root/usr/lib/ipsec")
    assert env["LD_PRELOAD"].split(":") == [str(tmp_path / "root/usr/lib/ipsec/plugins/libstrongswan-openssl.so"),
                                            str(tmp_path / "root/usr/lib/ipsec/plugins/libstrongswan-vici.so")]
    assert env["SWANCTL_DIR"] == "/d"
