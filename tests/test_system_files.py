"""The operator pieces in system/ for the confidential resolver: unbound's config for the enclave (its own checker
accepts it; loopback only; nothing about queries logged) and the forwarder's unit (the capabilities it needs and
no more)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

SYSTEM = Path(__file__).resolve().parent.parent / "system"
UNBOUND = SYSTEM / "unbound-enclave.conf"
FORWARD = SYSTEM / "enclave-ike-forward.service"
UNBOUND_UNIT = SYSTEM / "unbound-enclave.service"
DEBIAN = SYSTEM.parent / "debian"


def settings(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        match = re.match(r"\s*([a-z][a-z-]*):\s*(.*)$", line)  # comments start with '#': never matched
        if match:
            found.setdefault(match.group(1), []).append(match.group(2))
    return found


def test_unbounds_own_checker_accepts_the_enclave_config():
    assert shutil.which("unbound-checkconf"), "unbound is missing: scripts/setup installs it"
    proc = subprocess.run(["unbound-checkconf", str(UNBOUND)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_enclave_resolver_listens_on_loopback_only_and_logs_no_query():
    found = settings(UNBOUND.read_text())
    assert found["interface"] == ["127.0.0.1", "::1"]
    assert set(found["access-control"]) == {"127.0.0.0/8 allow", "::1/128 allow", "0.0.0.0/0 refuse", "::/0 refuse"}
    for key in ("log-queries", "log-replies", "log-tag-queryreply", "log-local-actions", "log-servfail",
                "extended-statistics"):
        assert found[key] == ["no"], key
    assert found["verbosity"] == ["0"] and found["control-enable"] == ["no"]


def unit_settings(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def test_the_forwarder_unit_binds_low_ports_and_nothing_more():
    unit = unit_settings(FORWARD)
    assert unit["ExecStart"].split()[:2] == ["/usr/bin/enclave-ike", "forward"]
    assert unit["CapabilityBoundingSet"] == unit["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    assert unit["NoNewPrivileges"] == "yes" and unit["ProtectSystem"] == "strict"
    assert "AF_NETLINK" not in unit["RestrictAddressFamilies"]


def test_the_enclave_resolvers_unit_runs_the_shipped_config_where_the_package_puts_it():
    unit = unit_settings(UNBOUND_UNIT)
    installed = [line.split() for line in (DEBIAN / "enclave-ike.install").read_text().splitlines()]
    target = next(f"/{where.rstrip('/')}/{Path(source).name}" for source, where in installed
                  if source == "system/unbound-enclave.conf")
    assert unit["ExecStart"].split() == ["/usr/sbin/unbound", "-d", "-p", "-c", target]
    assert unit["ExecStartPre"].split() == ["/usr/sbin/unbound-checkconf", target]
    assert unit["Conflicts"] == "unbound.service" and unit["NoNewPrivileges"] == "yes"
    assert "CAP_NET_ADMIN" not in unit["CapabilityBoundingSet"] and "CAP_SYS_ADMIN" not in unit["CapabilityBoundingSet"]
    for name in ("enclave-ike-forward", "unbound-enclave"):  # the package installs both units
        link = DEBIAN / f"enclave-ike.{name}.service"
        assert link.resolve() == (SYSTEM / f"{name}.service").resolve()
        assert f"--name={name}" in (DEBIAN / "rules").read_text()
