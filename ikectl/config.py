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
    # or, alone in the table: the pin `ikectl trust add NAME` made from verified attestation evidence
    # attested = "NAME"

    [coffee_shop]
    ike_timeout_ms = 300                # no IKE answer by then: DNS passes in clear
    retry_after_s = 60                  # and IKE is tried again after this long
    liveness_ms = 1000                  # an idle SA is checked this often (whole seconds: pluto counts in seconds);
                                        # a resolver whose IPsec died is dropped

    [ipsec]
    sa_lifetime_s = 28800               # Child SA lifetime (rekeyed a third before its end); default libreswan's
    encapsulation = false               # true: ESP always in UDP port 4500 (RFC 3948), as a resolver whose ESP
                                        # ends in userspace needs (enclave-ike's apply.mode = "userspace")
    trusted_liveness_s = 1              # trusted: an SA is checked (RFC 7296 2.4) when it has heard nothing this long
    trusted_dead_after_ms = 3000        # trusted: no answer to the check (or to IKE) this long: the resolver's IKE
                                        # SA is dead, and IKE starts again while DNS is held; a replica behind the
                                        # same address with the same key takes over (docs/scale-out.md)

    [paths]
    run_dir = "/run/ikectl"             # the rendered tree, pluto's NSS db, socket and log, ikectl's state
    log_dir = "/var/log/ikectl"         # the logs of the last two runs, kept when `down` removes the run dir
    trust_dir = "/var/lib/ikectl/trust" # `ikectl trust` pins (truststore.py)

    [trust]                             # `ikectl trust` (docs/attestation.md)
    interval_s = 3600                   # re-attest each pin this often (trust.reattest_due)
    timeout_s = 10                      # to fetch evidence or a governance feed
    release_key = "/etc/ikectl/release-key.pem"  # the key that signs governance feeds (Ed25519 or P-256)
    feed_ca_file = "/etc/ikectl/feed-ca.pem"     # CAs for the feed's https; default: the system's
    # --anchors vendor trusts the roots that ship with ikectl (docs/attestation.md); these replace them:
    # intel_root = "/etc/ikectl/intel-sgx-root.pem"   # for TDX evidence: this root instead
    # amd_arks = ["/etc/ikectl/ark-milan.pem"]        # for SEV-SNP evidence: these ARKs only ([] trusts none)
    collateral_grace_days = 0           # TDX: accept Intel's collateral this long past its nextUpdate, with a note
    tdx_tcb_statuses = ["UpToDate"]     # TDX: the platform TCB statuses accepted (others: with a note; never Revoked)
    # snp_minimum_tcb = { bootloader = 2, tee = 0, snp = 5, microcode = 68 }  # SEV-SNP: REPORTED_TCB at least this
    # snp_vmpl = 0                      # SEV-SNP: the VMPL reports must come from (default: any)

Per-network policy, for `ikectl nm-dispatch` (docs/networkmanager.md):

    default_mode = "coffee-shop"        # networks no [[networks]] entry matches; defaults to `mode`
    default_pin = "home"                # needed when default_mode = "trusted" and there is no [trusted]

    [[networks]]                        # first match wins; every key given must match
    uuid = "3fd2a33a-d81b-423f-ae99-e6baba742311"   # and/or: id = "Home Wi-Fi", ssid = "home-net"
    mode = "trusted"
    pin = "home"                        # a [pins.NAME] table

    [pins.home]                         # like [trusted]: address, id, pubkey or pubkey_file, key_type
    address = "192.0.2.53"
    id = "@dns.example.net"
    pubkey = "0sGzgN..."

    [portal]
    allow_minutes = 0                   # trusted networks: open DNS in clear this long for a captive portal

    [nm]
    budget_s = 10                       # the hook's whole call; NetworkManager holds pre-up for it
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

from ikecommon import keys, tomlfile

from . import truststore
from .errors import UsageError

DEFAULT_PATH = Path("/etc/ikectl/ikectl.toml")
DEFAULT_RUN_DIR = Path("/run/ikectl")
DEFAULT_LOG_DIR = Path("/var/log/ikectl")
UNIX_PATH_MAX = 108  # sun_path, with its terminating NUL
DISCOVERY_SOURCES = ("resolv.conf",)
KNOWN_DISCOVERY_SOURCES = ("resolv.conf", "networkmanager", "systemd-resolved")

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
    if addr.is_unspecified or addr.is_multicast or (addr.version == 4 and addr.is_reserved):
        raise ConfigError(f"{where}: {value} cannot be a resolver")
    if getattr(addr, "scope_id", None):
        raise ConfigError(f"{where}: {value}: a scoped address (%IFACE) cannot be a resolver here")
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        raise ConfigError(f"{where}: {value}: an IPv4-mapped address: give the IPv4 address {addr.ipv4_mapped}")
    return addr


