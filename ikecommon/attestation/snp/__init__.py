"""AMD SEV-SNP: the attestation report (`report`), the VCEK's AMD extensions (`vcek`), guest policy rules
(`policy`) and the verifier (`verify`)."""

from .policy import GuestPolicy, SnpPolicy
from .report import SnpReport, TcbVersion
from .vcek import VcekExtensions, vcek_extensions
from .verify import SnpVerification, load_ask_ark, load_vcek, verify_report

__all__ = [
    "GuestPolicy",
    "SnpPolicy",
    "SnpReport",
    "SnpVerification",
    "TcbVersion",
    "VcekExtensions",
    "load_ask_ark",
    "load_vcek",
    "vcek_extensions",
    "verify_report",
]
