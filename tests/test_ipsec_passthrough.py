"""`ikectl ipsec ARGS...` (ikectl/ipsec_passthrough.py) with the OS boundary faked: ikectl's pluto is a sleeping
process with pluto's command line and pid file in a temporary run dir, libreswan's `ipsec` a recorded runner or a
shell script. netns_tests/test_ikectl_coexistence.py runs it against a real pluto."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest

from ikectl import cli, ipsec_passthrough
from ikectl.config import ConfigError
from ikectl.daemon import RunDir
from ikectl.errors import UsageError
from ikectl.whack import WHACK

WRAPPER = "#!/bin/sh\n# libreswan's options, before the command:\n#\t--ctlsocket)\n"


@pytest.fixture
def ipsec(tmp_path: Path) -> Path:
    """An `ipsec` wrapper that takes --ctlsocket, as libreswan 4.10's does: it prints what it was given."""
    path = tmp_path / "ipsec"
    path.write_text(WRAPPER + 'echo "argv: $*"\necho "rundir: $IPSEC_RUNDIR conf: $IPSEC_CONF"\nexit 7\n')
    path.chmod(0o755)
    return path


def run_dir(tmp_path: Path, name: str = "run") -> RunDir:
    return RunDir(tmp_path / name)


def config_file(tmp_path: Path, run: RunDir) -> Path:
    path = tmp_path / f"{run.root.name}.toml"
    path.write_text(f'[paths]\nrun_dir = "{run.root}"\n')
    return path


@pytest.fixture
def fake_pluto(tmp_path: Path) -> Iterator[RunDir]:
    """ikectl's pluto, as ikectl recognises it: a live process of this namespace whose command line names pluto and
    the run dir's pluto dir, its pid in pluto/pluto.pid."""
    run = run_dir(tmp_path)
    run.pluto_dir.mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "pluto", "--rundir",
                             str(run.pluto_dir)])
    # Popen can return while the child is still inside exec, its /proc cmdline empty: the real pluto writes its pid
    # file once it runs, so this one is written once the command line is there.
    deadline = time.monotonic() + 30
    while b"pluto" not in Path(f"/proc/{proc.pid}/cmdline").read_bytes():
        assert time.monotonic() < deadline, "the fake pluto did not start"
        time.sleep(0.001)
    (run.pluto_dir / "pluto.pid").write_text(f"{proc.pid}\n")
    try:
        yield run
    finally:
        proc.kill()
        proc.wait()


class Recorder:
    def __init__(self, code: int = 0) -> None:
        self.calls: list[tuple[list[str], dict[str, str]]] = []
        self.code = code

    def __call__(self, argv: Sequence[str], env: Mapping[str, str]) -> int:
        self.calls.append((list(argv), dict(env)))
        return self.code


# --- the command -------------------------------------------------------------------------------------------

def test_status_asks_ikectls_pluto_through_the_wrapper_with_its_socket(tmp_path, ipsec):
    run = run_dir(tmp_path)
    found = ipsec_passthrough.invocation(["status"], run, ipsec, {"PATH": "/usr/bin"})
    ctl = str(run.pluto_dir / "pluto.ctl")
    assert found.argv == (str(ipsec), "--ctlsocket", ctl, "status")
    assert found.env == {"PATH": "/usr/bin", "IPSEC_RUNDIR": str(run.pluto_dir), "CTLSOCKET": ctl,
                         "IPSEC_CONF": str(run.conf), "IPSEC_NSSDIR": str(run.nss)}


@pytest.mark.parametrize(("args", "expected"), [
    (["whack", "--trafficstatus"], ["whack", "--trafficstatus"]),
    (["frobnicate", "--x"], ["frobnicate", "--x"]),  # unknown: libreswan's words and exit code answer
    (["--rundir", "/elsewhere", "briefstatus"], ["--rundir", "/elsewhere", "briefstatus"]),  # the user's choice
    (["auto", "--add", "c"], ["auto", "--config", "{conf}", "--add", "c"]),
    (["addconn", "--listall"], ["addconn", "--config", "{conf}", "--listall"]),
    (["auto", "--config", "/etc/mine.conf", "--add", "c"], ["auto", "--config", "/etc/mine.conf", "--add", "c"]),
    (["addconn", "--config=/etc/mine.conf", "c"], ["addconn", "--config=/etc/mine.conf", "c"]),
])
def test_arguments_pass_unchanged_but_conn_loaders_get_ikectls_config(tmp_path, ipsec, args, expected):
    run = run_dir(tmp_path)
    found = ipsec_passthrough.invocation(args, run, ipsec, {})
    assert list(found.argv[3:]) == [a.format(conf=run.conf) for a in expected]


