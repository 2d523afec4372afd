from ipaddress import ip_address
from pathlib import Path

from netns_tests.harness.unbound import LAB_ZONE, UnboundConfig


def test_config_serves_the_lab_zone_on_given_addresses_only(tmp_path: Path):
    text = UnboundConfig(addresses=[ip_address("10.77.2.53"), ip_address("fd77::53")]).render(tmp_path)
    assert "\tinterface: 10.77.2.53\n" in text and "\tinterface: fd77::53\n" in text
    assert text.count("interface:") == 2
    for record in LAB_ZONE.records:
        assert record.local_data() in text
    # no recursion into a network that is not there, no daemonizing, no chroot
    assert '\tlocal-zone: "." refuse\n' in text
    assert "do-daemonize: no" in text and 'chroot: ""' in text
    assert f'directory: "{tmp_path}"' in text


def test_tcp_can_be_turned_off(tmp_path: Path):
    assert "do-tcp: no" in UnboundConfig(addresses=[ip_address("10.0.0.1")], tcp=False).render(tmp_path)
