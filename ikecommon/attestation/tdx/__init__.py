"""Intel TDX: the quote v4 and v5 (`quote`), the PCK certificate's SGX extension (`pck`), Intel's collateral
(`collateral`), TCB level selection (`tcb`) and the verifier (`verify`)."""

from .collateral import QeIdentity, TcbInfo
from .pck import SgxExtensions, sgx_extensions
from .quote import (
    EnclaveReport,
    QeCertification,
    QuoteHeader,
    QuoteSignatureData,
    TdReportBody,
    TdReportBody15,
    TdxQuote,
)
from .tcb import TcbAssessment
from .verify import TdxCollateral, TdxPolicy, TdxVerification, verify_quote

__all__ = [
    "EnclaveReport",
    "QeCertification",
    "QeIdentity",
    "QuoteHeader",
    "QuoteSignatureData",
    "SgxExtensions",
    "TcbAssessment",
    "TcbInfo",
    "TdReportBody",
    "TdReportBody15",
    "TdxCollateral",
    "TdxPolicy",
    "TdxQuote",
    "TdxVerification",
    "sgx_extensions",
    "verify_quote",
]