def listed_resolver(value: object, where: str) -> Address:
    """A resolver of [resolvers] addresses: one whose DNS leaves this host over an uplink."""
    addr = address(value, where)
    if addr.is_loopback:
        raise ConfigError(f"{where}: {value}: a loopback address: DNS to it never leaves this host (list the "
                          "resolver a local stub forwards to)")
    if addr.is_link_local:
        raise ConfigError(f"{where}: {value}: a link-local address needs its interface, which IPsec here cannot use")
    return addr


@dataclass(frozen=True)
class TrustedResolver:
    """One resolver service: its ID and key, at `address` and, when it answers at several (anycast, a second
    family, a load balancer's other address), at each of `also` too."""

    address: Address
    id: str
    key: keys.PinnedKey
    attested: str | None = None  # the trust-store pin this came from, if any
    also: tuple[Address, ...] = ()

    @property
    def addresses(self) -> tuple[Address, ...]:
        return (self.address, *self.also)


@dataclass(frozen=True)
class TrustSettings:
    """[trust]: how often pins are re-attested, and what evidence and governance feeds are checked against."""

    interval_s: int = 3600
    timeout_s: int = 10
    release_key: Path | None = None  # PEM public key that signs governance feeds
    feed_ca_file: Path | None = None  # CA certificates for the feed's https (None: the system's)
    intel_root: Path | None = None  # Intel SGX Root CA, PEM (None: the shipped one)
    amd_arks: tuple[Path, ...] | None = None  # AMD root keys, PEM (None: the shipped ARKs)
    collateral_grace_days: int = 0  # TDX collateral accepted this long past its nextUpdate (docs/attestation.md)
    tdx_tcb_statuses: tuple[str, ...] = ("UpToDate",)
    snp_minimum_tcb: tuple[tuple[str, int], ...] | None = None  # (component, SVN); fmc for Turin
    snp_vmpl: int | None = None


@dataclass(frozen=True)
class CoffeeShop:
    ike_timeout_ms: int = 300
    retry_after_s: int = 60
    liveness_ms: int = 1000


@dataclass(frozen=True)
class Pin:
    """A named trusted resolver ([pins.NAME]) that [[networks]] entries refer to."""

    name: str
    resolver: TrustedResolver


@dataclass(frozen=True)
class NetworkRule:
    """One [[networks]] entry: it matches when every key it gives matches the connection."""

    mode: Mode
    uuid: str | None = None
    id: str | None = None
    ssid: str | None = None
    pin: str | None = None  # names a Pin; set exactly when mode is trusted

    def matches(self, uuid: str | None, conn_id: str | None, ssid: str | None) -> bool:
        wanted = ((self.uuid, uuid.lower() if uuid else None), (self.id, conn_id), (self.ssid, ssid))
        return all(want is None or want == have for want, have in wanted)

    def describe(self) -> str:
        keys_given = (("uuid", self.uuid), ("id", self.id), ("ssid", self.ssid))
        return " ".join(f"{k}={v!r}" for k, v in keys_given if v is not None)


@dataclass(frozen=True)
class Portal:
    allow_minutes: int = 0  # 0: a captive portal on a trusted network waits for `ikectl portal allow`


NM_BUDGET_S = (2, 120)  # nm-dispatcher runs one script at a time: a long budget holds every later event


@dataclass(frozen=True)
class NmSettings:
    budget_s: int = 10  # `ikectl nm-dispatch` gives up (fails closed on a trusted network) after this long


