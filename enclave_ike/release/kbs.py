"""The second key source: the service's identity key from Trustee's key broker (KBS), through the pod's confidential
data hub (Confidential Containers). `[release] source = "kbs"`.

In a CoCo pod the confidential data hub (CDH) answers on the pod's loopback:

    GET {cdh_url}/cdh/resource/{repository}/{type}/{tag}   ->  the resource's bytes

and gets them from the KBS only after the KBS has appraised the pod VM's evidence against the operator's policy: the
attestation is Trustee's, before the key reaches the pod. The resource here is the identity key as a PEM PKCS#8
private key. It arrives in the clear inside the pod VM (the TEE), and goes into the enclave the way a released key
does: sealed to the enclave's own recipient key, then imported (so the sim enclave's child holds it, as with peers).

When to pick which (docs/scale-out.md): peers when the replicas should need nothing but each other and the spec is
the whole policy; kbs when the operator already runs Trustee, wants the key created and kept outside any replica
(so it survives the death of every replica, and rotates in one place), and accepts Trustee's policy as the gate.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ikecommon.evidence_client import EndpointError, fetch

from ..enclave.base import Enclave
from ..enclave.sealing import SealError, seal, spki
from .errors import Refused, ReleaseError

MAX_KEY = 16 * 1024
IMPORT_INFO = b"enclave-ike kbs import v1\0"
RETRY_S = 1.0


def cdh_endpoint(url: str) -> tuple[str, int]:
    """(host, port) of a plain-HTTP CDH URL; ValueError for anything else (the CDH listens on the pod's loopback)."""
    try:
        parts = urlsplit(url)
        port = parts.port or 80
    except ValueError:
        parts, port = None, 0
    if parts is None or parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/") or parts.query \
            or parts.fragment or parts.username:
        raise ValueError("expected http://HOST[:PORT] (the pod's confidential data hub)")
    return parts.hostname, port


def obtain_from_kbs(enclave: Enclave, cdh_url: str, resource: str, *, within: float,
                    say: Callable[[str], None] = lambda line: None, sleep: Callable[[float], None] = time.sleep,
                    monotonic: Callable[[], float] = time.monotonic) -> str:
    """Put the KBS's key in `enclave`; the SHA-256 of its public key (SPKI), for the log. Retries an unreachable or
    failing CDH until `within` seconds have passed (the CDH may start after us); a key that is not one is final."""
    host, port = cdh_endpoint(cdh_url)
    target = f"/cdh/resource/{resource}"
    start = monotonic()
    while True:
        try:
            pem = fetch(host, port, target, MAX_KEY, max(1.0, within - (monotonic() - start)),
                        what="confidential data hub")
            break
        except EndpointError as exc:
            if monotonic() - start >= within:
                raise ReleaseError(f"no key from the key broker within {within:g} s: {exc}") from None
            say(f"key broker: {exc}; trying again")
            sleep(RETRY_S)
    key = _identity_key(pem, resource)
    expected = spki(key.public_key())
    try:
        enclave.import_identity(seal(key, enclave.release_recipient(), IMPORT_INFO), IMPORT_INFO, expected)
    except SealError as exc:
        raise Refused(f"the key broker's key {resource}: {exc}") from None
    return hashlib.sha256(expected).hexdigest()


def _identity_key(pem: bytes, resource: str) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise Refused(f"the key broker's resource {resource} is not a PEM private key (unencrypted PKCS#8)") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise Refused(f"the key broker's resource {resource} is a {type(key).__name__.lstrip('_')}: an identity "
                      "key is ECDSA or RSA")
    return key
