"""AMD SEV-SNP: the attestation report (`report`), the VCEK's and VLEK's AMD extensions (`vcek`), guest policy rules
(`policy`) and the verifier (`verify`)."""

from .policy import GuestPolicy, SnpPolicy
from .report import SnpReport, TcbVersion
from .vcek import VcekExtensions, VlekExtensions, key_extensions, vcek_extensions, vlek_extensions
from .verify import SnpVerification, load_ask_ark, load_vcek, load_vlek, verify_report

__all__ = [
    "GuestPolicy",
    "SnpPolicy",
    "SnpReport",
    "SnpVerification",
    "TcbVersion",
    "VcekExtensions",
    "VlekExtensions",
    "key_extensions",
    "load_ask_ark",
    "load_vcek",
    "load_vlek",
    "vcek_extensions",
    "verify_report",
    "vlek_extensions",
]
