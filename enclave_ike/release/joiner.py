"""The joiner's side of a key release: a request whose evidence binds the holder's challenge and a fresh ephemeral
key (kept in our enclave), then the grant's checks before anything is imported:

- the holder's evidence verifies against the same spec, for our nonce, under KEY_GRANT_LABEL (mutual attestation:
  we take a key only from an enclave that runs what the service runs);
- the sealed key opens with our ephemeral key for exactly this request (seal_info), and is the key that evidence
  attests (enclave/sealing.py).

A joiner asks for the holder's current key, or names the key it wants (a rotation's next key, or a current key whose
switch it missed, keyring.py): a grant for another key than the one named is refused. A named key goes into the
enclave as its next key, with the switch time the grant says (bound into the HPKE context); the caller decides
whether the role it comes in is one to take.

Any failure is Refused, and our enclave's keys are unchanged. One Joiner per request (a new ephemeral key each time).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from ikecommon.attestation.binding import KEY_GRANT_LABEL, KEY_REQUEST_LABEL
from ikecommon.attestation.verify import Verified

from ..enclave.attest import MakeEnvelope, envelopes
from ..enclave.base import Enclave
from ..enclave.sealing import SealError
from .appraise import Appraiser
from .errors import Refused
from .messages import KeyGrant, KeyRequest, seal_info

NONCE_SIZE = 32


class Joiner:
    def __init__(self, enclave: Enclave, appraiser: Appraiser, make_envelope: MakeEnvelope | None = None, *,
                 key: bytes | None = None) -> None:
        """`make_envelope`: how our evidence is made (default: the enclave's, without vendor collateral); `key`:
        the key wanted (its SPKI DER), or None for the holder's current key."""
        self._enclave, self._appraiser, self._key = enclave, appraiser, key
        self._make_envelope = make_envelope or envelopes(enclave)
        self._nonce = secrets.token_bytes(NONCE_SIZE)
        self._request: bytes | None = None

    def request(self, challenge: bytes) -> bytes:
        """The KeyRequest answering the holder's challenge."""
        recipient = self._enclave.release_recipient()
        envelope = self._make_envelope(challenge, KEY_REQUEST_LABEL, recipient)
        self._request = KeyRequest(challenge, self._nonce, envelope.encode(), self._key).encode()
        return self._request

    def accept(self, body: bytes, now: float, *, role: RoleCheck | None = None) -> Accepted:
        """Check the grant and import its key (a named key as our next key, else as our current key); the holder's
        verified evidence. `role(switch_at, since)` may refuse the role a named key comes in (its reason), before
        anything is imported."""
        if self._request is None:
            raise Refused("a grant before any request")
        grant = KeyGrant.decode(body)
        verified = self._appraiser.verify(grant.evidence, self._nonce, KEY_GRANT_LABEL,
                                          datetime.fromtimestamp(now, UTC), "the holder's")
        if self._key is not None and verified.ike_key != self._key:
            raise Refused("the holder granted another key than the one asked for")
        if self._key is None and grant.switch_at is not None:
            raise Refused("the holder granted a next key for the current one")
        if role is not None and (reason := role(grant.switch_at, grant.since)) is not None:
            raise Refused(reason)
        info = seal_info(self._request, verified.ike_key, grant.role)
        try:
            self._enclave.import_identity(grant.sealed, info, verified.ike_key, as_next=self._key is not None)
        except SealError as exc:
            raise Refused(f"the holder's sealed key: {exc}") from None
        return Accepted(verified, grant.switch_at, grant.since)


RoleCheck = Callable[["int | None", int], "str | None"]
"""(switch_at, since) of a grant -> None to take it, or why not."""


@dataclass(frozen=True)
class Accepted:
    holder: Verified          # the holder's verified evidence (its ike_key is the key we now hold)
    switch_at: int | None     # granted as a next key: its switch time
    since: int = 0            # granted as a current key: when a rotation made it current (0: the first key)
