"""Userspace ESP (RFC 4303), sans-I/O: one SA's packets sealed and opened in memory.

- Suites, as IKE negotiates them (`ChildSuite`): ENCR_AES_GCM_16 (RFC 4106: AES key plus a 4-octet salt from the
  keying material, 8-octet explicit IV, 16-octet ICV, AAD = SPI | sequence number) and ENCR_AES_CBC (RFC 3602) with
  HMAC-SHA2 integrity (RFC 4868, encrypt-then-MAC: the ICV covers SPI | sequence number | IV | ciphertext).
  32-bit sequence numbers only: an SA with ESN is refused.
- Outbound (`OutboundSa.seal`): sequence numbers from 1, never wrapped (RFC 4303 3.3.3); GCM IVs are a counter
  (a random 64-bit base plus the sequence number, so never repeated under one key), CBC IVs come from the injected
  `RandomSource`.
- Inbound (`InboundSa.open`): length and SPI, then the anti-replay pre-check (3.4.3), then the ICV (constant time,
  by `cryptography`), then the padding (2.4), and only then the window moves (3.4.3: after integrity).
- Lifetimes (RFC 4301 4.4.2.1): soft and hard limits in bytes (of inner packets) and seconds; soft says rekey now,
  hard refuses every packet.

Every refusal is an `EspError` whose `reason` names the drop for counting ("truncated", "length", "spi", "replay",
"window", "icv", "padding", "expired", "exhausted"); no failure returns any plaintext. Nothing here reads the clock
or touches a socket: callers pass `now`. RFC 3948 framing helpers for UDP port 4500 sit at the end.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from enum import Enum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import constant_time
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import EnclaveIkeError
from .ikev2.crypto import AES_BLOCK, GCM_ICV_SIZE, GCM_IV_SIZE, GCM_SALT_SIZE, ChildSuite, Integrity, RandomSource

HEADER_SIZE = 8  # SPI | sequence number
MAX_SEQ = 2**32 - 1
DEFAULT_REPLAY_WINDOW = 64  # RFC 4303 3.4.3: 32 at least, 64 recommended
MIN_REPLAY_WINDOW, MAX_REPLAY_WINDOW = 32, 1024
NEXT_HEADER_NONE = 59  # a dummy packet (RFC 4303 2.6): the caller discards it
GCM_ALIGN = 4  # RFC 4303 2.4: the trailer ends on a 4-octet boundary


# --- errors ---

class EspError(EnclaveIkeError):
    """An ESP packet refused, or an SA that cannot be used. `reason` is short and stable, for drop counters."""

    reason = "esp"


class Truncated(EspError):
    """Shorter than header, IV, the smallest payload and ICV."""

    reason = "truncated"


class BadLength(EspError):
    """A CBC ciphertext that is not a whole number of blocks."""

    reason = "length"


class WrongSpi(EspError):
    """The packet names another SA."""

    reason = "spi"


class Replayed(EspError):
    """A sequence number inside the window that was already accepted."""

    reason = "replay"


class LeftOfWindow(EspError):
    """A sequence number older than the window (or 0, which no sender uses)."""

    reason = "window"


class IcvMismatch(EspError):
    """The ICV (GCM tag or truncated HMAC) does not verify."""

    reason = "icv"


class BadPadding(EspError):
    """An authentic packet whose pad length or padding octets break RFC 4303 2.4."""

    reason = "padding"


class Expired(EspError):
    """The SA passed a hard lifetime (bytes or seconds): it takes no more packets."""

    reason = "expired"


class SequenceExhausted(EspError):
    """The outbound sequence number would wrap (RFC 4303 3.3.3): the SA must be rekeyed."""

    reason = "exhausted"


class EspConfigError(EspError):
    """SA parameters that cannot work (wrong key length, unsupported suite, a window out of range)."""

    reason = "config"
    exit_code = 2


# --- parameters ---

class Direction(Enum):
    INBOUND = "in"
    OUTBOUND = "out"


@dataclass(frozen=True)
class Lifetime:
    """Soft and hard limits; None is no limit. Bytes count inner packets, seconds run from the SA's creation."""

    soft_bytes: int | None = None
    hard_bytes: int | None = None
    soft_seconds: float | None = None
    hard_seconds: float | None = None

    def __post_init__(self) -> None:
        for soft, hard, unit in ((self.soft_bytes, self.hard_bytes, "bytes"),
                                 (self.soft_seconds, self.hard_seconds, "seconds")):
            if (soft is not None and soft < 0) or (hard is not None and hard < 0):
                raise EspConfigError(f"lifetime: negative {unit}")
            if soft is not None and hard is not None and soft > hard:
                raise EspConfigError(f"lifetime: soft {soft} {unit} is past hard {hard}")


