"""The guest policy a SEV-SNP report carries (fixed at launch, enforced by the firmware), and the rules a caller
sets for accepting it. The defaults refuse what would let the host read the guest: debugging, and migration
through a migration agent the verifier has not vetted."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import Mismatch
from .report import SnpReport, TcbVersion


@dataclass(frozen=True)
class GuestPolicy:
    """SNP guest policy bits (firmware ABI, "Guest Policy Structure")."""

    raw: int

    @property
    def abi(self) -> tuple[int, int]:
        return self.raw >> 8 & 0xFF, self.raw & 0xFF

    @property
    def smt(self) -> bool:
        return bool(self.raw >> 16 & 1)

    @property
    def migrate_ma(self) -> bool:
        return bool(self.raw >> 18 & 1)

    @property
    def debug(self) -> bool:
        return bool(self.raw >> 19 & 1)

    @property
    def single_socket(self) -> bool:
        return bool(self.raw >> 20 & 1)


@dataclass(frozen=True)
class SnpPolicy:
    allow_debug: bool = False
    allow_migration_agent: bool = False
    allow_smt: bool = True
    require_single_socket: bool = False
    minimum_abi: tuple[int, int] = (0, 0)   # (major, minor) the guest policy must require at least
    vmpl: int | None = None                 # the VMPL the report must come from; None accepts any
    minimum_guest_svn: int = 0
    minimum_tcb: TcbVersion | None = None   # every component of REPORTED_TCB at or above this (by name: a Turin
                                            # FMC minimum fails a report whose product has no FMC)


def policy_mismatches(report: SnpReport, policy: SnpPolicy) -> list[Mismatch]:
    guest, found = GuestPolicy(report.policy), []
    if guest.debug and not policy.allow_debug:
        found.append(Mismatch("policy.debug", "0 (debugging lets the host read and change guest memory)", "1"))
    if guest.migrate_ma and not policy.allow_migration_agent:
        found.append(Mismatch("policy.migrate_ma", "0 (no migration agent)", "1"))
    if guest.smt and not policy.allow_smt:
        found.append(Mismatch("policy.smt", "0 (SMT not allowed)", "1"))
    if policy.require_single_socket and not guest.single_socket:
        found.append(Mismatch("policy.single_socket", "1", "0"))
    if guest.abi < policy.minimum_abi:
        found.append(Mismatch("policy.abi", "at least {}.{}".format(*policy.minimum_abi), "{}.{}".format(*guest.abi)))
    if policy.vmpl is not None and report.vmpl != policy.vmpl:
        found.append(Mismatch("vmpl", str(policy.vmpl), str(report.vmpl)))
    if report.guest_svn < policy.minimum_guest_svn:
        found.append(Mismatch("guest_svn", f"at least {policy.minimum_guest_svn}", str(report.guest_svn)))
    if policy.minimum_tcb is not None:
        found += _tcb_below(report.reported_tcb, policy.minimum_tcb)
    return found


def _tcb_below(reported: TcbVersion, minimum: TcbVersion) -> list[Mismatch]:
    """Each component of `minimum` the report's TCB is below, compared by name; one the report's layout does not have
    (the FMC before Turin) is below too."""
    have = reported.components()
    return [Mismatch(f"reported_tcb.{name}", f"at least {need}",
                     str(have[name]) if name in have else f"none ({reported.layout.name} has no {name} SVN)")
            for name, need in minimum.components().items() if have.get(name, -1) < need]
