"""Logs that outlive a run and reach journald: a removed run dir's logs kept in log_dir/last and previous
(ikectl/runlogs.py, daemon.retire, every step of execute.py that removes a run dir), the sd-daemon priority prefix on
stderr when it is journald's stream (ikectl/logline.py and the command line), and the supervisor's lines sent to a
syslog socket (ikectl/journal.py). docs/modes.md, Where logs go."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ikectl import cli, config, daemon, execute, journal, logline, plan, runlogs, session, supervisor
from ikectl.errors import IkectlError
from ikectl.state import StateStore

# --- keeping a run's logs -------------------------------------------------------------------------------------


def run_with_logs(root: Path, **logs: str) -> daemon.RunDir:
    run = daemon.RunDir(root)
    run.prepare()
    for name, text in logs.items():
        (root / name.replace("_1", ".1").replace("_", ".")).write_text(text)
    return run


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_logs_go_to_last_and_the_run_before_to_previous(tmp_path):
    log_dir = tmp_path / "var" / "ikectl"
    for n in (1, 2, 3):
        run = run_with_logs(tmp_path / f"run{n}", pluto_log=f"pluto of run {n}\n", pluto_log_1=f"older {n}\n",
                            supervisor_log=f"supervisor of run {n}\n")
        retired = daemon.retire(run, log_dir)
        assert retired == daemon.Retired(gone=True, kept=log_dir / "last") and not run.root.exists()
    assert sorted(p.name for p in log_dir.iterdir()) == ["last", "previous"]  # two runs, no staging left behind
    assert (log_dir / "last" / "pluto.log").read_text() == "pluto of run 3\n"
    assert (log_dir / "last" / "pluto.log.1").read_text() == "older 3\n"
    assert (log_dir / "last" / "supervisor.log").read_text() == "supervisor of run 3\n"
    assert (log_dir / "previous" / "pluto.log").read_text() == "pluto of run 2\n"
    assert mode(log_dir) == mode(log_dir / "last") == mode(log_dir / "previous") == 0o750
    assert {mode(p) for p in (*(log_dir / "last").iterdir(), *(log_dir / "previous").iterdir())} == {0o640}
    owner = os.geteuid()
    assert {p.stat().st_uid for p in (log_dir / "last").iterdir()} == {owner}  # root's, when `down` runs as root


def test_a_run_without_logs_leaves_log_dir_alone(tmp_path):
    log_dir = tmp_path / "logs"
    (log_dir / "last").mkdir(parents=True)
    (log_dir / "last" / "pluto.log").write_text("the run before\n")
    run = run_with_logs(tmp_path / "run", supervisor_log="")  # an empty log is no log
    assert daemon.retire(run, log_dir) == daemon.Retired(gone=True)
    assert (log_dir / "last" / "pluto.log").read_text() == "the run before\n"
    assert not (log_dir / "previous").exists()
    assert runlogs.keep([tmp_path / "absent.log"], tmp_path / "never") is None
    assert not (tmp_path / "never").exists()


def test_each_file_is_capped_to_its_last_lines(tmp_path):
    line = b"0123456789abcdef pluto says something\n"
    big = line * 1000  # 39 kB
    (tmp_path / "pluto.log").write_bytes(big)
    (tmp_path / "supervisor.log").write_bytes(line * 3)
    cap = 4096
    last = runlogs.keep([tmp_path / "pluto.log", tmp_path / "supervisor.log"], tmp_path / "logs", keep_bytes=cap)
    assert last == tmp_path / "logs" / "last"
    kept = (last / "pluto.log").read_bytes()
    head, _, body = kept.partition(b"\n")
    assert head.startswith(b"[ikectl kept the last ") and head.endswith(f" of {len(big)}]".encode())
    assert len(body) <= cap and big.endswith(body) and body.startswith(line)  # whole lines, the last ones
    assert (last / "supervisor.log").read_bytes() == line * 3  # under the cap: as it was
    assert runlogs.KEEP_BYTES == 1 << 20


def test_a_log_that_is_a_symlink_is_not_followed(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("not a log\n")
    run = run_with_logs(tmp_path / "run", pluto_log="pluto\n")
    run.supervisor_log.symlink_to(secret)
    assert daemon.retire(run, tmp_path / "logs").kept == tmp_path / "logs" / "last"
    assert sorted(p.name for p in (tmp_path / "logs" / "last").iterdir()) == ["pluto.log"]


def test_logs_that_cannot_be_kept_cost_a_warning_and_the_run_dir_goes_all_the_same(tmp_path):
    (tmp_path / "file").write_text("a file where log_dir's parent should be")
    run = run_with_logs(tmp_path / "run", pluto_log="pluto\n")
    retired = daemon.retire(run, tmp_path / "file" / "logs")
    assert retired.gone and retired.kept is None and not run.root.exists()
    assert retired.warning is not None and retired.warning.startswith(f"the logs of {run.root} could not be kept in ")


def test_a_run_dir_that_is_not_ikectls_is_neither_kept_nor_removed(tmp_path):
    users = tmp_path / "mine"
    users.mkdir()
    (users / "pluto.log").write_text("the user's\n")
    assert daemon.retire(daemon.RunDir(users), tmp_path / "logs") == daemon.Retired(gone=False)
    assert (users / "pluto.log").exists() and not (tmp_path / "logs").exists()


@pytest.fixture
def execution(tmp_path: Path) -> Iterator[tuple[execute.Execution, list[str], list[str]]]:
    warned: list[str] = []
    told: list[str] = []
    with contextlib.ExitStack() as stack:
        yield (execute.Execution(daemon.RunDir(tmp_path / "run"), StateStore.here(), None, lambda _: None, stack,
                                 log_dir=tmp_path / "logs", warn=warned.append, tell=told.append), warned, told)


def test_down_keeps_the_logs_and_says_where(tmp_path, execution):
    ex, warned, told = execution
    run_with_logs(tmp_path / "run", pluto_log="pluto of this run\n")
    execute.run([plan.Forget((tmp_path / "run",))], ex)
    assert not (tmp_path / "run").exists() and warned == []
    assert told == [f"logs of {tmp_path / 'run'} kept in {tmp_path / 'logs' / 'last'}"]
    assert (tmp_path / "logs" / "last" / "pluto.log").read_text() == "pluto of this run\n"


def test_down_with_an_unwritable_log_dir_warns_once_and_goes_on(tmp_path, execution):
    ex, warned, told = execution
    (tmp_path / "logs").write_text("a file, not a directory")
    others = tmp_path / "other-run"
    run_with_logs(tmp_path / "run", pluto_log="pluto\n")
    run_with_logs(others)
    execute.run([plan.Forget((tmp_path / "run", others))], ex)
    assert not (tmp_path / "run").exists() and not others.exists()  # both removed all the same
    assert len(warned) == 1 and "could not be kept" in warned[0] and told == []


def test_a_run_dir_the_config_no_longer_names_keeps_its_logs(tmp_path, execution):
    ex, warned, told = execution
    said: list[str] = []
    ex.say = said.append
    old = run_with_logs(tmp_path / "old-run", pluto_log="pluto of the old run dir\n")
    execute.run([plan.StopRun(old.root, "the config's run_dir changed", remove_dir=True)], ex)
    assert not old.root.exists() and warned == told == []  # a successful `up`: said with -v only
    assert said == [f"logs of {old.root} kept in {tmp_path / 'logs' / 'last'}"]


def test_a_failed_up_that_made_the_run_dir_keeps_its_logs_and_says_where(tmp_path):
    told: list[str] = []
    with contextlib.ExitStack() as stack:
        ex = execute.Execution(daemon.RunDir(tmp_path / "run"), StateStore.here(), None, lambda _: None, stack,
                               files={"ipsec.conf": "config setup\n"}, log_dir=tmp_path / "logs", tell=told.append)
        execute.run([plan.WriteTree()], ex)
        (tmp_path / "run" / "pluto.log").write_text("why it failed\n")
    assert not (tmp_path / "run").exists()  # the stack unwound: the run dir it made is gone, its logs kept
    assert told == [f"logs of {tmp_path / 'run'} kept in {tmp_path / 'logs' / 'last'}"]
    assert (tmp_path / "logs" / "last" / "pluto.log").read_text() == "why it failed\n"


def test_nothing_removes_a_run_dir_but_retire():
    """Every place that removed a run dir goes through daemon.retire (which keeps the logs first)."""
    root = Path(daemon.__file__).parent
    callers = sorted(path.name for path in root.glob("*.py") if ".remove()" in path.read_text().replace(
        "store.remove()", "").replace("backstop.remove()", "").replace("nft.remove()", ""))
    assert callers == ["daemon.py"]
    assert "run.remove()" in Path(daemon.__file__).read_text().split("def retire")[1]


# --- the config -------------------------------------------------------------------------------------------------

def test_log_dir_defaults_to_var_log_ikectl_or_the_environment(monkeypatch):
    monkeypatch.delenv("IKECTL_LOG_DIR", raising=False)
    assert config.from_mapping({}, "f").log_dir == Path("/var/log/ikectl") == config.Config().log_dir
    assert config.from_mapping({"paths": {"log_dir": "/srv/logs/ikectl"}}, "f").log_dir == Path("/srv/logs/ikectl")
    monkeypatch.setenv("IKECTL_LOG_DIR", "/tmp/scratch/ikectl")
    assert config.from_mapping({}, "f").log_dir == Path("/tmp/scratch/ikectl") == config.default_log_dir()
    monkeypatch.setenv("IKECTL_LOG_DIR", "relative")
    with pytest.raises(config.ConfigError, match="IKECTL_LOG_DIR = 'relative': must be an absolute path"):
        config.default_log_dir()


@pytest.mark.parametrize(("paths", "message"), [
    ({"log_dir": "logs"}, "paths.log_dir = 'logs': must be an absolute path two levels down at least"),
    ({"log_dir": "/var"}, "two levels down at least"),
    ({"log_dir": "/var/log/../x"}, "without '..'"),
    ({"log_dir": "/run/ikectl"}, "must be apart from paths.run_dir"),
    ({"log_dir": "/run/ikectl/logs"}, "must be apart from paths.run_dir"),
    ({"log_dir": "/srv/ikectl", "run_dir": "/srv/ikectl/run"}, "must be apart from paths.run_dir"),
    ({"log_dirs": "/var/log/ikectl"}, "unknown key 'log_dirs'"),
])
def test_log_dir_refusals(paths, message):
    with pytest.raises(config.ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        config.from_mapping({"paths": paths}, "f")


# --- the priority prefix on stderr --------------------------------------------------------------------------

@pytest.fixture
def pipe() -> Iterator[tuple[Any, Any]]:
    r, w = os.pipe()
    with os.fdopen(r, "r") as reader, os.fdopen(w, "w") as writer:
        yield reader, writer


def stream_id(stream: Any) -> str:
    found = os.fstat(stream.fileno())
    return f"{found.st_dev}:{found.st_ino}"


def written(reader: Any, writer: Any) -> list[str]:
    writer.close()
    return reader.read().splitlines()


def test_lines_carry_their_priority_only_when_the_stream_is_journalds(pipe, monkeypatch):
    reader, writer = pipe
    monkeypatch.setenv("JOURNAL_STREAM", stream_id(writer))
    assert logline.to_journal(writer)
    logline.write("ikectl: warning: a\nsecond line", logline.WARNING, writer)
    logline.write("ikectl: error: b", logline.ERROR, writer)
    logline.write("ikectl: c", logline.INFO, writer)
    with os.fdopen(os.pipe()[1], "w") as other:
        monkeypatch.setenv("JOURNAL_STREAM", stream_id(other))  # another stream's: a terminal, a file, a pipe
        logline.write("ikectl: warning: d", logline.WARNING, writer)
    for value in ("", "garbage", "1:"):
        monkeypatch.setenv("JOURNAL_STREAM", value)
        logline.write("ikectl: e", logline.INFO, writer)
    monkeypatch.delenv("JOURNAL_STREAM")
    logline.write("ikectl: f", logline.INFO, writer)
    assert written(reader, writer) == ["<4>ikectl: warning: a", "<4>second line", "<3>ikectl: error: b",
                                       "<6>ikectl: c", "ikectl: warning: d", "ikectl: e", "ikectl: e", "ikectl: e",
                                       "ikectl: f"]


def journal_stderr(pipe: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """sys.stderr is the journal's stream, as under ikectl.service. Called by the test itself: pytest's capture puts
    its own sys.stderr back once the fixtures are set up."""
    reader, writer = pipe
    monkeypatch.setattr(sys, "stderr", writer)
    monkeypatch.setenv("JOURNAL_STREAM", stream_id(writer))
    return reader, writer


def test_the_command_lines_keep_their_prefixes_under_the_priority(pipe, tmp_path, monkeypatch):
    reader, writer = journal_stderr(pipe, monkeypatch)
    bad = tmp_path / "ikectl.toml"
    bad.write_text('mode = "nonsense"\n')
    good = tmp_path / "good.toml"
    good.write_text(f'[paths]\nrun_dir = "{tmp_path / "run"}"\n')
    assert cli.main(["--config", str(bad), "status"]) == 2
    cli._warn("w")
    cli._sayer(True)("s")
    cli._sayer(False)("not said")
    assert cli.main(["--config", str(good), "nm-dispatch", "eth0", "no-such-action"]) != 0
    monkeypatch.setenv("CONNECTIVITY_STATE", "FULL")
    monkeypatch.delenv("NM_DISPATCHER_ACTION", raising=False)
    assert cli.main(["--config", str(good), "nm-dispatch", "", "connectivity-change", "--dry-run"]) == 0
    with pytest.raises(SystemExit):
        cli.main(["up", "--no-such-option"])
    lines = written(reader, writer)
    assert lines[0].startswith("<3>ikectl: error: ") and "mode = 'nonsense'" in lines[0]
    assert lines[1:3] == ["<4>ikectl: warning: w", "<6>ikectl: s"]
    assert lines[3].startswith("<3>ikectl nm-dispatch: no-such-action eth0: unknown action")
    assert lines[4].startswith("<6>ikectl nm-dispatch: connectivity-change -: would ")
    assert lines[5].startswith("<3>usage: ikectl") and lines[-1].startswith("<3>ikectl: error: unrecognized")
    assert all(line.startswith("<3>") for line in lines[5:])  # argparse's every line


def test_on_a_terminal_or_a_file_nothing_changes(capsys, tmp_path):
    bad = tmp_path / "ikectl.toml"
    bad.write_text('mode = "nonsense"\n')
    assert cli.main(["--config", str(bad), "status"]) == 2
    cli._warn("w")
    assert capsys.readouterr().err.splitlines()[1:] == ["ikectl: warning: w"]


def test_up_and_down_say_where_the_logs_went(tmp_path, monkeypatch, capsys):
    """The command line's part: a failed `up` tells where its logs went (always), `down` with -v, and logs that
    could not be kept are a warning either way."""
    cfg = tmp_path / "ikectl.toml"
    cfg.write_text(f'[paths]\nrun_dir = "{tmp_path / "run"}"\nlog_dir = "{tmp_path / "logs"}"\n')
    calls: list[dict[str, Any]] = []

    def failed_up(_config, _say, config_path=None, *, protected=False, tell, warn):
        tell(f"logs of {_config.run_dir} kept in {_config.log_dir / 'last'}")
        raise IkectlError("pluto did not start")

    def down(run_dir, say, *, log_dir, warn):
        calls.append({"run_dir": run_dir, "log_dir": log_dir})
        say(f"logs of {run_dir} kept in {log_dir / 'last'}")
        warn("something about the logs")
        return True

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(session, "up", failed_up)
    monkeypatch.setattr(session, "down", down)
    assert cli.main(["--config", str(cfg), "up"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"ikectl: logs of {tmp_path / 'run'} kept in {tmp_path / 'logs' / 'last'}",
        "ikectl: error: pluto did not start"]
    assert cli.main(["--config", str(cfg), "down"]) == 0
    assert capsys.readouterr().err.splitlines() == ["ikectl: warning: something about the logs"]
    assert cli.main(["--config", str(cfg), "down", "-v"]) == 0
    assert capsys.readouterr().err.splitlines() == [
        f"ikectl: logs of {tmp_path / 'run'} kept in {tmp_path / 'logs' / 'last'}",
        "ikectl: warning: something about the logs"]
    assert calls[0] == {"run_dir": tmp_path / "run", "log_dir": tmp_path / "logs"}


# --- the supervisor's lines to the journal ---------------------------------------------------------------------

@pytest.fixture
def dev_log(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A Unix datagram socket standing in for /dev/log."""
    path = str(tmp_path / "log")
    assert len(path.encode()) < 108
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(5)
        yield sock, path


