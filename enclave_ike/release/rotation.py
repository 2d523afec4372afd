"""Rotation of the service key (docs/scale-out.md): one replica makes a *next* key (SIGUSR2 to its serve), every
replica obtains it through an attested release, and all of them switch to it at the same announced wall time.

    1. start: the next key is made in this replica's enclave; it switches at now + `[release] rotate_notice_s`.
    2. spread: every replica polls its peers' GET /release/keys every `[release] poll_s`; one that lists a next key
       this replica lacks is asked for it by name (holder.py, joiner.py: the same mutual attestation as a join, and
       the switch time comes bound into the sealed key's HPKE context). Two replicas that each started a rotation
       agree on the next key that sorts first (keyring.NextKey.sorts_before).
    3. the window: until the switch, every replica signs with the current key and its evidence endpoint serves
       evidence for both (GET /evidence?nonce=..&key=next; /identity announces the switch time), so a client that
       re-attests then stages the next key in its pin (ikectl trust) and moves to it when the resolver does.
    4. switch: at the switch time each replica's enclave signs with the next key and drops the old one. IKE SAs
       already up are not touched; a client still pinned to the old key sees another key at its next IKE_AUTH and
       re-attests (ikectl's supervisor), as after any key change.

A replica that misses the window (partitioned until after the switch) keeps the old key and says so each poll, in
one line naming the peer that signs with another key: restart it, and it joins with the current key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime

from ..config import HostPort
from ..enclave.attest import MakeEnvelope
from ..enclave.base import Enclave
from ..errors import EnclaveIkeError
from .appraise import Appraiser
from .keyring import KeyRing, NextKey, fingerprint
from .obtain import addresses, ask, listing, printable

log = logging.getLogger("enclave_ike.release")

LISTING_TIMEOUT_S = 5.0


class Rotation:
    def __init__(self, keys: KeyRing, enclave: Enclave, *, notice_s: float, poll_s: float,
                 peers: Sequence[HostPort] = (), own: Collection[str] = (), appraiser: Appraiser | None = None,
                 make_envelope: MakeEnvelope | None = None, published: Callable[[], None] = lambda: None,
                 refused: str | None = None, clock: Callable[[], float] = time.time) -> None:
        """`peers`/`appraiser`: whom to poll, and what their evidence must match (none: a lone replica rotates by
        itself); `published` runs after every change of keys (serve republishes its identity); `refused`: why this
        replica may not start a rotation (its key comes from the key broker), or None."""
        self.keys, self._enclave, self.notice_s, self.poll_s = keys, enclave, notice_s, poll_s
        self._peers, self._own, self._appraiser = tuple(peers), own, appraiser
        self._make_envelope, self._published, self._refused, self._clock = make_envelope, published, refused, clock
        self._woken = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._told: dict[str, bytes] = {}  # peer -> the other current key it was last said to sign with
        self._lock = threading.Lock()  # one change of keys at a time: a start, an adoption, a switch

    def start(self) -> NextKey | None:
        """Begin a rotation here (the operator's SIGUSR2); the next key, or None when refused. Blocking."""
        if self._refused is not None:
            log.warning("rotation not started: %s", self._refused)
            return None
        with self._lock:
            switch_at = int(self._clock() + self.notice_s)
            key, made = self.keys.start_rotation(switch_at)
        if made:
            log.info("rotation: next key %s made; every replica signs with it from %s (in %d s); until then "
                     "evidence is served for both keys (clients that re-attest stage it)", fingerprint(key.spki),
                     _when(key.switch_at), key.switch_at - int(self._clock()))
            self._published()
        else:
            log.info("rotation: one is already under way: next key %s, switching at %s", fingerprint(key.spki),
                     _when(key.switch_at))
        self._wake()
        return key

    async def run(self) -> None:
        """Switch when the time comes, and follow the peers' rotations; until cancelled."""
        next_poll = 0.0
        loop = self._loop = asyncio.get_running_loop()
        while True:
            pending = self.keys.next
            if pending is not None and self._clock() >= pending.switch_at:
                await asyncio.to_thread(self.switch_if_due)
            if self._peers and self._appraiser is not None and loop.time() >= next_poll:
                await asyncio.to_thread(self.poll)
                next_poll = loop.time() + self.poll_s
            wait = self.poll_s
            if (pending := self.keys.next) is not None:
                wait = min(wait, max(0.0, pending.switch_at - self._clock()))
            self._woken.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), max(0.05, wait))

    def _wake(self) -> None:
        """From any thread: the run loop looks at the keys again now."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._woken.set)

    def switch_if_due(self) -> None:
        with self._lock:
            pending = self.keys.next
            if pending is None or self._clock() < pending.switch_at:
                return
            try:
                old, new = self.keys.current, self.keys.switch()
            except EnclaveIkeError as exc:
                log.error("rotation: cannot switch to the next key %s: %s", fingerprint(pending.spki), exc)
                return
        log.info("rotation: switched from key %s to key %s: new IKE SAs are signed with it, the old key is gone",
                 fingerprint(old), fingerprint(new))
        self._published()

    def poll(self) -> None:
        """One round over the peers: take a next key they list that we lack (or that wins over ours)."""
        for target in addresses(self._peers, self._own, {})[0]:
            try:
                listed = listing(target, LISTING_TIMEOUT_S)
            except EnclaveIkeError:
                continue  # a peer down or busy: the next round asks again
            offered = listed.next
            if offered is not None and self._wants(offered):
                self._obtain(target, offered)
            elif listed.current != self.keys.current and not self.keys.holds(listed.current) and (
                    offered is None or not self.keys.holds(offered.spki)):
                if self._told.get(target) != listed.current:
                    log.warning("rotation: %s signs with key %s, this replica with key %s (a rotation missed, or "
                                "a split identity): restart the replica whose key is not the service's",
                                target, fingerprint(listed.current), fingerprint(self.keys.current))
                self._told[target] = listed.current
            else:
                self._told.pop(target, None)

    def _wants(self, offered: NextKey) -> bool:
        ours = self.keys.next
        if offered.switch_at <= self._clock() or offered.spki == self.keys.current:
            return False
        return ours is None or (offered.spki != ours.spki and offered.sorts_before(ours))

    def _obtain(self, target: str, offered: NextKey) -> None:
        assert self._appraiser is not None
        with self._lock:
            if not self._wants(offered):
                return
            try:
                accepted = ask(self._enclave, self._appraiser, target, self._make_envelope, self._clock,
                               LISTING_TIMEOUT_S * 2, key=offered.spki)
            except EnclaveIkeError as exc:
                log.warning("rotation: the next key %s from %s refused: %s", fingerprint(offered.spki), target,
                            printable(str(exc)))
                return
            assert accepted.switch_at is not None  # a named key comes as a next key, or is refused (joiner.py)
            key = NextKey(offered.spki, accepted.switch_at)
            self.keys.adopt(key)
        log.info("rotation: obtained the next key %s from %s (%s evidence matching %r); switching to it at %s",
                 fingerprint(key.spki), target, accepted.holder.kind.value, accepted.holder.measurement_id,
                 _when(key.switch_at))
        self._published()
        self._wake()


def _when(unix: int) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