@dataclass(frozen=True)
class Config:
    mode: Mode = Mode.COFFEE_SHOP
    resolvers: tuple[Address, ...] = ()
    discover: tuple[str, ...] = DISCOVERY_SOURCES
    trusted: TrustedResolver | None = None
    coffee_shop: CoffeeShop = field(default_factory=CoffeeShop)
    run_dir: Path = DEFAULT_RUN_DIR
    log_dir: Path = DEFAULT_LOG_DIR  # a run's logs go to log_dir/last when its run dir is removed (runlogs.py)
    default_mode: Mode = Mode.COFFEE_SHOP
    default_pin: str | None = None  # None with default_mode trusted: the [trusted] table
    networks: tuple[NetworkRule, ...] = ()
    pins: tuple[Pin, ...] = ()
    portal: Portal = field(default_factory=Portal)
    nm: NmSettings = field(default_factory=NmSettings)
    attested: str | None = None  # [trusted] attested = "NAME" (trusted is None when that pin cannot be read)
    trust_dir: Path = truststore.DEFAULT_TRUST_DIR
    trust: TrustSettings = field(default_factory=TrustSettings)
    sa_lifetime_s: int | None = None  # None: libreswan's default
    encapsulation: bool = False  # ESP in UDP even without a NAT ([ipsec] encapsulation)
    trusted_liveness_s: int = 1
    trusted_dead_after_ms: int = 3000

    def pin(self, name: str) -> TrustedResolver:
        for pin in self.pins:
            if pin.name == name:
                return pin.resolver
        raise ConfigError(f"no [pins.{name}] table")  # from_mapping checks every reference; this is a bug guard


def load(path: Path = DEFAULT_PATH) -> Config:
    return from_mapping(tomlfile.read(path, ConfigError), str(path))


def from_mapping(data: Mapping[str, Any], source: str) -> Config:
    _only(data, {"mode", "resolvers", "trusted", "coffee_shop", "paths", "default_mode", "default_pin", "networks",
                 "pins", "portal", "ipsec", "trust", "nm"}, source)
    mode_name = data.get("mode", Mode.COFFEE_SHOP.value)
    try:
        mode = Mode(mode_name)
    except ValueError:
        raise ConfigError(f"{source}: mode = {mode_name!r}: expected 'coffee-shop' or 'trusted'") from None

    resolvers_table = _table(data, "resolvers", source)
    _only(resolvers_table, {"addresses", "discover"}, f"{source}: [resolvers]")
    addresses = tuple(dict.fromkeys(  # listed twice is listed once
        listed_resolver(a, f"{source}: resolvers.addresses[{i}]")
        for i, a in enumerate(_list(resolvers_table, "addresses", f"{source}: [resolvers]"))))
    discover = tuple(_list(resolvers_table, "discover", f"{source}: [resolvers]", list(DISCOVERY_SOURCES)))
    for i, name in enumerate(discover):
        if name not in KNOWN_DISCOVERY_SOURCES:
            raise ConfigError(f"{source}: resolvers.discover[{i}] = {name!r}: known sources are "
                              f"{', '.join(KNOWN_DISCOVERY_SOURCES)}")

    trust_dir, trust = _trust(data, source)
    trusted, attested = None, None
    if "trusted" in data:
        trusted, attested = _trusted_or_attested(_table(data, "trusted", source), source, trust_dir)
    if mode == Mode.TRUSTED and trusted is None and attested is None:
        raise ConfigError(f"{source}: mode = 'trusted' needs a [trusted] table (address, id, pubkey)")

    cs_table = _table(data, "coffee_shop", source)
    _only(cs_table, {"ike_timeout_ms", "retry_after_s", "liveness_ms"}, f"{source}: [coffee_shop]")
    coffee = CoffeeShop(ike_timeout_ms=_int(cs_table, "ike_timeout_ms", 300, 100, 10_000, f"{source}: coffee_shop"),
                        retry_after_s=_int(cs_table, "retry_after_s", 60, 5, 86_400, f"{source}: coffee_shop"),
                        liveness_ms=_whole_seconds_ms(cs_table, "liveness_ms", f"{source}: coffee_shop"))
    paths = _table(data, "paths", source)
    _only(paths, {"run_dir", "log_dir", "trust_dir"}, f"{source}: [paths]")
    run_dir = _own_dir(paths.get("run_dir", DEFAULT_RUN_DIR), f"{source}: paths.run_dir", DEFAULT_RUN_DIR)
    control = run_dir / "pluto" / "pluto.ctl"
    if len(str(control).encode()) >= UNIX_PATH_MAX:
        raise ConfigError(f"{source}: paths.run_dir = {str(run_dir)!r}: too long: pluto's control socket "
                          f"{control} must fit in a unix socket's {UNIX_PATH_MAX - 1} bytes")
    log_dir = (_own_dir(paths["log_dir"], f"{source}: paths.log_dir", DEFAULT_LOG_DIR) if "log_dir" in paths
               else default_log_dir())
    if log_dir == run_dir or run_dir in log_dir.parents or log_dir in run_dir.parents:
        raise ConfigError(f"{source}: paths.log_dir = {str(log_dir)!r}: must be apart from paths.run_dir "
                          f"({run_dir}): `down` removes the run dir, and the logs must outlive it")
    pins = _pins(_table(data, "pins", source), source)
    default_mode, default_pin = _default_policy(data, mode, trusted is not None or attested is not None, pins,
                                                source)
    networks = _networks(data.get("networks", []), pins, source)
    portal_table = _table(data, "portal", source)
    _only(portal_table, {"allow_minutes"}, f"{source}: [portal]")
    portal = Portal(allow_minutes=_int(portal_table, "allow_minutes", 0, 0, 120, f"{source}: portal"))
    nm_table = _table(data, "nm", source)
    _only(nm_table, {"budget_s"}, f"{source}: [nm]")
    nm = NmSettings(budget_s=_int(nm_table, "budget_s", NmSettings.budget_s, *NM_BUDGET_S, f"{source}: nm"))
    ipsec_table = _table(data, "ipsec", source)
    _only(ipsec_table, {"sa_lifetime_s", "encapsulation", "trusted_liveness_s", "trusted_dead_after_ms"},
          f"{source}: [ipsec]")
    sa_lifetime = (_int(ipsec_table, "sa_lifetime_s", 0, 30, 86_400, f"{source}: ipsec")
                   if "sa_lifetime_s" in ipsec_table else None)
    encapsulation = ipsec_table.get("encapsulation", False)
    if not isinstance(encapsulation, bool):
        raise ConfigError(f"{source}: ipsec.encapsulation = {encapsulation!r}: expected true or false")
    liveness = _int(ipsec_table, "trusted_liveness_s", 1, 1, 600, f"{source}: ipsec")
    dead_after = _int(ipsec_table, "trusted_dead_after_ms", 3000, 1000, 600_000, f"{source}: ipsec")
    return Config(mode=mode, resolvers=addresses, discover=discover, trusted=trusted, coffee_shop=coffee,
                  run_dir=run_dir, log_dir=log_dir, default_mode=default_mode, default_pin=default_pin,
                  networks=networks, pins=pins, portal=portal, nm=nm, sa_lifetime_s=sa_lifetime, attested=attested,
                  trust_dir=trust_dir, trust=trust, encapsulation=encapsulation, trusted_liveness_s=liveness,
                  trusted_dead_after_ms=dead_after)


