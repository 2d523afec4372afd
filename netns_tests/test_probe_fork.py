"""A trusted `up` whose ESP probe runs (no IKECTL_ASSUME_ESP), again and again: pyroute2's forked helpers for the
probe's namespace end by SIGTERM, and none of them may run ikectl's fail-closed code in that namespace (it wrote the
run dir's marker from there and left a run dir every later `up` refused as "not ikectl's": ikectl/signals.py). On
this host the probe says no ESP, so each `up` fails closed, as docs/modes.md says, and the next one starts clean."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from ikecommon import keys
from netns_tests.conftest import IKECTL

pytestmark = pytest.mark.host
NETNS = f"ikt-probe-{os.getpid()}"


@pytest.fixture
def host() -> Iterator[str]:
    steps = ["ip link set lo up", "ip link add p0 type veth peer name p1", "ip link set p0 up", "ip link set p1 up",
             "ip addr add 10.97.0.2/24 dev p0", "ip addr add 10.97.0.1/24 dev p1",
             "ip route add default via 10.97.0.1"]
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    try:
        for step in steps:
            subprocess.run(["ip", "netns", "exec", NETNS, *step.split()], check=True)
        yield NETNS
    finally:
        subprocess.run(["ip", "netns", "del", NETNS], check=False)


def test_trusted_ups_that_probe_for_esp_leave_no_run_dir_a_later_up_refuses(host: str, tmp_path: Path) -> None:
    run_dir = Path(tempfile.mkdtemp(prefix="ikt-probe-", dir="/run"))
    pin = keys.from_public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
    config = tmp_path / "ikectl.toml"
    config.write_text(f'mode = "trusted"\n[trusted]\naddress = "192.0.2.53"\nid = "@resolver.test"\n'
                      f'pubkey = "{pin.libreswan}"\n[paths]\nrun_dir = "{run_dir}"\n')
    env = {k: v for k, v in os.environ.items() if k != "IKECTL_ASSUME_ESP"}
    try:
        for attempt in range(6):
            up = subprocess.run(["ip", "netns", "exec", host, str(IKECTL), "--config", str(config), "up"], env=env,
                                capture_output=True, text=True, timeout=120, check=False)
            assert "cannot install ESP SAs" in up.stderr, f"attempt {attempt}: {up.stderr}"
            # What the forked helpers' fail-closed runs left: a marker naming the probe's namespace (then every later
            # `up` refuses the run dir), or a wait for a guard table no supervisor was started to take.
            assert "not ikectl's" not in up.stderr and "guard table" not in up.stderr, f"attempt {attempt}: {up.stderr}"
    finally:
        subprocess.run(["ip", "netns", "exec", host, str(IKECTL), "--config", str(config), "down"], env=env,
                       capture_output=True, timeout=120, check=False)
        shutil.rmtree(run_dir, ignore_errors=True)
