"""Fuzz target for enclave-ike's userspace ESP core (enclave_ike/esp.py).

    python -m fuzz.esp --inputs 1000000 --seed 1

Four lanes, one per suite (AES-GCM-16 128 and 256, AES-CBC 128 with HMAC-SHA2-256-128, AES-CBC 256 with
HMAC-SHA2-512-256), each an outbound SA and the inbound SA that opens its packets, with replay windows of 32, 64,
1024 and 64. Each input is drawn from its own `random.Random(seed, index)` and is one of:

- a new genuine packet, or an earlier one delivered again (late, duplicated, left of the window);
- a genuine packet mutated (anywhere, or behind its SPI and sequence number, or spliced with another lane's);
- an authentic packet (made by the fuzzer with the SA's keys) whose trailer is well formed or broken (RFC 4303
  2.4), on a fresh sequence number;
- a header aimed at the SA's SPI and at sequence numbers around its window, with any body;
- random bytes, and random or mutated datagrams through the RFC 3948 port-4500 classifier.

Every outcome is checked against a model of the window: a packet opens exactly when it is a genuine packet not yet
accepted and not left of the window, and then it yields the inner packet that was sealed; a refused packet leaves
the window and the counters as they were. The run stops at the first exception that is not one of the project's
typed errors (`EnclaveIkeError`) or the first broken property (`Violation`: a mutated packet that decrypted, the
window moved by a refused packet ...), exits 1 and saves the input as JSON under `--crash-dir` (replay it with
`--replay FILE`). Progress every `--progress` inputs; the last lines are the summary.
"""

from __future__ import annotations

import hashlib
import random
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from enclave_ike.errors import EnclaveIkeError
from enclave_ike.esp import (
    Direction,
    EspError,
    EspSaParams,
    InboundSa,
    OutboundSa,
    Udp4500Kind,
    classify_udp4500,
    frame_ike_udp4500,
)
from enclave_ike.ikev2.constants import EncrId, IntegId
from enclave_ike.ikev2.crypto import GCM_SALT_SIZE, ChildSuite

from . import driver
from .generators import mutate

NOW = 1000.0
LANES = (
    (ChildSuite(EncrId.ENCR_AES_GCM_16, 128), 32),
    (ChildSuite(EncrId.ENCR_AES_GCM_16, 256), 64),
    (ChildSuite(EncrId.ENCR_AES_CBC, 128, IntegId.AUTH_HMAC_SHA2_256_128), 1024),
    (ChildSuite(EncrId.ENCR_AES_CBC, 256, IntegId.AUTH_HMAC_SHA2_512_256), 64),
)
RECENT = 2000
"""How far back an old genuine packet is drawn from (beyond the largest window, so some are left of it)."""


class Violation(Exception):
    """A broken property of the ESP core."""


def _random_source(label: bytes) -> Callable[[int], bytes]:
    """A deterministic RandomSource: the lanes and their packets are the same in every world built."""
    counter = 0

    def draw(n: int) -> bytes:
        nonlocal counter
        counter += 1
        return hashlib.shake_128(label + counter.to_bytes(8, "big")).digest(n)
    return draw