def default_log_dir() -> Path:
    """Where a run's logs are kept when the config does not say: /var/log/ikectl, or $IKECTL_LOG_DIR (the test
    suites point it at a scratch directory); also `down`'s when the config cannot be read."""
    value = os.environ.get("IKECTL_LOG_DIR")
    return _own_dir(value, "IKECTL_LOG_DIR", DEFAULT_LOG_DIR) if value else DEFAULT_LOG_DIR


def _own_dir(value: object, where: str, example: Path) -> Path:
    """A directory of ikectl's own: an absolute path, two levels down at least, without '..'."""
    path = Path(str(value))
    if not path.is_absolute() or ".." in path.parts or len(path.parts) < 3:
        raise ConfigError(f"{where} = {str(path)!r}: must be an absolute path two levels down at least, without "
                          f"'..' (a directory of ikectl's own, such as {example})")
    return path


_PIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _pins(table: Mapping[str, Any], source: str) -> tuple[Pin, ...]:
    pins = []
    for name, body in table.items():
        if not _PIN_NAME.match(name):
            raise ConfigError(f"{source}: [pins.{name}]: a pin name is letters, digits, '.', '_' and '-'")
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: pins.{name} must be a table ([pins.{name}])")
        pins.append(Pin(name, _trusted(body, source, f"[pins.{name}]")))
    return tuple(pins)


def _mode(value: object, where: str) -> Mode:
    try:
        return Mode(value)
    except ValueError:
        raise ConfigError(f"{where} = {value!r}: expected 'coffee-shop' or 'trusted'") from None


def _pin_reference(value: object, pins: tuple[Pin, ...], where: str) -> str:
    if not isinstance(value, str) or value not in {p.name for p in pins}:
        known = ", ".join(p.name for p in pins) or "none defined"
        raise ConfigError(f"{where} = {value!r}: no such [pins.NAME] table (known: {known})")
    return value


