"""Regenerate the nf_tables event vectors: what a socket subscribed to NFNLGRP_NFTABLES receives while `nft` changes
the ruleset of a throw-away namespace.

    sudo .venv/bin/python tests/vectors/nft/capture.py

One file per step, named after what the step does; `#` comment lines (the commands, the kernel), then one hex line
with all that the step's events carried. ikectl's table is loaded from ikectl/nft.py's own ruleset.
"""

from __future__ import annotations

import contextlib
import platform
import socket
import subprocess
from pathlib import Path

from pyroute2 import netns as pyroute2_netns

from ikectl import nft

HERE = Path(__file__).parent
NS = "ikt-nft-vectors"
NETLINK_NETFILTER, NFNLGRP_NFTABLES, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP = 12, 7, 270, 1

STEPS = {  # file stem -> nft scripts run in order (each `nft -f -`), whose events are captured together
    "event-ikectl-table-load": [nft.ruleset()],
    "event-ikectl-table-reload": [nft.ruleset()],
    "event-flush-ruleset": ["flush ruleset"],
    "event-ikectl-rule-delete": [nft.ruleset(), "flush chain inet ikectl in"],
    "event-other-tables": ["add table inet other\ndelete table inet other",
                           "add table ip ikectl\ndelete table ip ikectl"],
}
SETUP_ONLY = {"event-ikectl-rule-delete": 1}  # leading scripts run before the capture starts


def nft_run(script: str) -> None:
    subprocess.run(["ip", "netns", "exec", NS, "nft", "-f", "-"], input=script, text=True, check=True)


def capture(scripts: list[str], skip: int) -> bytes:
    for script in scripts[:skip]:
        nft_run(script)
    sock = pyroute2_netns.create_socket(NS, family=socket.AF_NETLINK, socket_type=socket.SOCK_RAW,
                                        proto=NETLINK_NETFILTER, flags=0)
    with sock:
        sock.bind((0, 0))
        sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
        sock.setblocking(False)
        for script in scripts[skip:]:
            nft_run(script)
        received = b""
        with contextlib.suppress(BlockingIOError):
            while True:
                received += sock.recv(1 << 16)
    return received


def main() -> None:
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        for stem, scripts in STEPS.items():
            data = capture(scripts, SETUP_ONLY.get(stem, 0))
            commands = "".join(f"# {line}\n" for script in scripts for line in script.splitlines()[:3])
            (HERE / f"{stem}.hex").write_text(f"{commands}# kernel {platform.release()}, captured by "
                                              f"tests/vectors/nft/capture.py\n{data.hex()}\n")
    finally:
        subprocess.run(["ip", "netns", "del", NS], check=True)


if __name__ == "__main__":
    main()
