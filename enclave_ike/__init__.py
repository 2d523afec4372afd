"""enclave-ike: an IKEv2 responder whose identity key lives inside a TEE."""

__version__ = "0.1.0"