def _default_policy(data: Mapping[str, Any], mode: Mode, has_trusted: bool, pins: tuple[Pin, ...],
                    source: str) -> tuple[Mode, str | None]:
    # Without default_mode, unknown networks keep `mode`: a trusted-everywhere config must not turn
    # into coffee-shop just because the NetworkManager hook was installed.
    default_mode = _mode(data["default_mode"], f"{source}: default_mode") if "default_mode" in data else mode
    if "default_pin" in data:
        if default_mode != Mode.TRUSTED:
            raise ConfigError(f"{source}: default_pin belongs to default_mode = 'trusted'")
        return default_mode, _pin_reference(data["default_pin"], pins, f"{source}: default_pin")
    if default_mode == Mode.TRUSTED and not has_trusted:
        raise ConfigError(f"{source}: default_mode = 'trusted' needs default_pin or a [trusted] table")
    return default_mode, None


def _networks(entries: object, pins: tuple[Pin, ...], source: str) -> tuple[NetworkRule, ...]:
    if not isinstance(entries, list):
        raise ConfigError(f"{source}: networks must be an array of tables ([[networks]])")
    rules = []
    for i, entry in enumerate(entries):
        where = f"{source}: networks[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: must be a table ([[networks]])")
        _only(entry, {"uuid", "id", "ssid", "mode", "pin"}, where)
        match = {}
        for key in ("uuid", "id", "ssid"):
            if key in entry:
                if not isinstance(entry[key], str) or not entry[key]:
                    raise ConfigError(f"{where}.{key} = {entry[key]!r}: expected a non-empty string")
                match[key] = entry[key]
        if not match:
            raise ConfigError(f"{where}: give at least one of 'uuid', 'id' and 'ssid' to match the network by")
        if "uuid" in match:
            match["uuid"] = _uuid(match["uuid"], f"{where}.uuid")
        if "mode" not in entry:
            raise ConfigError(f"{where}: missing 'mode' ('coffee-shop' or 'trusted')")
        mode = _mode(entry["mode"], f"{where}.mode")
        pin = None
        if mode == Mode.TRUSTED:
            if "pin" not in entry:
                raise ConfigError(f"{where}: mode = 'trusted' needs pin = \"NAME\" (a [pins.NAME] table)")
            pin = _pin_reference(entry["pin"], pins, f"{where}.pin")
        elif "pin" in entry:
            raise ConfigError(f"{where}: pin belongs to mode = 'trusted'")
        rules.append(NetworkRule(mode=mode, pin=pin, **match))
    return tuple(rules)


_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _uuid(value: str, where: str) -> str:
    if not _UUID.match(value.lower()):
        raise ConfigError(f"{where} = {value!r}: not a connection UUID (see `nmcli -f NAME,UUID connection`)")
    return value.lower()


def _trusted_or_attested(table: Mapping[str, Any], source: str,
                         trust_dir: Path) -> tuple[TrustedResolver | None, str | None]:
    """[trusted]: a key given here, or `attested = "NAME"`, a trust-store pin. A pin that cannot be read gives
    (None, NAME): the config still loads (`ikectl trust add NAME` needs it to), and `ikectl up` says what is wrong."""
    if "attested" not in table:
        return _trusted(table, source), None
    _only(table, {"attested"}, f"{source}: [trusted] with attested")
    name = table["attested"]
    if not isinstance(name, str) or not _PIN_NAME.match(name):
        raise ConfigError(f"{source}: trusted.attested = {name!r}: expected a pin name (see `ikectl trust list`)")
    try:
        pin = truststore.load(trust_dir, name)
    except truststore.TrustError:
        return None, name
    return TrustedResolver(pin.address, pin.id, pin.key, attested=name, also=pin.also), name


def _trust(data: Mapping[str, Any], source: str) -> tuple[Path, TrustSettings]:
    where = f"{source}: trust"
    trust_dir = _absolute(_table(data, "paths", source).get("trust_dir", truststore.DEFAULT_TRUST_DIR),
                          f"{source}: paths.trust_dir")
    table = _table(data, "trust", source)
    _only(table, {"interval_s", "timeout_s", "release_key", "feed_ca_file", "intel_root", "amd_arks",
                  "collateral_grace_days", "tdx_tcb_statuses", "snp_minimum_tcb", "snp_vmpl"}, f"{source}: [trust]")
    files = {key: _absolute(table[key], f"{where}.{key}") if key in table else None
             for key in ("release_key", "feed_ca_file", "intel_root")}
    arks = (tuple(_absolute(p, f"{where}.amd_arks[{i}]") for i, p in enumerate(_list(table, "amd_arks", where)))
            if "amd_arks" in table else None)
    return trust_dir, TrustSettings(interval_s=_int(table, "interval_s", 3600, 60, 7 * 86_400, where),
                                    timeout_s=_int(table, "timeout_s", 10, 1, 120, where),
                                    release_key=files["release_key"], feed_ca_file=files["feed_ca_file"],
                                    intel_root=files["intel_root"], amd_arks=arks,
                                    collateral_grace_days=_int(table, "collateral_grace_days", 0, 0, 90, where),
                                    tdx_tcb_statuses=_tcb_statuses(table, where),
                                    snp_minimum_tcb=_snp_minimum_tcb(table, where),
                                    snp_vmpl=_int(table, "snp_vmpl", 0, 0, 3, where) if "snp_vmpl" in table else None)


