"""What ikectl (the client) and enclave_ike (the resolver side) both need, owned by neither: the XFRM layer
(`ikecommon.xfrm`), raw public keys as libreswan pins them (`keys`), TOML config files (`tomlfile`), the
attestation verifiers (`attestation`) and the evidence endpoint's client (`evidence_client`).

It imports neither product package; both import it. docs/architecture.md draws the layers."""
