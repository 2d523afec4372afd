"""The VM runner's pieces that need no VM: kernel choice, the guest command, process-session checks."""

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from netns_tests.harness import guest, vm
from netns_tests.harness.kernel import EspSupport


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


def test_a_vm_that_does_not_boot_fails_with_the_reason(tmp_path: Path):
    bogus = tmp_path / "vmlinuz-0.0.0-bogus"
    bogus.write_bytes(b"not a kernel")
    spec = vm.VmSpec(kernel=bogus, timeout=120)
    lines: list[str] = []
    with pytest.raises(vm.VmError, match="did not boot") as error:
        vm.run_in_vm(spec, tmp_path / "out", ["true"], lines.append)
    assert str(bogus) in str(error.value)
    assert (tmp_path / "out" / "console.log").exists()


def test_the_guest_refuses_to_run_without_esp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    (tmp_path / "command.json").write_text(json.dumps({"argv": ["false"], "env": {}}))
    monkeypatch.setattr(guest, "preload_modules", lambda: None)
    monkeypatch.setattr(guest, "probe_esp", lambda: EspSupport(False, "6.18.0", "Requested AEAD algorithm not found."))
    assert guest.main(["guest", str(tmp_path)]) == vm.GUEST_NO_ESP_EXIT
    out = capsys.readouterr().out
    assert out.startswith(vm.GUEST_UP_MARKER)
    assert "cannot install ESP SAs: Requested AEAD algorithm not found." in out
    assert json.loads((tmp_path / "guest-esp.json").read_text())["available"] is False


def test_the_guest_reads_the_stdlib_and_project_from_a_staged_copy(tmp_path: Path):
    archive = vm.build_stage(tmp_path)
    with tarfile.open(archive) as packed:
        names = set(packed.getnames())
    stdlib, project = (str(tree.relative_to("/")) for tree in vm.staged_trees()[:2])
    assert f"{stdlib}/os.py" in names and f"{project}/ikectl/cli.py" in names
    assert f"{stdlib}/json/__init__.py" in names
    assert not any(name.startswith((f"{stdlib}/test/", f"{project}/.git/")) for name in names)
    command = vm.guest_command(tmp_path, ["true"])
    for tree in vm.staged_trees():
        assert f"mount --bind {vm.GUEST_STAGE_ROOT}{tree} {tree}" in command
        assert f"mount -o remount,bind,ro {tree}" in command
    assert command.index("stage.tar") < command.index("netns_tests.harness.guest")
