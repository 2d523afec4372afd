"""`ikectl trust`: pin a resolver's IKE key because its TEE attests that it runs an expected measurement, and keep
checking that it still does.

    ikectl trust add NAME --resolver ADDR --spec FILE|INLINE|URL [--port P] [--anchors vendor|sim] [--id ID]
    ikectl trust list [--json]
    ikectl trust verify NAME
    ikectl trust remove NAME

`add` draws a fresh 32-byte nonce (`secrets`), fetches the envelope for it from enclave-ike's evidence endpoint
(ADDR, TCP port 4501 by default), and verifies it with `verify_envelope`: the evidence against the trust anchors
(the vendors' roots that ship with the package, or those [trust] names instead; with `--anchors sim` the simulated
root, NOT SECURE), the binding of that nonce and the envelope's key, and the registers against the measurement spec
(a file, gzip+base64url inline, or an https governance feed signed by [trust] release_key, see feed.py). Then it
asks the endpoint for the IKE ID and pins key and ID in the trust store (truststore.py). Any mismatch, or evidence
that is unsupported (an SGX quote, say) or malformed: nothing is pinned, and AttestationFailed says which and lists
every mismatch.

`verify` (and `reattest_due`, which a supervisor calls periodically) does the same against the pin's own spec and
anchors. On failure the pin is marked failed and, when ikectl is up in trusted mode with this resolver, the trusted
conns are deleted through the run dir's whack: only the backstop remains, so DNS is blocked, never clear, and `up`
refuses the pin until it verifies again. On success with a new key (the resolver restarted: its key is made inside
the TEE at every start) the new key is pinned and trusted mode is reloaded with it.
"""

from __future__ import annotations

import concurrent.futures
import json
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ikecommon import keys
from ikecommon.attestation.errors import EvidenceFormatError, Mismatch, UnsupportedEvidence, VerificationFailed
from ikecommon.attestation.snp import SnpPolicy
from ikecommon.attestation.spec import MeasurementSpec, SpecFormatError
from ikecommon.attestation.tdx import TdxPolicy
from ikecommon.attestation.verify import TrustAnchors, verify_envelope
from ikecommon.evidence_client import EndpointError, fetch_evidence, fetch_served_identity
from ikecommon.unixtime import utc

from . import daemon, feed, pins, session, truststore
from .anchors import snp_policy, tdx_policy, trust_anchors
from .config import Address, Config, ConfigError, Mode, TrustedResolver, TrustSettings, resolver_id
from .errors import IkectlError, UsageError
from .render import trusted_conns
from .state import RunState, read_here
from .truststore import DEFAULT_PORT, FAILED, MAX_ADDRESSES, OK, Anchors, PinMissing, StoredPin, TrustError

NONCE_SIZE = 32
INLINE = "inline:"
SWITCH_SLACK_S = 300  # the resolver's clock may run ahead of ours: its switch seen this early is its switch
MAX_NOTICE_S = 30 * 86_400  # the longest rotation notice enclave-ike takes: a switch announced further ahead is a lie
FAILED_RETRY_S = 60.0  # a failed pin is tried again this soon (at most the interval)
SIM_WARNING = ("sim evidence is NOT SECURE: its root's private key is public, anyone can make it; "
               "for tests and demos only")

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


class AttestationFailed(TrustError):
    """Evidence that did not verify. The message is one sentence, then on lines of their own what kept the evidence
    from being judged (`what`: "unsupported evidence" or "malformed evidence", and `detail`) and every mismatch."""

    def __init__(self, sentence: str, mismatches: Sequence[Mismatch], what: str = "", detail: str = "") -> None:
        self.sentence, self.mismatches, self.what, self.detail = sentence, tuple(mismatches), what, detail
        super().__init__("\n".join([sentence, *self.detail_lines()]))

    def saying(self, sentence: str) -> AttestationFailed:
        return AttestationFailed(sentence, self.mismatches, self.what, self.detail)

    def detail_lines(self) -> list[str]:
        return ([f"  {self.what}: {self.detail}"] if self.what else []) + [
            f"  {m.field}: expected {m.expected}, got {m.actual}" for m in self.mismatches]

    @property
    def reason(self) -> str:
        """The sentence and what kept the evidence from being judged, as a pin records why it failed."""
        return f"{self.sentence}: {self.detail}" if self.what else self.sentence


