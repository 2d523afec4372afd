"""What an `ikectl` command loads. Python's start-up is most of what a call costs (NetworkManager's hook pays it
on every event, the netns suite hundreds of times, ten times over under TCG: docs/performance.md), so each
command imports only what it needs: scapy only for `verify`, the attestation verifiers only for `trust`, pyroute2
only to talk to the kernel, jinja2 only to render; and no ikectl command loads enclave_ike at all. Each case runs
in a fresh interpreter and lists the modules it ended with."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from enclave_ike import config as enclave_config
from enclave_ike import evidence_endpoint
from ikecommon import xfrm
from ikecommon.xfrm import client
from ikectl import truststore

HEAVY = ("scapy", "pyroute2", "enclave_ike", "jinja2", "dns", "cryptography", "ikectl.trust", "ikectl.verify",
         "ikectl.wire", "ikecommon.xfrm.client", "ikecommon.attestation", "asyncio")

RUN_CLI = """
import json, sys
from ikectl import cli
try:
    cli.main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)))
"""


def loaded(code: str, *argv: str, env: dict[str, str] | None = None) -> set[str]:
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True,
                          timeout=60, env={**os.environ, **(env or {})}, cwd="/")
    return set(json.loads(proc.stdout.splitlines()[-1]))


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(f"{h}.") for h in HEAVY))


@pytest.fixture
def coffee_shop(tmp_path: Path) -> Path:
    path = tmp_path / "ikectl.toml"
    path.write_text(f'[paths]\nrun_dir = "{tmp_path / "run"}"\n')  # no pinned key, ikectl not up
    return path


@pytest.mark.parametrize("argv", [["--help"], ["no-such-command"], [], ["trust", "add", "--help"],
                                  ["trust", "check", "--help"], ["render", "--mode", "nonsense"]])
def test_help_and_bad_usage_load_no_command_module(argv):
    modules = loaded(RUN_CLI, *argv)
    assert heavy(modules) == []
    assert "ikectl.session" not in modules and "ikectl.status" not in modules


def test_status_when_not_up_loads_nothing_heavy(coffee_shop):
    assert heavy(loaded(RUN_CLI, "--config", str(coffee_shop), "status")) == []


def test_nm_dispatch_of_an_event_left_alone_loads_nothing_heavy(coffee_shop):
    env = {"NM_DISPATCHER_ACTION": "connectivity-change", "CONNECTIVITY_STATE": "FULL"}
    modules = loaded(RUN_CLI, "--config", str(coffee_shop), "nm-dispatch", "", "connectivity-change", "--dry-run",
                     env=env)
    assert "ikectl.nm" in modules and heavy(modules) == []


def test_supervisor_and_session_load_neither_scapy_nor_the_attestation_verifiers():
    modules = loaded("import json, sys, ikectl.supervisor, ikectl.session; print(json.dumps(sorted(sys.modules)))")
    assert heavy(modules) == []


def test_the_xfrm_package_loads_pyroute2_on_first_use():
    code = ("import json, sys; from ikecommon import xfrm; before = 'pyroute2' in sys.modules; xfrm.XfrmClient; "
            "print(json.dumps([before, 'pyroute2' in sys.modules]))")
    assert loaded(code) == {False, True}


def test_the_xfrm_package_exports_every_name_it_lists():
    assert all(getattr(xfrm, name) is not None for name in xfrm.__all__)
    assert xfrm.XfrmClient is client.XfrmClient and set(xfrm.__all__) <= set(dir(xfrm))
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = xfrm.no_such_name


def test_the_cli_knows_the_evidence_port_without_importing_enclave_ike():
    assert truststore.DEFAULT_PORT == enclave_config.DEFAULT_EVIDENCE_PORT == evidence_endpoint.DEFAULT_PORT


def test_trust_loads_the_verifiers_and_the_evidence_client_but_no_enclave_ike_module():
    """The layers point down: ikectl and enclave_ike share ikecommon and never import each other."""
    modules = loaded("import json, sys, ikectl.trust, ikectl.cli; print(json.dumps(sorted(sys.modules)))")
    assert "ikecommon.attestation.verify" in modules and "ikecommon.evidence_client" in modules
    assert sorted(m for m in modules if m.split(".")[0] == "enclave_ike") == []
    server = loaded("import json, sys, enclave_ike.server, enclave_ike.cli; print(json.dumps(sorted(sys.modules)))")
    assert sorted(m for m in server if m.split(".")[0] == "ikectl") == []


def test_trust_check_loads_the_verifiers_but_not_enclave_ike_nor_trust_add(coffee_shop, tmp_path):
    """`trust check` is offline: it reads a file, and loads neither what pins (ikectl.trust) nor enclave_ike."""
    evidence = tmp_path / "report.bin"
    evidence.write_bytes(b"garbage" * 100)
    modules = loaded(RUN_CLI, "--config", str(coffee_shop), "trust", "check", str(evidence))
    assert "ikectl.trustcheck" in modules and "ikecommon.attestation.verify" in modules
    assert sorted(m for m in modules if m.split(".")[0] == "enclave_ike") == []
    assert "ikectl.trust" not in modules and "ikectl.feed" not in modules


def test_the_portal_closer_loads_what_closing_needs_before_it_waits():
    """The closer sleeps until the window's deadline and must put the backstop back at once then: pyroute2 is
    loaded when it starts (an import at the deadline kept clear DNS open seconds longer in the VM)."""
    code = """
import json, sys
from pathlib import Path
from ikectl import portal
portal.close_when_due(Path("/nonexistent/portal.json"), Path("/nonexistent/run"))  # no window: returns
print(json.dumps(sorted(sys.modules)))
"""
    modules = loaded(code)
    assert "pyroute2" in modules and "ikecommon.xfrm.client" in modules


def test_ikectls_own_processes_load_pyroute2_without_its_package_init():
    """`ikectl`, the supervisor and the portal closer load only the pyroute2 modules they use (the package
    __init__ imports every netlink family: 75 of the 100 ms to the XFRM client); a library user of
    ikecommon.xfrm gets pyroute2 as it is."""
    code = """
import json, sys
from ikecommon import lean_pyroute2
lean_pyroute2.use()
from ikecommon.xfrm import client
from ikectl import routes
from pyroute2.iproute import IPRoute
routes.local_addresses()
print(json.dumps(sorted(sys.modules)))
"""
    modules = loaded(code)
    assert "ikecommon.xfrm.client" in modules and "pyroute2.netlink.nlsocket" in modules
    assert not {"pyroute2.ipdb", "pyroute2.ndb", "pyroute2.conntrack", "pyroute2.iwutil"} & modules
    library_user = loaded("import json, sys; from ikecommon.xfrm import client; print(json.dumps(sorted(sys.modules)))")
    assert "pyroute2.ipdb" in library_user


def test_the_ikectl_program_asks_for_the_lean_pyroute2():
    code = """
import json, sys
from ikectl import cli
sys.argv = ["ikectl", "--help"]
try:
    cli.run()  # the console script's entry point
except SystemExit:
    pass
from ikecommon.xfrm import client
print(json.dumps(sorted(sys.modules)))
"""
    modules = loaded(code)
    assert "pyroute2.netlink.nlsocket" in modules and "pyroute2.ipdb" not in modules