@pytest.mark.parametrize("args", [["stop"], ["start"], ["restart"], ["setup", "--stop"], ["pluto", "--nofork"],
                                  ["--ctlsocket", "/x", "stop"]])
def test_what_drives_the_systems_libreswan_is_refused(tmp_path, ipsec, args):
    with pytest.raises(UsageError, match=r"refused: it .*(system's libreswan|another pluto)") as refused:
        ipsec_passthrough.invocation(args, run_dir(tmp_path), ipsec, {})
    assert refused.value.exit_code == 2


def test_a_wrapper_without_a_socket_option_is_bypassed_with_whack(tmp_path):
    old = tmp_path / "ipsec"
    old.write_text("#!/bin/sh\ncase $1 in status) exec whack --status;; esac\n")
    run = run_dir(tmp_path)
    ctl = str(run.pluto_dir / "pluto.ctl")
    for wrapper in (old, None):
        assert ipsec_passthrough.invocation(["status"], run, wrapper, {}).argv == (str(WHACK), "--ctlsocket", ctl,
                                                                                   "--status")
        assert ipsec_passthrough.invocation(["traffic"], run, wrapper, {}).argv[-1] == "--trafficstatus"
        assert ipsec_passthrough.invocation(["whack", "--listen"], run, wrapper, {}).argv == (
            str(WHACK), "--ctlsocket", ctl, "--listen")
    with pytest.raises(UsageError, match="cannot be aimed at another pluto"):
        ipsec_passthrough.invocation(["auto", "--status"], run, old, {})
    with pytest.raises(UsageError, match="ipsec command not found"):
        ipsec_passthrough.invocation(["auto", "--status"], run, None, {})


# --- finding ikectl's pluto ----------------------------------------------------------------------------------

def test_main_runs_libreswan_against_ikectls_pluto_and_returns_its_exit_code(tmp_path, fake_pluto, monkeypatch):
    monkeypatch.setattr(ipsec_passthrough, "IPSEC", tmp_path / "no-such-ipsec")
    monkeypatch.setattr(ipsec_passthrough.shutil, "which", lambda name: str(tmp_path / "ipsec"))
    (tmp_path / "ipsec").write_text(WRAPPER)
    runner = Recorder(code=3)
    said: list[str] = []
    code = ipsec_passthrough.main(["trafficstatus"], config_file(tmp_path, fake_pluto), said.append, runner)
    assert code == 3
    [(argv, env)] = runner.calls
    assert argv == [str(tmp_path / "ipsec"), "--ctlsocket", str(fake_pluto.pluto_dir / "pluto.ctl"), "trafficstatus"]
    assert env["IPSEC_RUNDIR"] == str(fake_pluto.pluto_dir)
    assert said == [f"running {' '.join(argv)}"]


def test_the_real_runner_hands_over_the_terminal_and_the_exit_code(tmp_path, fake_pluto, ipsec, monkeypatch, capfd):
    monkeypatch.setattr(ipsec_passthrough, "IPSEC", ipsec)
    assert cli.main(["--config", str(config_file(tmp_path, fake_pluto)), "ipsec", "status"]) == 7
    out = capfd.readouterr().out.splitlines()
    assert out == [f"argv: --ctlsocket {fake_pluto.pluto_dir / 'pluto.ctl'} status",
                   f"rundir: {fake_pluto.pluto_dir} conf: {fake_pluto.conf}"]


def test_ikectls_pluto_not_running_is_one_line_and_exit_1(tmp_path, ipsec, monkeypatch, capsys):
    monkeypatch.setattr(ipsec_passthrough, "IPSEC", ipsec)
    monkeypatch.setattr(ipsec_passthrough.os, "geteuid", lambda: 0)
    config = config_file(tmp_path, run_dir(tmp_path))
    assert cli.main(["--config", str(config), "ipsec", "status"]) == 1
    assert capsys.readouterr() == ("", f"ikectl: error: ikectl's pluto is not running (run dir {tmp_path / 'run'}): "
                                       "`ikectl up` starts it; a plain `ipsec ...` asks the system's pluto "
                                       "(/run/pluto/pluto.ctl)\n")
    monkeypatch.setattr(ipsec_passthrough.os, "geteuid", lambda: 1000)
    assert cli.main(["--config", str(config), "ipsec", "status"]) == 1
    assert "ikectl ipsec needs root" in capsys.readouterr().err


