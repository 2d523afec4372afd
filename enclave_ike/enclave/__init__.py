"""TEE backends behind one interface (`Enclave`): `software` (in-process key, for tests), `sim` (the key in a
separate process that only signs; simulated evidence, NOT SECURE) and `tsm` (Linux configfs-tsm: TDX or SEV-SNP).
`attest` turns any of them and a client's nonce into an evidence envelope.

Import names from the submodules that define them: this file imports nothing, so loading one submodule
does not load the others (every process starts faster; under TCG each import costs seconds)."""
