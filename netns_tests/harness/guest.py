"""The guest entry point: what the VM runs first, before the command it was asked to run.

It announces itself (the host's boot marker), loads the IPsec modules pluto needs and runs their
self-tests once (otherwise the first SA install inside IKE_AUTH takes seconds under TCG), checks that this
kernel installs ESP SAs (exit 3 if not: the host fails the run with that reason), then runs the command
from `OUTDIR/command.json` and exits with its status.

    python -m netns_tests.harness.guest OUTDIR
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .kernel import probe_esp
from .vm import GUEST_NO_ESP_EXIT, GUEST_UP_MARKER, PROJECT_ROOT

# virtio_rng first: the host's entropy through the VM's virtio-rng device. Without it the guest's CRNG
# initialises slowly under TCG and every getrandom() before that blocks (enclave-ike took 38 s to start).
PRELOAD_MODULES = ("virtio_rng", "xfrm_user", "esp4", "esp6", "seqiv", "jitterentropy_rng", "drbg", "xfrm4_tunnel",
                   "xfrm6_tunnel", "tunnel4", "tunnel6")


def preload_modules() -> None:
    for module in PRELOAD_MODULES:
        # A module built into this kernel is not an error; a missing one shows up in the ESP probe.
        subprocess.run(["modprobe", "-q", module], check=False)


def main(argv: list[str]) -> int:
    outdir = Path(argv[1])
    uptime = Path("/proc/uptime").read_text().split()[0]
    print(f"{GUEST_UP_MARKER} uptime={uptime}s kernel={os.uname().release}", flush=True)
    preload_modules()
    support = probe_esp()  # also the throw-away SA that runs the crypto self-tests
    (outdir / "guest-esp.json").write_text(json.dumps({"available": support.available, "detail": str(support)}))
    if not support.available:
        print(f"guest: {support}", flush=True)
        return GUEST_NO_ESP_EXIT
    command = json.loads((outdir / "command.json").read_text())
    env = {**os.environ, **command["env"], "IKECTL_IN_GUEST": "1", "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONUNBUFFERED": "1"}
    # The project tree is read-only in the guest; nothing may try to write into it.
    return subprocess.run(command["argv"], cwd=PROJECT_ROOT, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv))
