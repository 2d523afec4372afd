"""Attestation evidence: parsers and offline verifiers, one per evidence type (`tdx`, `snp`, `sim`), the envelope
that carries evidence to a client, the binding of a nonce and the IKE key into report data, and measurement specs.

A verifier returns a Verification: every check it ran and the mismatches each found, so a caller can tell
"authentic but out of date" from "forged". `require_ok()` turns any mismatch into VerificationFailed. Evidence that
does not parse raises EvidenceFormatError (malformed) or UnsupportedEvidence (well-formed, but of a version, type or
signing key not handled).
`verify_envelope` is the client's single entry point; `TrustAnchors.shipped()` trusts the vendors' roots that ship
with the package (`roots`). See docs/attestation.md.


Import names from the submodules that define them: this file imports nothing, so loading one submodule
does not load the others (every process starts faster; under TCG each import costs seconds)."""
