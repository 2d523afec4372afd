"""`enclave-ike serve --config FILE`: TOML into typed, frozen dataclasses, validated before anything starts.

    [listen]
    addresses = ["10.77.4.53"]          # required: where IKE is answered (one socket pair per address)
    ike_port = 500                      # IKE
    natt_port = 4500                    # IKE behind NAT, with the non-ESP marker (RFC 3948), and ESP in UDP
    relay = "/run/enclave-ike/relay.sock"   # optional: take the datagrams of `enclave-ike forward` (outside the
                                        # enclave) on this Unix socket instead of binding UDP sockets

    [dns]
    addresses = ["10.77.4.53"]          # what the Child SAs protect (udp/53, tcp/53); default: listen.addresses
    protocols = ["udp", "tcp"]

    [identity]
    backend = "sim"                     # software | sim | tsm
    key_type = "ecdsa-p256"             # ecdsa-p256 | rsa (rsa: software and tsm only)
    id = "@resolver.example"            # "%null" (with auth = "null"), "@fqdn", or an IP address
    auth = "signature"                  # signature (RFC 7427, signed inside the enclave) | null (RFC 7619)
    publish = "/run/enclave-ike/identity.json"   # where serve writes its public identity
    sim_registers = ["<96 hex digits>"]  # sim and software backends: the simulated measurement (1 to 16
                                        # registers of 48 bytes); default: SHA-384 of "enclave-ike simulated
                                        # enclave v1" NUL. A test starts "a different build" with other values
    sim_sign_delay_s = 0                # sim backend: seconds each signature takes (a slow enclave; below 10,
                                        # the sim channel's timeout)

    [peers]
    anonymous = ["null", "raw-key", "certificate"]   # how clients whose key is not pinned may come in, as
                                        # unauthenticated clients: NULL (RFC 7619), or a signature by the raw
                                        # public key (RFC 7670) or certificate they send; [] for a private resolver
    allow_null = true                   # older spelling: true = "null" is in anonymous; false alone = anonymous = []

    [[peers.pinned]]                    # a client key pinned for an identity (any number of tables)
    id = "@client.example"              # @fqdn or an IP address, as the client's IDi says
    pubkey_file = "/etc/enclave-ike/clients/client.pem"   # a PEM public key (ECDSA or RSA), or instead:
    # certificate_file = "/etc/enclave-ike/clients/client-cert.pem"  # a PEM or DER certificate: its key is pinned

    [suites]                            # accepted algorithms, most preferred first (IKE and ESP alike)
    encryption = ["aes-gcm-16-256", "aes-gcm-16-128", "aes-cbc-256", "aes-cbc-128"]
    integrity = ["sha2-256", "sha2-512", "sha2-384"]    # with AES-CBC only
    prf = ["sha2-256", "sha2-384", "sha2-512"]
    groups = ["curve25519", "ecp256", "ecp384", "ecp521", "modp2048"]
    esn = false                         # ikecommon.xfrm installs SAs without ESN

    [apply]
    mode = "kernel"                     # kernel: Child SAs into this namespace's XFRM | userspace: ESP ends in
                                        # enclave-ike (UDP 4500, RFC 3948), DNS goes on to `resolver` | none: log
    resolver = "127.0.0.1:53"           # userspace: the resolver inside the enclave (udp), "address:port"
    query_timeout_s = 5                 # userspace: how long an answer is awaited
    max_queries_in_flight = 1024        # userspace: queries awaiting the resolver at once; past it, dropped

    [limits]
    cookie_threshold = 64               # half-open IKE SAs before COOKIEs are demanded
    max_half_open = 10000               # IKE SAs waiting for IKE_AUTH, in all and per client address: past
    max_half_open_per_peer = 8          #   these a new IKE_SA_INIT is refused (counted in the log)
    max_sas = 100000                    # IKE SAs in all: past it a new IKE_SA_INIT is refused (counted)
    max_sas_per_peer = 32               # established IKE SAs per client address: past it the one heard from
                                        #   least recently is replaced by the newest (counted)
    max_child_sas = 8                   # Child SAs per IKE SA (DNS needs two; rekeys briefly add one each)
    liveness_s = 30                     # a client silent this long is asked whether it is alive (RFC 7296 2.4);
    liveness_timeout_s = 15             #   silent this much longer, its SAs are removed; liveness_s = 0: never

    [privacy]                           # what leaves the enclave (diagnostics.py)
    enabled = true                      # lines naming a client (address, port, ID, SPI, when) stay in a ring in
                                        #   the enclave, dumped to the log only on SIGUSR1 (announced there);
                                        #   the log gets the server's own lines and counts over all clients
    ring_lines = 2000                   # the ring keeps this many newest lines (1 to 1000000)

    [metrics]                           # aggregate metrics (metrics.py): GET /metrics, Prometheus text format
    enabled = true
    port = 9464                         # TCP, on every listen address (behind the forwarder: piped to a socket)
    top_domains = false                 # release the most queried domains: per window, only those at least
    top_n = 10                          #   top_k distinct clients asked for, with Laplace noise of scale
    top_k = 20                          #   1/top_epsilon on the count (topdomains.py)
    top_epsilon = 1.0
    top_window_s = 3600

    [evidence]                          # the evidence endpoint (evidence_endpoint.py), signature auth only
    enabled = true                      # GET /evidence?nonce=HEX and GET /identity over HTTP/1.1
    port = 4501                         # TCP, on every listen address
    collateral_dir = "/var/lib/enclave-ike/collateral"   # Intel's TDX collateral, per FMSPC, that TDX evidence
                                        # is served with (`enclave-ike collateral import|fetch` fill it), and
                                        # AMD's SEV-SNP certificates (`import-vcek|fetch-vcek`)
    intel_root = "/path/to/root.pem"    # the Intel SGX Root CA the collateral must chain to; default: the one
                                        # shipped with enclave-ike

    [release]                           # one identity key for many replicas (release/, docs/scale-out.md)
    source = "new"                      # new: a new key at start | peers: the key of a replica that holds it |
                                        #   kbs: the key from Trustee's key broker (release/kbs.py)
    peers = ["enclave-ike-0.example:4502"]   # source = "peers": who to ask (a name: all its addresses); also
                                        #   who to follow in a rotation (source = "new" may name them for that)
    when_alone = "exit"                 # source = "peers", no peer answers within join_timeout_s: exit (status
                                        #   1) | new-key: start the service's key (the first replica; the last
                                        #   holder died). A peer that answers and refuses never leads to new-key
    founder = "enclave-ike-0"           # with new-key: only the replica whose host name this is may start it
    join_timeout_s = 60
    listen = ["10.0.0.2:4502"]          # where this replica gives the key to others (address[:port]); [] never
    spec = "/etc/enclave-ike/service-spec.json"   # the measurement spec peers must match, both ways (needed
                                        #   with peers or listen)
    anchors = "vendors"                 # vendors: Intel's and AMD's roots | sim: the simulated root (NOT SECURE)
    kbs_resource = "default/enclave-ike/identity-key"   # source = "kbs": repository/type/tag of a PEM PKCS#8 key
    cdh_url = "http://127.0.0.1:8006"   # source = "kbs": the pod's confidential data hub
    rotate_notice_s = 86400             # SIGUSR2 starts a rotation (release/rotation.py): every replica switches
                                        #   to the next key this long after (at most 30 days; at least 3 polls);
                                        #   more than the clients' re-attestation interval (ikectl [trust]
                                        #   interval_s), so that they stage it first
    poll_s = 30                         # how often a replica asks its peers for a rotation's next key

Every mistake is a `ConfigError` (exit status 2) whose one line names the file and the key.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ikecommon import evidence_client, tomlfile
from ikecommon.attestation.errors import AttestationError
from ikecommon.attestation.spec import MeasurementSpec

from .diagnostics import DEFAULT_RING_LINES, MAX_RING_LINES, PrivacyConfig
from .enclave.sim import REPLY_TIMEOUT as SIM_TIMEOUT_S
from .errors import EnclaveIkeError
from .ikev2 import config as ike
from .ikev2.constants import DhGroup, EncrId, IdType, IntegId, PrfId
from .ikev2.crypto import SIGNATURE_SCHEMES, ChildSuite, IkeSuite, PublicKey, SignatureScheme, Signer
from .ikev2.errors import PolicyError
from .relay import socket_path_problem
from .release.kbs import cdh_endpoint
from .topdomains import TopDomainsConfig

Address = IPv4Address | IPv6Address
DEFAULT_PATH = Path("/etc/enclave-ike/enclave-ike.toml")
DEFAULT_PUBLISH = Path("/run/enclave-ike/identity.json")
DEFAULT_EVIDENCE_PORT = evidence_client.DEFAULT_PORT
DEFAULT_COLLATERAL_DIR = Path("/var/lib/enclave-ike/collateral")
SIM_REGISTER_SIZE, SIM_REGISTERS_MAX = 48, 16


class ConfigError(EnclaveIkeError):
    """The config file is missing, unreadable, not TOML, or names a bad value. Nothing was started."""

    exit_code = 2


class Backend(enum.Enum):
    SOFTWARE = "software"
    SIM = "sim"
    TSM = "tsm"


class KeyType(enum.Enum):
    ECDSA_P256 = "ecdsa-p256"
    RSA = "rsa"


class Auth(enum.Enum):
    SIGNATURE = "signature"
    NULL = "null"


class ApplyMode(enum.Enum):
    KERNEL = "kernel"
    USERSPACE = "userspace"
    NONE = "none"


ENCRYPTION: dict[str, tuple[int, int]] = {
    "aes-gcm-16-256": (EncrId.ENCR_AES_GCM_16, 256),
    "aes-gcm-16-128": (EncrId.ENCR_AES_GCM_16, 128),
    "aes-cbc-256": (EncrId.ENCR_AES_CBC, 256),
    "aes-cbc-128": (EncrId.ENCR_AES_CBC, 128),
}
INTEGRITY: dict[str, int] = {
    "sha2-256": IntegId.AUTH_HMAC_SHA2_256_128,
    "sha2-384": IntegId.AUTH_HMAC_SHA2_384_192,
    "sha2-512": IntegId.AUTH_HMAC_SHA2_512_256,
}
PRF: dict[str, int] = {
    "sha2-256": PrfId.PRF_HMAC_SHA2_256,
    "sha2-384": PrfId.PRF_HMAC_SHA2_384,
    "sha2-512": PrfId.PRF_HMAC_SHA2_512,
}
GROUPS: dict[str, int] = {
    "curve25519": DhGroup.CURVE25519,
    "ecp256": DhGroup.ECP_256,
    "ecp384": DhGroup.ECP_384,
    "ecp521": DhGroup.ECP_521,
    "modp2048": DhGroup.MODP_2048,
}
PROTOCOLS: dict[str, int] = {"udp": ike.IP_PROTO_UDP, "tcp": ike.IP_PROTO_TCP}


@dataclass(frozen=True)
class Listen:
    addresses: tuple[Address, ...]
    ike_port: int = 500
    natt_port: int = 4500
    relay: Path | None = None  # the forwarder's Unix socket, instead of UDP sockets


DEFAULT_METRICS_PORT = 9464


@dataclass(frozen=True)
class MetricsConfig:
    """[metrics]: the endpoint, and what the top-domains release may contain."""

    enabled: bool = True
    port: int = DEFAULT_METRICS_PORT
    top: TopDomainsConfig = field(default_factory=TopDomainsConfig)


@dataclass(frozen=True)
class Userspace:
    """apply.mode = "userspace": where decrypted DNS goes, and how much of it may wait."""

    resolver: ike.Endpoint = field(default_factory=lambda: ike.Endpoint(IPv4Address("127.0.0.1"), 53))
    query_timeout_s: float = 5.0
    max_queries_in_flight: int = 1024


@dataclass(frozen=True)
class IdentityConfig:
    backend: Backend = Backend.SIM
    key_type: KeyType = KeyType.ECDSA_P256
    id: str = "%null"
    auth: Auth = Auth.NULL
    publish: Path = DEFAULT_PUBLISH
    sim_registers: tuple[bytes, ...] = ()  # () : the backend's default measurement
    sim_sign_delay_s: float = 0.0  # the sim enclave waits this long before each signature (a slow enclave)

    @property
    def ike_identity(self) -> ike.Identity:
        return parse_id(self.id, "identity.id")


@dataclass(frozen=True)
class EvidenceConfig:
    enabled: bool = True
    port: int = DEFAULT_EVIDENCE_PORT
    collateral_dir: Path = DEFAULT_COLLATERAL_DIR
    intel_root: Path | None = None  # None: the Intel SGX Root CA shipped with the package


@dataclass(frozen=True)
class Suites:
    encryption: tuple[str, ...] = tuple(ENCRYPTION)
    integrity: tuple[str, ...] = ("sha2-256", "sha2-512", "sha2-384")
    prf: tuple[str, ...] = ("sha2-256", "sha2-384", "sha2-512")
    groups: tuple[str, ...] = tuple(GROUPS)
    esn: bool = False

    def ike_suites(self) -> tuple[IkeSuite, ...]:
        encryption = [ENCRYPTION[name] for name in self.encryption]
        prfs = [PRF[name] for name in self.prf]
        groups = [GROUPS[name] for name in self.groups]
        aead = [e for e in encryption if e[0] == EncrId.ENCR_AES_GCM_16]
        other = [e for e in encryption if e[0] != EncrId.ENCR_AES_GCM_16]
        integrity = [INTEGRITY[name] for name in self.integrity]
        return ike.ike_suites(aead, prfs, groups) + ike.ike_suites(other, prfs, groups, integrity)

    def esp_suites(self) -> tuple[ChildSuite, ...]:
        out = []
        integrity = [INTEGRITY[name] for name in self.integrity]
        for group in (DhGroup.NONE, *(GROUPS[name] for name in self.groups)):
            for encr, bits in (ENCRYPTION[name] for name in self.encryption):
                integs = [IntegId.NONE] if encr == EncrId.ENCR_AES_GCM_16 else integrity
                out += [ChildSuite(encr, bits, integ, self.esn, group) for integ in integs]
        return tuple(out)


class KeySource(enum.Enum):
    NEW = "new"
    PEERS = "peers"
    KBS = "kbs"


class WhenAlone(enum.Enum):
    EXIT = "exit"
    NEW_KEY = "new-key"


class Anchors(enum.Enum):
    VENDORS = "vendors"
    SIM = "sim"


DEFAULT_RELEASE_PORT = 4502
DEFAULT_CDH_URL = "http://127.0.0.1:8006"
_KBS_RESOURCE = re.compile(r"[A-Za-z0-9._-]+/[A-Za-z0-9._-]+/[A-Za-z0-9._-]+")


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return evidence_client.hostport(self.host, self.port)


@dataclass(frozen=True)
class ReleaseConfig:
    """[release]: where the identity key comes from, and who this replica gives it to (enclave_ike/release)."""

    source: KeySource = KeySource.NEW
    peers: tuple[HostPort, ...] = ()
    when_alone: WhenAlone = WhenAlone.EXIT
    join_timeout_s: float = 60.0
    listen: tuple[HostPort, ...] = ()
    spec: MeasurementSpec | None = None
    anchors: Anchors = Anchors.VENDORS
    kbs_resource: str | None = None  # source = "kbs": repository/type/tag at Trustee's key broker
    cdh_url: str = DEFAULT_CDH_URL   # the pod's confidential data hub, which asks the key broker
    founder: str | None = None       # when_alone = "new-key": only the replica with this host name may start a key
    rotate_notice_s: float = 86_400.0  # from a rotation's start to the switch to its next key
    poll_s: float = 30.0             # how often the peers are asked for a rotation's next key


@dataclass(frozen=True)
class ServeConfig:
    """Everything `enclave-ike serve` runs with. `responder_config(signer)` is the sans-I/O core's policy."""

    path: Path
    listen: Listen
    dns_addresses: tuple[Address, ...]
    dns_protocols: tuple[int, ...] = (ike.IP_PROTO_UDP, ike.IP_PROTO_TCP)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    anonymous: frozenset[ike.PeerAuth] = ike.ANONYMOUS_METHODS
    pinned: tuple[ike.PinnedPeer, ...] = ()
    suites: Suites = field(default_factory=Suites)
    apply: ApplyMode = ApplyMode.KERNEL
    limits: ike.Limits = field(default_factory=ike.Limits)
    timers: ike.Timers = field(default_factory=lambda: ike.Timers(liveness=DEFAULT_LIVENESS_S))
    evidence: EvidenceConfig = field(default_factory=EvidenceConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    userspace: Userspace = field(default_factory=Userspace)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    release: ReleaseConfig = field(default_factory=ReleaseConfig)

    def responder_config(self, signer: Signer | None) -> ike.ResponderConfig:
        try:
            return ike.ResponderConfig(
                local_id=self.identity.ike_identity,
                dns=ike.DnsSelectors(self.dns_addresses, self.dns_protocols),
                signer=signer,
                anonymous=self.anonymous,
                peer_keys=self.pinned,
                ike_suites=self.suites.ike_suites(),
                esp_suites=self.suites.esp_suites(),
                limits=self.limits,
                timers=self.timers,
            )
        except PolicyError as exc:
            raise ConfigError(f"{self.path}: {exc}") from None


def parse_id(text: str, key: str) -> ike.Identity:
    """libreswan's spelling of an ID: `%null`, `@fqdn` (or a bare DNS name), or an IP address."""
    if text == "%null":
        return ike.Identity.null()
    try:
        return ike.Identity.address(ip_address(text))
    except ValueError:
        pass
    name = text[1:] if text.startswith("@") else text
    labels = name.split(".")
    if not name or not name.isascii() or any(not label or not label.replace("-", "").isalnum() for label in labels):
        raise ConfigError(f"{key}: {text!r} is not %null, @fqdn or an IP address")
    return ike.Identity.fqdn(name)


# --- reading ---

T = TypeVar("T")
E = TypeVar("E", bound=enum.Enum)


class _Table:
    """One TOML table, read key by key; every error names `section.key`. Unknown keys are errors too."""

    def __init__(self, path: Path, name: str, data: Mapping[str, Any]) -> None:
        self.path, self.name, self.data = path, name, data
        self.used: set[str] = set()

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.path}: {self.name}.{key}: {message}")

    def get(self, key: str, kind: type[T], default: T | None = None) -> T:
        self.used.add(key)
        if key not in self.data:
            if default is None:
                raise self.error(key, "missing (required)")
            return default
        value = self.data[key]
        if kind is int and isinstance(value, bool):
            raise self.error(key, f"expected an integer, got {value!r}")
        if not isinstance(value, kind):
            raise self.error(key, f"expected {_kind_name(kind)}, got {value!r}")
        return value

    def strings(self, key: str, default: tuple[str, ...] | None = None) -> tuple[str, ...]:
        self.used.add(key)
        if key not in self.data:
            if default is None:
                raise self.error(key, "missing (required)")
            return default
        value = self.data[key]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(key, f"expected a list of strings, got {value!r}")
        if not value:
            raise self.error(key, "must not be empty")
        return tuple(value)

    def choices(self, key: str, allowed: Mapping[str, T], default: tuple[str, ...]) -> tuple[str, ...]:
        names = self.strings(key, default)
        for name in names:
            if name not in allowed:
                raise self.error(key, f"{name!r} is not one of {', '.join(allowed)}")
        if len(set(names)) != len(names):
            raise self.error(key, "lists a value twice")
        return names

    def enum(self, key: str, kind: type[E], default: E) -> E:
        text = self.get(key, str, default.value)
        try:
            return kind(text)
        except ValueError:
            raise self.error(key, f"{text!r} is not one of {', '.join(str(m.value) for m in kind)}") from None

    def port(self, key: str, default: int) -> int:
        value = self.get(key, int, default)
        if not 1 <= value <= 0xFFFF:
            raise self.error(key, f"{value} is not a UDP port (1-65535)")
        return value

    def seconds(self, key: str, default: float, *, zero_allowed: bool, at_most: int | None = None) -> float:
        self.used.add(key)
        value = self.data.get(key, default)
        at_most = MAX_SECONDS if at_most is None else at_most
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not (value > 0 or (zero_allowed and value == 0)) or value > at_most):
            least = "0 or more" if zero_allowed else "more than 0"
            raise self.error(key, f"expected seconds ({least}, at most {at_most}), got {value!r}")
        return float(value)

    def addresses(self, key: str, default: tuple[Address, ...] | None = None) -> tuple[Address, ...]:
        if key not in self.data and default is not None:
            self.used.add(key)
            return default
        out = []
        for text in self.strings(key):
            try:
                out.append(ip_address(text))
            except ValueError:
                raise self.error(key, f"{text!r} is not an IP address") from None
        if len(set(out)) != len(out):
            raise self.error(key, "lists an address twice")
        return tuple(out)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.error(unknown[0], "unknown key")


