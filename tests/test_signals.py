"""SIGTERM unwinds ikectl's own process (its finally blocks run: a trusted `up` fails closed), and only its own: a
child pyroute2 forked without exec ends at once, running none of the parent's code (ikectl/signals.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]

PROGRAM = """
import os, signal, sys, time
from ikectl import signals

signals.exit_on_sigterm(143)
marker, who = sys.argv[1], sys.argv[2]
try:
    if who == "child":
        pid = os.fork()
        if pid == 0:
            time.sleep(30)  # like pyroute2's child, waiting for its parent
            os._exit(0)
        time.sleep(0.3)
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), flush=True)
    else:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
finally:
    with open(marker, "a") as out:
        out.write(f"finally ran in {'the parent' if os.getpid() == int(sys.argv[3]) else 'a child'}\\n")
"""


def run(tmp_path: Path, who: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    marker = tmp_path / "marker"
    launcher = f"import os, sys; sys.argv = ['x', {str(marker)!r}, {who!r}, str(os.getpid())]; exec({PROGRAM!r})"
    done = subprocess.run([sys.executable, "-c", launcher], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=60, check=False)
    return done, marker.read_text().splitlines() if marker.exists() else []


def test_sigterm_unwinds_the_process_that_installed_the_handler(tmp_path: Path) -> None:
    done, marker = run(tmp_path, "self")
    assert done.returncode == 143, done.stderr
    assert marker == ["finally ran in the parent"]


def test_a_forked_child_ends_on_sigterm_without_running_the_parents_code(tmp_path: Path) -> None:
    done, marker = run(tmp_path, "child")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["143"]
    assert marker == ["finally ran in the parent"]  # once: the child ran none of it