def test_a_stopped_pluto_is_not_asked(tmp_path, fake_pluto, ipsec, monkeypatch):
    monkeypatch.setattr(ipsec_passthrough, "IPSEC", ipsec)
    pid = int((fake_pluto.pluto_dir / "pluto.pid").read_text())
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while not Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("T"):
        assert time.monotonic() < deadline, "the fake pluto did not stop"
        time.sleep(0.01)
    try:
        with pytest.raises(ipsec_passthrough.NotRunning, match=f"pid {pid}.* is stopped") as stopped:
            ipsec_passthrough.main(["status"], config_file(tmp_path, fake_pluto), runner=Recorder())
        assert stopped.value.exit_code == 1
    finally:
        os.kill(pid, signal.SIGCONT)


def test_the_record_names_the_run_dir_when_the_configs_has_no_pluto_or_the_config_broke(tmp_path, fake_pluto, ipsec,
                                                                                      monkeypatch):
    monkeypatch.setattr(ipsec_passthrough, "IPSEC", ipsec)
    edited = config_file(tmp_path, run_dir(tmp_path, "edited"))  # [paths] run_dir edited while up
    broken = tmp_path / "broken.toml"
    broken.write_text("mode = [\n")
    with pytest.raises(ConfigError):  # no record: a bad config is bad config
        ipsec_passthrough.main(["status"], broken, runner=Recorder())
    monkeypatch.setattr(ipsec_passthrough, "read_here", lambda: SimpleNamespace(run_dir=fake_pluto.root))
    for config in (edited, broken):
        runner = Recorder()
        assert ipsec_passthrough.main(["status"], config, runner=runner) == 0
        assert runner.calls[0][0][2] == str(fake_pluto.pluto_dir / "pluto.ctl")


@pytest.mark.parametrize("args", [["--version"], ["version"], ["--help"], []])
def test_version_and_help_need_no_pluto(tmp_path, ipsec, monkeypatch, args):
    monkeypatch.setattr(ipsec_passthrough, "IPSEC", ipsec)
    runner = Recorder()
    assert ipsec_passthrough.main(args, tmp_path / "absent.toml", runner=runner) == 0
    assert runner.calls == [([str(ipsec), *args], dict(os.environ))]


# --- the command line ----------------------------------------------------------------------------------------

def test_everything_after_ipsec_is_libreswans_and_ikectls_options_go_before():
    args = cli.build_parser().parse_args(["--config", "/etc/x.toml", "-v", "ipsec", "--rundir", "/r", "whack", "-v",
                                          "--config", "y", "--help"])
    assert (args.command, str(args.config), args.verbose) == ("ipsec", "/etc/x.toml", True)
    assert args.ipsec_args == ["--rundir", "/r", "whack", "-v", "--config", "y", "--help"]
    assert cli.build_parser().parse_args(["ipsec"]).ipsec_args == []


def test_the_readme_and_the_cli_docstring_list_the_command():
    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())
    assert "ikectl ipsec" in readme and "docs/coexistence.md" in readme
    assert "ikectl ipsec ARGS" in (cli.__doc__ or "")


def test_ipsec_loads_no_command_module_it_does_not_need(tmp_path):
    code = ("import json, sys\nfrom ikectl import cli\ntry:\n    cli.main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print(json.dumps(sorted(sys.modules)))")
    config = config_file(tmp_path, run_dir(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code, "--config", str(config), "ipsec", "status"], capture_output=True,
                          text=True, check=True, timeout=60, cwd="/")
    modules = set(json.loads(proc.stdout.splitlines()[-1]))
    assert "ikectl.ipsec_passthrough" in modules
    assert not {"pyroute2", "scapy", "jinja2", "ikectl.session", "ikectl.status", "ikectl.trust",
                "ikecommon.xfrm.client"} & modules


@pytest.mark.parametrize("args", [["stop"], ["start"], ["pluto"]])
def test_what_drives_the_systems_libreswan_is_refused_even_with_ikectls_pluto_down(tmp_path, ipsec, monkeypatch,
                                                                                 capsys, args):
    monkeypatch.setattr(ipsec_passthrough, "IPSEC", ipsec)
    config = config_file(tmp_path, run_dir(tmp_path))  # no pluto runs there
    assert cli.main(["--config", str(config), "ipsec", *args]) == 2
    assert "refused" in capsys.readouterr().err
