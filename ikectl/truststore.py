"""ikectl's trust store: one JSON file per pinned resolver, `<paths.trust_dir>/<NAME>.json` (default
/var/lib/ikectl/trust). `ikectl trust` (trust.py) writes pins; config.py reads the one `[trusted] attested = "NAME"`
names; `ikectl status` shows its latest attestation. A pin holds what verified evidence said and the outcome of the
latest attestation:

    {"version": 1, "name": "home", "address": "192.0.2.53", "port": 4501, "id": "@dns.example.net",
     "also": ["198.51.100.53"],                            the service's other addresses (same key and ID)
     "key": "0s...", "key_kind": "ecdsa",                 the IKE key, as libreswan pins it
     "spec": "/etc/ikectl/specs/home.json",               or "https://..." (a governance feed) or "inline:H4sI..."
     "anchors": "vendor",                                 or "sim" (NOT SECURE: anyone can make sim evidence)
     "evidence_kind": "tdx", "measurement_id": "...",      what matched
     "feed_serial": null,                                 the highest governance feed serial accepted (rollback)
     "pinned_at": 1764000000.0, "attested_at": 1764003600.0,
     "result": "ok",                                      or "failed": trusted mode then keeps DNS blocked
     "reason": "", "mismatches": [["field", "expected", "actual"], ...]}

Pins are public (keys, addresses, measurements): files are 0644. Writes are atomic (a temporary file, then rename)
and serialised by a lock file in the directory, so `ikectl trust` and a supervisor re-attesting cannot interleave.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ikecommon import evidence_client, keys
from ikecommon.unixtime import is_unix_time

from .errors import IkectlError, UsageError

if TYPE_CHECKING:
    from cryptography import x509

Address = IPv4Address | IPv6Address

DEFAULT_TRUST_DIR = Path("/var/lib/ikectl/trust")
DEFAULT_PORT = evidence_client.DEFAULT_PORT  # the evidence endpoint's; the module loads nothing heavy
VERSION = 1
OK, FAILED, MISSING = "ok", "failed", "missing"
MAX_PIN = 64 * 1024
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class Anchors(StrEnum):
    """A pin's "anchors": what its evidence is verified against (`ikectl trust add --anchors`)."""

    VENDOR = "vendor"  # the Intel and AMD roots: those shipped, or those [trust] names
    SIM = "sim"        # the simulated root: NOT SECURE


MAX_ADDRESSES = 8  # of one resolver: each is a pair of conns in pluto, and re-attestation asks each in turn


class TrustError(IkectlError):
    """A pin could not be made, read, kept or used (exit code 1)."""


class PinMissing(TrustError):
    """No pin of that name in the trust store."""


@dataclass(frozen=True)
class StoredPin:
    name: str
    address: Address
    port: int
    id: str
    key: keys.PinnedKey
    spec: str
    anchors: str
    evidence_kind: str
    measurement_id: str | None
    pinned_at: float
    attested_at: float
    result: str = OK
    reason: str = ""
    mismatches: tuple[tuple[str, str, str], ...] = ()
    feed_serial: int | None = None
    # A rotation under way at the resolver: its next key, attested like `key` and staged here; trusted mode moves
    # to it when the resolver signs with it (from next_switch_at, Unix time) without asking for evidence again.
    next_key: keys.PinnedKey | None = None
    next_switch_at: int | None = None
    also: tuple[Address, ...] = ()  # the service's other addresses, attested to the same key and ID when pinned

    @property
    def addresses(self) -> tuple[Address, ...]:
        return (self.address, *self.also)

    @property
    def ok(self) -> bool:
        return self.result == OK

    def to_json(self) -> dict[str, Any]:
        return {"version": VERSION, "name": self.name, "address": str(self.address), "port": self.port,
                "id": self.id, "key": self.key.libreswan, "key_kind": self.key.kind, "spec": self.spec,
                "anchors": self.anchors, "evidence_kind": self.evidence_kind, "measurement_id": self.measurement_id,
                "feed_serial": self.feed_serial, "pinned_at": self.pinned_at, "attested_at": self.attested_at,
                "result": self.result, "reason": self.reason, "mismatches": [list(m) for m in self.mismatches],
                "next_key": self.next_key.libreswan if self.next_key is not None else None,
                "next_key_kind": self.next_key.kind if self.next_key is not None else None,
                "next_switch_at": self.next_switch_at, "also": [str(a) for a in self.also]}

    @classmethod
    def from_json(cls, data: Any, source: str) -> StoredPin:
        try:
            if not isinstance(data, dict) or data.get("version") != VERSION:
                raise ValueError(f"not a version {VERSION} pin")
            result = data["result"]
            if result not in (OK, FAILED):
                raise ValueError(f"result {result!r}")
            serial = data["feed_serial"]
            staged, switch_at = data.get("next_key"), data.get("next_switch_at")
            if (staged is None) != (switch_at is None) or (switch_at is not None and not is_unix_time(switch_at)):
                raise ValueError("next_key and next_switch_at: both or neither")
            listed = data.get("also", [])  # pins made before several addresses have none
            if not isinstance(listed, list):
                raise ValueError(f"also {listed!r}")
            also = tuple(ip_address(str(a)) for a in listed)
            address = ip_address(str(data["address"]))
            if any(isinstance(a, IPv6Address) and a.ipv4_mapped is not None for a in (address, *also)):
                raise ValueError("an IPv4-mapped address")  # one peer in two spellings: config.address refuses it
            if len({address, *also}) != 1 + len(also) or len(also) >= MAX_ADDRESSES:
                raise ValueError("an address listed twice, or too many")
            return cls(name=check_name(str(data["name"]), source), address=address,
                       port=_port(data["port"]), id=str(data["id"]),
                       key=keys.parse(str(data["key"]), str(data["key_kind"]), source=f"{source}: key"),
                       spec=str(data["spec"]), anchors=str(data["anchors"]), evidence_kind=str(data["evidence_kind"]),
                       measurement_id=None if data["measurement_id"] is None else str(data["measurement_id"]),
                       pinned_at=float(data["pinned_at"]), attested_at=float(data["attested_at"]), result=result,
                       reason=str(data["reason"]),
                       mismatches=tuple((str(f), str(e), str(a)) for f, e, a in data["mismatches"]),
                       feed_serial=None if serial is None else int(serial),
                       next_key=None if staged is None else keys.parse(str(staged), str(data.get("next_key_kind")),
                                                                       source=f"{source}: next_key"),
                       next_switch_at=switch_at, also=also)
        except (KeyError, TypeError, ValueError, UsageError) as exc:
            raise TrustError(f"{source}: not a pin ikectl wrote ({exc})") from None


