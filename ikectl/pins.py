"""Trusted mode's view of the trust store (ikectl/truststore.py): is the pin a config names usable, and its latest
attestation, for `status`. Above both the config and the store, so that neither imports the other."""

from __future__ import annotations

from dataclasses import dataclass

from .config import Config
from .truststore import FAILED, MISSING, OK, TrustError, load

__all__ = ["FAILED", "MISSING", "OK", "AttestationView", "attested_name", "require_usable", "view"]


def attested_name(config: Config) -> str | None:
    """The pin trusted mode uses, when it is a trust-store pin ([trusted] attested = "NAME")."""
    return config.trusted.attested if config.trusted is not None else config.attested


def require_usable(config: Config) -> None:
    """Before `ikectl up` touches anything: a trust-store pin that failed its latest attestation, or is gone, is
    refused (TrustError, exit 1). Already up, trusted mode then keeps DNS blocked; nothing is changed."""
    if config.mode.value != "trusted":
        return
    name = attested_name(config)
    if name is None:
        return
    pin = load(config.trust_dir, name)
    if not pin.ok:
        raise TrustError(f"pin {name!r} failed attestation: {pin.reason}; trusted mode keeps DNS blocked until "
                         f"`ikectl trust verify {name}` succeeds")
    trusted = config.trusted
    if trusted is None or (trusted.addresses, trusted.id, trusted.key) != (pin.addresses, pin.id, pin.key):
        raise TrustError(f"pin {name!r} changed after the config was read; run the command again")


@dataclass(frozen=True)
class AttestationView:
    """`ikectl status`: the latest attestation of the trusted resolver's pin."""

    pin: str
    result: str  # ok | failed | missing
    attested_at: float | None = None
    age_s: float | None = None
    evidence: str | None = None  # tdx | sev-snp | sim
    anchors: str | None = None   # vendor | sim (NOT SECURE)
    measurement_id: str | None = None
    reason: str = ""
    next_switch_at: int | None = None  # a rotation under way: the resolver's next key is staged, switching then


def view(config: Config, now: float) -> AttestationView | None:
    name = attested_name(config)
    if name is None:
        return None
    try:
        pin = load(config.trust_dir, name)
    except TrustError as exc:
        return AttestationView(name, MISSING, reason=str(exc))
    return AttestationView(name, pin.result, pin.attested_at, max(0.0, now - pin.attested_at), pin.evidence_kind,
                           pin.anchors, pin.measurement_id, pin.reason, pin.next_switch_at)
