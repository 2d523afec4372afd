"""What `ikectl up` applied in this network namespace: one typed record (`RunState`) behind one store.

The record lives outside the run dir, in one file per network namespace under the state directory
(/run/ikectl-state, or $IKECTL_STATE_DIR), named after the namespace's cookie. So `down`, the supervisor,
`status` and the next `up` find what was applied even when the config that applied it has since moved its run
dir, broken, or gone, and two namespaces on one host (the netns suite's hosts) never share a record.

One lock (a flock on a file beside the record: `up`, `down`, the supervisor's rounds and the NetworkManager hook
take it), one atomic write (a unique temp file, fsync, rename, fsync of the directory), one schema version. A
record of another version, or one that does not parse, reads as `Unreadable`: callers then fall back on what the
kernel and the config say, and `up` or `down` replaces it.

Every module reads the state through these types; none reads the JSON.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from . import locks
from .config import Address, Mode
from .errors import IkectlError

SCHEMA_VERSION = 2
DEFAULT_STATE_DIR = Path("/run/ikectl-state")
INTERFERENCE_KEPT = 8  # the latest interferences `status` shows
UNSTICK_EVERY_S = 0.5  # how often a waiter looks at who holds the lock


class StateError(IkectlError):
    """The state directory or the record cannot be written."""


class StateBusy(StateError):
    """The state's lock stayed held for longer than the caller can wait."""


@dataclass(frozen=True)
class Exclusion:
    """A coffee-shop resolver ikectl keeps out of pluto's opportunistic group (its DNS in clear) until `until`."""

    until: float  # seconds since the epoch
    reason: str


