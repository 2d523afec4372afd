"""Which resolvers to protect: given in the config, or discovered from the sources `[resolvers] discover` names,
in its order, merged and de-duplicated, IPv4 and IPv6.

- "resolv.conf": /etc/resolv.conf's `nameserver` lines.
- "networkmanager": NetworkManager's dispatcher environment when ikectl runs as its hook, else
  /run/NetworkManager/resolv.conf (NM writes the DNS of its active connections there even when it does
  not manage /etc/resolv.conf). The variables, as NetworkManager-dispatcher(8) documents them
  (man/NetworkManager-dispatcher.xml in NetworkManager's tree): IP4_NAMESERVERS and IP6_NAMESERVERS
  ("a space-separated list of the DNS servers"); DHCP4_<option> and DHCP6_<option> ("the received DHCP
  configuration ... using standard DHCP option names"), that is DHCP4_DOMAIN_NAME_SERVERS and, with NM's
  internal DHCPv6 client, whose option is named "dhcp6_name_servers", DHCP6_DHCP6_NAME_SERVERS; for a VPN
  the same IP4_*/IP6_* variables with a VPN_ prefix (VPN_IP4_NAMESERVERS, VPN_IP6_NAMESERVERS).
- "systemd-resolved": /run/systemd/resolve/resolv.conf, which lists resolved's real upstreams (the
  file /etc/resolv.conf usually points to, stub-resolv.conf, lists only the 127.0.0.53 stub); when it is
  missing, the output of `resolvectl dns` (per-link DNS).

Loopback stubs (systemd-resolved's 127.0.0.53, a local unbound) are not the upstream resolver and cannot
be protected with IPsec, so discovery leaves them out.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from .config import Address, Config

RESOLV_CONF = Path("/etc/resolv.conf")
RESOLVED_RESOLV_CONF = Path("/run/systemd/resolve/resolv.conf")
NM_RESOLV_CONF = Path("/run/NetworkManager/resolv.conf")

# The dispatcher variables that carry resolvers, device first, then DHCP, then VPN.
DISPATCHER_NAMESERVER_VARS = (
    "IP4_NAMESERVERS", "IP6_NAMESERVERS", "DHCP4_DOMAIN_NAME_SERVERS", "DHCP6_DHCP6_NAME_SERVERS",
    "VPN_IP4_NAMESERVERS", "VPN_IP6_NAMESERVERS",
)


class MalformedNameservers(ValueError):
    """A dispatcher variable held something that is not a list of addresses."""


def _address(text: str) -> Address | None:
    """One resolver address as resolv.conf or resolvectl print it; None when it is not one."""
    text = text.split("#", 1)[0]  # resolvectl: 1.1.1.1#cloudflare-dns.com (the DoT server name)
    bracketed = re.fullmatch(r"\[([^\]]+)\](?::\d+)?", text)  # resolvectl: [2001:db8::1]:853
    if bracketed:
        text = bracketed.group(1)
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]  # 192.0.2.1:853
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])  # fe80::1%eth0: the scope is not ours
    except ValueError:
        return None


def _usable(found: Iterable[Address | None]) -> tuple[Address, ...]:
    kept: list[Address] = []
    for addr in found:
        if addr is not None and not addr.is_loopback and not addr.is_unspecified and addr not in kept:
            kept.append(addr)
    return tuple(kept)


def merge(*groups: Iterable[Address]) -> tuple[Address, ...]:
    """The groups in order, each address once, loopback and unspecified left out."""
    return _usable(addr for group in groups for addr in group)


def from_resolv_conf(text: str) -> tuple[Address, ...]:
    found: list[Address | None] = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            found.append(_address(fields[1]))
    return _usable(found)


def from_dispatcher_env(env: Mapping[str, str]) -> tuple[Address, ...]:
    """The resolvers in NetworkManager's dispatcher environment. A variable that is set but holds
    something other than addresses raises MalformedNameservers: the caller must not guess."""
    found: list[Address] = []
    for name in DISPATCHER_NAMESERVER_VARS:
        for word in env.get(name, "").split():
            addr = _address(word)
            if addr is None:
                raise MalformedNameservers(f"{name}={env[name]!r}: {word!r} is not an IP address")
            found.append(addr)
    return _usable(found)


def from_resolvectl_dns(text: str, link: str | None = None) -> tuple[Address, ...]:
    """`resolvectl dns` output: a `Global:` line and one `Link N (IFACE):` line each, addresses after the
    colon. With `link`, only that interface's servers (and the global ones) are taken."""
    found: list[Address | None] = []
    for line in text.splitlines():
        head, sep, servers = line.partition(":")
        if not sep:
            continue
        head = head.strip()
        link_name = re.fullmatch(r"Link \d+ \((.+)\)", head)
        if head != "Global" and link_name is None:
            continue
        if link is not None and link_name is not None and link_name.group(1) != link:
            continue
        found += [_address(word) for word in servers.split()]
    return _usable(found)


def resolvectl_dns(timeout: float = 2.0) -> str | None:
    """`resolvectl dns`, or None when resolvectl is missing, fails or is slow (resolved not running)."""
    try:
        proc = subprocess.run(["resolvectl", "dns"], capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def from_systemd_resolved(resolved_conf: Path = RESOLVED_RESOLV_CONF,
                          resolvectl: Callable[[], str | None] = resolvectl_dns) -> tuple[Address, ...]:
    text = _read(resolved_conf)
    if text is not None:
        return from_resolv_conf(text)
    output = resolvectl()
    return from_resolvectl_dns(output) if output is not None else ()


def discover(config: Config, resolv_conf: Path = RESOLV_CONF, *, dispatcher_env: Mapping[str, str] | None = None,
             nm_resolv_conf: Path = NM_RESOLV_CONF, resolved_conf: Path = RESOLVED_RESOLV_CONF,
             resolvectl: Callable[[], str | None] = resolvectl_dns) -> tuple[Address, ...]:
    """The configured resolvers, or those the discovery sources name, in the configured order.
    Raises MalformedNameservers when `dispatcher_env` is malformed."""
    if config.resolvers:
        return config.resolvers
    groups: list[tuple[Address, ...]] = []
    for source in config.discover:
        if source == "resolv.conf":
            groups.append(from_resolv_conf(_read(resolv_conf) or ""))
        elif source == "networkmanager":
            if dispatcher_env is not None:
                groups.append(from_dispatcher_env(dispatcher_env))
            else:
                groups.append(from_resolv_conf(_read(nm_resolv_conf) or ""))
        elif source == "systemd-resolved":
            groups.append(from_systemd_resolved(resolved_conf, resolvectl))
    return merge(*groups)