def _kind_name(kind: type) -> str:
    return {str: "a string", int: "an integer", bool: "true or false"}.get(kind, kind.__name__)


SECTIONS = ("listen", "dns", "identity", "peers", "suites", "apply", "limits", "privacy", "metrics", "evidence",
            "release")


def load(path: Path = DEFAULT_PATH) -> ServeConfig:
    return parse(tomlfile.read(path, ConfigError), path)


def parse(data: Mapping[str, Any], path: Path) -> ServeConfig:
    for name, value in data.items():
        if name not in SECTIONS:
            raise ConfigError(f"{path}: [{name}]: unknown section (known: {', '.join(SECTIONS)})")
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: {name}: expected a table [{name}]")
    tables = {name: _Table(path, name, data.get(name, {})) for name in SECTIONS}
    if "listen" not in data:
        raise ConfigError(f"{path}: listen.addresses: missing (required)")
    listen = _listen(tables["listen"])
    dns = tables["dns"]
    dns_addresses = dns.addresses("addresses", listen.addresses)
    dns_protocols = tuple(PROTOCOLS[p] for p in dns.choices("protocols", PROTOCOLS, ("udp", "tcp")))
    identity = _identity(tables["identity"])
    anonymous, pinned = _peers(tables["peers"])
    suites = _suites(tables["suites"])
    apply = tables["apply"].enum("mode", ApplyMode, ApplyMode.KERNEL)
    userspace = _userspace(tables["apply"])
    limits, timers = _limits(tables["limits"])
    if apply is not ApplyMode.NONE and suites.esn:
        raise tables["suites"].error("esn", f"true needs ESN SAs, which apply.mode = \"{apply.value}\" cannot "
                                            "install")
    if listen.relay is not None and apply is ApplyMode.KERNEL:
        raise tables["listen"].error("relay", "the forwarder relays UDP only: ESP must end in enclave-ike "
                                              "(apply.mode = \"userspace\"), not in a kernel that never sees it")
    evidence = _evidence(tables["evidence"])
    privacy = _privacy(tables["privacy"])
    metrics = _metrics(tables["metrics"])
    taken = {port: f"{name}.port" for name, port, enabled in (("evidence", evidence.port, evidence.enabled),
                                                                ("metrics", metrics.port, metrics.enabled)) if enabled}
    release = _release(tables["release"], identity, taken)
    for table in tables.values():
        table.finish()
    config = ServeConfig(path, listen, dns_addresses, dns_protocols, identity, anonymous, pinned, suites, apply,
                         limits, timers, evidence, privacy, userspace, metrics, release)
    config.responder_config(None if identity.auth is Auth.NULL else _PlaceholderSigner())  # the core's checks
    return config


