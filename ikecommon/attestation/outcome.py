"""What a verifier returns: every check it ran, each with the mismatches it found (none when it passed).

A verifier never stops at the first problem. It runs every check it can, so one result says both "all the
signatures are valid" and "the platform's TCB is out of date". A check that passed only because the caller's policy
allows something a user should know about (collateral past its nextUpdate inside the grace, a TCB status other than
UpToDate that the caller accepts) carries a note saying so: accepted, never silently.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from .errors import Mismatch, VerificationFailed


class CheckKind(StrEnum):
    SIGNATURE = "signature"        # a signature over evidence or collateral
    CERTIFICATES = "certificates"  # a certificate chain to the trusted root: signatures, validity, revocation
    BINDING = "binding"            # one signed thing tied to another (attestation key to QE report, report to VCEK)
    COLLATERAL = "collateral"      # the vendor's signed collateral applies to this platform and is current
    TCB = "tcb"                    # the platform's patch level against the vendor's TCB levels
    POLICY = "policy"              # the caller's rules (debug, migration, ...)


# The kinds that decide whether the evidence is authentic; TCB, collateral and policy decide whether to accept it.
AUTHENTICITY = frozenset({CheckKind.SIGNATURE, CheckKind.CERTIFICATES, CheckKind.BINDING})


@dataclass(frozen=True)
class Check:
    name: str
    kind: CheckKind
    mismatches: tuple[Mismatch, ...] = ()
    notes: tuple[str, ...] = ()  # what the caller's policy accepted, for the user to see

    @classmethod
    def of(cls, name: str, kind: CheckKind, mismatches: Iterable[Mismatch], notes: Iterable[str] = ()) -> Check:
        return cls(name, kind, tuple(mismatches), tuple(notes))

    @property
    def passed(self) -> bool:
        return not self.mismatches


@dataclass(frozen=True)
class Verification:
    checks: tuple[Check, ...]

    @property
    def mismatches(self) -> tuple[Mismatch, ...]:
        """Every mismatch once (two chains under one root both find an expired root)."""
        return tuple(dict.fromkeys(m for check in self.checks for m in check.mismatches))

    @property
    def notes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(note for check in self.checks for note in check.notes))

    @property
    def ok(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def signatures_valid(self) -> bool:
        """Every signature, certificate chain and binding verified (whatever the TCB and policy checks said)."""
        return all(check.passed for check in self.checks if check.kind in AUTHENTICITY)

    def check(self, name: str) -> Check:
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)

    def require_ok(self) -> None:
        if not self.ok:
            raise VerificationFailed(self.mismatches)
