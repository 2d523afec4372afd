"""A pluto that is not ikectl's (ikectl/system_pluto.py), and what status and doctor say of it, with the OS boundary
faked: a process table and pid files in a temporary directory, the kernel's policies as a list."""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path
from typing import Any, ClassVar

import pytest

from ikecommon import xfrm
from ikecommon.xfrm import Action, Direction, Policy, Selector, Template
from ikectl import backstop, cli, doctor, status, system_pluto
from ikectl.config import Config
from ikectl.daemon import MARKER
from ikectl.state import netns_id

R = ip_address("192.0.2.53")
SYSTEM_CTL = "/run/pluto/pluto.ctl"


class Proc:
    """A fake /proc: this process's network namespace and processes, each with its cmdline, comm, state and
    namespace (a namespace is a file; two processes share one when their ns/net links name the same file)."""

    def __init__(self, root: Path) -> None:
        self.root = root / "proc"
        self.namespaces = root / "namespaces"
        self.namespaces.mkdir(parents=True)
        self._link("self", "here")

    def _link(self, pid: str, netns: str) -> None:
        (self.namespaces / netns).touch()
        (self.root / pid / "ns").mkdir(parents=True, exist_ok=True)
        (self.root / pid / "ns" / "net").symlink_to(self.namespaces / netns)

    def add(self, pid: int, *argv: str, comm: str | None = None, state: str = "S", netns: str = "here") -> int:
        self._link(str(pid), netns)
        (self.root / str(pid) / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in argv))
        name = comm if comm is not None else Path(argv[0]).name[:15]
        (self.root / str(pid) / "comm").write_text(f"{name}\n")
        (self.root / str(pid) / "stat").write_text(f"{pid} ({name}) {state} 1 {pid} {pid} 0 -1\n")
        return pid


@pytest.fixture
def proc(tmp_path: Path) -> Proc:
    return Proc(tmp_path)


PLUTO = "/usr/libexec/ipsec/pluto"


def find(proc: Proc, ours: list[Path] | None = None, pid_files: tuple[Path, ...] = ()) -> list[system_pluto.OtherPluto]:
    return system_pluto.find(ours or [], proc=proc.root, pid_files=pid_files)


def test_the_systems_pluto_is_found_with_the_socket_plain_ipsec_asks(proc):
    proc.add(812, PLUTO, "--leak-detective", "--config", "/etc/ipsec.conf", "--nofork")  # Debian's ipsec.service
    proc.add(900, "/bin/bash")
    assert find(proc) == [system_pluto.OtherPluto(812, SYSTEM_CTL, ipsec_default=True)]
    assert find(proc)[0].describe() == f"pid 812, control socket {SYSTEM_CTL}: the one plain `ipsec` commands ask"


def test_a_pluto_with_its_own_rundir_is_found_with_its_socket(proc, tmp_path):
    proc.add(77, PLUTO, "--rundir", "/srv/vpn/run", "--nofork")
    proc.add(78, PLUTO, "--rundir=/srv/other")
    assert find(proc) == [system_pluto.OtherPluto(77, "/srv/vpn/run/pluto.ctl", ipsec_default=False),
                          system_pluto.OtherPluto(78, "/srv/other/pluto.ctl", ipsec_default=False)]


def test_ikectls_own_plutos_are_not_counted(proc, tmp_path):
    given = tmp_path / "run"  # the config's or the record's run dir
    marked = tmp_path / "old-run"  # another run dir ikectl marked as this namespace's (edited while up)
    marked.mkdir()
    (marked / MARKER).write_text(f"netns {netns_id()}: a run dir of ikectl's own\n")
    foreign = tmp_path / "theirs"  # marked by the ikectl of another namespace: not ours here
    foreign.mkdir()
    (foreign / MARKER).write_text(f"netns {netns_id() + 1}: a run dir of ikectl's own\n")
    proc.add(10, PLUTO, "--config", f"{given}/ipsec.conf", "--rundir", f"{given}/pluto")
    proc.add(11, PLUTO, "--rundir", f"{marked}/pluto")
    proc.add(12, PLUTO, "--rundir", f"{foreign}/pluto")
    assert [p.pid for p in find(proc, ours=[given])] == [12]
    assert [p.pid for p in find(proc)] == [10, 12]  # the given run dir is what makes 10 ikectl's


