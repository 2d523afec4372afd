"""The kernel probe. It answers one question: can this kernel install ESP SAs?

It tries to add one AES-GCM ESP SA in a throw-away namespace, which is exactly what pluto does after a
successful IKE_AUTH. On these machines' host kernel that fails (no CONFIG_INET_ESP, no gcm); Debian's
stock kernel in the VM passes.
"""

from __future__ import annotations

import os
import platform
import secrets
import subprocess
from dataclasses import dataclass

from pyroute2 import netns as pyroute2_netns

from . import procs


@dataclass(frozen=True)
class EspSupport:
    available: bool
    kernel: str
    detail: str  # the kernel's answer when it said no

    def __str__(self) -> str:
        if self.available:
            return f"kernel {self.kernel} installs ESP SAs"
        return f"kernel {self.kernel} cannot install ESP SAs: {self.detail}"


def probe_esp() -> EspSupport:
    name = f"{procs.NETNS_PREFIX}{os.getpid()}-espprobe"
    procs.register_namespace(name)
    pyroute2_netns.create(name)
    try:
        key = "0x" + secrets.token_hex(20)  # 16-byte AES key + 4-byte salt
        proc = subprocess.run(
            ["ip", "-n", name, "xfrm", "state", "add", "src", "192.0.2.1", "dst", "192.0.2.2",
             "proto", "esp", "spi", "0x1000", "mode", "transport", "aead", "rfc4106(gcm(aes))", key, "128"],
            capture_output=True, text=True, check=False, timeout=60)
    finally:
        procs.remove_namespace(name)
    detail = (proc.stderr or proc.stdout).strip()
    return EspSupport(available=proc.returncode == 0, kernel=platform.release(), detail=detail)