def evidence_kind_of_problem(exc: UnsupportedEvidence | EvidenceFormatError) -> str:
    """Evidence that could not be judged, said as what it is: unsupported (a version, type or signing key not
    handled, e.g. "TDX quote version 6 (supported: 4, 5)") or malformed (where it is broken)."""
    return "unsupported evidence" if isinstance(exc, UnsupportedEvidence) else "malformed evidence"


class Unreachable(TrustError):
    """No evidence could be had from the resolver's endpoint at all (not a verdict on the resolver)."""


class ReattestFailed(TrustError):
    """`verify` failed: the pin is marked failed; `blocked` says whether trusted conns were deleted just now."""

    def __init__(self, message: str, blocked: bool) -> None:
        self.blocked = blocked
        super().__init__(message)


@dataclass(frozen=True)
class Attested:
    """What verified evidence (and the endpoint's identity) said about a resolver."""

    key: keys.PinnedKey
    id: str
    evidence_kind: str
    measurement_id: str
    notes: tuple[str, ...] = ()  # accepted by the policy, for the user to hear
    next_key: keys.PinnedKey | None = None  # a rotation's next key, verified against the same spec
    next_switch_at: int | None = None
    announced_switch: int | None = None  # the switch time /identity announced, staged or not
    next_unavailable: bool = False  # announced, but no evidence for it could be had this time


@dataclass(frozen=True)
class Reattestation:
    name: str
    ok: bool
    reason: str = ""          # the failure's first line
    key_changed: bool = False  # verified, with another key (or ID) than the pin had: re-pinned
    blocked: bool = False      # failed while in use: the trusted conns were deleted, DNS is blocked
    reapplied: bool = False    # verified after a failure or a key change, and trusted mode was reloaded
    notes: tuple[str, ...] = ()  # verified, and the policy accepted these only with a note


# --- sources: the spec and the anchors ---

def spec_source(text: str) -> str:
    """--spec as the pin stores it: an absolute file path, an https URL, or "inline:" and the inline text."""
    if text.startswith("https://"):
        return feed.check_url(text)
    if "://" in text:
        raise UsageError(f"--spec {text[:80]!r}: a governance feed is an https URL")
    path = Path(text)
    if path.is_file():
        return str(path.resolve())
    try:
        MeasurementSpec.from_inline(text)
    except SpecFormatError as exc:
        if text.startswith(("/", ".", "~")) or text.endswith(".json"):
            raise UsageError(f"--spec {text}: no such file") from None
        raise UsageError(f"--spec: not a file, an https URL, or an inline spec: {exc}") from None
    return INLINE + text


def load_spec(source: str, settings: TrustSettings, now: float,
              min_serial: int | None = None) -> tuple[MeasurementSpec, int | None]:
    """The spec and, from a governance feed, its serial (a feed below `min_serial` is a rollback, refused)."""
    if source.startswith("https://"):
        if settings.release_key is None:
            raise UsageError("a governance feed needs [trust] release_key: the public key its releases are signed "
                             "with")
        document = feed.fetch(source, feed.load_release_key(settings.release_key), _at(now),
                              cafile=settings.feed_ca_file, timeout=settings.timeout_s)
        if min_serial is not None and document.serial < min_serial:
            raise feed.FeedError(f"feed.serial: {document.serial} is below {min_serial}, the highest this pin "
                                 "accepted: a rolled-back feed")
        return document.spec, document.serial
    if source.startswith(INLINE):
        return MeasurementSpec.from_inline(source.removeprefix(INLINE)), None
    return MeasurementSpec.load(Path(source)), None


# --- attesting ---

