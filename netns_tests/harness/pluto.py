"""A libreswan pluto per namespace, with its own NSS db, run dir, ipsec.d and log.

The daemon is driven with the `whack` and `addconn` programs (never its control socket, whose
binary format depends on the build). The log is kept so a failing test can show it.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ikectl.daemon import PLUTO, init_nss
from ikectl.whack import ADDCONN, LIBEXEC, WHACK

from .procs import Daemon, HarnessError, wait_until
from .topology import Host, Topology

NEWHOSTKEY, SHOWHOSTKEY = LIBEXEC / "newhostkey", LIBEXEC / "showhostkey"
UNIX_PATH_MAX = 108  # sun_path, with its terminating NUL


@dataclass(frozen=True)
class PlutoConfig:
    """What one pluto is given: conn sections, secrets, and opportunistic policy groups.

    `conns` is the text of the conn sections (a `config setup` section is written around it);
    `policies` maps a group name (private-or-clear, clear, ...) to the lines of its policies file.
    """

    conns: str
    secrets: str = ""
    policies: Mapping[str, Sequence[str]] = field(default_factory=dict)
    setup_options: Mapping[str, str] = field(default_factory=dict)


class Pluto(Daemon):
    def __init__(self, topo: Topology, host: Host, workdir: Path) -> None:
        self.topo, self.host, self.dir = topo, host, workdir
        self.nss, self.rundir, self.ipsecd = workdir / "nss", workdir / "run", workdir / "ipsec.d"
        self.conf, self.secrets = workdir / "ipsec.conf", workdir / "ipsec.secrets"
        ctl = self.rundir / "pluto.ctl"
        if len(str(ctl)) >= UNIX_PATH_MAX:
            raise HarnessError(f"pluto's control socket path is too long for a unix socket ({len(str(ctl))} >= "
                               f"{UNIX_PATH_MAX} bytes): {ctl}; use a shorter work dir")
        argv = [str(PLUTO), "--nofork", "--config", str(self.conf), "--rundir", str(self.rundir),
                "--nssdir", str(self.nss), "--secretsfile", str(self.secrets), "--ipsecdir", str(self.ipsecd),
                "--stderrlog"]
        super().__init__(f"pluto@{host.name}", argv, workdir / "pluto.log", netns=host.netns)

    # --- set-up, before start ---

    def init_nss(self) -> None:
        """Create this pluto's own NSS db (idempotent)."""
        for d in (self.rundir, self.ipsecd / "policies"):
            d.mkdir(parents=True, exist_ok=True)
        init_nss(self.nss)

    def new_hostkey(self, keytype: str = "ecdsa") -> str:
        """Generate a raw host key in this pluto's NSS db; returns its CKAID."""
        self.init_nss()
        out = _run([str(NEWHOSTKEY), "--nssdir", str(self.nss), "--keytype", keytype])
        match = re.search(r"CKAID ([0-9a-f]{40})", out)
        if match is None:
            raise HarnessError(f"newhostkey printed no CKAID: {out.strip()}")
        return match.group(1)

    def show_hostkey(self, ckaid: str, side: str = "left") -> str:
        """The `leftecdsakey=0s...`-style line that pins this key on the given side of a conn."""
        out = _run([str(SHOWHOSTKEY), "--nssdir", str(self.nss), f"--{side}", "--ckaid", ckaid])
        for line in out.splitlines():
            if re.match(rf"{side}\w+key=0s", line.strip()):
                return line.strip()
        raise HarnessError(f"showhostkey printed no {side} key line: {out.strip()}")

    def write_config(self, config: PlutoConfig) -> None:
        self.init_nss()
        setup = {"logtime": "yes", "logappend": "no", "plutodebug": "none", **config.setup_options}
        setup_text = "".join(f"\t{k}={v}\n" for k, v in setup.items())
        self.conf.write_text(f"config setup\n{setup_text}\n{config.conns}\n")
        self.secrets.write_text(config.secrets)
        policies = self.ipsecd / "policies"
        for group in ("private-or-clear", "private", "clear", "clear-or-private", "block"):
            lines = config.policies.get(group, ())
            (policies / group).write_text("".join(f"{line}\n" for line in lines))

    # --- running ---

    def start(self) -> None:
        if not self.conf.exists():
            raise HarnessError(f"{self.name}: write_config() before start()")
        super().start()
        # The control socket exists before the interfaces are up: wait for pluto to say it listens.
        self.wait_for_log(r"listening for IKE messages", timeout=30.0)
        ctl = self.rundir / "pluto.ctl"
        wait_until(lambda: ctl.exists() or not self.running(), 10.0, f"{self.name}'s control socket")

    def whack(self, *args: str, check: bool = True) -> str:
        return self._control([str(WHACK), "--rundir", str(self.rundir), *args], check)

    def addconn(self, *args: str, check: bool = True) -> str:
        """`addconn --autoall` loads every conn and routes or starts it as its `auto=` says."""
        return self._control([str(ADDCONN), "--config", str(self.conf), "--ctlsocket",
                              str(self.rundir / "pluto.ctl"), *args], check)

    def _control(self, argv: list[str], check: bool) -> str:
        proc = self.topo.run(self.host, argv, check=False)
        out = proc.stdout + proc.stderr
        if check and proc.returncode != 0:
            raise HarnessError(f"{' '.join(argv[:1] + argv[3:])} failed in {self.host.name} "
                               f"({proc.returncode}): {out.strip()}")
        return out


def _run(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    if proc.returncode != 0:
        raise HarnessError(f"{' '.join(argv)} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout + proc.stderr
