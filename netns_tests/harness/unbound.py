"""A real DNS server (unbound) in a namespace, serving a small lab zone and nothing else.

It answers only for the lab zone (`LAB_ZONE`); anything else is refused, since there is no network to
recurse into. The config is rendered from a frozen dataclass, and `start()` returns only once unbound
has said it is serving.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

from .procs import Daemon
from .topology import Host


@dataclass(frozen=True)
class Record:
    name: str
    rtype: str
    value: str
    ttl: int = 300

    def local_data(self) -> str:
        return f'\tlocal-data: "{self.name} {self.ttl} IN {self.rtype} {self.value}"\n'


@dataclass(frozen=True)
class Zone:
    origin: str
    records: tuple[Record, ...]


LAB_ZONE = Zone(
    origin="lab.example.",
    records=(
        Record("www.lab.example.", "A", "10.77.0.80"),
        Record("www.lab.example.", "AAAA", "fd77::80"),
        Record("mail.lab.example.", "A", "10.77.0.25"),
        Record("resolver.lab.example.", "TXT", '\\"answered by the lab\\"'),
    ),
)


@dataclass(frozen=True)
class UnboundConfig:
    addresses: Sequence[IPv4Address | IPv6Address]
    zone: Zone = LAB_ZONE
    port: int = 53
    # TCP too: a resolver that only answers UDP would hide tcp/53 leaks from the tests.
    tcp: bool = True

    def render(self, workdir: Path) -> str:
        interfaces = "".join(f"\tinterface: {a}\n" for a in self.addresses)
        records = "".join(r.local_data() for r in self.zone.records)
        return (
            "server:\n"
            f"{interfaces}"
            f"\tport: {self.port}\n"
            f"\tdo-tcp: {'yes' if self.tcp else 'no'}\n"
            "\tdo-daemonize: no\n"
            '\tchroot: ""\n'
            '\tusername: ""\n'
            f'\tdirectory: "{workdir}"\n'
            f'\tpidfile: "{workdir}/unbound.pid"\n'
            '\tlogfile: ""\n'
            "\tuse-syslog: no\n"
            "\tverbosity: 1\n"
            "\tlog-queries: yes\n"
            '\tmodule-config: "iterator"\n'
            "\tnum-threads: 1\n"
            "\taccess-control: 0.0.0.0/0 allow\n"
            "\taccess-control: ::/0 allow\n"
            '\tlocal-zone: "." refuse\n'
            f'\tlocal-zone: "{self.zone.origin}" static\n'
            f"{records}"
            "remote-control:\n"
            "\tcontrol-enable: no\n"
        )


class Unbound(Daemon):
    def __init__(self, host: Host, workdir: Path, config: UnboundConfig) -> None:
        self.config, self.dir = config, workdir
        self.conf = workdir / "unbound.conf"
        super().__init__(f"unbound@{host.name}", ["unbound", "-d", "-c", str(self.conf)],
                         workdir / "unbound.log", netns=host.netns)

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(self.config.render(self.dir))
        super().start()
        self.wait_for_log(r"start of service", timeout=20.0)