def attest(address: Address, port: int, spec: MeasurementSpec, anchors: TrustAnchors, now: float, *,
           timeout: float = 10.0, expected_id: str | None = None, policy: TdxPolicy | None = None,
           snp_policy: SnpPolicy | None = None) -> Attested:
    """Fetch evidence for a fresh nonce and verify it; AttestationFailed lists every mismatch. What the policy
    accepted only with a note (collateral inside its grace, a TCB status other than UpToDate) is in `notes`."""
    nonce = secrets.token_bytes(NONCE_SIZE)
    host = str(address)
    try:
        body = fetch_evidence(host, port, nonce, timeout)
    except EndpointError as exc:
        raise Unreachable(f"resolver {address}: cannot get its evidence: {exc}") from None
    mismatches: list[Mismatch] = []
    what = detail = ""
    key = None
    kind = measurement = ""
    notes: tuple[str, ...] = ()
    try:
        verified = verify_envelope(body, nonce, spec, anchors, _at(now), tdx_policy=policy,
                                   snp_policy=snp_policy)
        key = keys.from_public_key(verified.public_key())
        kind, measurement, notes = verified.kind.value, verified.measurement_id, verified.evidence.notes
    except VerificationFailed as exc:
        mismatches += exc.mismatches
    except (UnsupportedEvidence, EvidenceFormatError) as exc:
        what, detail = evidence_kind_of_problem(exc), str(exc)
    except keys.PinError as exc:
        mismatches.append(Mismatch("envelope.ike-key", "a key libreswan can pin", str(exc)))
    switch_at = None
    try:
        identity = fetch_served_identity(host, port, timeout)
        served, switch_at = _ike_id(identity.id), identity.next_switch_at
    except (EndpointError, ConfigError) as exc:
        if expected_id is None:
            mismatches.append(Mismatch("identity.id", "the IKE ID, from GET /identity (or give --id)", str(exc)))
        served = expected_id or ""
    if expected_id is not None and served != expected_id:
        mismatches.append(Mismatch("identity.id", expected_id, served))
    if mismatches or what or key is None:
        counted = [f"{len(mismatches)} mismatch{'es' if len(mismatches) != 1 else ''}"] if mismatches else []
        said = ", ".join(([what] if what else []) + counted)
        raise AttestationFailed(f"resolver {address} failed attestation ({said})", mismatches, what, detail)
    if switch_at is None:
        return Attested(key, served, kind, measurement, notes)
    if not now - SWITCH_SLACK_S < switch_at <= now + MAX_NOTICE_S:
        return Attested(key, served, kind, measurement, notes + (
            f"the resolver announced a rotation switching at Unix time {switch_at}, not within the next "
            f"{MAX_NOTICE_S // 86_400} days: its next key is not staged",))
    staged, said_of_it, unavailable = _next_key(host, port, spec, anchors, now, timeout, policy, snp_policy)
    if staged == key:
        staged = None
    return Attested(key, served, kind, measurement, notes + said_of_it, staged, switch_at if staged else None,
                    switch_at, unavailable)


def _next_key(host: str, port: int, spec: MeasurementSpec, anchors: TrustAnchors, now: float, timeout: float,
              policy: TdxPolicy | None,
              snp_policy: SnpPolicy | None) -> tuple[keys.PinnedKey | None, tuple[str, ...], bool]:
    """The resolver announced a rotation: its next key, from evidence for a fresh nonce verified against the same
    spec, to stage; what the policy noted; and whether its evidence could not be had at all (a busy endpoint: not a
    verdict on the key). A next key that does not verify is not staged, and said so: the pin itself stands (when
    the resolver switches, trusted mode sees another key and attests again, failing closed)."""
    nonce = secrets.token_bytes(NONCE_SIZE)
    try:
        body = fetch_evidence(host, port, nonce, timeout, next_key=True)
    except EndpointError as exc:
        return None, (f"the resolver's announced next key: no evidence for it now ({exc})",), True
    try:
        verified = verify_envelope(body, nonce, spec, anchors, _at(now), tdx_policy=policy, snp_policy=snp_policy)
        return keys.from_public_key(verified.public_key()), verified.evidence.notes, False
    except VerificationFailed as exc:
        problem = "; ".join(str(m) for m in exc.mismatches[:3])
    except (UnsupportedEvidence, EvidenceFormatError, keys.PinError) as exc:
        problem = str(exc)
    return None, (f"the resolver's announced next key did not attest, so it is not staged: {problem}",), False


