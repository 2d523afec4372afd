"""Fuzz target for enclave-ike's IKEv2 decoder and state machine.

    python -m fuzz.ikev2 --inputs 1000000 --seed 1

Each input is drawn from its own `random.Random(seed, index)` and goes to one of:

- the decoder: mutated genuine datagrams, random bytes (alone or behind a consistent header), inner payload chains
  (what an SK payload holds after decryption), SK payloads opened with real keys after tampering, RFC 7427 AUTH data;
- the state machine: mutated, random, SPI-aimed and replayed datagrams into responders with a fresh, a half-open
  and an established IKE SA (`fuzz.generators.World`); the established and half-open SAs must not change;
- an authenticated insider: generated and mutated payloads, properly protected, into an established SA.

The run stops at the first failure: an exception that is not one of the project's typed errors (`EnclaveIkeError`),
a broken property (`Violation`: an SA changed under unauthenticated input, an answer that does not decode or is not
allowed unprotected, a tampered SK payload that decrypted), and exits 1 after saving the input as JSON under
`--crash-dir` (replay it with `--replay FILE`). Progress goes to stdout every `--progress` inputs; the last line
is the summary: count, time, rate, and what the inputs met.
"""

from __future__ import annotations

import random
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from enclave_ike.errors import EnclaveIkeError
from enclave_ike.ikev2 import crypto as c
from enclave_ike.ikev2.constants import EncrId, ExchangeType, HeaderFlag, IntegId, PrfId
from enclave_ike.ikev2.payloads import IkeHeader, Nonce, Payload, encode_payloads

from . import driver
from .generators import (
    SOURCES,
    Insider,
    Target,
    Violation,
    World,
    aimed_header,
    build_world,
    decode,
    decode_inner,
    encodable,
    feed,
    fresh_target,
    insider_request,
    mutate,
    mutate_behind_spis,
    mutated_chain,
    near_valid,
)

FRESH_LIMIT = 20
"""SAs the fresh target may gather (half-open ones, from mutated IKE_SA_INIT requests) before it is replaced, so
that it keeps taking new requests instead of refusing them at its per-peer limits."""

SK_SUITES = (
    c.IkeSuite(EncrId.ENCR_AES_GCM_16, 256, PrfId.PRF_HMAC_SHA2_256, IntegId.NONE, 31),
    c.IkeSuite(EncrId.ENCR_AES_CBC, 128, PrfId.PRF_HMAC_SHA2_256, IntegId.AUTH_HMAC_SHA2_256_128, 19),
)


@dataclass
class Input:
    """One generated input, as saved when it fails."""

    kind: str
    data: bytes
    target: str = ""
    source: int = 0
    first_payload: int = 0
    exchange: int = 0
    payloads: tuple[Payload, ...] | None = field(default=None, repr=False)
    """The insider's payloads as generated (`data` holds their encoding, when they have one)."""