def test_plutos_of_other_namespaces_and_dead_ones_are_not_counted(proc):
    proc.add(20, PLUTO, netns="another")  # shares neither XFRM tables nor IKE ports with ikectl's
    proc.add(21, PLUTO, state="Z")  # a zombie
    assert find(proc) == []


def test_a_pid_file_names_a_pluto_whose_command_line_does_not_say_so(proc, tmp_path):
    pid_file = tmp_path / "run-pluto" / "pluto.pid"
    pid_file.parent.mkdir()
    proc.add(30, "/usr/bin/valgrind", "--quiet", PLUTO, "--nofork", comm="memcheck-amd64-")
    pid_file.write_text("30\n")
    assert find(proc, pid_files=(pid_file,)) == [
        system_pluto.OtherPluto(30, str(pid_file.parent / "pluto.ctl"), ipsec_default=False)]
    assert find(proc) == []  # the process table alone does not take valgrind for a pluto


@pytest.mark.parametrize("content", ["31\n", "999\n", "not a pid\n", ""])
def test_a_stale_pid_file_names_nothing(proc, tmp_path, content):
    pid_file = tmp_path / "pluto.pid"
    pid_file.write_text(content)
    proc.add(31, "/usr/sbin/sshd", "-D")  # the pid was reused
    assert find(proc, pid_files=(pid_file, tmp_path / "absent.pid")) == []


def test_the_real_process_table_answers(tmp_path):
    """No fake: whatever runs here, the call answers (a list), and names no process that is not a pluto."""
    assert all(isinstance(p, system_pluto.OtherPluto) for p in system_pluto.find([tmp_path]))


# --- conflicts -----------------------------------------------------------------------------------------------

def policy(dst: str, proto: int = 17, dport: int | None = 53, priority: int = 3457217, src: str = "10.0.0.1/32",
           direction: Direction = Direction.OUT, templates: tuple[Template, ...] = (Template(),),
           action: Action = Action.ALLOW) -> Policy:
    return Policy(Selector.of(src, dst, proto, dport=dport), direction, priority, action, templates)


IKECTL_TRAPS = [policy(f"{R}/32", 17), policy(f"{R}/32", 6)]  # ikectl's pluto's, for R's DNS


def test_a_policy_that_ranks_before_ikectls_for_the_resolvers_dns_is_a_conflict():
    passthrough = policy(f"{R}/32", 0, None, priority=1000, templates=())  # a system conn with priority=1000
    table = [*IKECTL_TRAPS, *backstop.policies(), passthrough]
    found = system_pluto.conflicts(table, [R])
    assert [(c.resolver, c.policy) for c in found] == [(R, passthrough)]  # once, for udp and tcp alike
    assert found[0].describe() == (f"DNS to {R} meets src 10.0.0.1/32 dst {R}/32 proto any dir out priority 1000 "
                                   "allow before ikectl's policies")


def test_broader_policies_that_rank_after_ikectls_are_no_conflict():
    opportunistic = policy("0.0.0.0/0", 0, None, priority=3850497)  # the system's private-or-clear
    elsewhere = policy("198.51.100.0/24", 0, None, priority=10)
    not_dns = policy(f"{R}/32", 6, 443, priority=10)
    inbound = policy("10.0.0.1/32", 0, None, priority=10, src=f"{R}/32", direction=Direction.IN)
    table = [*IKECTL_TRAPS, opportunistic, elsewhere, not_dns, inbound, *backstop.policies()]
    assert system_pluto.conflicts(table, [R]) == []


def test_with_nothing_of_ikectls_pluto_any_policy_for_the_resolvers_dns_beats_the_backstop():
    """ikectl down, or trusted mode's other resolvers: only the backstop's band is ikectl's, and every pluto policy
    outranks it."""
    opportunistic = policy("0.0.0.0/0", 0, None, priority=3850497)
    udp_only = [policy(f"{R}/32", 17)]  # ikectl's udp trap; nothing of its own for tcp
    assert [c.policy for c in system_pluto.conflicts([opportunistic, *backstop.policies()], [R])] == [opportunistic]
    assert [c.policy for c in system_pluto.conflicts([*udp_only, opportunistic], [R])] == [opportunistic]


# --- what status and doctor say ------------------------------------------------------------------------------

OTHER = system_pluto.OtherPluto(812, SYSTEM_CTL, ipsec_default=True)


