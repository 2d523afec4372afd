"""Which identity keys this replica's enclave holds: the *current* key, which signs, and during a rotation the
*next* key with the wall time every replica switches to it. Keys are named by their SubjectPublicKeyInfo DER.

The listing (GET /release/keys, and the evidence endpoint's /identity) is public and unauthenticated: a replica
takes a key only through an attested release (holder.py, joiner.py), and a client pins a key only from evidence.

Thread-safe: the release endpoint grants in worker threads while the rotation task switches.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from typing import Any

from ikecommon.unixtime import is_unix_time

from ..enclave.base import Enclave
from ..enclave.sealing import spki
from .errors import MessageError, ReleaseError

MAX_LISTING = 8192


def fingerprint(key_spki: bytes) -> str:
    """A key's name in log lines: the first 8 bytes of the SHA-256 of its SPKI, as hex."""
    return hashlib.sha256(key_spki).hexdigest()[:16]


@dataclass(frozen=True)
class NextKey:
    spki: bytes
    switch_at: int  # Unix time, whole seconds: every replica switches then

    def sorts_before(self, other: NextKey) -> bool:
        """Two replicas that started a rotation each: both keep the key that sorts first, so they agree."""
        return (self.switch_at, hashlib.sha256(self.spki).digest()) < (other.switch_at,
                                                                         hashlib.sha256(other.spki).digest())


def newer(since: int, key_spki: bytes, than_since: int, than_spki: bytes) -> bool:
    """Is the current key `key_spki` (current since `since`) the service's over the other one? The one a rotation
    made current later; at the same second (two rotations switched alone), the one whose SHA-256 sorts first: every
    replica decides alike, so a service split this way ends on one key. Two first keys (since 0: a replica of
    source = "new" restarted, a partition at the service's start) rank neither way: nothing says which is the
    service's, and moving every replica to a key made a moment ago would make every client re-attest."""
    if since == than_since == 0:
        return False
    return (since, _rank(than_spki)) > (than_since, _rank(key_spki))


def _rank(key_spki: bytes) -> bytes:
    return hashlib.sha256(key_spki).digest()


@dataclass(frozen=True)
class Role:
    """What a held key is, as a grant says it (bound into the sealed key's HPKE context, messages.seal_info)."""

    spki: bytes
    switch_at: int | None = None  # a next key: when every replica signs with it
    since: int = 0                # the current key: the switch time that made it current (0: the service's first)


@dataclass(frozen=True)
class Listing:
    """What a replica says it holds (GET /release/keys). `since` orders current keys: a peer whose current key became
    current later than ours is one whose switch we missed. `follows`: that replica polls its peers, so a rotation
    started elsewhere reaches it (a replica that does not refuses to be left behind: rotation.start)."""

    current: bytes
    next: NextKey | None = None
    since: int = 0
    follows: bool = True

    def encode(self) -> bytes:
        members: dict[str, Any] = {"current": self.current.hex(), "since": self.since, "follows": self.follows}
        if self.next is not None:
            members["next"] = {"key": self.next.spki.hex(), "switch_at": self.next.switch_at}
        return json.dumps(members, separators=(",", ":")).encode() + b"\n"

    @classmethod
    def decode(cls, data: bytes) -> Listing:
        from ikecommon import strictjson  # noqa: PLC0415 - small, but only a polling replica reads listings

        if len(data) > MAX_LISTING:
            raise MessageError("listing", f"{len(data)} bytes, more than {MAX_LISTING}")
        try:
            members = strictjson.loads(data)
            if not isinstance(members, dict) or set(members) - {"current", "next", "since", "follows"}:
                raise ValueError("expected an object with current, since, follows and maybe next")
            nxt = members.get("next")
            if nxt is not None and (not isinstance(nxt, dict) or set(nxt) != {"key", "switch_at"}
                                    or not is_unix_time(nxt["switch_at"]) or not isinstance(nxt["key"], str)):
                raise ValueError("next: expected {key, switch_at}")
            current, since, follows = members["current"], members.get("since", 0), members.get("follows", True)
            if not isinstance(current, str) or not (since == 0 or is_unix_time(since)) or not isinstance(follows, bool):
                raise ValueError("current: expected hex; since: a Unix time or 0; follows: a boolean")
            return cls(bytes.fromhex(current),
                       None if nxt is None else NextKey(bytes.fromhex(nxt["key"]), nxt["switch_at"]), since, follows)
        except (strictjson.JsonError, ValueError, KeyError) as exc:
            raise MessageError("listing", str(exc)[:200]) from None


class KeyRing:
    def __init__(self, enclave: Enclave, *, since: int = 0, follows: bool = True) -> None:
        """`since`: when the current key became current (a joiner has it from its grant); `follows`: this replica
        polls its peers."""
        self._enclave, self.follows = enclave, follows
        self._current = spki(enclave.signer().public_key())
        self._since = since
        self._next: NextKey | None = None
        self._lock = threading.Lock()

    @property
    def current(self) -> bytes:
        with self._lock:
            return self._current

    @property
    def since(self) -> int:
        with self._lock:
            return self._since

    @property
    def next(self) -> NextKey | None:
        with self._lock:
            return self._next

    def listing(self) -> Listing:
        with self._lock:
            return Listing(self._current, self._next, self._since, self.follows)

    def holds(self, key_spki: bytes) -> bool:
        with self._lock:
            return key_spki == self._current or (self._next is not None and key_spki == self._next.spki)

    def role(self, key_spki: bytes | None) -> Role | None:
        """How a grant gives the key `key_spki` names (None: the current one); None when we do not hold it."""
        with self._lock:
            if key_spki is None or key_spki == self._current:
                return Role(self._current, since=self._since)
            if self._next is not None and key_spki == self._next.spki:
                return Role(self._next.spki, switch_at=self._next.switch_at)
            return None

    def start_rotation(self, switch_at: int) -> tuple[NextKey, bool]:
        """A next key made in the enclave, switched to at `switch_at`; (it, True). A rotation already under way is
        not started again: (its next key, False)."""
        with self._lock:
            if self._next is not None:
                return self._next, False
            self._next = NextKey(self._enclave.make_next(), switch_at)
            return self._next, True

    def adopt(self, key: NextKey) -> None:
        """A next key another replica released to us (already imported into the enclave as the next key)."""
        with self._lock:
            self._next = key

    def switch(self) -> bytes:
        """The next key signs from now on; the new current key."""
        with self._lock:
            if self._next is None:
                raise ReleaseError("no next key to switch to")
            self._current, self._since, self._next = self._enclave.switch(), self._next.switch_at, None
            return self._current
