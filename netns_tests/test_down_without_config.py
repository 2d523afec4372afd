"""`ikectl down` with a config that is broken or gone and nothing up: one warning, exit 0, nothing touched (the
Debian package's prerm runs it: a broken config must not make the package impossible to remove). With ikectl up,
the record is what `down` goes by (netns_tests/test_reconcile.py)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from netns_tests.conftest import IKECTL

pytestmark = pytest.mark.host
NETNS = f"ikt-down-{os.getpid()}"


@pytest.fixture
def host() -> Iterator[str]:
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    try:
        yield NETNS
    finally:
        subprocess.run(["ip", "netns", "del", NETNS], check=False)


@pytest.mark.parametrize("config_text", [None, "mode = 42\n", "not toml ["], ids=["missing", "invalid", "garbage"])
def test_down_with_a_broken_config_and_nothing_up_warns_and_succeeds(host: str, tmp_path: Path,
                                                                     config_text: str | None) -> None:
    config = tmp_path / "ikectl.toml"
    if config_text is not None:
        config.write_text(config_text)
    before = subprocess.run(["ip", "netns", "exec", host, "ip", "xfrm", "policy", "list"], capture_output=True,
                            text=True, check=True).stdout
    down = subprocess.run(["ip", "netns", "exec", host, str(IKECTL), "--config", str(config), "down"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert down.returncode == 0, down.stderr
    (line,) = down.stderr.splitlines()
    assert line.startswith("ikectl: warning: ") and str(config) in line and "nothing" in line
    after = subprocess.run(["ip", "netns", "exec", host, "ip", "xfrm", "policy", "list"], capture_output=True,
                           text=True, check=True).stdout
    assert before == after == ""
