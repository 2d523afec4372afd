"""Checks on the host, after the guest's netns suite has come back: the VM left nothing behind."""

import os
from pathlib import Path

import pytest

from netns_tests.harness import procs, vm
from netns_tests.harness.vmplugin import VmSession


@pytest.mark.host
def test_no_qemu_and_no_namespaces_left_behind(vm_sessions: list[VmSession]):
    for session in vm_sessions:  # the netns suite ran in VMs (this kernel has no ESP)
        assert session.error is None, f"{session.name}: {session.error}"
        assert session.result is not None
        # Nothing of the VM's process session (vng, qemu) is alive, and none had to be killed.
        assert session.result.leftover_pids == ()
        assert vm.session_pids(session.result.session_id) == []
        assert not [line for line in _processes() if "qemu-system" in line and str(session.outdir) in line]
    assert procs.our_namespaces(owner_pid=os.getpid()) == []
    assert procs.live_daemons() == []


def _processes() -> list[str]:
    lines = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                lines.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
    return lines