class LifetimeState(Enum):
    LIVE = "live"
    SOFT_EXPIRED = "soft"  # still works; rekey now
    HARD_EXPIRED = "hard"  # refuses every packet


@dataclass(frozen=True)
class EspSaParams:
    """One ESP SA. `encryption_key` is the keying material of `suite.encryption` (for GCM the AES key and then the
    salt); `integrity_key` is empty for GCM. Keys are never printed."""

    spi: int
    direction: Direction
    suite: ChildSuite
    encryption_key: bytes = field(repr=False)
    integrity_key: bytes = field(default=b"", repr=False)
    lifetime: Lifetime = Lifetime()
    replay_window: int = DEFAULT_REPLAY_WINDOW

    def __post_init__(self) -> None:
        if not 0 < self.spi <= MAX_SEQ:
            raise EspConfigError(f"SPI {self.spi:#x} is not a 32-bit value other than 0")
        if self.suite.esn:
            raise EspConfigError("extended sequence numbers are not implemented")
        encryption, integrity = self.suite.encryption, self.suite.integrity
        if len(self.encryption_key) != encryption.key_size:
            raise EspConfigError(f"encryption key of {len(self.encryption_key)} octets, expected "
                                 f"{encryption.key_size}")
        wanted = integrity.key_size if integrity else 0
        if len(self.integrity_key) != wanted:
            raise EspConfigError(f"integrity key of {len(self.integrity_key)} octets, expected {wanted}")
        if not MIN_REPLAY_WINDOW <= self.replay_window <= MAX_REPLAY_WINDOW:
            raise EspConfigError(f"replay window {self.replay_window}: between {MIN_REPLAY_WINDOW} and "
                                 f"{MAX_REPLAY_WINDOW}")


# RFC 4303 2.4's padding octets 1, 2, 3, ... for each pad length an octet can say.
_PADDING = tuple(bytes(range(1, length + 1)) for length in range(256))


# --- the SA ---

class _EspSa:
    """What both directions share: the cipher, the lifetime accounting."""

    def __init__(self, params: EspSaParams, now: float, direction: Direction) -> None:
        if params.direction is not direction:
            raise EspConfigError(f"SA {params.spi:#x} is {params.direction.value}bound, not {direction.value}bound")
        self.params = params
        self.created = now
        self.bytes = 0  # inner packet octets sealed or opened
        self.packets = 0
        encryption = params.suite.encryption
        self._aead = encryption.aead
        if self._aead:
            self._gcm = AESGCM(params.encryption_key[:-GCM_SALT_SIZE])
            self._salt = params.encryption_key[-GCM_SALT_SIZE:]
            self._iv_size, self._icv_size, self._align = GCM_IV_SIZE, GCM_ICV_SIZE, GCM_ALIGN
        else:
            self._aes = algorithms.AES(params.encryption_key)
            integrity = params.suite.integrity
            if integrity is None:  # ChildSuite already refuses CBC without integrity; keep mypy and readers sure
                raise EspConfigError("AES-CBC needs an integrity algorithm")
            self._integrity: Integrity = integrity
            self._iv_size, self._icv_size, self._align = AES_BLOCK, integrity.icv_size, AES_BLOCK
        self._spi = params.spi.to_bytes(4, "big")
        self._overhead = HEADER_SIZE + self._iv_size + self._icv_size
        # The hard limits as numbers every packet compares with (infinity: none); the soft ones only matter to
        # lifetime_state, which the server asks now and then, not per packet.
        limits = params.lifetime
        self._hard_seconds = math.inf if limits.hard_seconds is None else limits.hard_seconds
        self._hard_bytes = math.inf if limits.hard_bytes is None else limits.hard_bytes

    @property
    def overhead(self) -> int:
        """Octets of header, IV and ICV around the encrypted part."""
        return self._overhead

    def lifetime_state(self, now: float) -> LifetimeState:
        limits = self.params.lifetime
        age = now - self.created
        if self.bytes >= self._hard_bytes or age >= self._hard_seconds:  # as _check_alive refuses
            return LifetimeState.HARD_EXPIRED
        if ((limits.soft_bytes is not None and self.bytes >= limits.soft_bytes)
                or (limits.soft_seconds is not None and age >= limits.soft_seconds)):
            return LifetimeState.SOFT_EXPIRED
        return LifetimeState.LIVE

    def _check_alive(self, now: float, size: int) -> None:
        """Refuse once hard-expired (as lifetime_state says it), and a packet that would carry the byte count past
        the hard limit."""
        if self.bytes >= self._hard_bytes or now - self.created >= self._hard_seconds:
            raise Expired(f"SA {self.params.spi:#x} passed its hard lifetime")
        if self.bytes + size > self._hard_bytes:
            raise Expired(f"SA {self.params.spi:#x}: {size} more octets would pass its hard limit of "
                          f"{self.params.lifetime.hard_bytes}")

    def _count(self, size: int) -> None:
        self.bytes += size
        self.packets += 1


