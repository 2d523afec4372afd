"""Sans-I/O IKEv2 (RFC 7296): the wire codec (`payloads`, `wire`), the crypto suite (`crypto`), the errors that
map to Notify types (`errors`), policy (`config`), proposal and selector negotiation (`negotiation`), the IKE SA
state machine (`state`) with its typed `events`, stateless cookies (`cookies`), the responder's dispatcher
(`responder`) and a test initiator on the same core (`initiator`). Nothing in this package touches a socket, the
clock, the kernel or a global source of randomness.

Import names from the submodules that define them: this file imports nothing, so loading one submodule
does not load the others (every process starts faster; under TCG each import costs seconds)."""