@dataclass(frozen=True)
class Upkeep:
    """Coffee-shop's record between the supervisor's rounds (ikectl/opportunistic.py)."""

    excluded: Mapping[str, Exclusion] = field(default_factory=dict)
    log_offset: Mapping[str, int] = field(default_factory=dict)  # pluto's log size when each was (re)admitted
    lost_at: Mapping[str, float] = field(default_factory=dict)  # when a member's policies were found gone
    clear_since: Mapping[str, float] = field(default_factory=dict)  # when its clear-fallback policy was first seen
    late_auth: Mapping[str, int] = field(default_factory=dict)  # IKE_AUTH answers too late in a row

    def to_json(self) -> dict[str, Any]:
        return {"excluded": {a: {"until": e.until, "reason": e.reason} for a, e in self.excluded.items()},
                "log_offset": dict(self.log_offset), "lost_at": dict(self.lost_at),
                "clear_since": dict(self.clear_since), "late_auth": dict(self.late_auth)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Upkeep:
        return cls(excluded={a: Exclusion(float(e["until"]), str(e["reason"])) for a, e in data["excluded"].items()},
                   log_offset={a: int(v) for a, v in data["log_offset"].items()},
                   lost_at={a: float(v) for a, v in data["lost_at"].items()},
                   clear_since={a: float(v) for a, v in data["clear_since"].items()},
                   late_auth={a: int(v) for a, v in data.get("late_auth", {}).items()})  # absent from older records


@dataclass(frozen=True)
class Baseline:
    """The kernel as it was before the first `up`: what `down` puts back."""

    larval_drop: bool  # net.core.xfrm_larval_drop
    nd_bypass: tuple[str, ...] = ()  # pluto-style IPv6 neighbour-discovery bypasses that were there already
    acq_expires_s: int = 30  # net.core.xfrm_acq_expires (records written before it was kept: the kernel's default)

    def to_json(self) -> dict[str, Any]:
        return {"larval_drop": self.larval_drop, "nd_bypass": list(self.nd_bypass),
                "acq_expires": self.acq_expires_s}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Baseline:
        return cls(bool(data["larval_drop"]), tuple(str(k) for k in data["nd_bypass"]),
                   int(data.get("acq_expires", 30)))


@dataclass(frozen=True)
class Blocked:
    """Trusted mode could not be applied: the backstop keeps every DNS packet off the wire, and this is why."""

    reason: str
    since: float
    # The trust-store pin whose attestation failed: the supervisor keeps re-attesting it, and one that verifies
    # again reapplies trusted mode (any other block waits for the next `up`).
    pin: str | None = None


@dataclass(frozen=True)
class Interference:
    """Another program changed what ikectl keeps in place, and what ikectl did about it."""

    at: float
    what: str


@dataclass(frozen=True)
class RunState:
    mode: Mode
    resolvers: tuple[Address, ...]  # in the order `status` lists them: the trusted one first
    run_dir: Path
    up_at: float  # when this mode was first applied (kept across `up`s of the same mode)
    baseline: Baseline
    trusted: tuple[Address, ...] = ()  # trusted mode: the pinned resolver's addresses, in the pin's order
    managed: frozenset[Address] = frozenset()  # every resolver whose DNS ikectl has handled since the first `up`
    pluto_pid: int | None = None
    supervisor_pid: int | None = None
    config_path: Path | None = None  # where the supervisor reads the config again (re-attestation)
    retry_after_s: int = 60
    upkeep: Upkeep = field(default_factory=Upkeep)
    unprotected: Mapping[str, str] = field(default_factory=dict)  # coffee-shop: resolvers left in clear, and why
    blocked: Blocked | None = None
    esp_refused: str | None = None  # the kernel's answer when it cannot install ESP SAs (None: it can)
    portal_until: float | None = None  # trusted: a captive-portal window lifts the backstops until then
    interference: tuple[Interference, ...] = ()

    def noting(self, what: str, now: float) -> RunState:
        """The same state with one more interference noted (the latest few are kept)."""
        return replace(self, interference=(*self.interference, Interference(now, what))[-INTERFERENCE_KEPT:])

    def to_json(self) -> dict[str, Any]:
        return {
            "version": SCHEMA_VERSION, "mode": self.mode.value, "resolvers": [str(a) for a in self.resolvers],
            "run_dir": str(self.run_dir), "up_at": self.up_at,
            "baseline": self.baseline.to_json(),
            # "trusted" is the first address, as records before several addresses had it; "trusted_also" the rest.
            "trusted": str(self.trusted[0]) if self.trusted else None,
            "trusted_also": [str(a) for a in self.trusted[1:]],
            "managed": sorted(str(a) for a in self.managed),
            "pluto_pid": self.pluto_pid, "supervisor_pid": self.supervisor_pid,
            "config_path": str(self.config_path) if self.config_path else None,
            "retry_after_s": self.retry_after_s, "upkeep": self.upkeep.to_json(),
            "unprotected": dict(self.unprotected),
            "blocked": ({"reason": self.blocked.reason, "since": self.blocked.since, "pin": self.blocked.pin}
                        if self.blocked else None),
            "esp_refused": self.esp_refused, "portal_until": self.portal_until,
            "interference": [{"at": i.at, "what": i.what} for i in self.interference],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunState:
        """The record; KeyError, TypeError or ValueError for anything that is not one of this version."""
        if data.get("version") != SCHEMA_VERSION:
            raise ValueError(f"schema version {data.get('version')!r}, not {SCHEMA_VERSION}")
        baseline, blocked = data["baseline"], data["blocked"]
        return cls(
            mode=Mode(data["mode"]), resolvers=tuple(ip_address(a) for a in data["resolvers"]),
            run_dir=Path(data["run_dir"]), up_at=float(data["up_at"]),
            baseline=Baseline.from_json(baseline),
            trusted=_trusted(data["trusted"], data.get("trusted_also", [])),
            managed=frozenset(ip_address(a) for a in data["managed"]),
            pluto_pid=_optional_int(data["pluto_pid"]), supervisor_pid=_optional_int(data["supervisor_pid"]),
            config_path=Path(data["config_path"]) if data["config_path"] else None,
            retry_after_s=int(data["retry_after_s"]), upkeep=Upkeep.from_json(data["upkeep"]),
            unprotected={str(a): str(why) for a, why in data["unprotected"].items()},
            blocked=(Blocked(str(blocked["reason"]), float(blocked["since"]),
                             str(blocked["pin"]) if blocked.get("pin") is not None else None) if blocked else None),
            esp_refused=str(data["esp_refused"]) if data["esp_refused"] is not None else None,
            portal_until=float(data["portal_until"]) if data["portal_until"] is not None else None,
            interference=tuple(Interference(float(i["at"]), str(i["what"])) for i in data["interference"]),
        )


def _trusted(first: object, also: object) -> tuple[Address, ...]:
    """The pinned addresses: "trusted" then "trusted_also" (which records from before several addresses lack)."""
    if not first:
        return ()
    if not isinstance(also, list):
        raise ValueError(f"trusted_also {also!r}")
    return (ip_address(str(first)), *(ip_address(str(a)) for a in also))


def _optional_int(value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected a whole number, got {value!r}")
    return value


@dataclass(frozen=True)
class Unreadable:
    """A record is there but cannot be read (another schema version, or damaged); `why` says which."""

    why: str


def state_dir() -> Path:
    return Path(os.environ.get("IKECTL_STATE_DIR") or DEFAULT_STATE_DIR)


SO_NETNS_COOKIE = 71  # linux/socket.h, since Linux 5.14


def netns_id() -> int:
    """This process's network namespace: its cookie, which the kernel never gives to another namespace (an inode
    is reused as soon as a namespace is gone, and a new one would inherit a stale record); the inode of
    /proc/self/ns/net on kernels without cookies."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            return int.from_bytes(sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), sys.byteorder)
    except OSError:
        return os.stat("/proc/self/ns/net").st_ino


@dataclass(frozen=True)
class StateStore:
    """The record of one network namespace (by default this process's)."""

    root: Path
    netns: int

    @classmethod
    def here(cls) -> StateStore:
        return cls(state_dir(), netns_id())

    @property
    def path(self) -> Path:
        return self.root / f"net-{self.netns}.json"

    @property
    def lock_path(self) -> Path:
        return self.root / f"net-{self.netns}.lock"

    def check(self) -> None:
        """The state directory is a directory ikectl can write: checked before `up` or `down` touches anything."""
        if self.root.exists() and not self.root.is_dir():
            raise StateError(f"state directory {self.root}: not a directory ikectl can write (set IKECTL_STATE_DIR "
                             "or remove what is there)")
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o755)
        except OSError as exc:
            raise StateError(f"state directory {self.root}: cannot make it ({exc.strerror})") from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StateError(f"state directory {self.root}: not a directory ikectl can write (set IKECTL_STATE_DIR "
                             "or fix its permissions)")

    @contextlib.contextmanager
    def lock(self, wait_s: float | None = None, unstick: Callable[[int], bool] | None = None) -> Iterator[None]:
        """Hold the record's lock; with `wait_s`, StateBusy (naming the holder) when it is not free within that
        long. The holder's pid is kept in the lock file; `unstick(pid)`, asked about a holder while waiting, may
        end one that can never let go (a stopped supervisor) and say so."""
        self.check()
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = None if wait_s is None else time.monotonic() + wait_s
            while not locks.lock_by(fd, min(deadline or math.inf, time.monotonic() + UNSTICK_EVERY_S)):
                holder = self.holder()
                if unstick is not None and holder is not None and unstick(holder):
                    continue
                if deadline is not None and time.monotonic() >= deadline:
                    raise StateBusy(f"{self.lock_path}: held by another ikectl (pid {holder}) for over {wait_s:g} s")
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)

    def busy_elsewhere(self) -> bool:
        """Does another process hold the lock now (an `up`, a `down`, the NetworkManager hook)? A free lock is
        taken and let go at once."""
        try:
            fd = os.open(self.lock_path, os.O_RDWR)
        except OSError:
            return False  # no lock file: nobody has ever held it
        try:
            return not locks.lock_by(fd, 0.0) and self.holder() != os.getpid()
        finally:
            os.close(fd)

    def holder(self) -> int | None:
        """The pid that holds (or last held) the lock."""
        try:
            return int(self.lock_path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def read(self) -> RunState | Unreadable | None:
        """The record; None when there is none."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            return Unreadable(f"{self.path}: {exc.strerror}")
        try:
            return RunState.from_json(json.loads(raw))
        # OverflowError: json reads Infinity, which int() refuses that way.
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
            return Unreadable(f"{self.path}: not a record ikectl can read ({exc})")

    def write(self, state: RunState) -> None:
        """Replace the record atomically: a reader sees the old one or the new one, never a mix, even after a
        crash or a power cut. StateError (one line) when the state directory will not take it."""
        self._replace(self.path, json.dumps(state.to_json(), indent=1), "cannot write the record")

    def _replace(self, path: Path, text: str, failure: str) -> None:
        """Write `text` to a unique temporary file beside `path`, fsync it, rename it over `path`, fsync the
        directory; StateError naming `path` and `failure` when the directory will not take it."""
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o755)
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{path.name}.")
        except OSError as exc:
            raise StateError(f"{path}: {failure} ({exc.strerror})") from None
        try:
            with os.fdopen(fd, "w") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
            directory = os.open(self.root, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise StateError(f"{path}: {failure} ({exc.strerror})") from None
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @property
    def baseline_path(self) -> Path:
        return self.root / f"net-{self.netns}.baseline.json"

    def keep_baseline(self, baseline: Baseline) -> Baseline:
        """What the kernel was like before the first `up`, written before that `up` changes anything (a first `up`
        killed half-way leaves no record, and `down` must still put larval drop back); the one kept if there is
        one already."""
        try:
            return Baseline.from_json(json.loads(self.baseline_path.read_text()))
        except (OSError, ValueError, KeyError, TypeError, OverflowError):
            pass
        self._replace(self.baseline_path, json.dumps(baseline.to_json()), "cannot write it")  # as the record
        return baseline

    def baseline(self) -> Baseline | None:
        try:
            return Baseline.from_json(json.loads(self.baseline_path.read_text()))
        except (OSError, ValueError, KeyError, TypeError, OverflowError):
            return None

    def remove(self) -> None:
        """Forget the record and the baseline (after `down`)."""
        self.path.unlink(missing_ok=True)
        self.baseline_path.unlink(missing_ok=True)

    def remove_lock(self) -> None:
        self.lock_path.unlink(missing_ok=True)


def read_here() -> RunState | None:
    """This namespace's record when it can be read (None otherwise): for commands that only look."""
    found = StateStore.here().read()
    return found if isinstance(found, RunState) else None
