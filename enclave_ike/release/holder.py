"""The holder's side of a key release: single-use challenges, and a grant only for a request that proves, with
evidence matching the service's spec, an enclave that holds the ephemeral key the identity key is sealed to.

A request is refused, and nothing leaves the enclave, when:
- it does not parse (MessageError);
- its challenge is not one this holder issued and has not yet taken (a replayed request), or is older than
  CHALLENGE_TTL_S (a stale one): every challenge is taken by the first request that names it, whatever follows;
- its evidence does not verify against the spec, or binds another key, another challenge or another purpose
  (KEY_REQUEST_LABEL: a client's evidence for the IKE key never passes for a request);
- its key is not one the HPKE suite can seal to (enclave/sealing.py).

Sans-I/O: the caller passes `now` and gets bytes or an exception; endpoint.py serves it.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime

from ikecommon.attestation.binding import KEY_GRANT_LABEL, KEY_REQUEST_LABEL

from ..enclave.attest import MakeEnvelope
from ..enclave.base import Enclave
from ..enclave.sealing import SealError, spki
from .appraise import Appraiser
from .errors import Refused
from .messages import KeyGrant, KeyRequest, seal_info

CHALLENGE_SIZE = 32
CHALLENGE_TTL_S = 30.0  # a joiner asks for a challenge and sends its request at once; evidence takes < 1 s
MAX_CHALLENGES = 256    # outstanding at once; past it the oldest is forgotten (its request is then refused)


@dataclass(frozen=True)
class Granted:
    grant: bytes            # the KeyGrant to send back
    measurement_id: str     # the spec entry the joiner's evidence matched
    kind: str               # its evidence kind


class Holder:
    def __init__(self, enclave: Enclave, appraiser: Appraiser, make_envelope: MakeEnvelope, *,
                 ttl: float = CHALLENGE_TTL_S, max_challenges: int = MAX_CHALLENGES) -> None:
        """`make_envelope` makes this enclave's evidence (the evidence endpoint's, which adds vendor
        collateral)."""
        self._enclave, self._appraiser, self._make_envelope = enclave, appraiser, make_envelope
        self._ttl, self._max = ttl, max_challenges
        self._challenges: OrderedDict[bytes, float] = OrderedDict()  # challenge -> when issued
        self._lock = threading.Lock()

    def challenge(self, now: float) -> bytes:
        """A fresh single-use challenge for one request."""
        challenge = secrets.token_bytes(CHALLENGE_SIZE)
        with self._lock:
            self._challenges[challenge] = now
            while len(self._challenges) > self._max:
                self._challenges.popitem(last=False)
        return challenge

    def grant(self, body: bytes, now: float) -> Granted:
        """The grant for this request; MessageError or Refused (naming why) otherwise."""
        request = KeyRequest.decode(body)
        self._take(request.challenge, now)
        verified = self._appraiser.verify(request.evidence, request.challenge, KEY_REQUEST_LABEL,
                                          datetime.fromtimestamp(now, UTC), "the joiner's")
        identity = spki(self._enclave.signer().public_key())
        try:
            sealed = self._enclave.seal_identity(verified.ike_key, seal_info(body, identity))
        except SealError as exc:
            raise Refused(f"cannot seal the key to the joiner's: {exc}") from None
        envelope = self._make_envelope(request.nonce, KEY_GRANT_LABEL, None)
        return Granted(KeyGrant(envelope.encode(), sealed).encode(), verified.measurement_id, verified.kind.value)

    def _take(self, challenge: bytes, now: float) -> None:
        with self._lock:
            issued = self._challenges.pop(challenge, None)
            for old in [c for c, at in self._challenges.items() if now - at > self._ttl]:
                del self._challenges[old]
        if issued is None:
            raise Refused("the challenge is not one this holder issued, or was already used (a replayed request)")
        if now - issued > self._ttl:
            raise Refused(f"the challenge is stale: issued {now - issued:.0f} s ago, valid for {self._ttl:g} s")