class OutboundSa(_EspSa):
    """Seals inner packets. `random` supplies CBC IVs and the GCM IV base (`os.urandom` by default)."""

    def __init__(self, params: EspSaParams, now: float, random: RandomSource = os.urandom) -> None:
        super().__init__(params, now, Direction.OUTBOUND)
        self._random = random
        self._last_seq = 0
        # RFC 4106 3.1: any IV that never repeats under the key; a counter off a random base says nothing of
        # the packet count to an observer of the first IV.
        self._iv_base = int.from_bytes(random(GCM_IV_SIZE), "big") if self._aead else 0

    @property
    def last_seq(self) -> int:
        """The sequence number of the last packet sealed (0: none yet)."""
        return self._last_seq

    def seal(self, inner_packet: bytes, next_header: int, now: float) -> bytes:
        """The ESP packet carrying `inner_packet` (4 for an IPv4 packet in tunnel mode, 41 IPv6, 17 UDP ...)."""
        if not 0 <= next_header <= 255:
            raise EspConfigError(f"next header {next_header} is not an octet")
        self._check_alive(now, len(inner_packet))
        if self._last_seq >= MAX_SEQ:
            raise SequenceExhausted(f"SA {self.params.spi:#x} sent {MAX_SEQ} packets: rekey it")
        seq = self._last_seq + 1
        pad_length = -(len(inner_packet) + 2) % self._align
        plaintext = inner_packet + _PADDING[pad_length] + bytes((pad_length, next_header))
        header = self._spi + seq.to_bytes(4, "big")
        if self._aead:
            iv = ((self._iv_base + seq) % 2**64).to_bytes(GCM_IV_SIZE, "big")
            packet = header + iv + self._gcm.encrypt(self._salt + iv, plaintext, header)
        else:
            iv = self._random(AES_BLOCK)
            if len(iv) != AES_BLOCK:
                raise EspConfigError(f"the random source gave {len(iv)} octets for a {AES_BLOCK}-octet IV")
            encryptor = Cipher(self._aes, modes.CBC(iv)).encryptor()
            body = header + iv + encryptor.update(plaintext) + encryptor.finalize()
            packet = body + self._integrity.mac(self.params.integrity_key, body)
        self._last_seq = seq  # only once the packet exists: a refusal above consumes no number
        self._count(len(inner_packet))
        return packet