MAX_QUERIES_IN_FLIGHT = 32_768  # half the IDs of the one socket UDP queries share (upstream.MAX_IN_FLIGHT)


def _metrics(table: _Table) -> MetricsConfig:
    defaults = TopDomainsConfig()
    top_n = table.get("top_n", int, defaults.top_n)
    k = table.get("top_k", int, defaults.k)
    epsilon = table.data.get("top_epsilon", defaults.epsilon)
    table.used.add("top_epsilon")
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float) or not 0.01 <= epsilon <= 100:
        raise table.error("top_epsilon", f"expected a number from 0.01 to 100, got {epsilon!r}")
    if not 1 <= top_n <= 1000:
        raise table.error("top_n", f"{top_n} is not between 1 and 1000")
    if not 2 <= k <= defaults.client_cap:
        raise table.error("top_k", f"{k} is not between 2 and {defaults.client_cap}")
    top = TopDomainsConfig(enabled=table.get("top_domains", bool, False), top_n=top_n, k=k, epsilon=float(epsilon),
                           window_s=table.seconds("top_window_s", defaults.window_s, zero_allowed=False))
    return MetricsConfig(table.get("enabled", bool, True), table.port("port", DEFAULT_METRICS_PORT), top)


def _userspace(table: _Table) -> Userspace:
    defaults = Userspace()
    text = table.get("resolver", str, f"{defaults.resolver.address}:{defaults.resolver.port}")
    host, _, port = text.rpartition(":")
    try:
        resolver = ike.Endpoint.parse(host.strip("[]"), int(port))
    except (ValueError, PolicyError):
        raise table.error("resolver", f"{text!r} is not \"address:port\" (\"[v6 address]:port\" for IPv6)") from None
    if resolver.port == 0:
        raise table.error("resolver", f"{text!r}: port 0")
    in_flight = table.get("max_queries_in_flight", int, defaults.max_queries_in_flight)
    if not 1 <= in_flight <= MAX_QUERIES_IN_FLIGHT:
        raise table.error("max_queries_in_flight", f"{in_flight} is not between 1 and {MAX_QUERIES_IN_FLIGHT}")
    return Userspace(resolver, table.seconds("query_timeout_s", defaults.query_timeout_s, zero_allowed=False),
                     in_flight)


