"""AMD SEV-SNP: the attestation report (`report`), the VCEK's and VLEK's AMD extensions (`vcek`), guest policy rules
(`policy`), the verifier (`verify`), what differs between Milan, Genoa and Turin (`products`), and Azure's HCL
report, which wraps a report (`hcl`)."""

from .policy import GuestPolicy, SnpPolicy
from .products import MILAN_GENOA_TCB, TURIN_TCB, Product, TcbLayout
from .report import SnpReport, TcbVersion
from .vcek import VcekExtensions, VlekExtensions, key_extensions, vcek_extensions, vlek_extensions
from .verify import SnpVerification, load_ask_ark, load_vcek, load_vlek, verify_report

__all__ = [
    "MILAN_GENOA_TCB",
    "TURIN_TCB",
    "GuestPolicy",
    "Product",
    "SnpPolicy",
    "SnpReport",
    "SnpVerification",
    "TcbLayout",
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