@pytest.fixture
def no_journal(monkeypatch):
    monkeypatch.setattr(supervisor, "_journal", None)  # and back to None after the test


def test_the_supervisors_lines_reach_the_journal_with_identifier_and_priority(dev_log, no_journal, capsys):
    sock, path = dev_log
    supervisor._log("not forwarded yet")
    supervisor.forward_to_journal(path)
    supervisor._log("another program removed trusted mode's protection: restored", logline.WARNING)
    supervisor._log("watching", logline.INFO)
    supervisor._log("re-attested dns: the measurement changed", logline.ERROR)
    pid = os.getpid()
    got = [sock.recv(4096) for _ in range(3)]
    facility = 3 << 3  # syslog's daemon facility, under the priority
    assert got == [f"<{facility | 4}>ikectl-supervisor[{pid}]: another program removed trusted mode's "
                   "protection: restored".encode(),
                   f"<{facility | 6}>ikectl-supervisor[{pid}]: watching".encode(),
                   f"<{facility | 3}>ikectl-supervisor[{pid}]: re-attested dns: the measurement changed".encode()]
    assert capsys.readouterr().err.splitlines() == [  # the log file has them all, as before
        "ikectl supervisor: not forwarded yet",
        "ikectl supervisor: another program removed trusted mode's protection: restored",
        "ikectl supervisor: watching", "ikectl supervisor: re-attested dns: the measurement changed"]


