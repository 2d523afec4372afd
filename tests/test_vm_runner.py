"""The VM runner's pieces that need no VM: kernel choice, the guest command, process-session checks."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from netns_tests.harness import vm


def test_newest_kernel_is_chosen(tmp_path: Path):
    for name in ("vmlinuz-6.1.0-9-amd64", "vmlinuz-6.1.0-56-amd64", "vmlinuz-5.10.0-30-amd64", "config-6.1.0-99"):
        (tmp_path / name).write_text("")
    assert vm.find_debian_kernel(tmp_path).name == "vmlinuz-6.1.0-56-amd64"


def test_no_kernel_is_a_clear_error(tmp_path: Path):
    with pytest.raises(vm.VmError, match="linux-image-amd64"):
        vm.find_debian_kernel(tmp_path)


def test_guest_command_runs_the_guest_entry_with_a_command_file(tmp_path: Path):
    command = vm.guest_command(tmp_path, ["python", "-m", "pytest", "a b"], {"X": "1"})
    assert "netns_tests.harness.guest" in command and str(tmp_path) in command
    assert json.loads((tmp_path / "command.json").read_text()) == {"argv": ["python", "-m", "pytest", "a b"],
                                                                   "env": {"X": "1"}}


def test_session_pids_finds_a_sessions_processes():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        assert vm.session_pids(proc.pid) == [proc.pid]
    finally:
        proc.kill()
        proc.wait()
    assert vm.session_pids(proc.pid) == []
