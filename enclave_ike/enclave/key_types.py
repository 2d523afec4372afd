"""The identity key types a simulated enclave can make. Kept apart from `sim_child` so that `sim` (imported by
the package) does not import the module `python -m` is about to run as __main__ (runpy warns about that)."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ec

KEY_TYPES: dict[str, type[ec.EllipticCurve]] = {"ecdsa-p256": ec.SECP256R1, "ecdsa-p384": ec.SECP384R1}
CURVES = frozenset(("secp256r1", "secp384r1"))  # the curves of KEY_TYPES, as cryptography names them