def _privacy(table: _Table) -> PrivacyConfig:
    ring_lines = table.get("ring_lines", int, DEFAULT_RING_LINES)
    if not 1 <= ring_lines <= MAX_RING_LINES:
        raise table.error("ring_lines", f"{ring_lines} is not between 1 and {MAX_RING_LINES}")
    return PrivacyConfig(enabled=table.get("enabled", bool, True), ring_lines=ring_lines)


DEFAULT_LIVENESS_S = 30.0
DEFAULT_LIVENESS_TIMEOUT_S = 15.0
MAX_SECONDS = 86_400
MIN_NOTICE_S = 5.0
MIN_POLLS = 3          # a rotation's notice spans this many polls at least
MAX_NOTICE_S = 30 * 86_400  # as enclave_ike/release/rotation.py takes from a peer
LIMITS = ("cookie_threshold", "max_half_open", "max_half_open_per_peer", "max_sas", "max_sas_per_peer",
          "max_child_sas")


def _limits(table: _Table) -> tuple[ike.Limits, ike.Timers]:
    defaults = ike.Limits()
    values: dict[str, int] = {}
    for key in LIMITS:
        value = table.get(key, int, getattr(defaults, key))
        if value < 0:
            raise table.error(key, f"{value} is negative")
        values[key] = value
    if values["max_sas_per_peer"] < 1:
        raise table.error("max_sas_per_peer", "0 would refuse every client; the least is 1")
    liveness = table.seconds("liveness_s", DEFAULT_LIVENESS_S, zero_allowed=True)
    timeout = table.seconds("liveness_timeout_s", DEFAULT_LIVENESS_TIMEOUT_S, zero_allowed=False)
    return ike.Limits(**values), ike.Timers(liveness=liveness or None, liveness_timeout=timeout)


