"""What `serve` does with key release: obtain the service's key before anything is served, and give it to other
replicas once it is running (the config's [release])."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass

from ikecommon.attestation.verify import TrustAnchors

from ..config import Anchors, KeySource, ReleaseConfig, WhenAlone
from ..enclave.attest import MakeEnvelope
from ..enclave.base import Enclave
from .appraise import Appraiser
from .endpoint import ReleaseEndpoint
from .errors import ReleaseError
from .holder import Holder
from .kbs import obtain_from_kbs
from .keyring import KeyRing
from .obtain import NoHolder, obtain
from .rotation import Rotation


class JoinFailed(ReleaseError):
    """This replica has no key it may serve with: serve does not start."""


def appraiser(config: ReleaseConfig, say: Callable[[str], None] = lambda line: None) -> Appraiser:
    if config.spec is None:
        raise ReleaseError("[release] has no spec")
    if config.anchors is Anchors.SIM:
        say("key release trusts the SIMULATED attestation root (anchors = \"sim\"): NOT SECURE, anyone can make "
            "evidence it accepts; for tests and demos only")
        return Appraiser(config.spec, TrustAnchors.simulated())
    return Appraiser(config.spec, TrustAnchors.shipped())


@dataclass(frozen=True)
class Joined:
    said: str       # where the key came from, in words
    since: int = 0  # when a rotation made it the service's current key (0: the first key, or not from a peer)


def join(config: ReleaseConfig, enclave: Enclave, make_envelope: MakeEnvelope, say: Callable[[str], None]) -> Joined:
    """Put the service's key in `enclave` as the config says. JoinFailed when the replica must not start."""
    if config.source is KeySource.NEW:
        return Joined("a new key")
    if config.source is KeySource.KBS:
        assert config.kbs_resource is not None  # the config requires it
        say(f"asking the key broker for {config.kbs_resource} through {config.cdh_url} (within "
            f"{config.join_timeout_s:g} s)")
        try:
            fingerprint = obtain_from_kbs(enclave, config.cdh_url, config.kbs_resource,
                                          within=config.join_timeout_s, say=say)
        except ReleaseError as exc:
            raise JoinFailed(str(exc)) from None
        return Joined(f"the service key from the key broker ({config.kbs_resource}, SHA-256 {fingerprint[:16]}...)")
    peers = ", ".join(map(str, config.peers))
    say(f"asking {peers} for the service key (within {config.join_timeout_s:g} s)")
    try:
        obtained = obtain(enclave, appraiser(config, say), config.peers, within=config.join_timeout_s,
                          own={str(where) for where in config.listen}, make_envelope=make_envelope, say=say)
    except NoHolder as exc:
        if exc.present:
            raise JoinFailed(f"{exc}: replicas are there but none gave the key, so none is made here (a second key "
                             "would split the service's identity)") from None
        if config.when_alone is WhenAlone.EXIT:
            raise JoinFailed(f"{exc}; with when_alone = \"exit\" no new key is made") from None
        if config.founder is not None and socket.gethostname() != config.founder:
            raise JoinFailed(f"{exc}; only {config.founder} may start the service's key (founder), and this is "
                             f"{socket.gethostname()}") from None
        say(f"no replica answered within {config.join_timeout_s:g} s: this replica starts the service's key "
            "(when_alone = \"new-key\"); clients pinned to an earlier key must attest again")
        return Joined("a new service key (no replica answered)")
    return Joined(f"the service key from {obtained.source} ({obtained.holder.kind.value} evidence matching "
                  f"{obtained.holder.measurement_id!r})", obtained.since)


def endpoint(config: ReleaseConfig, enclave: Enclave, make_envelope: MakeEnvelope, say: Callable[[str], None],
             keys: KeyRing | None = None) -> ReleaseEndpoint | None:
    """The holder's endpoint, when [release] listen names where."""
    if not config.listen:
        return None
    holder = Holder(enclave, appraiser(config, say), make_envelope, keys=keys)
    return ReleaseEndpoint(holder, [(where.host, where.port) for where in config.listen])


def follows_rotations(config: ReleaseConfig) -> bool:
    """This replica polls its peers, so a rotation started on another one reaches it."""
    return bool(config.peers) and config.source is not KeySource.KBS


def rotation(config: ReleaseConfig, enclave: Enclave, keys: KeyRing, make_envelope: MakeEnvelope,
             published: Callable[[], None]) -> Rotation:
    """Rotation of the service key as [release] says: who to follow (its peers), and whether this replica may start
    one (not when the key broker holds the key: a replica restarted would get the old key from it)."""
    refused = None
    if config.source is KeySource.KBS:
        refused = ("the service key comes from the key broker ([release] source = \"kbs\"): put a new key there "
                   "and restart the replicas one by one")
    return Rotation(keys, enclave, notice_s=config.rotate_notice_s, poll_s=config.poll_s, peers=config.peers,
                    own={str(where) for where in config.listen}, gives=bool(config.listen),
                    appraiser=appraiser(config, lambda line: None) if config.peers else None,
                    make_envelope=make_envelope, published=published, refused=refused)
