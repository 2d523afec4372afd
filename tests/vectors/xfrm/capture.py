"""Regenerate the XFRM test vectors: the bytes iproute2 sends, the kernel's dump replies and its policy events.

    apt-get install strace && sudo .venv/bin/python tests/vectors/xfrm/capture.py

Runs `ip xfrm ...` under strace in a throw-away namespace and writes one file per command, named after
what produced the bytes (iproute2-* for requests, kernel-* for replies). Each file has `#` comment lines
(the command, the kernel) and then one hex line per netlink buffer (for events: all of one command's). SA adds
are refused on kernels without ESP (these machines), but the request bytes are what matter here.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import subprocess
from pathlib import Path

HERE = Path(__file__).parent
NS = f"ikt-{os.getpid()}-vectors"
KEY20 = "0x" + "11" * 20
KEY16 = "0x" + "22" * 16
KEY32 = "0x" + "33" * 32

SENT = {  # file stem -> ip xfrm arguments whose request bytes are captured
    "iproute2-policy-add-udp53-out-transport-tmpl":
        "policy add src 10.1.0.1/32 dst 10.1.0.53/32 proto udp dport 53 dir out priority 100 "
        "tmpl src 0.0.0.0 dst 0.0.0.0 proto esp reqid 0 mode transport",
    "iproute2-policy-add-ipv6-tcp53-out-block":
        "policy add src fd00::1/128 dst fd00::53/128 proto tcp dport 53 dir out priority 2130706432 action block",
    "iproute2-policy-add-in-tunnel-tmpl":
        "policy add src 10.1.0.53/32 dst 10.1.0.1/32 proto udp sport 53 dir in priority 200 "
        "tmpl src 10.1.0.53 dst 10.1.0.1 proto esp reqid 16389 mode tunnel",
    "iproute2-policy-delete-udp53-out":
        "policy delete src 10.1.0.1/32 dst 10.1.0.53/32 proto udp dport 53 dir out",
    "iproute2-state-add-aes-gcm-transport":
        f"state add src 10.1.0.1 dst 10.1.0.53 proto esp spi 0x1000 reqid 7 mode transport "
        f"aead rfc4106(gcm(aes)) {KEY20} 128",
    "iproute2-state-add-cbc-hmac-tunnel":
        f"state add src 10.1.0.1 dst 10.1.0.53 proto esp spi 0x2000 reqid 8 mode tunnel "
        f"auth-trunc hmac(sha256) {KEY32} 128 enc cbc(aes) {KEY16}",
}
RECEIVED = {  # file stem -> (set-up commands, the dump whose reply bytes are captured)
    "kernel-policy-dump-three-policies": (
        [SENT["iproute2-policy-add-udp53-out-transport-tmpl"], SENT["iproute2-policy-add-ipv6-tcp53-out-block"],
         SENT["iproute2-policy-add-in-tunnel-tmpl"]],
        "policy list"),
    "kernel-error-policy-delete-absent": ([], SENT["iproute2-policy-delete-udp53-out"]),
    # On a kernel without ESP (these machines): ENOSYS with an extended ack, the kernel's words after the quote.
    "kernel-error-state-add-no-esp-ext-ack": ([], SENT["iproute2-state-add-aes-gcm-transport"]),
    "kernel-state-dump-larval-allocspi": (
        ["state allocspi src 10.1.0.1 dst 10.1.0.53 proto esp mode transport reqid 9"], "state list"),
}


BACKSTOP_TCP6_OUT = "src ::/0 dst ::/0 proto tcp dport 53 dir out"  # one of ikectl's XFRM backstop policies
EVENTS = {  # file stem -> (set-up commands, the command whose policy events are captured)
    "kernel-event-policy-delete-backstop": (
        [f"policy add {BACKSTOP_TCP6_OUT} priority 2131755008 action block"], f"policy delete {BACKSTOP_TCP6_OUT}"),
    "kernel-event-policy-delete-block": (
        [SENT["iproute2-policy-add-ipv6-tcp53-out-block"]],
        "policy delete src fd00::1/128 dst fd00::53/128 proto tcp dport 53 dir out"),
    "kernel-event-policy-flush": ([SENT["iproute2-policy-add-ipv6-tcp53-out-block"]], "policy flush"),
    "kernel-event-policy-add-clear-pass": (  # what pluto's clear fallback for one resolver looks like
        [], "policy add src 10.1.0.1/32 dst 10.1.0.53/32 proto udp dport 53 dir out priority 0 action allow"),
}


def ip(args: str) -> None:
    subprocess.run(["ip", "-n", NS, "xfrm", *args.split()], check=False, capture_output=True)


def buffers(strace_out: str, call: str) -> list[str]:
    found: list[str] = []
    current: list[str] | None = None
    wanted = False
    for line in strace_out.splitlines():
        if re.match(rf"^{call}\(", line):
            wanted = True
        elif re.match(r"^\w+\(", line):
            wanted = False
        if re.match(r"\s*\* \d+ bytes in buffer", line):
            current = []
            if wanted:
                found.append("")
        hexdump = re.match(r"\s*\| [0-9a-f]{5}  (.{49})", line)
        if hexdump and current is not None and wanted:
            found[-1] += "".join(hexdump.group(1).split())
    deduped = [b for i, b in enumerate(found) if b and (i == 0 or b != found[i - 1])]  # MSG_PEEK reads twice
    return deduped


def traced(args: str, call: str) -> list[str]:
    proc = subprocess.run(["ip", "netns", "exec", NS, "strace", "-f", "-e", f"trace={call}", "-e", "write=all",
                           "-e", "read=all", "-xx", "-s", "65536", "ip", "xfrm", *args.split()],
                          capture_output=True, text=True, check=False)
    return [b for b in buffers(proc.stderr, call) if len(b) > 40]  # skip ACKs and DONE-only reads


def write(stem: str, command: str, hexes: list[str]) -> None:
    header = f"# ip xfrm {command}\n# kernel {platform.release()}, captured by tests/vectors/xfrm/capture.py\n"
    (HERE / f"{stem}.hex").write_text(header + "".join(h + "\n" for h in hexes))


def events(command: str) -> list[str]:
    """What a socket subscribed to the namespace's policy events receives while `ip xfrm command` runs."""
    from ikecommon.xfrm import Group, event_socket  # noqa: PLC0415 - the venv's, only for this part

    with event_socket(NS, (Group.POLICY,)) as sock:
        ip(command)
        received = b""
        with contextlib.suppress(BlockingIOError):
            while True:
                received += sock.recv(1 << 16)
    return [received.hex()]


def main() -> None:
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        for stem, args in SENT.items():
            subprocess.run(["ip", "-n", NS, "xfrm", "policy", "flush"], check=True)
            if "delete" in args:
                ip(SENT["iproute2-policy-add-udp53-out-transport-tmpl"])
            write(stem, args, traced(args, "sendmsg")[:1])
        for stem, (setup, dump) in RECEIVED.items():
            subprocess.run(["ip", "-n", NS, "xfrm", "policy", "flush"], check=True)
            subprocess.run(["ip", "-n", NS, "xfrm", "state", "flush"], check=True)
            for args in setup:
                ip(args)
            write(stem, dump, traced(dump, "recvmsg"))
        for stem, (setup, command) in EVENTS.items():
            subprocess.run(["ip", "-n", NS, "xfrm", "policy", "flush"], check=True)
            for args in setup:
                ip(args)
            write(stem, command, events(command))
    finally:
        subprocess.run(["ip", "netns", "del", NS], check=True)


if __name__ == "__main__":
    main()