ANONYMOUS: dict[str, ike.PeerAuth] = {
    "null": ike.PeerAuth.NULL,
    "raw-key": ike.PeerAuth.RAW_KEY,
    "certificate": ike.PeerAuth.CERTIFICATE,
}
MAX_KEY_FILE = 64 * 1024


def _peers(table: _Table) -> tuple[frozenset[ike.PeerAuth], tuple[ike.PinnedPeer, ...]]:
    """[peers]: `anonymous` (with `allow_null`, its older spelling) and the [[peers.pinned]] tables."""
    allow_null = table.get("allow_null", bool, True) if "allow_null" in table.data else None
    if "anonymous" in table.data:
        table.used.add("anonymous")
        names = table.data["anonymous"]
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise table.error("anonymous", f"expected a list of strings, got {names!r}")
        for name in names:
            if name not in ANONYMOUS:
                raise table.error("anonymous", f"{name!r} is not one of {', '.join(ANONYMOUS)}")
        if len(set(names)) != len(names):
            raise table.error("anonymous", "lists a value twice")
        anonymous = frozenset(ANONYMOUS[name] for name in names)
        if allow_null is not None and allow_null != (ike.PeerAuth.NULL in anonymous):
            raise table.error("allow_null", f"{str(allow_null).lower()} contradicts peers.anonymous = {names!r} "
                                            "(allow_null is the older spelling of \"null\" in anonymous; set one)")
    elif allow_null is False:  # the operator refused unauthenticated clients: a private resolver
        anonymous = frozenset()
    else:
        anonymous = ike.ANONYMOUS_METHODS
    pinned = _pinned(table)
    if not anonymous and not pinned:
        key = "anonymous" if "anonymous" in table.data else "allow_null"
        raise table.error(key, "no client could authenticate: no anonymous method is accepted and no client key "
                               "is pinned ([[peers.pinned]])")
    return anonymous, pinned


