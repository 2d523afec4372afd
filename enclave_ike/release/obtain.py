"""A joining replica's walk over its peers at start: ask each for a challenge, send a request, check the grant,
import the key; round after round until one gives it or the time is up.

Peers are `host:port` (a name resolves to all its addresses, so one headless Service name covers every replica);
our own release endpoints are skipped. The outcome when none gives the key says whether any peer is *present*: a
peer that answered at all (refused us, was refused, was busy, broke off after accepting the connection, sent
nonsense, answered the challenge and then vanished) may hold a key we may not have or must not take, so making a
key of our own would split the service's identity; so may one whose connection neither opens nor fails in time
(its packets dropped: a partition, a firewall). Only a service where every peer is absent (connection refused, no
route, a name that does not exist) may start a new key (`[release] when_alone = "new-key"`). Each request is bounded as
a whole (not per read), and never past the end of the join window.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from ikecommon import strictjson
from ikecommon.attestation.binding import NONCE_MAX, NONCE_MIN
from ikecommon.attestation.verify import Verified
from ikecommon.evidence_client import hostport, read_answer

from ..config import HostPort
from ..enclave.attest import MakeEnvelope
from ..enclave.base import Enclave
from ..errors import EnclaveIkeError
from .appraise import Appraiser
from .errors import MessageError, Refused, ReleaseError, Unreachable
from .joiner import Accepted, Joiner, RoleCheck
from .keyring import Listing
from .messages import MAX_MESSAGE

ROUND_PAUSE_S = 1.0
REQUEST_TIMEOUT_S = 10.0
MAX_HEAD = 8192
_ABSENT = frozenset((errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL))


@dataclass(frozen=True)
class Obtained:
    source: str           # the holder's address:port
    holder: Verified      # its verified evidence (the key is ours now)
    since: int = 0        # when a rotation made that key the service's current one (0: the first key)


class NoHolder(ReleaseError):
    """No peer gave the key in time. `present`: some peer is there (it answered, or failed after accepting)."""

    def __init__(self, reasons: dict[str, str], present: bool, seconds: float) -> None:
        self.reasons, self.present = reasons, present
        said = "; ".join(f"{peer}: {reason}" for peer, reason in reasons.items()) or "no peer address to ask"
        super().__init__(f"no replica gave the service key within {seconds:g} s ({said})")


def obtain(enclave: Enclave, appraiser: Appraiser, peers: Sequence[HostPort], *, within: float,
           own: Collection[str] = (), make_envelope: MakeEnvelope | None = None,
           say: Callable[[str], None] = lambda line: None, clock: Callable[[], float] = time.time,
           monotonic: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
           timeout: float = REQUEST_TIMEOUT_S) -> Obtained:
    """The key from the first peer that gives it (now in `enclave`), or NoHolder after `within` seconds. `own`:
    our release endpoints, as address:port; `clock` is wall time (the evidence is judged at it)."""
    start = monotonic()
    reasons: dict[str, str] = {}
    present = False
    while True:
        targets, resolving = addresses(peers, own, reasons)
        present = present or resolving
        for target in targets:
            left = within - (monotonic() - start)
            try:
                accepted = ask(enclave, appraiser, target, make_envelope, clock, max(1.0, min(timeout, left)))
                return Obtained(target, accepted.holder, accepted.since)
            except Unreachable as exc:
                reasons[target] = str(exc)
            except (ReleaseError, EnclaveIkeError) as exc:  # it answered (or our enclave failed: not absence)
                present = True
                if reasons.get(target) != str(exc):
                    say(f"key release from {target} refused: {exc}")
                reasons[target] = str(exc)
        if monotonic() - start >= within:
            raise NoHolder(reasons, present, within)
        sleep(min(ROUND_PAUSE_S, max(0.0, within - (monotonic() - start))))


def printable(text: str) -> str:
    """What a peer said, safe for one log line: anything unprintable (control characters, escapes) as '?'."""
    return "".join(c if c.isprintable() else "?" for c in text)


def addresses(peers: Sequence[HostPort], own: Collection[str],
               reasons: dict[str, str]) -> tuple[list[str], bool]:
    """Every address:port the peers name now (resolved again each round: replicas come and go), and whether a name
    failed to resolve for a reason other than not existing (a peer may be there: not absence)."""
    found: list[str] = []
    uncertain = False
    for peer in peers:
        try:
            infos = socket.getaddrinfo(peer.host, peer.port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            reasons[str(peer)] = f"does not resolve: {exc}"
            uncertain = uncertain or getattr(exc, "errno", None) != socket.EAI_NONAME
            continue
        for info in infos:
            target = hostport(str(info[4][0]), peer.port)
            if target not in own and target not in found:
                found.append(target)
    return found, uncertain


def ask(enclave: Enclave, appraiser: Appraiser, target: str, make_envelope: MakeEnvelope | None,
        clock: Callable[[], float], timeout: float, key: bytes | None = None,
        role: RoleCheck | None = None) -> Accepted:
    """One release from the holder at `target` (address:port): its current key, or the key `key` names (a
    rotation's next key; `role` may refuse the role it comes in, see Joiner.accept). Unreachable when nothing is
    there; another ReleaseError when it answered otherwise."""
    host, port = _split(target)
    deadline = time.monotonic() + timeout
    body = _post(host, port, "/release/challenge", b"", deadline)
    # It answered: whatever happens from here, a peer is there (Unreachable would say absent).
    try:
        document = strictjson.loads(body)
        challenge = bytes.fromhex(document["challenge"]) if isinstance(document, dict) else b""
    except (strictjson.JsonError, ValueError, TypeError, KeyError):
        challenge = b""
    if not NONCE_MIN <= len(challenge) <= NONCE_MAX:
        raise MessageError("challenge", f"not a JSON object with a challenge of {NONCE_MIN} to {NONCE_MAX} bytes "
                                        "as hex")
    joiner = Joiner(enclave, appraiser, make_envelope, key=key)
    try:
        grant = _post(host, port, "/release/key", joiner.request(challenge), deadline)
    except Unreachable as exc:
        raise Refused(f"the holder answered the challenge, then not the request: {exc}") from None
    return joiner.accept(grant, clock(), role=role)


def listing(target: str, timeout: float) -> Listing:
    """The keys the replica at `target` says it holds (GET /release/keys; unauthenticated, see keyring.py)."""
    host, port = _split(target)
    return Listing.decode(_post(host, port, "/release/keys", None, time.monotonic() + timeout))


def _split(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host.strip("[]"), int(port)


def _post(host: str, port: int, path: str, body: bytes | None, deadline: float) -> bytes:
    """The body of a 200 answer (to a GET when `body` is None). Unreachable when nothing is there to connect to
    (refused, no route); Refused for a connection that neither opens nor fails in time, and for any other answer or
    failure once connected: a peer may be there."""
    try:
        status, answer = asyncio.run(_exchange(host, port, path, body, deadline))
    except Unreachable:
        raise
    except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise Refused(f"the holder failed after accepting the connection: {printable(reason)}") from None
    if status == 200:
        return answer
    line = answer.decode("utf-8", "replace").strip().splitlines()
    raise Refused(f"the holder said {status} {printable(line[0][:300]) if line else ''}".rstrip())


async def _exchange(host: str, port: int, path: str, body: bytes | None, deadline: float) -> tuple[int, bytes]:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, limit=MAX_HEAD),
                                                max(0.1, deadline - time.monotonic()))
    except TimeoutError:  # packets dropped, not refused: maybe a peer behind a partition, so not absence
        raise Refused("no connection within the time (a partition or a firewall?)") from None
    except OSError as exc:
        if exc.errno in _ABSENT:
            raise Unreachable(os.strerror(exc.errno)) from None
        raise
    try:
        return await asyncio.wait_for(_request(reader, writer, host, port, path, body),
                                      max(0.1, deadline - time.monotonic()))
    finally:
        writer.close()


async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, port: int, path: str,
                   body: bytes | None) -> tuple[int, bytes]:
    method = "GET" if body is None else "POST"
    head = f"{method} {path} HTTP/1.1\r\nHost: {hostport(host, port)}\r\nConnection: close\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    writer.write((head + "\r\n").encode("ascii") + (body or b""))
    await writer.drain()
    return await read_answer(reader, MAX_MESSAGE)
