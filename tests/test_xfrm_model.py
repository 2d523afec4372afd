"""Bad input to the XFRM layer is refused when the object is made, with a message naming the input."""

from ipaddress import ip_address

import pytest

from ikecommon.xfrm import (
    OWNED_PRIORITY_MIN,
    Action,
    Direction,
    InvalidXfrmInput,
    Lifetime,
    Mode,
    Policy,
    SaSpec,
    Selector,
    Template,
    algorithm,
    client,
)
from ikectl.errors import UsageError


@pytest.mark.parametrize(("args", "message"), [
    (("10.0.0.1/33", "10.0.0.2/32"), "invalid source prefix '10.0.0.1/33'"),
    (("10.0.0.1/24", "10.0.0.2/32"), "has host bits set"),
    (("10.0.0.1/32", "not-an-address"), "invalid destination prefix 'not-an-address'"),
    (("10.0.0.1/32", "fd00::1/128"), "mixes IPv4"),
])
def test_bad_prefixes(args, message):
    with pytest.raises(InvalidXfrmInput, match=message):
        Selector.of(*args)


def test_bad_ports_and_protocols():
    with pytest.raises(InvalidXfrmInput, match="invalid destination port 70000"):
        Selector.of("10.0.0.1/32", "10.0.0.2/32", "udp", dport=70000)
    with pytest.raises(InvalidXfrmInput, match="needs a protocol with ports"):
        Selector.of("10.0.0.1/32", "10.0.0.2/32", "any", dport=53)
    with pytest.raises(InvalidXfrmInput, match="unknown protocol 'udpp'"):
        Selector.of("10.0.0.1/32", "10.0.0.2/32", "udpp")
    with pytest.raises(InvalidXfrmInput, match="invalid protocol number 300"):
        Selector.of("10.0.0.1/32", "10.0.0.2/32", 300)


def test_bad_templates_and_policies():
    with pytest.raises(InvalidXfrmInput, match="tunnel-mode template needs both"):
        Template(Mode.TUNNEL)
    with pytest.raises(InvalidXfrmInput, match="only ESP"):
        Template(proto=51)
    sel = Selector.of("10.0.0.1/32", "10.0.0.2/32", "udp", dport=53)
    held = Policy(sel, Direction.OUT, 1, Action.BLOCK, templates=(Template(),))  # the kernel may hold one
    with pytest.raises(InvalidXfrmInput, match="block policy takes no templates"):
        client._addable(held)  # but ikectl never adds one
    with pytest.raises(InvalidXfrmInput, match="priority"):
        Policy(sel, Direction.OUT, -1)


def test_bad_algorithms_and_keys():
    with pytest.raises(InvalidXfrmInput, match="unknown algorithm 'aes-gcm-17'"):
        algorithm("aes-gcm-17", bytes(20))
    with pytest.raises(InvalidXfrmInput, match="aes-gcm-16 takes a key of 20 or 28 or 36 bytes, not 16"):
        algorithm("aes-gcm-16", bytes(16))
    src, dst = ip_address("10.0.0.1"), ip_address("10.0.0.2")
    with pytest.raises(InvalidXfrmInput, match="one AEAD algorithm or crypt \\+ auth"):
        SaSpec(src, dst, 0x1000, (algorithm("aes-cbc", bytes(16)),))
    with pytest.raises(InvalidXfrmInput, match="invalid SPI"):
        SaSpec(src, dst, 0x10, (algorithm("aes-gcm-16", bytes(20)),))


def test_bad_input_is_a_usage_error_with_exit_code_2():
    with pytest.raises(UsageError) as error:
        Selector.of("10.0.0.1/32", "10.0.0.2/32", "udp", dport=-1)
    assert error.value.exit_code == 2


def test_ownership_is_the_priority_band():
    sel = Selector.of("10.0.0.1/32", "10.0.0.2/32")
    assert Policy(sel, Direction.OUT, OWNED_PRIORITY_MIN).owned
    assert not Policy(sel, Direction.OUT, 1360065).owned  # a pluto trap's priority


def test_bad_lifetimes():
    with pytest.raises(InvalidXfrmInput, match="soft lifetime 5 s is after the hard one 2 s"):
        Lifetime(soft_seconds=5, hard_seconds=2)
    with pytest.raises(InvalidXfrmInput, match="negative"):
        Lifetime(soft_packets=-1)