def _pinned(table: _Table) -> tuple[ike.PinnedPeer, ...]:
    if "pinned" not in table.data:
        return ()
    table.used.add("pinned")
    entries = table.data["pinned"]
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise table.error("pinned", "expected tables ([[peers.pinned]] with id and pubkey_file or certificate_file)")
    out: list[ike.PinnedPeer] = []
    for index, entry in enumerate(entries):
        sub = _Table(table.path, f"peers.pinned[{index}]", entry)
        text = sub.get("id", str)
        identity = parse_id(text, f"{sub.path}: {sub.name}.id")
        if identity.id_type == IdType.ID_NULL:
            raise sub.error("id", "%null names no one; a pinned key needs an identity (@fqdn or an address)")
        if identity in (peer.identity for peer in out):
            raise sub.error("id", f"{text!r} is pinned twice")
        files = [key for key in ("pubkey_file", "certificate_file") if key in entry]
        if len(files) != 1:
            raise sub.error("pubkey_file", "set exactly one of pubkey_file and certificate_file")
        path = _absolute(sub, files[0], "")
        key = _load_pinned_key(sub, files[0], path)
        sub.finish()
        out.append(ike.PinnedPeer(identity, key))
    return tuple(out)


def _load_pinned_key(table: _Table, key: str, path: Path) -> PublicKey:
    """The public key of a PEM public key file, or of a PEM or DER certificate (not validated: it only carries the
    key). ECDSA and RSA keys only."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise table.error(key, f"{path}: cannot read it ({exc.strerror})") from None
    if len(data) > MAX_KEY_FILE:
        raise table.error(key, f"{path}: over {MAX_KEY_FILE} bytes")
    try:
        if key == "pubkey_file":
            public_key = serialization.load_pem_public_key(data)
        elif data.lstrip().startswith(b"-----BEGIN"):
            public_key = x509.load_pem_x509_certificate(data).public_key()
        else:
            public_key = x509.load_der_x509_certificate(data).public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm):
        what = "a PEM public key" if key == "pubkey_file" else "a PEM or DER X.509 certificate"
        raise table.error(key, f"{path}: not {what}") from None
    if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise table.error(key, f"{path}: holds a {type(public_key).__name__}; only ECDSA and RSA keys can be pinned")
    return public_key


def _listen(table: _Table) -> Listen:
    addresses = table.addresses("addresses")
    ike_port, natt_port = table.port("ike_port", 500), table.port("natt_port", 4500)
    if ike_port == natt_port:
        raise table.error("natt_port", f"must differ from listen.ike_port ({ike_port})")
    relay = None
    if "relay" in table.data:
        relay = Path(table.get("relay", str))
        if not relay.is_absolute():
            raise table.error("relay", f"{str(relay)!r} must be an absolute path")
        if (problem := socket_path_problem(relay)) is not None:
            raise table.error("relay", f"{str(relay)!r} {problem}")
    return Listen(addresses, ike_port, natt_port, relay)


def _identity(table: _Table) -> IdentityConfig:
    backend = table.enum("backend", Backend, Backend.SIM)
    key_type = table.enum("key_type", KeyType, KeyType.ECDSA_P256)
    auth = table.enum("auth", Auth, Auth.SIGNATURE if "id" in table.data else Auth.NULL)
    local_id = table.get("id", str, "%null")
    parse_id(local_id, f"{table.path}: identity.id")
    if auth is Auth.SIGNATURE and local_id == "%null":
        raise table.error("id", "auth = \"signature\" needs an identity (@fqdn or an address), not %null")
    if backend is Backend.SIM and key_type is KeyType.RSA:
        raise table.error("key_type", "rsa is not available with the sim backend (it holds ECDSA keys only)")
    publish = Path(table.get("publish", str, str(DEFAULT_PUBLISH)))
    if not publish.is_absolute():
        raise table.error("publish", f"{str(publish)!r} must be an absolute path")
    registers = _sim_registers(table, backend)
    delay = table.seconds("sim_sign_delay_s", 0.0, zero_allowed=True)
    if delay and backend is not Backend.SIM:
        raise table.error("sim_sign_delay_s", f"belongs to the sim backend, not {backend.value}")
    if delay >= SIM_TIMEOUT_S:
        raise table.error("sim_sign_delay_s", f"{delay:g} s: every signature would outlast the sim channel's "
                                              f"{SIM_TIMEOUT_S:g} s timeout")
    return IdentityConfig(backend, key_type, local_id, auth, publish, registers, delay)


def _sim_registers(table: _Table, backend: Backend) -> tuple[bytes, ...]:
    if "sim_registers" not in table.data:
        return ()
    texts = table.strings("sim_registers")
    if backend is Backend.TSM:
        raise table.error("sim_registers", "belongs to the sim and software backends (tsm reports what it measured)")
    if len(texts) > SIM_REGISTERS_MAX:
        raise table.error("sim_registers", f"{len(texts)} registers; at most {SIM_REGISTERS_MAX}")
    registers = []
    for index, text in enumerate(texts):
        value = bytes.fromhex(text) if re.fullmatch(r"[0-9a-fA-F]*", text) and len(text) % 2 == 0 else b""
        if len(value) != SIM_REGISTER_SIZE:
            raise table.error(f"sim_registers[{index}]", f"{text!r} is not {SIM_REGISTER_SIZE} bytes of hex "
                                                         f"({2 * SIM_REGISTER_SIZE} hex digits)")
        registers.append(value)
    return tuple(registers)


def _evidence(table: _Table) -> EvidenceConfig:
    enabled = table.get("enabled", bool, True)
    port = table.get("port", int, DEFAULT_EVIDENCE_PORT)
    if not 1 <= port <= 0xFFFF:
        raise table.error("port", f"{port} is not a TCP port (1-65535)")
    collateral_dir = _absolute(table, "collateral_dir", str(DEFAULT_COLLATERAL_DIR))
    intel_root = _absolute(table, "intel_root", "") if "intel_root" in table.data else None
    return EvidenceConfig(enabled, port, collateral_dir, intel_root)


def _release(table: _Table, identity: IdentityConfig, taken: Mapping[int, str]) -> ReleaseConfig:
    """`taken`: the TCP ports serve's other endpoints listen on, and which."""
    source = table.enum("source", KeySource, KeySource.NEW)
    peers = tuple(_host_port(table, "peers", text) for text in table.strings("peers", ()))
    listen = _release_listen(table, taken)
    when_alone = table.enum("when_alone", WhenAlone, WhenAlone.EXIT)
    founder = table.get("founder", str, "") or None
    join_timeout = table.seconds("join_timeout_s", 60.0, zero_allowed=True)
    notice = table.seconds("rotate_notice_s", 86_400.0, zero_allowed=False, at_most=MAX_NOTICE_S)
    poll = table.seconds("poll_s", 30.0, zero_allowed=False)
    anchors = table.enum("anchors", Anchors, Anchors.VENDORS)
    spec = _release_spec(table)
    resource, cdh_url = _kbs(table, source)
    for key, owner in (("when_alone", KeySource.PEERS), ("founder", KeySource.PEERS)):
        if key in table.data and source is not owner:
            raise table.error(key, f"belongs to source = \"{owner.value}\"")
    if peers and source is KeySource.KBS:
        raise table.error("peers", "belongs to source = \"peers\" or \"new\" (the key broker holds the key)")
    if notice < max(MIN_NOTICE_S, MIN_POLLS * poll if peers else 0):
        raise table.error("rotate_notice_s", f"at least {MIN_NOTICE_S:g} s and {MIN_POLLS} times poll_s "
                                             f"({poll:g} s): every replica must obtain the next key before the switch")
    if "poll_s" in table.data and not peers:
        raise table.error("poll_s", "belongs to peers (whom to poll)")
    if founder is not None and when_alone is not WhenAlone.NEW_KEY:
        raise table.error("founder", "belongs to when_alone = \"new-key\" (who may start the key)")
    if "join_timeout_s" in table.data and source is KeySource.NEW:
        raise table.error("join_timeout_s", "belongs to source = \"peers\" or \"kbs\"")
    if source is KeySource.PEERS and not peers:
        raise table.error("peers", "missing: source = \"peers\" needs the replicas to ask")
    if (peers or listen) and spec is None:
        raise table.error("spec", "missing: key release needs the measurement spec every replica must match")
    if spec is not None and not peers and not listen:
        raise table.error("spec", "key release is off (no peers to ask, no listen): nothing uses the spec")
    if anchors is Anchors.SIM and identity.backend is Backend.TSM:
        raise table.error("anchors", "\"sim\" trusts evidence anyone can make (NOT SECURE): with the tsm backend "
                                     "it would give the real key to anyone; use \"vendors\"")
    if (source is not KeySource.NEW or listen or peers) and identity.auth is Auth.NULL:
        raise table.error("source" if source is not KeySource.NEW else "listen" if listen else "peers",
                          "NULL authentication has no identity key to release")
    return ReleaseConfig(source, peers, when_alone, join_timeout, listen, spec, anchors, resource, cdh_url, founder,
                         notice, poll)


