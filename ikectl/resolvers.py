"""Which resolvers to protect: given in the config, or discovered (resolv.conf for now).

Loopback stubs (systemd-resolved's 127.0.0.53, a local unbound) are not the upstream resolver and cannot
be protected with IPsec, so discovery leaves them out.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from .config import Address, Config

RESOLV_CONF = Path("/etc/resolv.conf")


def from_resolv_conf(text: str) -> tuple[Address, ...]:
    found: list[Address] = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(fields) < 2 or fields[0] != "nameserver":
            continue
        try:
            addr = ipaddress.ip_address(fields[1].split("%", 1)[0])  # fe80::1%eth0: the scope is not ours
        except ValueError:
            continue
        if not addr.is_loopback and not addr.is_unspecified and addr not in found:
            found.append(addr)
    return tuple(found)


def discover(config: Config, resolv_conf: Path = RESOLV_CONF) -> tuple[Address, ...]:
    if config.resolvers:
        return config.resolvers
    found: list[Address] = []
    for source in config.discover:
        if source == "resolv.conf":
            try:
                text = resolv_conf.read_text()
            except OSError:
                continue
            found += [a for a in from_resolv_conf(text) if a not in found]
    return tuple(found)