def _ike_id(text: str) -> str:
    """enclave-ike's ID in the spelling ikectl pins: a bare DNS name gets libreswan's '@'."""
    try:
        return resolver_id(text, "identity.id")
    except ConfigError:
        return resolver_id("@" + text, "identity.id")


def _at(now: float) -> datetime:
    return datetime.fromtimestamp(now, UTC)


# --- the commands ---

def add(config: Config, name: str, resolvers: tuple[Address, ...], spec_text: str, now: float, *,
        port: int = DEFAULT_PORT, anchors: Anchors = Anchors.VENDOR, expected_id: str | None = None,
        warn: Say = _quiet) -> StoredPin:
    """Attest the resolver at each of its addresses and pin it once: nothing is pinned unless every address attests
    against the spec with one key and one ID (one service). `warn` hears, once the arguments are found good, that
    sim evidence is NOT SECURE, and what the policy accepted only with a note."""
    truststore.check_name(name)
    if not resolvers:
        raise UsageError("give the resolver's address (--resolver ADDR)")
    repeated = [a for i, a in enumerate(resolvers) if a in resolvers[:i]]
    if repeated:
        raise UsageError(f"--resolver {repeated[0]} is given twice")
    if len(resolvers) > MAX_ADDRESSES:
        raise UsageError(f"--resolver given {len(resolvers)} times: one resolver takes at most {MAX_ADDRESSES}")
    source = spec_source(spec_text)
    roots = trust_anchors(anchors, config.trust)
    if anchors == Anchors.SIM:
        warn(SIM_WARNING)
    with truststore.locked(config.trust_dir):
        if truststore.path_of(config.trust_dir, name).exists():
            raise UsageError(f"pin {name!r} exists: `ikectl trust verify {name}` re-attests it, "
                             f"`ikectl trust remove {name}` removes it")
        try:
            spec, serial = load_spec(source, config.trust, now)
        except SpecFormatError as exc:
            raise UsageError(f"--spec: {exc}") from None
        every = [_attest_for_pin(address, port, spec, roots, now, config.trust, expected_id) for address in resolvers]
        try:
            attested = _one_service(list(zip(resolvers, every, strict=True)))
        except TrustError as exc:
            raise TrustError(f"{exc}; nothing pinned") from None
        pin = StoredPin(name=name, address=resolvers[0], port=port, id=attested.id, key=attested.key, spec=source,
                        anchors=anchors.value, evidence_kind=attested.evidence_kind,
                        measurement_id=attested.measurement_id, pinned_at=now, attested_at=now, feed_serial=serial,
                        next_key=attested.next_key, next_switch_at=attested.next_switch_at, also=resolvers[1:])
        truststore.save(config.trust_dir, pin)
    for note in dict.fromkeys(note for one in every for note in one.notes):
        warn(note)
    return pin


def _attest_as_set(address: Address, port: int, spec: MeasurementSpec, roots: TrustAnchors, now: float,
                   settings: TrustSettings, expected_id: str | None = None) -> Attested:
    """`attest` with [trust]'s timeout and evidence policies."""
    return attest(address, port, spec, roots, now, timeout=settings.timeout_s, expected_id=expected_id,
                  policy=tdx_policy(settings), snp_policy=snp_policy(settings))


def _attest_for_pin(address: Address, port: int, spec: MeasurementSpec, roots: TrustAnchors, now: float,
                    settings: TrustSettings, expected_id: str | None) -> Attested:
    try:
        return _attest_as_set(address, port, spec, roots, now, settings, expected_id)
    except AttestationFailed as exc:
        raise exc.saying(f"{exc.sentence}: nothing pinned") from None
    except TrustError as exc:
        raise TrustError(f"{exc}; nothing pinned") from None