def _port(value: Any) -> int:
    if not isinstance(value, int) or not 1 <= value <= 0xFFFF:
        raise ValueError(f"port {value!r}")
    return value


def check_name(name: str, where: str = "NAME") -> str:
    """A pin name: letters, digits, '.', '_' and '-', at most 64, not starting with a dot (it names a file)."""
    if not _NAME.match(name):
        raise UsageError(f"{where} {name!r}: a pin name is 1 to 64 letters, digits, '.', '_' and '-', "
                         "starting with a letter or digit")
    return name


def path_of(trust_dir: Path, name: str) -> Path:
    return trust_dir / f"{check_name(name)}.json"


def load(trust_dir: Path, name: str) -> StoredPin:
    path = path_of(trust_dir, name)
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_PIN + 1)
    except FileNotFoundError:
        raise PinMissing(f"no pin {name!r} in {trust_dir}: add it with `ikectl trust add {name} --resolver ADDR "
                         "--spec SPEC`") from None
    except OSError as exc:
        raise TrustError(f"{path}: cannot read it ({exc.strerror})") from None
    try:
        data = json.loads(raw) if len(raw) <= MAX_PIN else None
    except ValueError:
        data = None
    pin = StoredPin.from_json(data, str(path))
    if pin.name != name:
        raise TrustError(f"{path}: holds pin {pin.name!r}, not {name!r}")
    return pin


def pins(trust_dir: Path) -> list[tuple[str, StoredPin | TrustError]]:
    """Every pin in the store by name; one that does not read comes with its error, so a listing shows it."""
    try:
        paths = sorted(trust_dir.glob("*.json"))
    except OSError as exc:
        raise TrustError(f"{trust_dir}: cannot list it ({exc.strerror})") from None
    found: list[tuple[str, StoredPin | TrustError]] = []
    for path in paths:
        if not _NAME.match(path.stem):
            continue
        try:
            found.append((path.stem, load(trust_dir, path.stem)))
        except TrustError as exc:
            found.append((path.stem, exc))
    return found


def save(trust_dir: Path, pin: StoredPin) -> Path:
    path = path_of(trust_dir, pin.name)
    try:
        trust_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        fd, tmp = tempfile.mkstemp(dir=trust_dir, prefix=f".{pin.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as out:
                out.write(json.dumps(pin.to_json(), indent=1) + "\n")
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise TrustError(f"{exc.filename or trust_dir}: cannot write the pin ({exc.strerror}); the trust store "
                         "belongs to root: run with sudo, or set paths.trust_dir") from None
    return path


def remove(trust_dir: Path, name: str) -> bool:
    try:
        path_of(trust_dir, name).unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise TrustError(f"{path_of(trust_dir, name)}: cannot remove it ({exc.strerror})") from None
    return True


@contextlib.contextmanager
def locked(trust_dir: Path) -> Iterator[None]:
    """Hold the store's lock (blocking): one writer at a time."""
    try:
        trust_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        fd = os.open(trust_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise TrustError(f"{trust_dir}: cannot lock the trust store ({exc.strerror}); the trust store belongs to "
                         "root: run with sudo, or set paths.trust_dir") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_root_certificate(path: Path, where: str) -> x509.Certificate:
    """A vendor root the config names ([trust] intel_root, amd_arks): one self-issued PEM certificate, or a usage
    error naming the setting (whether it verifies is the chain check's to say)."""
    from cryptography import x509  # noqa: PLC0415 - only the trust commands read roots

    try:
        certificates = x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as exc:
        raise UsageError(f"{where} {path}: cannot read it ({exc.strerror})") from None
    except ValueError:
        raise UsageError(f"{where} {path}: not a PEM certificate") from None
    if len(certificates) != 1:
        # AMD's KDS cert_chain is ASK then ARK: taking its first would trust the ASK as a root.
        raise UsageError(f"{where} {path}: {len(certificates)} certificates; expected one root certificate")
    (root,) = certificates
    if root.issuer != root.subject:
        raise UsageError(f"{where} {path}: {root.subject.rfc4514_string()} is not a root (issued by "
                         f"{root.issuer.rfc4514_string()})")
    return root
