"""A run's logs outlive `down`: real pluto and supervisor in the client's namespace, `up` then `down`, and the logs
of that run are in `[paths] log_dir`/last, those of the run before in previous, the run dir gone (docs/modes.md,
Where logs go)."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest

from netns_tests.lab import Lab
from netns_tests.test_ikectl_trusted import COFFEE, PLAIN, ikectl


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def write_config(run_dir: Path, log_dir: Path, tmp_path: Path) -> Path:
    path = tmp_path / "ikectl.toml"
    path.write_text(f'mode = "coffee-shop"\n[resolvers]\naddresses = ["{COFFEE}", "{PLAIN}"]\n'
                    f'[paths]\nrun_dir = "{run_dir}"\nlog_dir = "{log_dir}"\n')
    return path


@pytest.mark.host  # pluto's log and the run dir; no ESP data path needed
def test_down_keeps_the_runs_pluto_log_in_log_dir_and_removes_the_run_dir(world: Lab, run_dir: Path,
                                                                         tmp_path: Path):
    log_dir = tmp_path / "var-log" / "ikectl"
    config = write_config(run_dir, log_dir, tmp_path)
    pluto_logs = []
    for _ in range(2):
        up = ikectl(world, config, "up")
        assert up.returncode == 0, up.stderr
        pid = (run_dir / "pluto" / "pluto.pid").read_text().split()[0]
        logged = (run_dir / "pluto.log").read_text()
        assert "listening for IKE messages" in logged
        pluto_logs.append((pid, logged))
        # The supervisor starts detached and says "watching" once it is; on a busy host that can come after `up`
        # returned, and a run whose supervisor.log is still empty keeps no supervisor.log (nothing to keep).
        deadline = time.monotonic() + 60
        while "ikectl supervisor: watching" not in _text(run_dir / "supervisor.log"):
            assert time.monotonic() < deadline, "the supervisor never said it was watching"
            time.sleep(0.1)
        down = ikectl(world, config, "down", "-v")
        assert down.returncode == 0, down.stderr
        assert f"ikectl: logs of {run_dir} kept in {log_dir / 'last'}" in down.stderr.splitlines()
        assert not run_dir.exists()
    (first_pid, first), (second_pid, second) = pluto_logs
    kept = (log_dir / "last" / "pluto.log").read_text()
    # That run's pluto, whole: what it had logged while up, then what it logged as `down` stopped it.
    assert kept.startswith(second) and "Pluto is shutting down" in kept[len(second):], kept[len(second):]
    assert f" pid:{second_pid}\n" in kept and f" pid:{first_pid}\n" not in kept
    assert (log_dir / "previous" / "pluto.log").read_text().startswith(first)
    assert "ikectl supervisor: watching" in (log_dir / "last" / "supervisor.log").read_text()
    assert sorted(p.name for p in log_dir.iterdir()) == ["last", "previous"]
    assert stat.S_IMODE((log_dir / "last").stat().st_mode) == 0o750
    assert {stat.S_IMODE(p.stat().st_mode) for p in (log_dir / "last").iterdir()} == {0o640}
    assert {p.stat().st_uid for p in (log_dir / "last").iterdir()} == {0}