def verify(config: Config, name: str, now: float, *, say: Say = _quiet) -> Reattestation:
    """Re-attest a pin now. Failure: the pin is marked failed, trusted mode blocks its DNS, ReattestFailed."""
    _existing(config, name)  # an unknown name is bad usage, before the store is locked (or made)
    with truststore.locked(config.trust_dir):
        pin = _existing(config, name)
        try:
            spec, serial = load_spec(pin.spec, config.trust, now, pin.feed_serial)
            attested = _attest_service(pin, spec, config.trust, now)
        except (IkectlError, ValueError) as exc:
            failure = exc if isinstance(exc, AttestationFailed) else AttestationFailed(
                str(exc) if isinstance(exc, TrustError)  # it names the resolver already
                else f"cannot attest resolver {', '.join(map(str, pin.addresses))}: {exc}", ())
            truststore.save(config.trust_dir, replace(
                pin, result=FAILED, attested_at=now, reason=failure.reason,
                mismatches=tuple((m.field, m.expected, m.actual) for m in failure.mismatches)))
            try:
                blocked = block(config, pin, say, why=f"pin {name!r} failed attestation: {failure.reason}",
                                failed=True)
                effect = ("trusted mode's conns to it are deleted: DNS is blocked" if blocked else
                          "trusted mode refuses it until it verifies: DNS to it stays blocked")
            except IkectlError as exc:
                blocked, effect = False, f"but its trusted conns could not be deleted ({exc}): run `ikectl down`"
            raise ReattestFailed("\n".join([f"{failure.sentence}; pin {name!r} marked failed, {effect}",
                                            *failure.detail_lines()]), blocked) from None
        staged, switch_at = attested.next_key, attested.next_switch_at
        if staged is None and _still_staged(pin, attested):
            staged, switch_at = pin.next_key, pin.next_switch_at  # announced as before; only its evidence failed now
        updated = replace(pin, key=attested.key, id=attested.id, evidence_kind=attested.evidence_kind,
                          measurement_id=attested.measurement_id, attested_at=now, result=OK, reason="",
                          mismatches=(), feed_serial=serial if serial is not None else pin.feed_serial,
                          next_key=staged, next_switch_at=switch_at)
        truststore.save(config.trust_dir, updated)
    changed = (updated.key, updated.id) != (pin.key, pin.id)
    # Also when an earlier round verified the pin but could not reapply it (the state lock busy, say): trusted
    # mode is still blocked by this pin, which is good again.
    reapplied = _reapply(config, updated, say) if changed or not pin.ok or _blocked_by(config, updated) else False
    return Reattestation(name, True, key_changed=changed, reapplied=reapplied, notes=attested.notes)


def _one_service(found: list[tuple[Address, Attested]]) -> Attested:
    """What the first address attested, when every other one attested the same key and ID."""
    first, attested = found[0]
    for address, other in found[1:]:
        differs = "key" if other.key != attested.key else "ID" if other.id != attested.id else None
        if differs is not None:
            raise TrustError(f"resolver {address} attests another {differs} than {first}: they are not one service")
    return attested


def _attest_service(pin: StoredPin, spec: MeasurementSpec, settings: TrustSettings, now: float) -> Attested:
    """The pin's resolver at each of its addresses whose endpoint answers: each must verify, and all must present
    one key and ID, as when it was pinned. An address that does not answer (a replica, a path down) is no verdict
    on the service, as long as one answers."""
    roots = trust_anchors(Anchors(pin.anchors), settings)  # read once: the vendors' roots are files

    def one(address: Address) -> Attested | Unreachable:
        try:
            return _attest_as_set(address, pin.port, spec, roots, now, settings)
        except Unreachable as exc:
            return exc

    # At once: an address that does not answer costs its timeout, and the supervisor's rounds wait on this.
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(pin.addresses)) as pool:
        outcomes = list(pool.map(one, pin.addresses))
    found = [(a, o) for a, o in zip(pin.addresses, outcomes, strict=True) if isinstance(o, Attested)]
    unreachable = [o for o in outcomes if isinstance(o, Unreachable)]
    if not found:
        raise unreachable[0] if len(unreachable) == 1 else Unreachable(
            "no address of the resolver answers: " + "; ".join(map(str, unreachable)))
    return _one_service(found)


