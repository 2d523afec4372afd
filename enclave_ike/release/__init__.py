"""Attested key release between replicas: one identity key for a whole service (docs/scale-out.md).

A replica that holds the service's identity key (a *holder*) gives it to a new replica (a *joiner*) only when the
joiner's evidence matches the service's measurement spec, sealed (HPKE) to an ephemeral key that evidence binds;
the joiner takes it only when the holder's evidence matches the same spec (mutual attestation).

    messages   the request and the grant, strict JSON, and the HPKE context
    appraise   what both sides require of the other's evidence (spec, trust anchors, policies)
    holder     challenges and grants; everything refused says why, in one line
    joiner     a request, and the grant's checks, then the import
    endpoint   the holder's HTTP endpoint (POST /release/challenge, POST /release/key)
    obtain     the joiner's walk over its peers at start

Import names from the submodules that define them: this file imports nothing."""
