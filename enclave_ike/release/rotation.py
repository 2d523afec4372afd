"""Rotation of the service key (docs/scale-out.md): one replica makes a *next* key (SIGUSR2 to its serve), every
replica obtains it through an attested release, and all of them switch to it at the same announced wall time.

    1. start: the next key is made in this replica's enclave; it switches at now + `[release] rotate_notice_s`. A
       replica that gives no key to others (no `listen`) while it has peers, or whose peer says it follows no
       rotation (no `peers` of its own, or a key from the key broker), refuses: the service would end split.
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
    5. catch-up: a replica that lacked the next key at the switch (it joined in the last moments, its clock runs
       ahead, it was cut off) finds a peer whose current key became current after its own (`since`, bound into the
       grant like a switch time) and obtains that key by name: it switches at once.

Which of two current keys is the service's is one order every replica applies alike (keyring.newer: made current
later, then by hash), so a split identity (two first keys, two rotations switched alone) also ends on one key; a
peer that lists our current key as its next one long after the switch (it does not follow, or cannot switch) is
named in one warning line. The switch does not wait for a poll: polls and switches
run apart, and only a release in flight (at most 10 s) holds a switch back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Collection, Sequence

from ikecommon.unixtime import utc

from .. import config
from ..config import HostPort
from ..enclave.attest import MakeEnvelope
from ..enclave.base import Enclave
from ..errors import EnclaveIkeError
from .appraise import Appraiser
from .errors import Unreachable
from .keyring import KeyRing, NextKey, fingerprint, newer
from .obtain import addresses, ask, listing, printable

log = logging.getLogger("enclave_ike.release")

LISTING_TIMEOUT_S = 5.0
CLOCK_SLACK_S = 300  # a peer's clock may run this far ahead of ours
REFUSALS_EVERY_S = 600  # a refused release is logged at most this often per peer (a peer may refuse every poll)
REQUEST_TIMEOUT_S = 10.0
# A granted switch time further ahead than the longest notice is refused (a clock far off, or a lie).
MAX_NOTICE_S = config.MAX_NOTICE_S


class Rotation:
    def __init__(self, keys: KeyRing, enclave: Enclave, *, notice_s: float, poll_s: float,
                 peers: Sequence[HostPort] = (), own: Collection[str] = (), gives: bool = True,
                 appraiser: Appraiser | None = None, make_envelope: MakeEnvelope | None = None,
                 published: Callable[[], None] = lambda: None, refused: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        """`peers`/`appraiser`: whom to poll, and what their evidence must match (none: a lone replica rotates by
        itself); `gives`: other replicas can obtain keys here (a release endpoint listens); `published` runs after
        every change of keys (serve republishes its identity); `refused`: why this replica may not start a rotation
        (its key comes from the key broker), or None."""
        self.keys, self._enclave, self.notice_s, self.poll_s = keys, enclave, notice_s, poll_s
        self._peers, self._own, self._gives, self._appraiser = tuple(peers), own, gives, appraiser
        self._make_envelope, self._published, self._refused, self._clock = make_envelope, published, refused, clock
        self._woken = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._said: dict[tuple[str, str], str] = {}  # (peer, what) -> the last warning of that kind about it
        self._refusals_said: dict[str, float] = {}  # peer -> when a refused release may be logged again
        self._lock = threading.Lock()  # one change of keys at a time: a start, an adoption, a switch
        self._switch_retry_at = 0.0  # after a failed switch: not again before this (wall clock)

    # --- starting -------------------------------------------------------------------------------------------------

    def start(self) -> NextKey | None:
        """Begin a rotation here (the operator's SIGUSR2); the next key, or None when refused. Blocking."""
        refusal = self._refusal()
        if refusal is not None:
            log.warning("rotation not started: %s", refusal)
            return None
        with self._lock:
            key, made = self.keys.start_rotation(int(self._clock() + self.notice_s))
        if made:
            self._publish()
            log.info("rotation: next key %s made; every replica signs with it from %s (in %d s); until then "
                     "evidence is served for both keys (clients that re-attest stage it)", fingerprint(key.spki),
                     utc(key.switch_at), key.switch_at - int(self._clock()))
        else:
            log.info("rotation: one is already under way: next key %s, switching at %s", fingerprint(key.spki),
                     utc(key.switch_at))
        self._wake()
        return key

    def _refusal(self) -> str | None:
        if self._refused is not None:
            return self._refused
        if self._peers and not self._gives:
            return ("this replica gives no key to others ([release] listen is empty), so its peers could not "
                    "obtain the next key: start the rotation on a replica that listens")
        for target in addresses(self._peers, self._own, {})[0]:
            try:
                listed = listing(target, LISTING_TIMEOUT_S)
            except Unreachable:
                continue  # down or cut off: it catches up when it is back (a restart joins with the current key)
            except EnclaveIkeError as exc:
                return (f"the replica at {target} answers, but not with the keys it holds ({printable(str(exc))}): "
                        "a build without rotation would keep the old key; upgrade every replica first")
            if not listed.follows:
                return (f"the replica at {target} follows no rotation (it has no [release] peers, or its key comes "
                        "from the key broker): it would keep the old key")
        return None

    # --- running --------------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Switch when the time comes, and follow the peers' rotations; until cancelled."""
        self._loop = asyncio.get_running_loop()
        tasks = [asyncio.create_task(self._switcher())]
        if self._peers and self._appraiser is not None:
            tasks.append(asyncio.create_task(self._poller()))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()

    async def _switcher(self) -> None:
        while True:
            pending = self.keys.next
            if pending is not None and self._clock() >= max(pending.switch_at, self._switch_retry_at):
                await self._guarded(self.switch_if_due)
            wait = self.poll_s
            if (pending := self.keys.next) is not None:
                wait = min(wait, max(0.0, max(pending.switch_at, self._switch_retry_at) - self._clock()))
            self._woken.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), max(0.05, wait))

    async def _poller(self) -> None:
        while True:
            await self._guarded(self.poll)
            await asyncio.sleep(self.poll_s)

    async def _guarded(self, work: Callable[[], None]) -> None:
        """Off the loop; whatever goes wrong is one line, and the next round runs (a rotation never stops)."""
        try:
            await asyncio.to_thread(work)
        except Exception as exc:
            log.error("rotation: %s failed: %s", work.__name__, printable(str(exc) or type(exc).__name__))

    def _wake(self) -> None:
        """From any thread: the switcher looks at the keys again now."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._woken.set)

    def _publish(self) -> None:
        try:
            self._published()
        except Exception as exc:
            log.error("rotation: cannot publish the identity: %s", printable(str(exc) or type(exc).__name__))

    # --- switching ------------------------------------------------------------------------------------------------

    def switch_if_due(self) -> None:
        with self._lock:
            pending = self.keys.next
            if pending is None or self._clock() < pending.switch_at:
                return
            try:
                old, new = self.keys.current, self.keys.switch()
            except EnclaveIkeError as exc:
                self._switch_retry_at = self._clock() + self.poll_s
                log.error("rotation: cannot switch to the next key %s (again in %g s): %s",
                          fingerprint(pending.spki), self.poll_s, exc)
                return
        self._publish()  # first: whoever reads the line finds the identity published
        log.info("rotation: switched from key %s to key %s: new IKE SAs are signed with it, the old key is gone",
                 fingerprint(old), fingerprint(new))

    # --- following ------------------------------------------------------------------------------------------------

    def poll(self) -> None:
        """One round over the peers: take a next key they list that we lack (or that wins over ours), or a current
        key that became current after ours (a switch we missed)."""
        for target in addresses(self._peers, self._own, {})[0]:
            try:
                listed = listing(target, LISTING_TIMEOUT_S)
            except EnclaveIkeError:
                continue  # a peer down or busy: the next round asks again
            offered, current = listed.next, self.keys.current
            if offered is not None and self._wants(offered):
                self._obtain(target, offered.spki, offered.switch_at)
            elif listed.current != current and not self.keys.holds(listed.current) and \
                    newer(listed.since, listed.current, self.keys.since, current):
                self._obtain(target, listed.current, None)
            elif listed.current != current and not self.keys.holds(listed.current) and not newer(
                    self.keys.since, current, listed.since, listed.current) and not (
                    offered is not None and self.keys.holds(offered.spki)):
                self._say_once(target, "split", fingerprint(listed.current),
                               f"rotation: {target} signs with key {fingerprint(listed.current)}, this replica with "
                               f"key {fingerprint(current)}, both the service's first keys (a split identity: a "
                               "replica of source = \"new\" restarted, or a partition at the start): restart the "
                               "replica whose key is not the service's")
            elif offered is not None and offered.spki == current and offered.switch_at + self.poll_s * 3 \
                    < self._clock():
                self._say_once(target, "behind", fingerprint(current),
                               f"rotation: {target} still signs with the old key {fingerprint(listed.current)}, "
                               f"{self._clock() - offered.switch_at:.0f} s after the switch to "
                               f"{fingerprint(current)}: restart it")
            else:
                self._said.pop((target, "behind"), None)
                self._said.pop((target, "split"), None)

    def _wants(self, offered: NextKey) -> bool:
        ours = self.keys.next
        if self.keys.holds(offered.spki):
            return False
        return ours is None or (offered.spki != ours.spki and offered.sorts_before(ours))

    def _obtain(self, target: str, key: bytes, listed_switch: int | None) -> None:
        """The key `key` from `target`, as our next key: a rotation's next key (listed_switch: its switch time as
        listed), or a current key newer than ours (None), which we then switch to at once."""
        assert self._appraiser is not None
        ours, our_key = self.keys.since, self.keys.current

        def role(switch_at: int | None, since: int) -> str | None:
            if listed_switch is None:
                return self._not_a_catch_up(key, ours, our_key, switch_at, since)
            return self._not_a_next_key(key, switch_at)

        with self._lock:
            if listed_switch is not None and not self._wants(NextKey(key, listed_switch)):
                return
            try:
                accepted = ask(self._enclave, self._appraiser, target, self._make_envelope, self._clock,
                               REQUEST_TIMEOUT_S, key=key, role=role)
            except EnclaveIkeError as exc:
                if self._clock() >= self._refusals_said.get(target, 0.0):
                    self._refusals_said[target] = self._clock() + REFUSALS_EVERY_S
                    log.warning("rotation: the key %s from %s refused: %s (said at most every %d s per peer)",
                                fingerprint(key), target, printable(str(exc)), REFUSALS_EVERY_S)
                return
            adopted = NextKey(key, accepted.switch_at if accepted.switch_at is not None else accepted.since)
            self.keys.adopt(adopted)
        self._publish()
        if accepted.switch_at is None:
            log.warning("rotation: this replica missed the switch to key %s (current at %s since %s): obtained it "
                        "(%s evidence matching %r), switching %s", fingerprint(key), target,
                        utc(adopted.switch_at), accepted.holder.kind.value, accepted.holder.measurement_id,
                        "now" if adopted.switch_at <= self._clock() else "then (that clock runs ahead of ours)")
        else:
            log.info("rotation: obtained the next key %s from %s (%s evidence matching %r); switching to it at %s",
                     fingerprint(key), target, accepted.holder.kind.value, accepted.holder.measurement_id,
                     utc(adopted.switch_at))
        self._wake()

    def _not_a_catch_up(self, key: bytes, ours: int, our_key: bytes, switch_at: int | None, since: int) -> str | None:
        """Why a key asked for as a peer's newer current key is not taken, or None: it must come as a current key,
        made current already (give or take the clocks), and be the service's over ours."""
        if switch_at is not None:
            return "asked for a current key, it came as a next key"
        if since > self._clock() + CLOCK_SLACK_S:
            return f"it became current at {utc(since)}, ahead of this replica's clock (a clock far off?)"
        if not newer(since, key, ours, our_key):
            return "it is not the service's over ours (made current earlier)"
        return None

    def _not_a_next_key(self, key: bytes, switch_at: int | None) -> str | None:
        """Why a key asked for as a peer's next key is not taken, or None: it must come as a next key, switching
        within the longest notice, and win over ours with the switch time it came with (not the one listed)."""
        if switch_at is None:
            return "asked for a next key, it came as a current key"
        if switch_at > self._clock() + MAX_NOTICE_S:
            return f"its switch time {switch_at} is more than {MAX_NOTICE_S} s ahead (a clock far off?)"
        if not self._wants(NextKey(key, switch_at)):
            return "it does not win over this replica's next key (with the switch time it came with)"
        return None

    def _say_once(self, target: str, kind: str, about: str, line: str) -> None:
        """A warning about a peer, once until what it says changes (a peer that keeps saying it is heard once)."""
        if self._said.get((target, kind)) != about:
            log.warning("%s", line)
        self._said[(target, kind)] = about