def _release_listen(table: _Table, taken: Mapping[int, str]) -> tuple[HostPort, ...]:
    listen = tuple(_host_port(table, "listen", text) for text in table.strings("listen", ()))
    for where in listen:
        try:
            ip_address(where.host)
        except ValueError:
            raise table.error("listen", f"{where.host!r} is not an IP address") from None
        if where.port in taken:
            raise table.error("listen", f"{str(where)!r}: port {where.port} is {taken[where.port]} already")
    if len(set(listen)) != len(listen):
        raise table.error("listen", "lists an address twice")
    return listen


def _release_spec(table: _Table) -> MeasurementSpec | None:
    if "spec" not in table.data:
        return None
    spec_path = _absolute(table, "spec", "")
    try:
        return MeasurementSpec.load(spec_path)
    except (AttestationError, OSError) as exc:
        raise table.error("spec", f"{spec_path}: {getattr(exc, 'strerror', None) or exc}") from None


def _kbs(table: _Table, source: KeySource) -> tuple[str | None, str]:
    """kbs_resource and cdh_url, which belong to source = "kbs" (release/kbs.py)."""
    if source is not KeySource.KBS:
        for key in ("kbs_resource", "cdh_url"):
            if key in table.data:
                raise table.error(key, "belongs to source = \"kbs\"")
        return None, DEFAULT_CDH_URL
    if "kbs_resource" not in table.data:
        raise table.error("kbs_resource", "missing: source = \"kbs\" needs the key's repository/type/tag")
    resource = table.get("kbs_resource", str)
    if not _KBS_RESOURCE.fullmatch(resource):
        raise table.error("kbs_resource", f"{resource!r} is not repository/type/tag")
    cdh_url = table.get("cdh_url", str, DEFAULT_CDH_URL)
    try:
        cdh_endpoint(cdh_url)
    except ValueError as exc:
        raise table.error("cdh_url", f"{cdh_url!r}: {exc}") from None
    return resource, cdh_url