def test_without_dev_log_lines_are_dropped_quietly_and_go_once_it_is_there(tmp_path, capsys):
    path = tmp_path / "log"
    lines = journal.JournalLines(address=str(path))
    for n in range(50):
        lines.send(f"line {n}", logline.WARNING)
    assert capsys.readouterr().err == ""  # neither an exception nor logging's complaint
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        lines.send("now there", logline.INFO)
        assert sock.recv(4096).endswith(b"]: now there")
    lines.close()


def test_a_journal_that_reads_nothing_never_blocks_the_supervisor(dev_log):
    sock, path = dev_log  # bound, never read: its queue fills
    lines = journal.JournalLines(address=path)
    done = threading.Event()

    def flood() -> None:
        for n in range(5000):
            lines.send(f"line {n} " + "x" * 200, logline.INFO)
        done.set()

    threading.Thread(target=flood, daemon=True).start()
    assert done.wait(20), "sending to a full syslog socket blocked"
    assert sock.recv(4096).endswith(b"]: line 0 " + b"x" * 200)  # the first ones went
    lines.close()


def test_main_with_journal_forwards_and_up_asks_for_it_when_its_stderr_is_the_journal(
        dev_log, no_journal, pipe, tmp_path, monkeypatch):
    sock, path = dev_log
    journal_stderr(pipe, monkeypatch)
    monkeypatch.setattr(journal, "JOURNAL_SOCKET", path)

    class Started(Exception):
        pass

    def stop(*_: Any) -> None:
        raise Started

    monkeypatch.setattr(supervisor, "Supervisor", stop)
    with pytest.raises(Started):
        supervisor.main([str(tmp_path / "run"), "--journal"])
    supervisor._log("hello")
    assert sock.recv(4096).endswith(b"]: hello")

    started: list[list[str]] = []

    class Popen:
        def __init__(self, argv: list[str], **_: Any) -> None:
            started.append(argv)
            self.pid = 4242

    monkeypatch.setattr(daemon.subprocess, "Popen", Popen)
    run = daemon.RunDir(tmp_path / "run")
    assert daemon.start_supervisor(run) == 4242  # stderr is the journal's stream here (the fixture)
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    daemon.start_supervisor(run)
    assert started == [[sys.executable, "-m", "ikectl.supervisor", str(run.root), "--journal"],
                       [sys.executable, "-m", "ikectl.supervisor", str(run.root)]]
