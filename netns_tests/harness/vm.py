"""The VM runner: boot Debian's stock kernel under virtme-ng (TCG), run one command in it, stream its output.

These machines' host kernel has XFRM but no ESP, so whatever needs ESP packets to flow runs in a
disposable VM. The guest sees the host's root read-only over 9p, with RAM overlays for /etc, /var and
/tmp; results come back through `outdir`, which the guest can write (`--rwdir`).

Python over 9p is slow under TCG: every import is a round of uncached lookups (`import pyroute2` took 9.3 s
in the guest, 0.14 s on the host). So the host packs the interpreter's standard library and the project
tree with its venv into one tar in `outdir`; the guest unpacks it into RAM and binds it, read-only, over
the same paths before Python starts (pyroute2 then imports in 3.8 s; unpacking takes ~12 s once per boot).

The VM's first line from the guest entry point (`guest.py`) is a marker; no marker means no boot, and
that fails the run with the console's tail, never a skip.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from .procs import HarnessError, tail

PROJECT_ROOT = Path(__file__).resolve().parents[2]
GUEST_UP_MARKER = "@@ikt-guest-up"
GUEST_NO_ESP_EXIT = 3


class VmError(HarnessError):
    """The VM could not boot, or the guest could not do what the run needs (e.g. no ESP)."""


@dataclass(frozen=True)
class VmSpec:
    kernel: Path
    memory: str = "3G"  # the staged Python trees (~250 MB) live in the guest's RAM
    cpus: int = 2
    timeout: float = 45 * 60.0

    @classmethod
    def default(cls, cpus: int = 2) -> VmSpec:
        timeout = float(os.environ.get("IKECTL_VM_TIMEOUT", "4800"))  # under CI's 90 minutes, with room for a slow host
        return cls(kernel=find_debian_kernel(), cpus=int(os.environ.get("IKECTL_VM_CPUS", cpus)), timeout=timeout)


@dataclass(frozen=True)
class VmResult:
    returncode: int
    boot_seconds: float  # from starting qemu to the guest's first line
    total_seconds: float
    console_log: Path
    session_id: int  # vng's pid, the session of every process the VM run made
    leftover_pids: tuple[int, ...]  # processes of that session still alive after vng ended (then killed)


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path.name.removeprefix("vmlinuz-")))


def find_debian_kernel(boot: Path = Path("/boot")) -> Path:
    kernels = sorted(boot.glob("vmlinuz-*"), key=_version_key)
    if not kernels:
        raise VmError(f"no kernel image in {boot}: run scripts/setup (it installs Debian's linux-image-amd64)")
    return kernels[-1]


def _vng() -> str:
    venv_bin = Path(sys.executable).parent
    found = shutil.which("vng", path=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        raise VmError("vng (virtme-ng) not found next to this Python: run scripts/setup")
    return found


def session_pids(sid: int) -> list[int]:
    """Live pids whose session id is `sid` (the VM's process tree: vng, qemu, virtiofsd)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid:  # fields after the comm: state ppid pgrp session ...
            pids.append(int(entry.name))
    return pids


# Parts of the standard library nothing in the guest imports: its own test suite, GUIs, installers.
_STDLIB_SKIP = ("test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "site-packages",
                "dist-packages", "config-*")
# The project tree without its history and caches, and its venv without the tools nothing in the guest runs (the
# type checker and linter, pip, virtme-ng itself): 125 of the venv's 196 MB, unpacked at every boot.
_PROJECT_SKIP = (".git", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis",
                 "*/site-packages/mypy", "*/site-packages/mypyc", "*/site-packages/*__mypyc*",
                 "*/site-packages/pip", "*/site-packages/virtme", "*/site-packages/virtme_ng", "*/.venv/bin/ruff")
GUEST_STAGE_ROOT = "/run/ikt-stage"


# Debian's own Python, which the Debian packages' venvs run on (netns_tests/test_package_deb.py).
SYSTEM_STDLIB = Path(f"/usr/lib/python{sys.version_info.major}.{sys.version_info.minor}")


def staged_trees() -> list[Path]:
    """The directories the guest reads from RAM: the stdlib, the project, (if elsewhere) its venv, and Debian's
    stdlib when this Python is not Debian's."""
    stdlib = Path(sysconfig.get_path("stdlib")).resolve()
    trees = [stdlib, PROJECT_ROOT]
    venv = Path(sys.prefix).resolve()
    if not venv.is_relative_to(PROJECT_ROOT):
        trees.append(venv)
    if SYSTEM_STDLIB.is_dir() and SYSTEM_STDLIB.resolve() != stdlib:
        trees.append(SYSTEM_STDLIB)
    return trees


# The project's packages, byte-compiled before they are packed: the guest cannot write bytecode into its read-only
# tree, and a host run with PYTHONDONTWRITEBYTECODE=1 (as CI's may be) writes none either, so without this every
# Python process in the guest compiled every project module it imported from source (ikectl's `status` modules:
# 0.1 s here, seconds under TCG).
COMPILED_PACKAGES = ("ikecommon", "ikectl", "enclave_ike", "netns_tests")


def compile_project() -> None:
    """Write current bytecode for the project's packages (compileall writes it whatever PYTHONDONTWRITEBYTECODE
    says; ~1 s when most is up to date)."""
    done = subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0",
                           *(str(PROJECT_ROOT / name) for name in COMPILED_PACKAGES)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    if done.returncode != 0:
        raise VmError(f"could not byte-compile the project for the guest: {done.stdout.strip()[-2000:]}")


def build_stage(outdir: Path) -> Path:
    """Pack the staged trees into `outdir/stage.tar` (host side; a few seconds), the project byte-compiled."""
    compile_project()
    archive = outdir / "stage.tar"
    archive.unlink(missing_ok=True)
    for index, tree in enumerate(staged_trees()):
        skip = _STDLIB_SKIP if index == 0 or tree == SYSTEM_STDLIB else _PROJECT_SKIP
        command = ["tar", "-C", "/", "-rf" if index else "-cf", str(archive),
                   *(f"--exclude={name}" for name in skip), str(tree.relative_to("/"))]
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
        if done.returncode != 0:
            raise VmError(f"could not pack {tree} for the guest: {done.stderr.strip()}")
    return archive


def guest_command(outdir: Path, argv: Sequence[str], env: dict[str, str] | None = None) -> str:
    """The shell command vng runs in the guest: unpack the staged trees, bind them over their own paths
    (read-only, as the 9p root is), then the guest entry point, given a command file in `outdir`."""
    (outdir / "command.json").write_text(json.dumps({"argv": list(argv), "env": env or {}}))
    stage = shlex.quote(GUEST_STAGE_ROOT)
    steps = [f"mkdir -p {stage}", f"mount -t tmpfs -o mode=0755 ikt-stage {stage}",
             f"tar -C {stage} -xf {shlex.quote(str(outdir / 'stage.tar'))}"]
    for tree in staged_trees():
        source, target = shlex.quote(f"{GUEST_STAGE_ROOT}{tree}"), shlex.quote(str(tree))
        steps += [f"mount --bind {source} {target}", f"mount -o remount,bind,ro {target}"]
    entry = shlex.join([sys.executable, "-m", "netns_tests.harness.guest", str(outdir)])
    staging = " && ".join(steps)
    return (f"if ! {{ {staging}; }}; then echo 'guest: could not stage Python into RAM' >&2; exit 1; fi; "
            f"cd {shlex.quote(str(PROJECT_ROOT))} && exec {entry}")


def rerun_in_vm(script: str) -> NoReturn:
    """Run `script` again in the guest, with this process's arguments and the project on PYTHONPATH, print what it
    prints, and exit with its status: how a bench that needs ESP runs where this host's kernel has none."""
    out = Path(tempfile.mkdtemp(prefix="ikt-bench-vm-"))
    vm = run_in_vm(VmSpec.default(), out, [sys.executable, str(Path(script).resolve()), *sys.argv[1:]], print,
                   env={"PYTHONPATH": str(PROJECT_ROOT)})
    raise SystemExit(vm.returncode)


def run_in_vm(spec: VmSpec, outdir: Path, argv: Sequence[str], on_line: Callable[[str], None],
              env: dict[str, str] | None = None, on_start: Callable[[int], None] | None = None) -> VmResult:
    """Boot the VM, run `argv` in the guest (after the guest entry's module preloads and ESP check).
    `on_start` is given the VM's process group as soon as it exists."""
    outdir.mkdir(parents=True, exist_ok=True)
    console_log = outdir / "console.log"
    stage = build_stage(outdir)
    vng_argv = [_vng(), "-r", str(spec.kernel), "--disable-kvm", "--disable-microvm", "--force-9p",
                "--memory", spec.memory, "--cpus", str(spec.cpus), "--rwdir", str(outdir),
                "--qemu-opts=-device virtio-rng-pci",  # "=": the value starts with a dash
                "--exec", guest_command(outdir, argv, env)]
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # vng execs virtme-run
    started = time.monotonic()
    boot_seconds = -1.0
    proc = subprocess.Popen(vng_argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, cwd=PROJECT_ROOT,
                            env={**os.environ, "PATH": path})
    if on_start is not None:
        on_start(proc.pid)
    timed_out = False
    try:
        with open(console_log, "w") as log:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.decode(errors="replace").rstrip("\n")
                log.write(line + "\n")
                log.flush()
                if boot_seconds < 0 and GUEST_UP_MARKER in line:
                    boot_seconds = time.monotonic() - started
                    continue
                on_line(line)
                if time.monotonic() - started > spec.timeout:
                    timed_out = True
                    break
        if timed_out:
            os.killpg(proc.pid, signal.SIGKILL)
        returncode = proc.wait(timeout=max(1.0, spec.timeout - (time.monotonic() - started)))
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        returncode = proc.wait()
    except BaseException:
        # Interrupted (Ctrl-C): the VM goes with us.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        stage.unlink(missing_ok=True)  # 250 MB the guest has read by now
    leftovers = session_pids(proc.pid)
    for pid in leftovers:
        os.kill(pid, signal.SIGKILL)
    result = VmResult(returncode=returncode, boot_seconds=boot_seconds,
                      total_seconds=time.monotonic() - started, console_log=console_log,
                      session_id=proc.pid, leftover_pids=tuple(leftovers))
    console = tail(console_log.read_text(errors="replace"), 30)
    if timed_out:
        raise VmError(f"the VM run exceeded {spec.timeout:.0f} s and was killed; console tail:\n{console}")
    if boot_seconds < 0:
        raise VmError(f"the VM did not boot (vng exit {returncode}, kernel {spec.kernel}); console tail:\n"
                      f"{console}")
    if returncode == GUEST_NO_ESP_EXIT:
        raise VmError(f"the guest kernel cannot install ESP SAs, so nothing can be tested there; "
                      f"console tail:\n{console}")
    return result
