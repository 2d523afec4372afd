"""The joiner's side of a key release: a request whose evidence binds the holder's challenge and a fresh ephemeral
key (kept in our enclave), then the grant's checks before anything is imported:

- the holder's evidence verifies against the same spec, for our nonce, under KEY_GRANT_LABEL (mutual attestation:
  we take a key only from an enclave that runs what the service runs);
- the sealed key opens with our ephemeral key for exactly this request (seal_info), and is the key that evidence
  attests (enclave/sealing.py).

Any failure is Refused, and our enclave's key is unchanged. One Joiner per request (a new ephemeral key each time).
"""

from __future__ import annotations

import secrets
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
    def __init__(self, enclave: Enclave, appraiser: Appraiser, make_envelope: MakeEnvelope | None = None) -> None:
        """`make_envelope`: how our evidence is made (default: the enclave's, without vendor collateral)."""
        self._enclave, self._appraiser = enclave, appraiser
        self._make_envelope = make_envelope or envelopes(enclave)
        self._nonce = secrets.token_bytes(NONCE_SIZE)
        self._request: bytes | None = None

    def request(self, challenge: bytes) -> bytes:
        """The KeyRequest answering the holder's challenge."""
        recipient = self._enclave.release_recipient()
        envelope = self._make_envelope(challenge, KEY_REQUEST_LABEL, recipient)
        self._request = KeyRequest(challenge, self._nonce, envelope.encode()).encode()
        return self._request

    def accept(self, body: bytes, now: float) -> Verified:
        """Check the grant and import its key; the holder's verified evidence (its key is ours now)."""
        if self._request is None:
            raise Refused("a grant before any request")
        grant = KeyGrant.decode(body)
        verified = self._appraiser.verify(grant.evidence, self._nonce, KEY_GRANT_LABEL,
                                          datetime.fromtimestamp(now, UTC), "the holder's")
        try:
            self._enclave.import_identity(grant.sealed, seal_info(self._request, verified.ike_key), verified.ike_key)
        except SealError as exc:
            raise Refused(f"the holder's sealed key: {exc}") from None
        return verified
