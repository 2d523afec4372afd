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


@dataclass(frozen=True)
class Listing:
    """What a replica says it holds (GET /release/keys)."""

    current: bytes
    next: NextKey | None = None

    def encode(self) -> bytes:
        members: dict[str, Any] = {"current": self.current.hex()}
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
            if not isinstance(members, dict) or set(members) - {"current", "next"}:
                raise ValueError("expected an object with current and maybe next")
            nxt = members.get("next")
            if nxt is not None and (not isinstance(nxt, dict) or set(nxt) != {"key", "switch_at"}
                                    or type(nxt["switch_at"]) is not int or not isinstance(nxt["key"], str)):
                raise ValueError("next: expected {key, switch_at}")
            current = members["current"]
            if not isinstance(current, str):
                raise ValueError("current: expected hex")
            return cls(bytes.fromhex(current),
                       None if nxt is None else NextKey(bytes.fromhex(nxt["key"]), nxt["switch_at"]))
        except (strictjson.JsonError, ValueError, KeyError) as exc:
            raise MessageError("listing", str(exc)[:200]) from None


class KeyRing:
    def __init__(self, enclave: Enclave) -> None:
        self._enclave = enclave
        self._current = spki(enclave.signer().public_key())
        self._next: NextKey | None = None
        self._lock = threading.Lock()

    @property
    def current(self) -> bytes:
        with self._lock:
            return self._current

    @property
    def next(self) -> NextKey | None:
        with self._lock:
            return self._next

    def listing(self) -> Listing:
        with self._lock:
            return Listing(self._current, self._next)

    def holds(self, key_spki: bytes) -> NextKey | bool:
        """The NextKey when `key_spki` is our next key; True for our current key; False for any other."""
        with self._lock:
            if self._next is not None and key_spki == self._next.spki:
                return self._next
            return key_spki == self._current

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
            self._current, self._next = self._enclave.switch(), None
            return self._current
