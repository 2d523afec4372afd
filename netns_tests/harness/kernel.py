"""The kernel probe. It answers one question: can this kernel install ESP SAs?

It is ikectl's own probe (`ikecommon.xfrm.probe_esp`: one AES-GCM SA in a throw-away namespace, which is
what pluto does after IKE_AUTH), with the kernel's version for the message. On these machines' host
kernel the answer is no (no CONFIG_INET_ESP, no gcm); Debian's stock kernel in the VM says yes.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass

from ikecommon import xfrm


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
    support = xfrm.probe_esp()
    return EspSupport(available=support.available, kernel=platform.release(), detail=support.detail)
