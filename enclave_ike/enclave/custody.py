"""The identity keys held in this process, and what key release and rotation do to them: seal one to another
enclave's attested ephemeral key, take in a key sealed to ours (sealing.py), make the next key and switch to it.
The software and tsm backends keep their keys here (in a confidential VM this process is inside the TEE); the sim
enclave's child process keeps its keys here too, so no key ever exists in enclave-ike's own process.

Two keys at most: the *current* one, which signs, and during a rotation the *next* one, which only becomes the
current one at `switch` (the old one is dropped then). Keys are named by their SubjectPublicKeyInfo DER.

The recipient key lives from `release_recipient` to the next `import_identity`, which drops it whatever the outcome:
one sealed key per request, and a tampered one does not leave a key behind to try again with.
"""

from __future__ import annotations

import threading

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ..ikev2.crypto import PublicKey, SignatureScheme, Signer, SoftwareSigner
from .errors import EnclaveError
from .sealing import IdentityKey, SealError, new_recipient, open_sealed, seal, spki


class Custody:
    def __init__(self, key: IdentityKey, *, curves: frozenset[str] | None = None) -> None:
        """`curves`: the ECDSA curves this holder can sign with (None: any identity key, RSA included); a key of
        another kind is refused at import."""
        self._key, self._curves = key, curves
        self._next: IdentityKey | None = None
        self._recipient: ec.EllipticCurvePrivateKey | None = None
        self._lock = threading.Lock()
        self._current_signer = SoftwareSigner(key)
        self.signer = _CurrentSigner(self)  # one object for the server's life: it signs with whichever is current

    def current_spki(self) -> bytes:
        with self._lock:
            return spki(self._key.public_key())

    def make_next(self) -> bytes:
        """A next key of the current one's kind (made here, once: asked again, the same one)."""
        with self._lock:
            if self._next is None:
                self._next = _like(self._key)
            return spki(self._next.public_key())

    def switch(self) -> bytes:
        """The next key signs from now on, and the old one is gone; the new current key's SPKI."""
        with self._lock:
            if self._next is None:
                raise EnclaveError("no next key to switch to")
            self._key, self._next = self._next, None
            self._current_signer = SoftwareSigner(self._key)
            return spki(self._key.public_key())

    def release_recipient(self) -> bytes:
        """A fresh ephemeral P-256 public key (SubjectPublicKeyInfo DER) for a holder to seal a key to."""
        with self._lock:
            self._recipient = new_recipient()
            return spki(self._recipient.public_key())

    def seal_identity(self, recipient_spki: bytes, info: bytes, key_spki: bytes | None = None) -> bytes:
        """The held key `key_spki` names (default: the current one) sealed to `recipient_spki`; SealError when this
        holder does not hold that key."""
        with self._lock:
            held = [key for key in (self._key, self._next) if key is not None]
            key = held[0] if key_spki is None else next((k for k in held if spki(k.public_key()) == key_spki), None)
            if key is None:
                raise SealError("that key is not one this enclave holds (neither its current nor its next key)")
            return seal(key, recipient_spki, info)

    def import_identity(self, sealed: bytes, info: bytes, expected_spki: bytes, *, as_next: bool = False) -> None:
        """The key sealed to our recipient key becomes the current key (or, `as_next`, the next one); SealError (and
        nothing changes) when it does not open, is not the key `expected_spki` names, or is a kind this holder
        cannot sign with."""
        with self._lock:
            recipient, self._recipient = self._recipient, None
            if recipient is None:
                raise SealError("no recipient key to open a sealed key with: ask for one first")
            key = open_sealed(recipient, sealed, info, expected_spki)
            if self._curves is not None and not (isinstance(key, ec.EllipticCurvePrivateKey)
                                                 and key.curve.name in self._curves):
                raise SealError(f"the released key is {_kind(key)}; this enclave signs with ECDSA "
                                f"{' or '.join(sorted(self._curves))} only")
            if as_next:
                self._next = key
            else:
                self._key, self._current_signer = key, SoftwareSigner(key)

    def current_signer(self) -> SoftwareSigner:
        with self._lock:
            return self._current_signer


class _CurrentSigner(Signer):
    """The current key's signer, whichever key that is: a switch needs no new responder config. A next key is of
    the current one's kind, so the schemes stay; an imported key may differ, but import happens before serving."""

    def __init__(self, custody: Custody) -> None:
        self._custody = custody

    @property
    def schemes(self) -> tuple[SignatureScheme, ...]:
        return self._custody.current_signer().schemes

    def sign(self, data: bytes, scheme: SignatureScheme) -> bytes:
        return self._custody.current_signer().sign(data, scheme)

    def public_key(self) -> PublicKey:
        return self._custody.current_signer().public_key()


def _like(key: IdentityKey) -> IdentityKey:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return ec.generate_private_key(key.curve)
    return rsa.generate_private_key(public_exponent=65537, key_size=key.key_size)


def _kind(key: IdentityKey) -> str:
    return f"ECDSA {key.curve.name}" if isinstance(key, ec.EllipticCurvePrivateKey) else f"RSA-{key.key_size}"


class HeldInProcess:
    """The signer, key release and rotation of a backend whose keys are in this process (`self._custody`)."""

    _custody: Custody

    def signer(self) -> Signer:
        return self._custody.signer

    def release_recipient(self) -> bytes:
        return self._custody.release_recipient()

    def seal_identity(self, recipient_spki: bytes, info: bytes, key_spki: bytes | None = None) -> bytes:
        return self._custody.seal_identity(recipient_spki, info, key_spki)

    def import_identity(self, sealed: bytes, info: bytes, expected_spki: bytes, *, as_next: bool = False) -> None:
        self._custody.import_identity(sealed, info, expected_spki, as_next=as_next)

    def make_next(self) -> bytes:
        return self._custody.make_next()

    def switch(self) -> bytes:
        return self._custody.switch()
