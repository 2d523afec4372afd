"""Packet captures of a wire, and the count that matters: port-53 packets that are not inside ESP.

`Capture` runs tcpdump on one interface of one namespace into a pcap file; the counting is ikectl's own
(`ikectl.wire`, also behind `ikectl verify`), so the tests and the product judge a wire the same way.

Capture on a wire that neither encrypts nor decrypts (the lab's router): on an IPsec endpoint,
tcpdump also sees decrypted tunnel-mode packets coming in, which are not on the wire.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable
from pathlib import Path

from scapy.packet import Packet
from scapy.utils import rdpcap

from ikectl.wire import Address, PeerCounts, WireCount, classify, count_wire

from .procs import Daemon
from .topology import Host

__all__ = ["Address", "Capture", "PeerCounts", "WireCount", "classify", "count_wire"]


class Capture(Daemon):
    """tcpdump on one interface of one namespace, into a pcap file."""

    def __init__(self, host: Host, ifname: str, pcap: Path) -> None:
        self.pcap = pcap
        # --immediate-mode and -U: each packet is read and written at once, so a stop loses none of them
        # (without them, packets still in the kernel ring at SIGINT are lost); -Z root: keep writing to our dir.
        argv = ["tcpdump", "-i", ifname, "-n", "-U", "--immediate-mode", "-s", "0", "-Z", "root", "-w", str(pcap)]
        super().__init__(f"tcpdump@{host.name}:{ifname}", argv, pcap.with_suffix(".log"), netns=host.netns)

    def start(self) -> None:
        self.pcap.parent.mkdir(parents=True, exist_ok=True)
        super().start()
        self.wait_for_log(r"listening on", timeout=15.0)

    def stop(self, timeout: float = 5.0, sig: int = signal.SIGINT) -> int | None:
        return super().stop(timeout=timeout, sig=sig)

    def packets(self) -> list[Packet]:
        if not self.pcap.exists() or self.pcap.stat().st_size == 0:
            return []
        return list(rdpcap(str(self.pcap)))

    def count(self, subject: Iterable[Address | str]) -> WireCount:
        return count_wire(self.packets(), subject)