def inner_for(seq: int) -> tuple[bytes, int]:
    """The inner packet and next header of sequence number `seq` (a function of it alone, so replays rebuild it)."""
    size = seq * 37 % 300
    return (seq.to_bytes(4, "big") * (size // 4 + 1))[:size], (4, 17, 41, 59)[seq % 4]


class Lane:
    """One suite's SA pair, everything it sealed, and the model of what its inbound SA accepted."""

    def __init__(self, index: int) -> None:
        suite, window = LANES[index]
        self.spi = 0x0E5B0000 + index
        encryption_key = hashlib.shake_128(b"encr-%d" % index).digest(suite.encryption.key_size)
        integrity = suite.integrity
        integrity_key = hashlib.shake_128(b"integ-%d" % index).digest(integrity.key_size) if integrity else b""

        def make(direction: Direction) -> EspSaParams:
            return EspSaParams(self.spi, direction, suite, encryption_key, integrity_key, replay_window=window)
        self.out = OutboundSa(make(Direction.OUTBOUND), NOW, _random_source(b"lane-%d" % index))
        self.inb = InboundSa(make(Direction.INBOUND), NOW)
        self.window = window
        self.suite, self.encryption_key, self.integrity_key = suite, encryption_key, integrity_key
        self.sealed: dict[int, bytes] = {}
        self.accepted: set[int] = set()

    def seal_next(self) -> bytes:
        seq = self.out.last_seq + 1
        packet = self.out.seal(*inner_for(seq), NOW)
        self.sealed[seq] = packet
        return packet

    def seal_upto(self, seq: int) -> None:
        while self.out.last_seq < seq:
            self.seal_next()

    def forge(self, seq: int, iv: bytes, plaintext: bytes) -> bytes:
        """An authentic packet around any plaintext (trailer included), made here with `cryptography` alone."""
        header = self.spi.to_bytes(4, "big") + seq.to_bytes(4, "big")
        if self.suite.encryption.aead:
            gcm = AESGCM(self.encryption_key[:-GCM_SALT_SIZE])
            return header + iv[:8] + gcm.encrypt(self.encryption_key[-GCM_SALT_SIZE:] + iv[:8], plaintext, header)
        encryptor = Cipher(algorithms.AES(self.encryption_key), modes.CBC(iv)).encryptor()
        body = header + iv + encryptor.update(plaintext) + encryptor.finalize()
        integrity = self.suite.integrity
        if integrity is None:
            raise ValueError("CBC lane without integrity")
        return body + integrity.mac(self.integrity_key, body)

    def genuine(self, rng: random.Random) -> bytes:
        """An earlier genuine packet, mostly a recent one; a new one when there is none."""
        last = self.out.last_seq
        if last == 0:
            return self.seal_next()
        reach = self.window + 8 if rng.random() < 0.7 else RECENT
        return self.sealed[rng.randint(max(1, last - reach), last)]


@dataclass
class Input:
    """One generated input, as saved when it fails."""

    kind: str
    data: bytes
    lane: int
    sealed_upto: int = 0
    """How many packets the lane had sealed when the input was drawn (a replay seals as many first)."""
    plaintext: bytes = b""
    """What an authentic forged packet encrypts (trailer included)."""


class Fuzzer:
    def __init__(self) -> None:
        self.lanes = [Lane(index) for index in range(len(LANES))]
        self.kinds: Counter[str] = Counter()
        self.typed: Counter[str] = Counter()  # refusals by reason
        self.stats: Counter[str] = Counter()

    # --- drawing one input ---

    def draw(self, rng: random.Random) -> Input:
        index = rng.randrange(len(self.lanes))
        lane = self.lanes[index]
        choice = rng.random()
        if choice < 0.15:
            kind, data = "genuine-new", lane.seal_next()
        elif choice < 0.30:
            kind, data = "genuine-old", lane.genuine(rng)
        elif choice < 0.45:
            kind, data = "mutated", mutate(rng, self._to_mutate(rng, lane), ike_header=False)
        elif choice < 0.65:
            original = self._to_mutate(rng, lane)
            kind, data = "mutated-body", original[:8] + mutate(rng, original[8:], ike_header=False)
        elif choice < 0.70:  # another lane's packet behind this lane's SPI, or two packets spliced
            other = self.lanes[rng.randrange(len(self.lanes))].genuine(rng)
            cut = rng.randrange(len(other) + 1)
            kind, data = "spliced", (lane.spi.to_bytes(4, "big") + other[4:] if rng.random() < 0.5
                                     else lane.genuine(rng)[:cut] + other[cut:])
        elif choice < 0.75:  # authentic, on a fresh sequence number, with a well-formed or broken trailer
            seq = lane.out.last_seq + 1
            lane.seal_next()  # the genuine packet of that number stays undelivered, until drawn as an old one
            plaintext = trailer_plaintext(rng, 1 if lane.suite.encryption.aead else 16)
            data = lane.forge(seq, rng.randbytes(16), plaintext)
            return Input("authentic", data, index, lane.out.last_seq, plaintext)
        elif choice < 0.85:
            top = lane.inb.window.top
            seq = max(0, top + rng.randint(-lane.window - 3, 5)) % 2**32
            body = rng.randbytes(rng.choice([0, 1, 2, 15, 16, 17, 23, 24, 31, 32, 40, 48, rng.randint(0, 400)]))
            kind, data = "header", lane.spi.to_bytes(4, "big") + seq.to_bytes(4, "big") + body
        elif choice < 0.93:
            kind, data = "random", rng.randbytes(rng.randint(0, 200))
        else:
            kind = "udp4500"
            pick = rng.random()
            if pick < 0.3:
                data = rng.randbytes(rng.randint(0, 12))
            elif pick < 0.6:
                data = frame_ike_udp4500(rng.randbytes(rng.randint(0, 40)))
            else:
                data = mutate(rng, lane.genuine(rng), ike_header=False) if pick < 0.9 else lane.genuine(rng)
        return Input(kind, data, index, lane.out.last_seq)

    @staticmethod
    def _to_mutate(rng: random.Random, lane: Lane) -> bytes:
        """Mostly a packet sealed now and never delivered (its sequence number passes the replay check, so the
        mutation reaches the ICV); else an earlier one."""
        return lane.seal_next() if rng.random() < 0.7 else lane.genuine(rng)

    # --- running an input (also for --replay) ---

    def apply(self, item: Input) -> None:
        """Run one input against the model. Refusals are counted by reason; a Violation or any exception that is
        not an EnclaveIkeError propagates."""
        self.kinds[item.kind] += 1
        lane = self.lanes[item.lane]
        lane.seal_upto(item.sealed_upto)
        data = item.data
        if item.kind == "udp4500":
            try:
                what, data = classify_udp4500(data)
            except EnclaveIkeError as exc:
                self.typed[f"udp4500-{getattr(exc, 'reason', type(exc).__name__)}"] += 1
                return
            self.stats[f"udp4500-{what.value}"] += 1
            if what is not Udp4500Kind.ESP:
                return
        self._open(lane, data, expected_for(item.plaintext) if item.kind == "authentic" else None)

    def _open(self, lane: Lane, data: bytes, authentic: tuple[bytes, int] | None = None) -> None:
        """Open `data` and hold the outcome to the model. `authentic`: a forged authentic packet's expected
        (inner, next header), or its plaintext's empty inner and -1 when its trailer is malformed."""
        sa = lane.inb
        before = (sa.window.state, sa.bytes, sa.packets)
        top = sa.window.top
        seq = int.from_bytes(data[4:8], "big") if len(data) >= 8 else -1
        try:
            inner, next_header = sa.open(data, NOW)
        except EnclaveIkeError as exc:
            reason = exc.reason if isinstance(exc, EspError) else type(exc).__name__
            self.typed[reason] += 1
            if (sa.window.state, sa.bytes, sa.packets) != before:
                raise Violation(f"a refused packet ({reason}) moved the window or the counters") from None
            genuine = lane.sealed.get(seq) == data or (authentic is not None and authentic[1] >= 0)
            if genuine and seq not in lane.accepted and seq > top - lane.window:
                raise Violation(f"a genuine new packet (seq {seq}) was refused: {reason}") from None
            return
        if authentic is not None:
            if authentic[1] < 0:
                raise Violation(f"seq {seq}: a malformed trailer was accepted")
            if (inner, next_header) != authentic:
                raise Violation(f"seq {seq}: an authentic packet opened to another inner packet")
        elif lane.sealed.get(seq) != data:
            raise Violation(f"a packet that is not one we sealed decrypted (seq {seq})")
        if seq in lane.accepted:
            raise Violation(f"seq {seq} was accepted twice")
        if seq <= top - lane.window:
            raise Violation(f"seq {seq} was accepted left of the window (top {top})")
        if authentic is None and (inner, next_header) != inner_for(seq):
            raise Violation(f"seq {seq} opened to another inner packet")
        if sa.window.top != max(top, seq):
            raise Violation(f"the window's top is {sa.window.top} after seq {seq} (was {top})")
        lane.accepted.add(seq)
        self.stats["accepted"] += 1


def trailer_plaintext(rng: random.Random, block: int) -> bytes:
    """A plaintext of whole blocks whose trailer is well formed (half the time) or broken in one of the ways RFC 4303
    2.4 forbids: a pad length past the start, padding octets other than 1, 2, 3 ..."""
    pad_length = rng.randint(0, 255) if rng.random() < 0.2 else rng.randint(0, 20)
    padding = bytearray(range(1, pad_length + 1))
    if padding and rng.random() < 0.4:
        padding[rng.randrange(len(padding))] ^= 1 << rng.randrange(8)
    inner = rng.randbytes(rng.randint(0, 60))
    plaintext = inner + padding + bytes((pad_length, rng.choice([4, 17, 41, 59, rng.randrange(256)])))
    if rng.random() < 0.2:  # cut the front: the pad length may now reach past the start
        plaintext = plaintext[rng.randint(0, len(plaintext) - 2):]
    excess = len(plaintext) % block
    return plaintext[excess:] if len(plaintext) - excess >= 2 and rng.random() < 0.5 else (
        bytes(-len(plaintext) % block) + plaintext)


def expected_for(plaintext: bytes) -> tuple[bytes, int]:
    """What opening `plaintext`'s packet must give, read by RFC 4303 2.4 here: (inner, next header), or (b"", -1)
    when the trailer is malformed."""
    pad_length, next_header = plaintext[-2], plaintext[-1]
    inner_length = len(plaintext) - 2 - pad_length
    if inner_length < 0 or plaintext[inner_length:-2] != bytes(range(1, pad_length + 1)):
        return b"", -1
    return plaintext[:inner_length], next_header


def _load(record: dict[str, Any]) -> Input:
    """A saved input back (`--replay`): the fields `TARGET.to_json` wrote."""
    return Input(record["kind"], bytes.fromhex(record["data"]), record["lane"], record["sealed_upto"],
                 bytes.fromhex(record["plaintext"]))


TARGET: driver.Target[Input, Fuzzer] = driver.Target(
    name="esp",
    description=__doc__.split("\n\n")[0],
    fuzzer=Fuzzer,
    describe=lambda item: f"{item.kind}, lane {item.lane}",
    to_json=lambda item: {"kind": item.kind, "lane": item.lane, "sealed_upto": item.sealed_upto,
                          "data": item.data.hex(), "plaintext": item.plaintext.hex()},
    from_json=_load,
    progress=lambda fuzzer: f"refused {sum(fuzzer.typed.values())}  accepted {fuzzer.stats['accepted']}",
    totals=lambda fuzzer: f"accepted {fuzzer.stats['accepted']}, refused {sum(fuzzer.typed.values())}",
    typed=("refused by reason", "refused"),
)


def main(argv: list[str] | None = None) -> int:
    return driver.main(TARGET, argv)


if __name__ == "__main__":
    sys.exit(main())
