"""TEE backends behind one interface (`Enclave`): `software` (in-process key, for tests), `sim` (the key in a
separate process that only signs; simulated evidence, NOT SECURE) and `tsm` (Linux configfs-tsm: TDX or SEV-SNP).
`attest` turns any of them and a client's nonce into an evidence envelope."""

from .attest import attest
from .base import Enclave
from .errors import ChannelError, EnclaveError, EnclaveGone, EnclaveUnavailable, NonceError
from .sim import SimEnclave
from .software import SoftwareEnclave
from .tsm import TsmEnclave

__all__ = [
    "ChannelError",
    "Enclave",
    "EnclaveError",
    "EnclaveGone",
    "EnclaveUnavailable",
    "NonceError",
    "SimEnclave",
    "SoftwareEnclave",
    "TsmEnclave",
    "attest",
]
