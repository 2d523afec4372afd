"""Fuzzing of enclave-ike's IKEv2 core: shared input generators (`generators`) and a long-running target (`ikev2`).

Run from the repository root: `python -m fuzz.ikev2 --inputs 1000000 --seed 1` (see README.md beside this file).
The unit tests in tests/ use the same generators with small counts."""
