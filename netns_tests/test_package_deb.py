"""The Debian packages in a disposable root, as a user gets them: in the VM's guest, /usr gets a RAM overlay (its
/etc and /var are RAM already) and `apt-get install ./ikectl_*.deb ./enclave-ike_*.deb` installs both. Then:

- the units pass `systemd-analyze verify`, `man ikectl` renders, bash completion offers the commands, and the
  NetworkManager hook in /usr/lib calls the packaged ikectl;
- trusted mode against the lab's enclave-ike, configured in the conffile, comes up through exactly what
  ikectl.service's ExecStart runs, its stderr a journal stream as systemd gives it: DNS is answered over ESP with
  0 plaintext port-53 packets, and ikectl's and its supervisor's lines are in the journal under the identifiers
  docs/modes.md names; ExecStop's `down` keeps the run's logs in /var/log/ikectl/last;
- `apt-get purge` while ikectl is up on the host (the client namespace, where dpkg runs) leaves no file, XFRM
  policy, nftables table or process of ikectl's.

The host builds the packages while the VM runs the rest of the suite (netns_tests/harness/packages.py). Under TCG
the run takes about 25 minutes (apt-get install alone 12: dpkg and the byte-code compile, emulated), so it is a soak
test (`scripts/soak package`; docs/soak.md has its latest result); CI installs and purges the same packages on the
host in netns_tests/test_package_install.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ikectl import backstop
from netns_tests.harness import packages, vm
from netns_tests.harness.dnsclient import query
from netns_tests.lab import TRUSTED_ID, Lab

TRUSTED, PLAIN, COFFEE = "10.77.4.53", "10.77.3.53", "10.77.2.53"
OVERLAY_ROOT = Path("/run/ikt-deb-root")


def in_guest() -> bool:
    return os.environ.get("IKECTL_IN_GUEST") == "1"


@pytest.fixture
def disposable_usr() -> Iterator[Path]:
    """A RAM overlay over the guest's /usr (read-only 9p underneath); the upper directories of /usr, /etc and /var,
    to see what an install left behind."""
    if not in_guest():
        pytest.skip("installs packages into the system's /usr: runs only in the VM's disposable guest")
    OVERLAY_ROOT.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "ikt-deb", str(OVERLAY_ROOT)], check=True)
    (OVERLAY_ROOT / "upper").mkdir()
    (OVERLAY_ROOT / "work").mkdir()
    subprocess.run(["mount", "-t", "overlay", "ikt-deb-usr", "-o",
                    f"lowerdir=/usr,upperdir={OVERLAY_ROOT}/upper,workdir={OVERLAY_ROOT}/work", "/usr"], check=True)
    # The new /usr hides what was mounted under the old one: Debian's stdlib, which the guest reads from RAM
    # (netns_tests/harness/vm.py), goes back on top, or every start of the packaged ikectl reads it over 9p.
    staged = Path(f"{vm.GUEST_STAGE_ROOT}{vm.SYSTEM_STDLIB}")
    if staged.is_dir():
        subprocess.run(["mount", "--bind", str(staged), str(vm.SYSTEM_STDLIB)], check=True)
    try:
        yield OVERLAY_ROOT / "upper"
    finally:
        if staged.is_dir():
            subprocess.run(["umount", "-l", str(vm.SYSTEM_STDLIB)], check=False)
        subprocess.run(["umount", "-l", "/usr"], check=False)
        subprocess.run(["umount", "-l", str(OVERLAY_ROOT)], check=False)


@pytest.fixture
def journal() -> Iterator[None]:
    """A journald of the test's own (the guest runs no systemd), with /dev/log where the supervisor sends."""
    started: subprocess.Popen[bytes] | None = None
    made_link = False
    if not Path("/run/systemd/journal/socket").exists():
        Path("/run/systemd/journal").mkdir(parents=True, exist_ok=True)
        started = subprocess.Popen(["/lib/systemd/systemd-journald"], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not Path("/run/systemd/journal/stdout").exists():
            assert started.poll() is None and time.monotonic() < deadline, "systemd-journald did not start"
            time.sleep(0.1)
    if not Path("/dev/log").exists():
        os.symlink("/run/systemd/journal/dev-log", "/dev/log")
        made_link = True
    try:
        yield
    finally:
        if made_link:
            os.unlink("/dev/log")
        if started is not None:
            started.terminate()
            started.wait(timeout=30)


def journal_lines(identifier: str) -> list[tuple[int, str]]:
    done = subprocess.run(["journalctl", "--no-pager", "-o", "json", "-t", identifier], capture_output=True,
                          text=True, check=True, timeout=60)
    entries = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return [(int(e["PRIORITY"]), str(e["MESSAGE"])) for e in entries]


def unit_command(unit: Path, key: str) -> list[str]:
    (line,) = [ln for ln in unit.read_text().splitlines() if ln.startswith(f"{key}=")]
    return shlex.split(line.split("=", 1)[1])


def as_the_unit(world: Lab, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """`argv` in the client namespace with stderr a journal stream, as systemd runs a unit's command
    (SyslogIdentifier=ikectl, level prefixes on, JOURNAL_STREAM naming the stream), and none of the suite's own
    settings (IKECTL_LOG_DIR, IKECTL_ASSUME_ESP...)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IKECTL_")}
    env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
    inner = 'export JOURNAL_STREAM="$(stat -L -c %d:%i /proc/self/fd/2)"; exec "$@"'
    return subprocess.run(["ip", "netns", "exec", world.hosts["client"].netns, "systemd-cat", "-t", "ikectl",
                           "--level-prefix=true", "sh", "-c", inner, "sh", *argv],
                          env=env, capture_output=True, text=True, timeout=300, check=False)


def in_client(world: Lab, argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IKECTL_")}
    env.update(PATH="/usr/sbin:/usr/bin:/sbin:/bin", DEBIAN_FRONTEND="noninteractive")
    return subprocess.run(["ip", "netns", "exec", world.hosts["client"].netns, *argv], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def ikectl_processes() -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "/usr/lib/ikectl" in argv or "/run/ikectl/" in argv or "ikectl.supervisor" in argv:
                found.append(f"{entry.name}: {argv}")
    return found


def files_under(upper: Path) -> list[str]:
    """Files the overlay's upper directory holds: what was written to /usr since it was mounted. Byte code Debian's
    python3 wrote for its own modules while the test ran (the packaged ikectl runs on it) is not the packages'."""
    return sorted(name for p in upper.rglob("*") if not p.is_dir()
                  and ("__pycache__" not in (name := str(p.relative_to(upper))) or re.search("ikectl|enclave", name)))


class Phases:
    """How long each phase took, on the console (under TCG the whole test takes minutes: where they go)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys
        self.last = time.monotonic()

    def done(self, what: str) -> None:
        now = time.monotonic()
        with self.capsys.disabled():
            print(f"\n  package test: {what} in {now - self.last:.1f} s", flush=True)
        self.last = now


@pytest.mark.soak
def test_the_debian_packages_install_protect_dns_over_esp_and_purge_without_a_trace(
        disposable_usr: Path, journal: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    phases = Phases(capsys)
    ikectl_deb, enclave_deb = packages.packages_for_test(tmp_path)
    phases.done("packages ready")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    installed = subprocess.run(["apt-get", "install", "-y", "-q", str(ikectl_deb), str(enclave_deb)], env=env,
                               capture_output=True, text=True, timeout=900, check=False)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    phases.done("apt-get install")

    # What the package put where the docs say.
    assert Path("/usr/bin/ikectl").resolve() == Path("/usr/lib/ikectl/bin/ikectl")
    assert Path("/usr/bin/enclave-ike").resolve() == Path("/usr/lib/enclave-ike/bin/enclave-ike")
    conffiles = subprocess.run(["dpkg-query", "-W", "-f=${Conffiles}", "ikectl"], capture_output=True, text=True,
                               check=True).stdout
    assert "/etc/ikectl/ikectl.toml" in conffiles
    for hook in ("/usr/lib/NetworkManager/dispatcher.d/10-ikectl",
                 "/usr/lib/NetworkManager/dispatcher.d/pre-up.d/10-ikectl"):
        assert Path(hook).read_text().splitlines()[-1].startswith("exec /usr/bin/ikectl --config /etc/ikectl/")
    units = [Path(f"/lib/systemd/system/{name}.service") for name in
             ("ikectl", "enclave-ike", "enclave-ike-forward", "unbound-enclave")]
    # The process enclave's pieces: the forwarder's unit (above) and unbound's config for the enclave, with the guide.
    assert "log-queries: no" in Path("/usr/share/enclave-ike/unbound-enclave.conf").read_text()
    assert Path("/usr/share/doc/enclave-ike/operator-guide.md.gz").exists() or \
        Path("/usr/share/doc/enclave-ike/operator-guide.md").exists()
    verified = subprocess.run(["systemd-analyze", "verify", *map(str, units)], capture_output=True, text=True,
                              timeout=300, check=False)
    assert verified.returncode == 0 and not verified.stderr.strip(), verified.stderr
    page = subprocess.run(["man", "-P", "cat", "ikectl"], capture_output=True, text=True, timeout=120, check=False,
                          env={**env, "MANWIDTH": "100"})
    assert page.returncode == 0 and "ikectl up" in page.stdout and "EXIT STATUS" in page.stdout, page.stderr
    completion = subprocess.run(["bash", "-c", "source /usr/share/bash-completion/completions/ikectl; "
                                 "COMP_WORDS=(ikectl ''); COMP_CWORD=1; COMP_LINE='ikectl '; COMP_POINT=7; "
                                 "$(complete -p ikectl | sed 's/.*-F \\([^ ]*\\) .*/\\1/') ikectl '' ikectl; "
                                 "printf '%s\\n' \"${COMPREPLY[@]}\""], capture_output=True, text=True, check=False)
    assert {"up", "down", "status", "trust", "ipsec"} <= set(completion.stdout.split()), completion.stderr
    phases.done("files, units, man page, completion")

    with Lab(tmp_path / "lab", say=lambda _: None, with_client_pluto=False) as world:
        assert world.trusted_pin is not None
        client = world.hosts["client"]
        Path("/etc/ikectl/ikectl.toml").write_text(
            f'mode = "trusted"\n[trusted]\naddress = "{TRUSTED}"\nid = "{TRUSTED_ID}"\n'
            f'pubkey = "{world.trusted_pin.libreswan}"\n')
        start, stop = units[0], units[0]
        phases.done("the lab")
        up = as_the_unit(world, unit_command(start, "ExecStart"))
        assert up.returncode == 0, up.stdout + up.stderr
        answer = query(world.topo, client, TRUSTED, timeout=30)
        assert answer.answered and answer.records == ("10.77.0.80",)
        status = in_client(world, ["ikectl", "status", "--json"])
        resolvers = {r["address"]: r for r in json.loads(status.stdout)["resolvers"]}
        assert resolvers[TRUSTED]["state"] == "authenticated", status.stdout
        assert resolvers[TRUSTED]["packets_out"] >= 1
        assert world.capture is not None
        time.sleep(0.3)
        world.capture.stop()
        wire = world.capture.count(client.addresses())
        assert wire.peer(TRUSTED).plaintext_dns == 0 and wire.peer(TRUSTED).esp > 0
        assert all(wire.peer(a).plaintext_dns == 0 for a in (PLAIN, COFFEE))
        phases.done("ExecStart, DNS over ESP, status")

        logged = journal_lines("ikectl")
        assert any(m.startswith("ikectl: up in trusted mode") for _, m in logged), logged
        assert all(0 <= p <= 7 for p, _ in logged)
        down = as_the_unit(world, unit_command(stop, "ExecStop"))
        assert down.returncode == 0, down.stdout + down.stderr
        kept = Path("/var/log/ikectl/last/pluto.log")
        assert kept.exists() and "established" in kept.read_text(), sorted(Path("/var/log/ikectl").rglob("*"))
        assert journal_lines("ikectl-supervisor"), "the supervisor's lines did not reach the journal"
        phases.done("journal, ExecStop, kept logs")

        # Up again, then purge from the protected host: the prerm's `ikectl down` takes everything away.
        again = as_the_unit(world, unit_command(start, "ExecStart"))
        assert again.returncode == 0, again.stdout + again.stderr
        assert backstop.installed(client.netns)
        purged = in_client(world, ["apt-get", "purge", "-y", "-q", "ikectl", "enclave-ike"], timeout=900)
        assert purged.returncode == 0, purged.stdout[-3000:] + purged.stderr[-3000:]
        policies = in_client(world, ["ip", "xfrm", "policy", "list"]).stdout
        assert TRUSTED not in policies and not backstop.installed(client.netns), policies
        tables = in_client(world, ["nft", "list", "tables"]).stdout
        assert "ikectl" not in tables, tables
        assert ikectl_processes() == []
        phases.done("up again, apt-get purge")

    assert files_under(disposable_usr) == [], "files left in /usr after the purge"
    for path in ("/etc/ikectl", "/etc/enclave-ike", "/var/lib/ikectl", "/var/log/ikectl", "/run/ikectl",
                 "/run/enclave-ike", "/usr/lib/ikectl", "/usr/lib/enclave-ike"):
        assert not Path(path).exists(), f"{path} is left after the purge"
    listed = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "ikectl"], capture_output=True, text=True,
                            check=False)
    assert "installed" not in listed.stdout.replace("not-installed", ""), listed.stdout
    shutil.rmtree(tmp_path / "packages", ignore_errors=True)