def test_status_json_adds_system_plutos_and_keeps_every_field():
    down = status.Status(up=False).to_json()
    assert down["system_plutos"] == () and down["version"] == 1
    assert set(down) == {"version", "up", "mode", "pluto_pid", "resolvers", "portal", "protection", "notes",
                         "system_plutos"}
    up = status.Status(up=True, mode="trusted", pluto_pid=42, system_plutos=(OTHER,)).to_json()
    assert up["system_plutos"] == ({"pid": 812, "ctlsocket": SYSTEM_CTL, "ipsec_default": True},)


def test_status_notes_say_what_a_system_pluto_means_and_name_a_conflict(tmp_path):
    record: Any = type("Record", (), {"resolvers": (R,)})()
    assert status._system_notes([], [], record) == []
    calm = status._system_notes([OTHER], list(IKECTL_TRAPS), record)
    assert len(calm) == 1
    assert calm[0].startswith("a system pluto runs beside ikectl's (pid 812, control socket /run/pluto/pluto.ctl")
    assert "share this network namespace's XFRM tables" in calm[0] and "own priority band" in calm[0]
    assert "(none does now)" in calm[0] and "`ikectl ipsec status`" in calm[0]
    passthrough = policy(f"{R}/32", 0, None, priority=1000, templates=())
    tense = status._system_notes([OTHER], [*IKECTL_TRAPS, passthrough], record)
    assert "(1 such policy now)" in tense[0]
    assert tense[1].startswith(f"DNS to {R} meets src 10.0.0.1/32 dst {R}/32 proto any dir out priority 1000")
    shown = status.format_human(status.Status(up=True, mode="trusted", pluto_pid=42, notes=tuple(tense)))
    assert "note: a system pluto runs beside ikectl's" in shown


class FakeXfrm:
    table: ClassVar[list[Policy]] = []

    def __enter__(self) -> FakeXfrm:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def policies(self) -> list[Policy]:
        return self.table


@pytest.fixture
def as_root(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(doctor.os, "geteuid", lambda: 0)
    monkeypatch.setattr(doctor, "read_here", lambda: None)
    monkeypatch.setattr(xfrm, "XfrmClient", FakeXfrm)
    yield
    FakeXfrm.table = []


def test_doctor_warns_of_a_system_pluto_and_fails_only_on_a_conflict(monkeypatch, as_root, tmp_path):
    config = Config(run_dir=tmp_path / "run", resolvers=(R,))
    monkeypatch.setattr(system_pluto, "find", lambda ours, **_: [])
    assert doctor._system_pluto(config) == doctor.Check("system pluto", True,
                                                        "no pluto but ikectl's in this network namespace")
    seen: list[list[Path]] = []
    monkeypatch.setattr(system_pluto, "find", lambda ours, **_: seen.append(list(ours)) or [OTHER])
    FakeXfrm.table = [policy("198.51.100.0/24", 0, None, priority=10, templates=())]  # nothing for R: a warning
    warned = doctor._system_pluto(config)
    assert seen == [[tmp_path / "run"]]
    assert warned.ok and warned.warning and "pid 812" in warned.detail
    line = doctor.format_checks([warned])
    assert line.startswith("WARN  system pluto: pid 812, control socket /run/pluto/pluto.ctl")
    assert "-> `ipsec status` asks it" in line
    FakeXfrm.table = [policy(f"{R}/32", 0, None, priority=1000, templates=())]  # ikectl is down: any policy for R
    failed = doctor._system_pluto(config)
    assert not failed.ok and f"DNS to {R} meets" in failed.detail
    assert doctor.format_checks([failed]).startswith("FAIL  system pluto: ")


def test_a_warning_does_not_fail_doctor(monkeypatch, tmp_path, capsys):
    checks = [doctor.Check("a", True, "fine"), doctor.Check("b", True, "beware", "do this", warning=True)]
    monkeypatch.setattr(doctor, "run_checks", lambda config: checks)
    config = tmp_path / "ikectl.toml"
    config.write_text(f'[paths]\nrun_dir = "{tmp_path / "run"}"\n')
    assert cli.main(["--config", str(config), "doctor"]) == 0
    assert "WARN  b: beware  -> do this" in capsys.readouterr().out
    checks.append(doctor.Check("c", False, "broken", "fix it"))
    assert cli.main(["--config", str(config), "doctor"]) == 1