class ReplayWindow:
    """RFC 4303 3.4.3 with a bitmap: `top` is the highest sequence number accepted, bit i of `mask` stands for
    top - i."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.top = 0
        self.mask = 0

    def check(self, seq: int) -> None:
        if seq > self.top:
            return
        if seq == 0 or self.top - seq >= self.size:
            raise LeftOfWindow(f"sequence number {seq} is left of the window (top {self.top}, size {self.size})")
        if self.mask >> (self.top - seq) & 1:
            raise Replayed(f"sequence number {seq} was already received")

    def accept(self, seq: int) -> None:
        """Record `seq`, which `check` passed and whose packet was authentic."""
        if seq > self.top:
            self.mask = ((self.mask << (seq - self.top)) | 1) & ((1 << self.size) - 1)
            self.top = seq
        else:
            self.mask |= 1 << (self.top - seq)

    @property
    def state(self) -> tuple[int, int]:
        return self.top, self.mask


class InboundSa(_EspSa):
    """Opens ESP packets for one SPI, with anti-replay."""

    def __init__(self, params: EspSaParams, now: float) -> None:
        super().__init__(params, now, Direction.INBOUND)
        self.window = ReplayWindow(params.replay_window)

    def open(self, packet: bytes, now: float) -> tuple[bytes, int]:
        """(inner packet, next header) of an authentic, new packet; an `EspError` otherwise, the window unchanged.
        Next header 59 is a dummy packet (RFC 4303 2.6), which the caller discards."""
        if len(packet) < HEADER_SIZE:
            raise Truncated(f"{len(packet)} octets: no ESP header")
        if packet[:4] != self._spi:
            raise WrongSpi(f"SPI {packet[:4].hex()}, this SA is {self._spi.hex()}")
        encrypted = len(packet) - self._overhead
        if encrypted < (2 if self._aead else AES_BLOCK):
            raise Truncated(f"{len(packet)} octets: shorter than the smallest packet of this suite")
        if not self._aead and encrypted % AES_BLOCK:
            raise BadLength(f"{encrypted} octets of ciphertext is not a whole number of AES blocks")
        self._check_alive(now, 0)
        seq = int.from_bytes(packet[4:8], "big")
        self.window.check(seq)  # before the ICV: replays cost no crypto (3.4.3)
        plaintext = self._decrypt(packet)
        pad_length, next_header = plaintext[-2], plaintext[-1]
        if pad_length > len(plaintext) - 2:
            raise BadPadding(f"pad length {pad_length} is longer than the {len(plaintext) - 2} octets before it")
        inner_length = len(plaintext) - 2 - pad_length
        # Checked after the ICV: the padding is authentic and its sender knows it, so no constant-time compare.
        if plaintext[inner_length:-2] != _PADDING[pad_length]:
            raise BadPadding("padding octets are not 1, 2, 3, ... (RFC 4303 2.4)")
        self._check_alive(now, inner_length)
        self.window.accept(seq)  # only now: the packet is authentic and well formed
        self._count(inner_length)
        return plaintext[:inner_length], next_header

    def _decrypt(self, packet: bytes) -> bytes:
        iv = packet[HEADER_SIZE:HEADER_SIZE + self._iv_size]
        if self._aead:
            try:
                return self._gcm.decrypt(self._salt + iv, packet[HEADER_SIZE + GCM_IV_SIZE:], packet[:HEADER_SIZE])
            except InvalidTag:
                raise IcvMismatch("the GCM tag does not verify") from None
        body, icv = packet[:-self._icv_size], packet[-self._icv_size:]
        if not constant_time.bytes_eq(self._integrity.mac(self.params.integrity_key, body), icv):
            raise IcvMismatch("the HMAC does not verify")
        decryptor = Cipher(self._aes, modes.CBC(iv)).decryptor()
        return decryptor.update(body[HEADER_SIZE + AES_BLOCK:]) + decryptor.finalize()


# --- RFC 3948: UDP port 4500 carries IKE behind a non-ESP marker, ESP as is, and NAT keepalives ---

NON_ESP_MARKER = bytes(4)
NAT_KEEPALIVE = b"\xff"


class Udp4500Kind(Enum):
    KEEPALIVE = "keepalive"
    IKE = "ike"
    ESP = "esp"


def classify_udp4500(payload: bytes) -> tuple[Udp4500Kind, bytes]:
    """What a port-4500 datagram carries, and its content: the IKE message without the marker, the ESP packet as
    is. An ESP SPI is never 0 (RFC 4303 2.1), so four zero octets can only be the marker (RFC 3948 2.2)."""
    if payload == NAT_KEEPALIVE:
        return Udp4500Kind.KEEPALIVE, b""
    if payload[:4] == NON_ESP_MARKER:
        return Udp4500Kind.IKE, payload[4:]
    if len(payload) < HEADER_SIZE:
        raise Truncated(f"{len(payload)} octets on port 4500: neither keepalive, IKE nor ESP")
    return Udp4500Kind.ESP, payload


def frame_ike_udp4500(message: bytes) -> bytes:
    """An IKE message as it goes to port 4500: behind the non-ESP marker."""
    return NON_ESP_MARKER + message