_HOST_PORT = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9._-]+))(?::(?P<port>[0-9]{1,5}))?")


def _host_port(table: _Table, key: str, text: str) -> HostPort:
    """"host", "host:port", "[v6]" or "[v6]:port" (an IPv6 address goes in brackets, so a port is never misread)."""
    match = _HOST_PORT.fullmatch(text)
    port = int(match["port"] or DEFAULT_RELEASE_PORT) if match else 0
    if match is None or not 1 <= port <= 0xFFFF:
        raise table.error(key, f"{text!r} is not host[:port] or [IPv6 address][:port]")
    if match["v6"] is not None:
        try:
            IPv6Address(match["v6"])
        except ValueError:
            raise table.error(key, f"{text!r}: {match['v6']!r} is not an IPv6 address") from None
    return HostPort(match["v6"] or match["host"], port)


def _absolute(table: _Table, key: str, default: str) -> Path:
    path = Path(table.get(key, str, default))
    if not path.is_absolute():
        raise table.error(key, f"{str(path)!r} must be an absolute path")
    return path


def _suites(table: _Table) -> Suites:
    default = Suites()
    return Suites(
        encryption=table.choices("encryption", ENCRYPTION, default.encryption),
        integrity=table.choices("integrity", INTEGRITY, default.integrity),
        prf=table.choices("prf", PRF, default.prf),
        groups=table.choices("groups", GROUPS, default.groups),
        esn=table.get("esn", bool, False),
    )


class _PlaceholderSigner(Signer):
    """Stands in for the enclave's signer while the config is checked: nothing is signed with it."""

    @property
    def schemes(self) -> tuple[SignatureScheme, ...]:
        return SIGNATURE_SCHEMES[:1]

    def sign(self, data: bytes, scheme: SignatureScheme) -> bytes:
        raise ConfigError("the placeholder signer signs nothing")

    def public_key(self) -> PublicKey:
        raise ConfigError("the placeholder signer has no key")
