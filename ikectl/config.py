"""ikectl's configuration: /etc/ikectl/ikectl.toml into typed dataclasses, validated before anything is
rendered or touched. Every error names the file and the key, and is a ConfigError (exit code 2).

    mode = "coffee-shop"                # or "trusted"

    [resolvers]
    addresses = []                      # explicit resolvers; when empty they are discovered
    discover = ["resolv.conf"]          # where to discover them, in order

    [trusted]                           # needed when mode = "trusted"
    address = "192.0.2.53"
    id = "@dns.example.net"             # the resolver's IKE ID
    pubkey = "0sGzgN..."                # its raw key, or:
    pubkey_file = "/etc/ikectl/pins/dns.example.net.pub"

    [coffee_shop]
    ike_timeout_ms = 300                # no IKE answer by then: DNS passes in clear
    retry_after_s = 60                  # and IKE is tried again after this long
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

from . import keys
from .errors import UsageError

DEFAULT_PATH = Path("/etc/ikectl/ikectl.toml")
DISCOVERY_SOURCES = ("resolv.conf",)

Address = IPv4Address | IPv6Address


class ConfigError(UsageError):
    """The configuration is wrong: nothing was rendered or touched."""


class Mode(Enum):
    COFFEE_SHOP = "coffee-shop"
    TRUSTED = "trusted"


# An IKE ID libreswan accepts here: @FQDN, an IP address, or a DN-less keyid. Anything else (spaces,
# quotes, newlines) could break out of the conn section it is rendered into.
_FQDN_ID = re.compile(r"^@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}"
                      r"[A-Za-z0-9])?)*\.?$")


def resolver_id(value: str, where: str) -> str:
    if _FQDN_ID.match(value):
        return value
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ConfigError(f"{where}: {value!r} is not an IKE ID (use @name.example or an IP address)") from None


def address(value: object, where: str) -> Address:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected an IP address as a string, got {type(value).__name__}")
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError(f"{where}: {value!r} is not an IP address") from None
    if addr.is_unspecified or addr.is_multicast:
        raise ConfigError(f"{where}: {value} cannot be a resolver")
    return addr


@dataclass(frozen=True)
class TrustedResolver:
    address: Address
    id: str
    key: keys.PinnedKey


@dataclass(frozen=True)
class CoffeeShop:
    ike_timeout_ms: int = 300
    retry_after_s: int = 60


@dataclass(frozen=True)
class Config:
    mode: Mode = Mode.COFFEE_SHOP
    resolvers: tuple[Address, ...] = ()
    discover: tuple[str, ...] = DISCOVERY_SOURCES
    trusted: TrustedResolver | None = None
    coffee_shop: CoffeeShop = field(default_factory=CoffeeShop)


def load(path: Path = DEFAULT_PATH) -> Config:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return from_mapping(data, str(path))


def from_mapping(data: Mapping[str, Any], source: str) -> Config:
    _only(data, {"mode", "resolvers", "trusted", "coffee_shop"}, source)
    mode_name = data.get("mode", Mode.COFFEE_SHOP.value)
    try:
        mode = Mode(mode_name)
    except ValueError:
        raise ConfigError(f"{source}: mode = {mode_name!r}: expected 'coffee-shop' or 'trusted'") from None

    resolvers_table = _table(data, "resolvers", source)
    _only(resolvers_table, {"addresses", "discover"}, f"{source}: [resolvers]")
    addresses = tuple(address(a, f"{source}: resolvers.addresses[{i}]")
                      for i, a in enumerate(_list(resolvers_table, "addresses", f"{source}: [resolvers]")))
    discover = tuple(_list(resolvers_table, "discover", f"{source}: [resolvers]", list(DISCOVERY_SOURCES)))
    for i, name in enumerate(discover):
        if name not in DISCOVERY_SOURCES:
            raise ConfigError(f"{source}: resolvers.discover[{i}] = {name!r}: known sources are "
                              f"{', '.join(DISCOVERY_SOURCES)}")

    trusted = None
    if "trusted" in data:
        trusted = _trusted(_table(data, "trusted", source), source)
    if mode == Mode.TRUSTED and trusted is None:
        raise ConfigError(f"{source}: mode = 'trusted' needs a [trusted] table (address, id, pubkey)")

    cs_table = _table(data, "coffee_shop", source)
    _only(cs_table, {"ike_timeout_ms", "retry_after_s"}, f"{source}: [coffee_shop]")
    coffee = CoffeeShop(ike_timeout_ms=_int(cs_table, "ike_timeout_ms", 300, 100, 10_000, f"{source}: coffee_shop"),
                        retry_after_s=_int(cs_table, "retry_after_s", 60, 5, 86_400, f"{source}: coffee_shop"))
    return Config(mode=mode, resolvers=addresses, discover=discover, trusted=trusted, coffee_shop=coffee)


def _trusted(table: Mapping[str, Any], source: str) -> TrustedResolver:
    where = f"{source}: [trusted]"
    _only(table, {"address", "id", "pubkey", "pubkey_file", "key_type"}, where)
    for required in ("address", "id"):
        if required not in table:
            raise ConfigError(f"{where}: missing {required!r}")
    if ("pubkey" in table) == ("pubkey_file" in table):
        raise ConfigError(f"{where}: give exactly one of 'pubkey' and 'pubkey_file'")
    kind = table.get("key_type")
    if kind not in (None, "ecdsa", "rsa"):
        raise ConfigError(f"{where}: key_type = {kind!r}: expected 'ecdsa' or 'rsa'")
    try:
        if "pubkey" in table:
            key = keys.parse(str(table["pubkey"]), kind, source=f"{where}: pubkey")
        else:
            key = keys.load(Path(str(table["pubkey_file"])), kind)
    except keys.PinError as exc:
        raise ConfigError(str(exc)) from None
    return TrustedResolver(address=address(table["address"], f"{where}: address"),
                           id=resolver_id(str(table["id"]), f"{where}: id"), key=key)


def _only(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(allowed))})")


def _table(data: Mapping[str, Any], name: str, source: str) -> Mapping[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: {name} must be a table ([{name}])")
    return value


def _list(table: Mapping[str, Any], name: str, where: str, default: list[Any] | None = None) -> list[Any]:
    value = table.get(name, default if default is not None else [])
    if not isinstance(value, list):
        raise ConfigError(f"{where}: {name} must be a list")
    return value


def _int(table: Mapping[str, Any], name: str, default: int, low: int, high: int, where: str) -> int:
    value = table.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"{where}.{name} = {value!r}: expected a whole number from {low} to {high}")
    return value