def _still_staged(pin: StoredPin, attested: Attested) -> bool:
    """The key staged earlier stands when the resolver still announces the same rotation with the same current key,
    and only the next key's evidence could not be had this time (a busy endpoint): it was verified when staged."""
    return (pin.next_key is not None and attested.next_unavailable and attested.key == pin.key
            and attested.announced_switch == pin.next_switch_at)


def remove(config: Config, name: str, *, say: Say = _quiet) -> bool:
    """Remove a pin; True when trusted mode was using it and its conns were deleted (DNS blocked)."""
    _existing(config, name)
    with truststore.locked(config.trust_dir):
        pin = _existing(config, name)
        blocked = block(config, pin, say, why=f"pin {name!r} was removed (`ikectl trust remove`)")
        truststore.remove(config.trust_dir, name)
    return blocked


def reattest_due(config: Config, now: float, key_changed: bool = False) -> list[Reattestation]:
    """Re-attest every pin whose interval ([trust] interval_s) has passed since its latest attestation (a failed one
    after at most a minute), and, with `key_changed` (pluto saw a key other than the pinned one), the pin trusted
    mode is using, now: moved to its staged next key when the resolver's rotation is due (`promote`), else attested
    again. One pin's failure does not stop the others. For a supervisor to call periodically."""
    results = []
    for name, item in truststore.pins(config.trust_dir):
        if isinstance(item, TrustError):
            results.append(Reattestation(name, False, str(item)))
            continue
        in_use = key_changed and _in_use(config, item) is not None
        interval = config.trust.interval_s if item.ok else min(config.trust.interval_s, FAILED_RETRY_S)
        if now - item.attested_at < interval and not in_use:
            continue
        try:
            if in_use and _rotation_due(item, now):
                results.append(promote(config, name, now))
            else:
                results.append(verify(config, name, now))
        except ReattestFailed as exc:
            results.append(Reattestation(name, False, str(exc).splitlines()[0], blocked=exc.blocked))
        except (IkectlError, OSError) as exc:
            results.append(Reattestation(name, False, str(exc).splitlines()[0]))
    return results


def _rotation_due(pin: StoredPin, now: float) -> bool:
    """A staged next key whose switch time has come (give or take the clocks' difference)."""
    return pin.ok and pin.next_key is not None and pin.next_switch_at is not None \
        and now >= pin.next_switch_at - SWITCH_SLACK_S


def promote(config: Config, name: str, now: float, *, say: Say = _quiet) -> Reattestation:
    """The resolver switched to its next key: the pin moves to the key it staged (verified when staged, against the
    same spec), without fetching evidence again, and trusted mode reloads with it. If the resolver signs with yet
    another key, pluto says so again and the next round attests it from scratch (the staged key is used up)."""
    with truststore.locked(config.trust_dir):
        pin = _existing(config, name)
        if pin.next_key is None:
            raise TrustError(f"pin {name!r} has no staged next key")
        updated = replace(pin, key=pin.next_key, next_key=None, next_switch_at=None)
        truststore.save(config.trust_dir, updated)
    reapplied = _reapply(config, updated, say)
    staged_ago = ago(now - pin.attested_at)
    return Reattestation(name, True, key_changed=True, reapplied=reapplied,
                         notes=(f"the resolver rotated its key: moved to the next key staged {staged_ago} ago",))


def _existing(config: Config, name: str) -> StoredPin:
    try:
        return truststore.load(config.trust_dir, truststore.check_name(name))
    except PinMissing as exc:
        raise UsageError(str(exc)) from None


# --- what happens to trusted mode ---

def _in_use(config: Config, pin: StoredPin) -> RunState | None:
    """The record, when ikectl is up in trusted mode with this pin: the one the config names, at its addresses
    (another pin of the same addresses is not trusted mode's business)."""
    if pins.attested_name(config) != pin.name:
        return None
    record = read_here()
    return record if record is not None and record.mode == Mode.TRUSTED and record.trusted == pin.addresses else None


def _blocked_by(config: Config, pin: StoredPin) -> bool:
    record = _in_use(config, pin)
    return record is not None and record.blocked is not None and record.blocked.pin == pin.name


