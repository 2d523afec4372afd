"""The Debian packages, built by scripts/package (lintian included), installed into a disposable root on this host,
used, and purged while trusted mode is up (netns_tests/harness/package_root.py does it in a mount namespace of
its own and reports what it saw): the units verify, the man pages render, completion offers the commands, the
NetworkManager hook calls the packaged ikectl, and the purge leaves no file, XFRM policy, nftables table or
process. The same packages carrying DNS over ESP in the VM: netns_tests/test_package_deb.py (a soak test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ikectl import backstop
from netns_tests.harness import packages

pytestmark = pytest.mark.host  # no ESP packet flows: it runs on this host, before the VM's results
PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def facts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    scratch = tmp_path_factory.mktemp("package")
    ikectl_deb, enclave_deb = packages.packages_for_test(scratch)
    out = scratch / "facts.json"
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-m",
                           "netns_tests.harness.package_root", str(out), str(ikectl_deb), str(enclave_deb)],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=1800, check=False)
    assert out.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    found: dict[str, Any] = json.loads(out.read_text())
    assert done.returncode == 0, done.stderr[-3000:]
    assert found["install"]["rc"] == 0, found["install"]
    return found


def test_the_packages_install_their_programs_conffiles_and_hook(facts: dict[str, Any]) -> None:
    assert facts["links"] == {"/usr/bin/ikectl": "/usr/lib/ikectl/bin/ikectl",
                              "/usr/bin/enclave-ike": "/usr/lib/enclave-ike/bin/enclave-ike"}
    assert "/etc/ikectl/ikectl.toml" in facts["conffiles"]
    assert "/etc/enclave-ike/enclave-ike.toml" in facts["conffiles"]
    for hook in facts["hooks"].values():
        assert hook["text"].splitlines()[-1] == \
            'exec /usr/bin/ikectl --config /etc/ikectl/ikectl.toml nm-dispatch "$1" "$2"'
        assert hook["mode"] == "0o755" and hook["uid"] == 0
    assert facts["version"]["rc"] == 0 and facts["version"]["out"].startswith("ikectl ")
    assert facts["interpreter"] == "/usr/bin/python3.11"  # what Depends: python3.11 provides
    assert facts["pythonpath"]["out"] == facts["version"]["out"], facts["pythonpath"]
    assert "config: /etc/ikectl/ikectl.toml is valid" in facts["doctor"]["out"], facts["doctor"]


def test_the_units_verify_the_man_pages_render_and_completion_offers_the_commands(facts: dict[str, Any]) -> None:
    assert facts["verify"]["rc"] == 0 and not facts["verify"]["err"].strip(), facts["verify"]
    for page in ("man", "man_enclave"):
        assert facts[page]["rc"] == 0 and "EXIT STATUS" in facts[page]["out"], facts[page]
    assert {"up", "down", "status", "doctor", "trust", "ipsec", "verify"} <= set(facts["completion"]["out"].split())


def test_enclave_ike_with_the_shipped_config_says_what_to_set(facts: dict[str, Any]) -> None:
    shipped = facts["enclave_shipped_config"]
    assert shipped["rc"] == 2 and "listen" in shipped["err"] and "Traceback" not in shipped["err"], shipped


def test_an_upgrade_keeps_the_protection_and_never_stops_ikectl_service(facts: dict[str, Any]) -> None:
    scripts = facts["maintscripts"]
    assert "stop" not in scripts["ikectl.preinst"] and "stop" not in scripts["enclave-ike.preinst"]
    # The one stop of each unit is the prerm's, on removal; enclave-ike is restarted after an upgrade if it runs.
    assert scripts["ikectl.prerm"].count("deb-systemd-invoke stop") == 1
    assert scripts["enclave-ike.prerm"].count("deb-systemd-invoke stop") == 1
    assert "try-restart" in scripts["enclave-ike.postinst"] and "restart" not in scripts["ikectl.postinst"]
    assert facts["reinstall"]["rc"] == 0, facts["reinstall"]
    up, after = facts["while_up"], facts["after_reinstall"]
    assert after["policies"] == up["policies"] and after["tables"] == up["tables"]
    assert [p.split(":")[0] for p in after["processes"]] == [p.split(":")[0] for p in up["processes"]]


def test_a_purge_while_trusted_mode_is_up_leaves_nothing(facts: dict[str, Any]) -> None:
    assert facts["up"]["rc"] == 0, facts["up"]
    up, after = facts["while_up"], facts["after_purge"]
    assert "192.0.2.53" in up["policies"] and "ikectl" in up["tables"], up  # there was something to remove
    assert any("pluto" in p for p in up["processes"]) and any("supervisor" in p for p in up["processes"]), up
    assert facts["purge"]["rc"] == 0, facts["purge"]
    assert after["policies"].strip() == "" and "ikectl" not in after["tables"], after
    assert after["processes"] == [] and after["left"] == [], after
    assert [f for f in after["usr"] if "ikectl" in f or "enclave" in f or "__pycache__" not in f] == [], after
    assert "installed" not in after["status"].replace("not-installed", ""), after["status"]
    assert backstop.policies()  # the band the purge emptied is the one ikectl installs in