class Fuzzer:
    def __init__(self) -> None:
        self.world: World = build_world()
        self.insider = Insider.start()
        self.insiders = 0
        self.fresh_generation = 0
        self.stats: Counter[str] = Counter()  # what the inputs met
        self.kinds: Counter[str] = Counter()  # what the inputs were
        self.typed: Counter[str] = Counter()  # typed errors raised to the harness, by class
        self.sk = [self._sk_sample(suite) for suite in SK_SUITES]
        self.protected = [d for d in self.world.corpus if d[18] != ExchangeType.IKE_SA_INIT]

    @staticmethod
    def _sk_sample(suite: c.IkeSuite) -> tuple[c.SkCipher, bytes]:
        keys = c.derive_ike_keys(suite, b"s" * 32, b"\x01" * 32, b"\x02" * 32, b"\x03" * 8, b"\x04" * 8)
        cipher = c.SkCipher.for_sender(suite, keys, initiator=True)
        header = IkeHeader(b"\x03" * 8, b"\x04" * 8, ExchangeType.CREATE_CHILD_SA, HeaderFlag.INITIATOR, 2)
        rng = random.Random(suite.encryption.id)  # noqa: S311 - test inputs, not keys
        return cipher, c.encrypt_message(cipher, header, near_valid(rng), bytes(cipher.iv_size))

    # --- drawing one input ---

    def draw(self, rng: random.Random) -> Input:
        """One input; what it is depends only on `rng` (a state-machine input aimed at SPIs also on the targets)."""
        choice = rng.random()
        if choice < 0.40:
            return self._decoder(rng)
        if choice < 0.92:
            return self._state(rng)
        return self._insider(rng)

    def _decoder(self, rng: random.Random) -> Input:
        choice = rng.random()
        if choice < 0.45:
            return Input("decode-mutated", mutate(rng, rng.choice(self.world.corpus)))
        if choice < 0.55:
            return Input("decode-random", rng.randbytes(rng.randint(0, 400)))
        if choice < 0.65:  # random payloads behind a version 2 header whose length agrees
            header, body = bytearray(rng.randbytes(28)), rng.randbytes(rng.randint(0, 300))
            header[17] = 0x20
            header[24:28] = (28 + len(body)).to_bytes(4, "big")
            return Input("decode-header", bytes(header) + body)
        if choice < 0.85:
            first, plaintext = mutated_chain(rng) if rng.random() < 0.8 else (rng.randrange(256),
                                                                               rng.randbytes(rng.randint(0, 200)))
            return Input("decode-inner", plaintext, first_payload=first)
        if choice < 0.95:
            which = rng.randrange(len(self.sk))
            return Input("decrypt", mutate(rng, self.sk[which][1]), target=str(which))
        return Input("signature-auth", rng.randbytes(rng.randint(0, 120)))

    def _state(self, rng: random.Random) -> Input:
        target = rng.choice(self.world.targets)
        source = rng.randrange(len(SOURCES))
        choice = rng.random()
        if choice < 0.70:
            original = rng.choice(self.world.corpus)
            data = mutate_behind_spis(rng, original) if rng.random() < 0.6 else mutate(rng, original)
            kind = "state-mutated"
        elif choice < 0.85:
            data = aimed_header(target.responder.views(), rng.choice([34, 35, 36, 37, 0, 255]), rng.randrange(256),
                                rng.randint(0, 5), rng.randint(0, 60), rng.randbytes(rng.randint(0, 300)),
                                rng.random() < 0.3)
            kind = "state-header"
        elif choice < 0.95:
            data, kind = rng.randbytes(rng.randint(0, 600)), "state-random"
        else:
            data, kind = rng.choice(self.world.corpus), "state-replay"
        return Input(kind, data, target=target.name, source=source)

    def _insider(self, rng: random.Random) -> Input:
        exchange_type, payloads = insider_request(rng)
        kind = "insider-aimed" if rng.random() < 0.5 else "insider"
        first, chain = encode_payloads(payloads) if encodable(payloads) else (0, b"")
        return Input(kind, chain, first_payload=first, exchange=exchange_type, payloads=tuple(payloads))

    # --- running an input (also for --replay) ---

    def apply(self, item: Input) -> None:
        """Run one input. The project's typed errors are counted; a Violation or any other exception propagates."""
        self.kinds[item.kind] += 1
        try:
            self._apply(item)
        except Violation:
            raise
        except EnclaveIkeError as exc:
            self.typed[type(exc).__name__] += 1

    def _apply(self, item: Input) -> None:
        kind = item.kind
        if kind in ("decode-mutated", "decode-random", "decode-header"):
            self.stats["decoded" if decode(item.data) is not None else "refused"] += 1
        elif kind == "decode-inner":
            self.stats["decoded" if decode_inner(item.first_payload, item.data) is not None else "refused"] += 1
        elif kind == "decrypt":
            cipher, wire = self.sk[int(item.target)]
            c.decrypt_message(cipher, item.data)  # IkeError is the expected outcome
            if item.data[:len(wire)] != wire:
                raise Violation("a tampered SK payload decrypted")
            self.stats["decrypted"] += 1
        elif kind == "signature-auth":
            c.decode_signature_auth(item.data)
        elif kind.startswith("state-"):
            target = self._target(item.target)
            feed(target, item.data, SOURCES[item.source], self.stats)
            if target.name == "fresh" and len(target.responder) >= FRESH_LIMIT:
                self.fresh_generation += 1
                self.world.targets[0] = fresh_target(b"fuzz-fresh-%d" % self.fresh_generation)
        elif kind.startswith("insider"):
            payloads = item.payloads
            if payloads is None:  # a replay: the chain as saved
                payloads = decode_inner(item.first_payload, item.data) or (Nonce(b"x" * 16),)
            if not self.insider.usable():
                self.insiders += 1
                self.insider = Insider.start(b"insider-%d" % self.insiders)
            self.insider.send(item.exchange, payloads, self.stats, aim_at_child=kind == "insider-aimed")
        else:
            raise ValueError(f"unknown input kind {kind!r}")

    def _target(self, name: str) -> Target:
        for target in self.world.targets:
            if target.name == name:
                return target
        raise ValueError(f"no target {name!r}")


def _load(record: dict[str, Any]) -> Input:
    """A saved input back (`--replay`): the fields `TARGET.to_json` wrote."""
    return Input(record["kind"], bytes.fromhex(record["data"]), record["target"], record["source"],
                 record["first_payload"], record["exchange"])


def _totals(fuzzer: Fuzzer) -> str:
    kinds = fuzzer.kinds
    decoder = sum(v for k, v in kinds.items() if k.startswith(("decode", "decrypt", "signature")))
    state = sum(v for k, v in kinds.items() if k.startswith("state-"))
    insider = sum(v for k, v in kinds.items() if k.startswith("insider"))
    return (f"decoder {decoder}, state machine {state}, insider {insider}; "
            f"typed errors {sum(fuzzer.typed.values())}")


TARGET: driver.Target[Input, Fuzzer] = driver.Target(
    name="ikev2",
    description=__doc__.split("\n\n")[0],
    fuzzer=Fuzzer,
    describe=lambda item: item.kind,
    to_json=lambda item: {"kind": item.kind, "target": item.target, "source": item.source,
                          "first_payload": item.first_payload, "exchange": item.exchange, "data": item.data.hex()},
    from_json=_load,
    progress=lambda fuzzer: f"typed errors {sum(fuzzer.typed.values())}",
    totals=_totals,
    typed=("typed errors", "typed"),
)


def main(argv: list[str] | None = None) -> int:
    return driver.main(TARGET, argv)


if __name__ == "__main__":
    sys.exit(main())