def block(config: Config, pin: StoredPin, say: Say = _quiet, *, why: str | None = None,
          failed: bool = False) -> bool:
    """Fail closed: delete the trusted conns, so only the backstops remain and DNS is blocked, and with `why` (the
    pin `failed`, or is gone) record that trusted mode is blocked, first: the supervisor would otherwise load the
    conns again from the tree on disk, with the pin's old key. A captive-portal window open then closes: without
    the trusted conns, the pinned resolver's DNS would pass in clear. True when the conns were deleted just now;
    False when trusted mode is not using this pin, or pluto is not running (nothing but the backstops is there
    then)."""
    record = _in_use(config, pin)
    if record is None:
        return False
    if why is not None:
        try:
            session.hold_blocked(record.trusted, why, time.time(), pin.name if failed else None)
        except IkectlError as exc:  # the conns go all the same
            say(f"cannot record trusted mode as blocked ({exc}): the supervisor may load the conns again; run "
                "`ikectl up`")
        if record.portal_until is not None:
            try:
                session.close_portal_window(say)
            except IkectlError as exc:
                say(f"cannot close the captive-portal window ({exc}): run `ikectl portal close`")
    run = daemon.RunDir(record.run_dir)
    if daemon.pluto_pid(run) is None:
        return False
    say(f"deleting the trusted conns to {', '.join(map(str, pin.addresses))}: only the backstops remain, DNS is "
        "blocked")
    whack = run.whack()
    for conn in trusted_conns(len(record.trusted)):
        try:
            whack.delete(conn)
        except IkectlError as exc:
            if conn in {t.conn for t in whack.traffic_status()}:
                raise TrustError(f"cannot delete {conn} from pluto ({exc}): run `ikectl down`") from None
    return True


def _reapply(config: Config, pin: StoredPin, say: Say) -> bool:
    """Reload trusted mode with the re-verified pin, when it is the one trusted mode uses and is up."""
    record = _in_use(config, pin)
    if record is None:
        return False
    say(f"reloading trusted mode with pin {pin.name!r}")
    # The old conns go first (the backstop keeps DNS blocked meanwhile): after pluto failed to authenticate the
    # new key it holds failure-shunt policies for them, which `up`'s reading of the kernel's policies trips on.
    block(config, pin, say)
    resolver = TrustedResolver(pin.address, pin.id, pin.key, attested=pin.name, also=pin.also)
    session.up(replace(config, mode=Mode.TRUSTED, trusted=resolver, run_dir=record.run_dir), say,
               config_path=record.config_path)
    return True


# --- listing ---

def listing(config: Config, now: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name, item in truststore.pins(config.trust_dir):
        if isinstance(item, TrustError):
            rows.append({"name": name, "error": str(item)})
        else:
            rows.append({**item.to_json(), "age_s": max(0.0, now - item.attested_at)})
    return rows


def format_listing(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no pins (add one with `ikectl trust add NAME --resolver ADDR --spec SPEC`)"
    lines = []
    for row in rows:
        if "error" in row:
            lines.append(f"{row['name']}  unreadable: {row['error']}")
            continue
        result = "attested" if row["result"] == OK else "FAILED"
        sim = "  sim evidence: NOT SECURE" if row["anchors"] == Anchors.SIM else ""
        addresses = ",".join([row["address"], *row.get("also", [])])
        lines.append(f"{row['name']}  {addresses}  {row['id']}  {result} {ago(row['age_s'])} ago  "
                     f"{row['evidence_kind']} {row['measurement_id'] or '-'}{sim}"
                     + (f"\n    {row['reason']}" if row["result"] != OK else ""))
        if row.get("next_switch_at") is not None:
            switch = utc(row["next_switch_at"])
            lines.append(f"    rotation: next key staged, the resolver switches to it at {switch}")
    return "\n".join(lines)


def ago(seconds: float) -> str:
    seconds = int(max(0, seconds))
    for unit, size in (("day", 86_400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


def to_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps({"version": 1, "pins": rows}, indent=1)
