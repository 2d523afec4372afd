"""Adversarial: one slow signature from the sim enclave disables signing for the rest of the server's life."""
import os
import signal
import time

import pytest

from enclave_ike.enclave.errors import EnclaveError
from enclave_ike.enclave.sim import SimEnclave


def test_a_late_signature_does_not_disable_the_signer_for_good():
    enclave = SimEnclave(timeout=1.0)  # serve uses the default 10 s; 1 s keeps the test short
    try:
        signer = enclave.signer()
        scheme = signer.schemes[0]
        signer.sign(b"warm", scheme)
        os.kill(enclave.pid, signal.SIGSTOP)  # the enclave process stalls (swapped out, preempted, a slow TEE)
        try:
            with pytest.raises(EnclaveError):
                signer.sign(b"late", scheme)  # this one IKE_AUTH fails: fine
        finally:
            os.kill(enclave.pid, signal.SIGCONT)
        time.sleep(0.2)
        signer.sign(b"next client", scheme)  # the enclave is back; the next client must get its signature
    finally:
        enclave.close()
