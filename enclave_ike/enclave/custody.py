"""An identity key held in this process, with the two things key release does to it: seal it to another enclave's
attested ephemeral key, and take in a key sealed to ours (sealing.py). The software and tsm backends keep their key
here (in a confidential VM this process is inside the TEE); the sim enclave's child process keeps its key here too,
so the key never exists in enclave-ike's own process.

The recipient key lives from `release_recipient` to the next `import_identity`, which drops it whatever the outcome:
one sealed key per request, and a tampered one does not leave a key behind to try again with.
"""

from __future__ import annotations

import threading

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ..ikev2.crypto import SoftwareSigner
from .sealing import IdentityKey, SealError, new_recipient, open_sealed, seal, spki


class Custody:
    def __init__(self, key: IdentityKey, *, curves: frozenset[str] | None = None) -> None:
        """`curves`: the ECDSA curves this holder can sign with (None: any identity key, RSA included); a key of
        another kind is refused at import."""
        self._key, self._signer, self._curves = key, SoftwareSigner(key), curves
        self._recipient: ec.EllipticCurvePrivateKey | None = None
        self._lock = threading.Lock()

    @property
    def signer(self) -> SoftwareSigner:
        return self._signer

    def release_recipient(self) -> bytes:
        """A fresh ephemeral P-256 public key (SubjectPublicKeyInfo DER) for a holder to seal the identity key to."""
        with self._lock:
            self._recipient = new_recipient()
            return spki(self._recipient.public_key())

    def seal_identity(self, recipient_spki: bytes, info: bytes) -> bytes:
        with self._lock:
            return seal(self._key, recipient_spki, info)

    def import_identity(self, sealed: bytes, info: bytes, expected_spki: bytes) -> None:
        """Replace the identity key by the one sealed to our recipient key; SealError (and nothing changes) when it
        does not open, is not the key `expected_spki` names, or is a kind this holder cannot sign with."""
        with self._lock:
            recipient, self._recipient = self._recipient, None
            if recipient is None:
                raise SealError("no recipient key to open a sealed key with: ask for one first")
            key = open_sealed(recipient, sealed, info, expected_spki)
            if self._curves is not None and not (isinstance(key, ec.EllipticCurvePrivateKey)
                                                 and key.curve.name in self._curves):
                kind = f"ECDSA {key.curve.name}" if isinstance(key, ec.EllipticCurvePrivateKey) else (
                    f"RSA-{key.key_size}" if isinstance(key, rsa.RSAPrivateKey) else type(key).__name__)
                raise SealError(f"the released key is {kind}; this enclave signs with ECDSA "
                                f"{' or '.join(sorted(self._curves))} only")
            self._key, self._signer = key, SoftwareSigner(key)


class HeldInProcess:
    """The signer and key release of a backend whose identity key is in this process (`self._custody`)."""

    _custody: Custody

    def signer(self) -> SoftwareSigner:
        return self._custody.signer

    def release_recipient(self) -> bytes:
        return self._custody.release_recipient()

    def seal_identity(self, recipient_spki: bytes, info: bytes) -> bytes:
        return self._custody.seal_identity(recipient_spki, info)

    def import_identity(self, sealed: bytes, info: bytes, expected_spki: bytes) -> None:
        self._custody.import_identity(sealed, info, expected_spki)
