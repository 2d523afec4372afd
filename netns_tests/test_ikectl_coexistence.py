"""ikectl beside the system's libreswan (docs/coexistence.md): `ikectl ipsec ...` asks ikectl's pluto, which a plain
`ipsec ...` does not reach; `status` and `doctor` name a second pluto of the namespace, started here as the system's
would be but with a run dir of its own, and a conn of it that takes a resolver's DNS before ikectl's policies. Real
pluto, real kernel tables; no ESP packet is needed (host tests)."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ikectl import plan, render
from netns_tests.harness import procs
from netns_tests.harness.pluto import Pluto, PlutoConfig
from netns_tests.lab import Lab
from netns_tests.test_ikectl_trusted import COFFEE, PLAIN, TRUSTED, ikectl
from netns_tests.test_ikectl_trusted import write_config as trusted_config

pytestmark = pytest.mark.host

# What an administrator's ipsec.conf might hold: DNS to one server left in clear, ranked first (priority=1000; pluto
# ranks its own traps by their selectors, a few million for a host and port). pluto 4.10 loads and routes an
# `auto=route` conn of its --config by itself when it starts: the test writes it only once the pluto runs.
BYPASS = f"""conn dns-bypass
\ttype=passthrough
\tauthby=never
\tleft=%defaultroute
\tright={TRUSTED}
\tpriority=1000
\tauto=route
"""


def coffee_config(run_dir: Path, tmp_path: Path) -> Path:
    path = tmp_path / "ikectl.toml"
    path.write_text(f'mode = "coffee-shop"\n[resolvers]\naddresses = ["{COFFEE}", "{PLAIN}"]\n'
                    f'[paths]\nrun_dir = "{run_dir}"\n')
    return path


@pytest.fixture
def system_pluto(world: Lab) -> Iterator[Pluto]:
    """A second pluto in the client's namespace, with a run dir of its own (short, under /run: its socket path must
    fit), its config written without conns, not yet started; stopped and removed when the test ends."""
    workdir = Path(tempfile.mkdtemp(prefix="ikt-sys-", dir="/run"))
    daemon = Pluto(world.topo, world.hosts["client"], workdir)
    procs.attach_log("the system-like pluto", workdir / "pluto.log")
    daemon.write_config(PlutoConfig(conns=""))
    try:
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.parametrize("mode", ["trusted", "coffee-shop"])
def test_ikectl_ipsec_asks_ikectls_pluto_which_plain_ipsec_does_not_reach(world, run_dir, tmp_path, mode):
    config = trusted_config(world, run_dir, tmp_path) if mode == "trusted" else coffee_config(run_dir, tmp_path)
    conns = render.trusted_conns(1) if mode == "trusted" else (plan.OE_CONNS[4],)
    up = ikectl(world, config, "up")
    assert up.returncode == 0, up.stderr

    shown = ikectl(world, config, "ipsec", "status")
    assert shown.returncode == 0, shown.stderr
    assert f"configfile={run_dir}/ipsec.conf" in shown.stdout
    assert all(f'"{conn}"' in shown.stdout for conn in conns), shown.stdout[-3000:]
    plain = world.topo.run(world.hosts["client"], ["ipsec", "status"], check=False)
    assert not any(f'"{conn}"' in plain.stdout for conn in conns)  # the system's socket: no pluto, or another one

    auto = ikectl(world, config, "ipsec", "auto", "--status")  # `auto` takes its socket from IPSEC_RUNDIR alone
    assert auto.returncode == 0 and f'"{conns[0]}"' in auto.stdout, auto.stdout[-2000:] + auto.stderr
    brief = ikectl(world, config, "ipsec", "whack", "--briefstatus")
    assert brief.returncode == 0 and "IKE SAs: total(" in brief.stdout, brief.stderr
    unknown = ikectl(world, config, "ipsec", "frobnicate")  # passed through: libreswan's words and exit code
    assert (unknown.returncode, unknown.stdout) == (1, "") and 'unknown IPsec command "frobnicate"' in unknown.stderr
    refused = ikectl(world, config, "ipsec", "stop")
    assert refused.returncode == 2 and "refused" in refused.stderr

    assert ikectl(world, config, "down").returncode == 0
    gone = ikectl(world, config, "ipsec", "status")
    assert (gone.returncode, gone.stdout) == (1, "")
    assert gone.stderr == (f"ikectl: error: ikectl's pluto is not running (run dir {run_dir}): `ikectl up` starts "
                           "it; a plain `ipsec ...` asks the system's pluto (/run/pluto/pluto.ctl)\n")


def test_status_and_doctor_name_a_second_pluto_and_a_conn_of_it_that_takes_dns_first(world, run_dir, tmp_path,
                                                                                      system_pluto):
    config = trusted_config(world, run_dir, tmp_path)
    assert ikectl(world, config, "up").returncode == 0

    def status() -> tuple[dict[str, Any], str]:
        document, human = ikectl(world, config, "status", "--json"), ikectl(world, config, "status")
        assert document.returncode == human.returncode == 0, document.stderr + human.stderr
        return json.loads(document.stdout), human.stdout

    def doctor_line() -> str:
        shown = ikectl(world, config, "doctor").stdout
        return next(line for line in shown.splitlines() if " system pluto: " in line)

    alone, _ = status()
    assert alone["system_plutos"] == [] and alone["version"] == 1
    assert doctor_line() == "ok    system pluto: no pluto but ikectl's in this network namespace"

    system_pluto.start()  # no conn: it shares the tables, takes nothing of ikectl's
    ctl = str(system_pluto.rundir / "pluto.ctl")
    seen, human = status()
    assert seen["system_plutos"] == [{"pid": system_pluto.pid, "ctlsocket": ctl, "ipsec_default": False}]
    assert f"note: a system pluto runs beside ikectl's (pid {system_pluto.pid}, control socket {ctl})" in human
    assert "(none does now)" in human, human
    line = doctor_line()
    assert line.startswith(f"WARN  system pluto: pid {system_pluto.pid}, control socket {ctl}; it shares"), line

    system_pluto.write_config(PlutoConfig(conns=BYPASS))  # the administrator's conn: DNS to the pinned resolver
    system_pluto.addconn("--autoall")  # in clear, ahead of ikectl's policies
    seen, human = status()
    assert f"note: DNS to {TRUSTED} meets " in human and " priority 1000 allow before ikectl's policies" in human, human
    assert "(1 such policy now)" in human
    line = doctor_line()
    assert line.startswith(f"FAIL  system pluto: pid {system_pluto.pid}, control socket {ctl}; DNS to {TRUSTED} "
                           "meets "), line
    assert "priority 1000 allow" in line and "-> fix: " in line

    ours = ikectl(world, config, "ipsec", "status")  # each pluto answers for its own conns
    assert ours.returncode == 0 and '"ikectl-trusted-udp"' in ours.stdout and "dns-bypass" not in ours.stdout
    assert '"dns-bypass"' in system_pluto.whack("--status")

    system_pluto.stop()
    assert ikectl(world, config, "down").returncode == 0
    after = subprocess.run(["ip", "netns", "exec", world.hosts["client"].netns, "ip", "xfrm", "policy"],
                           capture_output=True, text=True, check=True)
    assert "priority 1000" not in after.stdout  # the other pluto took its own policy with it
