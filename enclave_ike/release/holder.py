"""The holder's side of a key release: single-use challenges, and a grant only for a request that proves, with
evidence matching the service's spec, an enclave that holds the ephemeral key the identity key is sealed to.

A request is refused, and nothing leaves the enclave, when:
- it does not parse (MessageError);
- its challenge is not one this holder issued, was already taken (a replayed request: every challenge is taken by
  the first request that names it, whatever follows), or is older than CHALLENGE_TTL_S (a stale one);
- its evidence does not verify against the spec, or binds another key, another challenge or another purpose
  (KEY_REQUEST_LABEL: a client's evidence for the IKE key never passes for a request);
- its key is not one the HPKE suite can seal to (enclave/sealing.py);
- it asks for a key this holder does not hold (`key`: only our current key, or a rotation's next one).

Challenges are stateless until used: issued-at (this process's monotonic clock) || 16 random bytes || a MAC of
both under a key that lives and dies with the holder. Nothing is stored per challenge issued, so a flood of
challenge requests evicts nobody's; a used challenge is remembered until it would be stale anyway (their number is
bounded by the rate of requests, which the endpoint takes one at a time).

Sans-I/O apart from its clock: the caller passes the wall time the evidence is judged at; endpoint.py serves it.
"""

from __future__ import annotations

import secrets
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.hazmat.primitives import constant_time, hashes, hmac

from ikecommon.attestation.binding import KEY_GRANT_LABEL, KEY_REQUEST_LABEL

from ..enclave.attest import MakeEnvelope
from ..enclave.base import Enclave
from ..enclave.sealing import SealError
from .appraise import Appraiser
from .errors import Refused
from .keyring import KeyRing
from .messages import KeyGrant, KeyRequest, seal_info
from .messages import role as granted_role

CHALLENGE_TTL_S = 30.0  # a joiner asks for a challenge and sends its request at once; evidence takes < 1 s
_ISSUED = struct.Struct(">d")  # when, on the holder's monotonic clock
_RANDOM_SIZE = _MAC_SIZE = 16
CHALLENGE_SIZE = _ISSUED.size + _RANDOM_SIZE + _MAC_SIZE


@dataclass(frozen=True)
class Granted:
    grant: bytes            # the KeyGrant to send back
    measurement_id: str     # the spec entry the joiner's evidence matched
    kind: str               # its evidence kind
    next_key: bool = False  # the key granted is a rotation's next key


class Holder:
    def __init__(self, enclave: Enclave, appraiser: Appraiser, make_envelope: MakeEnvelope, *,
                 keys: KeyRing | None = None, ttl: float = CHALLENGE_TTL_S,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        """`make_envelope` makes this enclave's evidence (the evidence endpoint's, which adds vendor
        collateral); `keys` says which keys the enclave holds (a rotation's next key too); `monotonic` times the
        challenges (a wall clock that steps must not age them)."""
        self._enclave, self._appraiser, self._make_envelope = enclave, appraiser, make_envelope
        self.keys = keys or KeyRing(enclave)
        self._ttl, self._monotonic = ttl, monotonic
        self._mac_key = secrets.token_bytes(32)
        self._used: OrderedDict[bytes, float] = OrderedDict()  # challenge -> when used, oldest first
        self._lock = threading.Lock()

    def challenge(self) -> bytes:
        """A fresh single-use challenge for one request."""
        issued = _ISSUED.pack(self._monotonic()) + secrets.token_bytes(_RANDOM_SIZE)
        return issued + self._mac(issued)

    def grant(self, body: bytes, now: float) -> Granted:
        """The grant for this request, its evidence judged at wall time `now`; MessageError or Refused (naming
        why) otherwise."""
        request = KeyRequest.decode(body)
        self._take(request.challenge)
        verified = self._appraiser.verify(request.evidence, request.challenge, KEY_REQUEST_LABEL,
                                          datetime.fromtimestamp(now, UTC), "the joiner's")
        role = self.keys.role(request.key)
        if role is None:
            raise Refused("the key asked for is not one this holder holds (neither its current key nor a "
                          "rotation's next key)")
        info = seal_info(body, role.spki, granted_role(role.switch_at, role.since))
        try:
            sealed = self._enclave.seal_identity(verified.ike_key, info, role.spki)
        except SealError as exc:
            raise Refused(f"cannot seal the key to the joiner's: {exc}") from None
        envelope = self._make_envelope(request.nonce, KEY_GRANT_LABEL, role.spki)
        return Granted(KeyGrant(envelope.encode(), sealed, role.switch_at, role.since).encode(),
                       verified.measurement_id, verified.kind.value, role.switch_at is not None)

    def _mac(self, issued: bytes) -> bytes:
        mac = hmac.HMAC(self._mac_key, hashes.SHA256())
        mac.update(issued)
        return mac.finalize()[:_MAC_SIZE]

    def _take(self, challenge: bytes) -> None:
        issued, mac = challenge[:-_MAC_SIZE], challenge[-_MAC_SIZE:]
        if len(challenge) != CHALLENGE_SIZE or not constant_time.bytes_eq(mac, self._mac(issued)):
            raise Refused("the challenge is not one this holder issued (another holder's, or from before a "
                          "restart)")
        at = _ISSUED.unpack_from(issued)[0]
        now = self._monotonic()
        with self._lock:
            # Used more than a TTL ago means issued more than a TTL ago: stale anyway, no need to remember it.
            while self._used and now - next(iter(self._used.values())) > self._ttl:
                self._used.popitem(last=False)
            if challenge in self._used:
                raise Refused("the challenge was already used (a replayed request)")
            if now - at > self._ttl:
                raise Refused(f"the challenge is stale: issued {now - at:.0f} s ago, valid for {self._ttl:g} s")
            self._used[challenge] = now
