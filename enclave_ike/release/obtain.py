"""A joining replica's walk over its peers at start: ask each for a challenge, send a request, check the grant,
import the key; round after round until one gives it or the time is up.

Peers are `host:port` (a name resolves to all its addresses, so one headless Service name covers every replica);
our own release addresses are skipped. The outcome when none gives the key says whether any of them *answered*: a
peer that answered and refused (or that we refused) holds a key we may not have or must not take, so making a key of
our own would split the service's identity; only a service where nobody answers may start a new key
(`[release] when_alone = "new-key"`).
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from ikecommon.attestation.verify import Verified
from ikecommon.evidence_client import hostport

from ..config import HostPort
from ..enclave.attest import MakeEnvelope
from ..enclave.base import Enclave
from .appraise import Appraiser
from .errors import MessageError, Refused, ReleaseError, Unreachable
from .joiner import Joiner
from .messages import MAX_MESSAGE

ROUND_PAUSE_S = 1.0
REQUEST_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Obtained:
    source: str           # the holder's address:port
    holder: Verified      # its verified evidence (the key is ours now)


class NoHolder(ReleaseError):
    """No peer gave the key in time. `answered`: some peer answered (and refused us, or we refused it)."""

    def __init__(self, reasons: dict[str, str], answered: bool, seconds: float) -> None:
        self.reasons, self.answered = reasons, answered
        said = "; ".join(f"{peer}: {reason}" for peer, reason in reasons.items()) or "no peer address to ask"
        super().__init__(f"no replica gave the service key within {seconds:g} s ({said})")


def obtain(enclave: Enclave, appraiser: Appraiser, peers: Sequence[HostPort], *, within: float,
           own: Collection[str] = (), make_envelope: MakeEnvelope | None = None,
           say: Callable[[str], None] = lambda line: None, clock: Callable[[], float] = time.time,
           sleep: Callable[[float], None] = time.sleep, timeout: float = REQUEST_TIMEOUT_S) -> Obtained:
    """The key from the first peer that gives it (now in `enclave`), or NoHolder after `within` seconds."""
    start = clock()
    reasons: dict[str, str] = {}
    answered = False
    while True:
        for target in _addresses(peers, own, reasons):
            try:
                return Obtained(target, _ask(enclave, appraiser, target, make_envelope, clock, timeout))
            except Unreachable as exc:
                reasons[target] = str(exc)
            except (Refused, MessageError) as exc:
                answered = True
                if reasons.get(target) != str(exc):
                    say(f"key release from {target} refused: {exc}")
                reasons[target] = str(exc)
        if clock() - start >= within:
            raise NoHolder(reasons, answered, within)
        sleep(min(ROUND_PAUSE_S, max(0.0, within - (clock() - start))))


def _addresses(peers: Sequence[HostPort], own: Collection[str], reasons: dict[str, str]) -> list[str]:
    """Every address:port the peers name now (resolved again each round: replicas come and go)."""
    found: list[str] = []
    for peer in peers:
        try:
            infos = socket.getaddrinfo(peer.host, peer.port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            reasons[str(peer)] = f"does not resolve: {exc}"
            continue
        for info in infos:
            address = str(info[4][0])
            target = hostport(address, peer.port)
            if address not in own and target not in found:
                found.append(target)
    return found


def _ask(enclave: Enclave, appraiser: Appraiser, target: str, make_envelope: MakeEnvelope | None,
         clock: Callable[[], float], timeout: float) -> Verified:
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    body = _post(host, int(port), "/release/challenge", b"", timeout)
    try:
        document = json.loads(body)
        challenge = bytes.fromhex(document["challenge"])
    except (ValueError, TypeError, KeyError):
        raise MessageError("challenge", "not a JSON object with a hex challenge") from None
    joiner = Joiner(enclave, appraiser, make_envelope)
    grant = _post(host, int(port), "/release/key", joiner.request(challenge), timeout)
    return joiner.accept(grant, clock())


def _post(host: str, port: int, path: str, body: bytes, timeout: float) -> bytes:
    """The body of a 200 answer; Refused with the holder's line for a 4xx, Unreachable for no answer or a 5xx."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("POST", path, body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        answer = response.read(MAX_MESSAGE + 1)
    except (OSError, http.client.HTTPException) as exc:
        raise Unreachable(getattr(exc, "strerror", None) or str(exc) or type(exc).__name__) from None
    finally:
        connection.close()
    if len(answer) > MAX_MESSAGE:
        raise MessageError(path, f"answer over {MAX_MESSAGE} bytes")
    if response.status == 200:
        return answer
    line = answer.decode("utf-8", "replace").strip().splitlines()
    said = f"{response.status} {line[0][:300] if line else response.reason}"
    raise (Refused if 400 <= response.status < 500 else Unreachable)(f"the holder said {said}")
