"""The Debian packages netns_tests/test_package_deb.py installs: built on the host by scripts/package (pip fetches
the venvs' dependencies, and the guest has no network), while the VM boots and runs the rest of the suite; the
guest's test waits for them in a directory both see (the VM's output directory).

The build's exit status goes to `build.status` last, through a rename, so a reader sees no status or the final one.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from .procs import HarnessError, tail

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PACKAGES_ENV = "IKECTL_PACKAGES_DIR"  # where the guest finds them
TEST_FILE = "netns_tests/test_package_deb.py"
STATUS, LOG = "build.status", "build.log"
BUILD_TIMEOUT_S = 20 * 60.0


def start_build(out: Path) -> subprocess.Popen[bytes]:
    """scripts/package into `out`, in the background; lintian included (a finding fails the build)."""
    out.mkdir(parents=True, exist_ok=True)
    script = (f'"{PROJECT_ROOT}/scripts/package" --out "{out}" >"{out}/{LOG}" 2>&1; '
              f'echo $? >"{out}/{STATUS}.tmp" && mv "{out}/{STATUS}.tmp" "{out}/{STATUS}"')
    return subprocess.Popen(["bash", "-c", script], stdin=subprocess.DEVNULL, cwd=PROJECT_ROOT,
                            start_new_session=True)


def wait_for_build(out: Path, timeout: float = BUILD_TIMEOUT_S) -> tuple[Path, Path]:
    """(ikectl's .deb, enclave-ike's .deb) once the build in `out` is over; its log's tail if it failed."""
    deadline = time.monotonic() + timeout
    status = out / STATUS
    while not status.exists():
        if time.monotonic() > deadline:
            raise HarnessError(f"the packages were not built within {timeout:.0f} s ({out / LOG})")
        time.sleep(1.0)
    code = status.read_text().strip()
    log = (out / LOG).read_text(errors="replace") if (out / LOG).exists() else ""
    if code != "0":
        raise HarnessError(f"scripts/package failed (exit {code}):\n{tail(log, 40)}")
    found = tuple(sorted(out.glob(f"{name}_*.deb"))[-1:] for name in ("ikectl", "enclave-ike"))
    if not all(found):
        raise HarnessError(f"scripts/package left no .deb in {out}: {sorted(p.name for p in out.iterdir())}")
    return found[0][0], found[1][0]


def packages_for_test(scratch: Path) -> tuple[Path, Path]:
    """The packages the host built for this VM run, or, where the test runs on the host itself, built now."""
    shared = os.environ.get(PACKAGES_ENV)
    if shared:
        return wait_for_build(Path(shared))
    out = scratch / "packages"
    start_build(out).wait()
    return wait_for_build(out, timeout=1.0)