# Intel's TCB statuses a platform may be accepted at; "Revoked" never is.
TDX_TCB_STATUSES = ("UpToDate", "SWHardeningNeeded", "ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded",
                    "OutOfDate", "OutOfDateConfigurationNeeded")


SNP_TCB_COMPONENTS = ("bootloader", "tee", "snp", "microcode")  # and "fmc", Turin's


def _snp_minimum_tcb(table: Mapping[str, Any], where: str) -> tuple[tuple[str, int], ...] | None:
    if "snp_minimum_tcb" not in table:
        return None
    value, key = table["snp_minimum_tcb"], f"{where}.snp_minimum_tcb"
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a table such as {{ bootloader = 2, tee = 0, snp = 5, microcode = 68 }}")
    missing = [name for name in SNP_TCB_COMPONENTS if name not in value]
    unknown = [name for name in value if name not in (*SNP_TCB_COMPONENTS, "fmc")]
    if missing or unknown:
        raise ConfigError(f"{key}: expected {', '.join(SNP_TCB_COMPONENTS)} (and fmc for Turin)"
                          + (f"; missing {', '.join(missing)}" if missing else "")
                          + (f"; unknown {', '.join(map(repr, unknown))}" if unknown else ""))
    return tuple((name, _int(value, name, 0, 0, 255, key)) for name in (*SNP_TCB_COMPONENTS, "fmc") if name in value)


def _tcb_statuses(table: Mapping[str, Any], where: str) -> tuple[str, ...]:
    statuses = _list(table, "tdx_tcb_statuses", where, ["UpToDate"])
    for status in statuses:
        if status not in TDX_TCB_STATUSES:
            raise ConfigError(f"{where}.tdx_tcb_statuses: {status!r} is not a TCB status to accept (one of "
                              f"{', '.join(TDX_TCB_STATUSES)})")
    if not statuses:
        raise ConfigError(f"{where}.tdx_tcb_statuses is empty: no TDX platform would ever be accepted")
    return tuple(dict.fromkeys(statuses))


def _absolute(value: object, where: str) -> Path:
    if not isinstance(value, str | Path) or not Path(value).is_absolute():
        raise ConfigError(f"{where} = {str(value)!r}: expected an absolute path")
    return Path(value)


def _trusted(table: Mapping[str, Any], source: str, name: str = "[trusted]") -> TrustedResolver:
    where = f"{source}: {name}"
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
    first, *also = addresses(table["address"], f"{where}: address")
    return TrustedResolver(address=first, id=resolver_id(str(table["id"]), f"{where}: id"), key=key,
                           also=tuple(also))


def addresses(value: object, where: str) -> tuple[Address, ...]:
    """One resolver's address, or its several as a list: each one once."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ConfigError(f"{where}: an empty list: give the resolver's address")
    if len(items) > truststore.MAX_ADDRESSES:
        raise ConfigError(f"{where}: {len(items)} addresses: one resolver takes at most {truststore.MAX_ADDRESSES}")
    found = tuple(address(item, f"{where}[{i}]" if isinstance(value, list) else where) for i, item in enumerate(items))
    repeated = [a for i, a in enumerate(found) if a in found[:i]]
    if repeated:
        raise ConfigError(f"{where}: {repeated[0]} is listed twice")
    return found


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


def _whole_seconds_ms(table: Mapping[str, Any], key: str, where: str) -> int:
    """A liveness interval in ms that libreswan 4.10 honours: it counts dpddelay in whole seconds, and one under a
    second turns liveness off."""
    value = _int(table, key, 1000, 1000, 600_000, where)
    if value % 1000:
        raise ConfigError(f"{where}.{key} = {value}: expected whole seconds (1000, 2000, ...): pluto counts "
                          "liveness in seconds")
    return value


def _int(table: Mapping[str, Any], name: str, default: int, low: int, high: int, where: str) -> int:
    value = table.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"{where}.{name} = {value!r}: expected a whole number from {low} to {high}")
    return value
