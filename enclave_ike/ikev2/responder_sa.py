"""The responder's side of an IKE SA (RFC 7296): IKE_SA_INIT and IKE_AUTH answered, our signature asked of a
deferred signer, the client authenticated, Child SAs negotiated and narrowed to DNS, CREATE_CHILD_SA answered.
Sans-I/O like the shared core it extends (state.py); `Responder` (responder.py) keeps many of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import Endpoint, Identity, Mode, PeerAuth, PeerCredential, ResponderConfig
from .constants import AuthMethod, CertEncoding, DhGroup, ExchangeType, IdType, NotifyType, ProtocolId
from .crypto import (
    DiffieHellman,
    RandomSource,
    SignatureScheme,
    choose_scheme,
    derive_child_keys,
    derive_ike_keys,
    encode_signature_auth,
    key_sha256,
    null_auth,
    presented_key,
    rekey_skeyseed,
    sign_auth,
    signed_octets,
    skeyseed,
    verify_mac_auth,
    verify_signature_auth,
)
from .errors import (
    AuthenticationFailed,
    ChildSaNotFound,
    InvalidKePayload,
    LocalProtocolError,
    NoProposalChosen,
    RemoteProtocolError,
    TemporaryFailure,
    TsUnacceptable,
)
from .events import (
    ChildSaEstablished,
    ChildSaRekeyed,
    IkeSaEstablished,
    SignatureRequested,
)
from .negotiation import (
    narrow_to_dns,
    select_child_suite,
    select_ike_suite,
)
from .payloads import (
    IKE_SPI_SIZE,
    Authentication,
    Certificate,
    IdentificationInitiator,
    IdentificationResponder,
    KeyExchange,
    Nonce,
    Notify,
    Payload,
    Proposal,
    SecurityAssociation,
    TrafficSelectorsInitiator,
    TrafficSelectorsResponder,
)
from .state import (
    ESP_SPI_SIZE,
    REQUEST,
    SIGNATURE_READY,
    TRANSITIONS,
    ZERO_SPI,
    ChildSa,
    IkeSa,
    Inbound,
    Outcome,
    Role,
    SpiAllocator,
    State,
    announced_hashes,
    peer_hash_algorithms,
    peer_identity,
)


@dataclass(frozen=True)
class Signing:
    """An IKE_AUTH request checked and waiting for our signature: what its answer is made of."""

    inbound: Inbound
    peer_id: Identity
    method: int
    credential: PeerCredential
    idr: IdentificationResponder
    scheme: SignatureScheme


def _asks_for_a_null_responder(inbound: Inbound, auth: Authentication) -> bool:
    """An initiator that authenticates with NULL and names ID_NULL as the responder it wants (IDr, RFC 7296 3.5;
    libreswan's opportunistic conns, `rightid=%null`) expects a NULL AUTH back and refuses any identity (RFC 7619
    section 3). A signing responder that also accepts NULL clients answers it so, as an unauthenticated resolver:
    it pinned nothing, so it loses nothing, and coffee-shop clients get ESP from a resolver that trusted clients
    pin. A client naming us by our ID, or naming no one, gets our signature."""
    wanted = inbound.optional(IdentificationResponder, "IDr")
    return (wanted is not None and wanted.id_type == IdType.ID_NULL and not wanted.data
            and auth.method == AuthMethod.NULL)


class ResponderSa(IkeSa):
    """An IKE SA we answer: built waiting for the initiator's IKE_SA_INIT."""

    _config: ResponderConfig
    _signing: Signing | None = None  # an IKE_AUTH request waiting for our signature
    _signature = b""  # handed back by complete_signature, for _on_signature

    @classmethod
    def answering(cls, config: ResponderConfig, *, random: RandomSource, spis: SpiAllocator, local: Endpoint,
                  peer: Endpoint, spi_i: bytes, spi_r: bytes, now: float) -> ResponderSa:
        """A new responder SA for an IKE_SA_INIT from `peer` with `spi_i`; `spi_r` is ours (from `spis`)."""
        return cls(Role.RESPONDER, config, random=random, spis=spis, local=local, peer=peer, spi_i=spi_i,
                   spi_r=spi_r, state=State.EXPECT_IKE_SA_INIT, now=now)

    def complete_signature(self, now: float, signature: bytes) -> None:
        """Our signature for the SignatureRequested this SA asked for: the IKE_AUTH answer goes out."""
        self._now = now
        if self.state is not State.SIGNING or self._signing is None:
            raise LocalProtocolError(f"no signature is awaited in {self.state.name}")
        self._signature = signature
        transition = TRANSITIONS[(State.SIGNING, SIGNATURE_READY, REQUEST)]
        try:
            outcome = self._handle(transition, self._signing.inbound)
        except RemoteProtocolError as exc:
            header = self._signing.inbound.header
            self._refuse(header, self._signing.inbound.data, self._signing.inbound.source, exc, protected=True)
            outcome = Outcome.REFUSED
        self._signing, self._signature = None, b""
        self._enter(transition.next_state[outcome], outcome)
        self._flush_queue()

    def fail_signature(self, now: float, reason: str) -> None:
        """The signer could not sign: the IKE SA goes unanswered (the initiator's own timeout ends it there)."""
        self._now = now
        if self.state is State.SIGNING:
            self._signing = None
            self._teardown(f"our signer failed: {reason}")

    def _responder_config(self) -> ResponderConfig:
        if not isinstance(self._config, ResponderConfig):
            raise LocalProtocolError("this IKE SA runs an initiator policy")
        return self._config

    def _answer_ike_sa_init(self, inbound: Inbound) -> Outcome:
        config = self._responder_config()
        if inbound.header.message_id != 0:
            raise RemoteProtocolError("IKE_SA_INIT: message ID must be 0")
        sa = inbound.one(SecurityAssociation, "SA")
        ke = inbound.one(KeyExchange, "KE")
        ni = inbound.one(Nonce, "Nonce").data
        proposal, suite = select_ike_suite(sa, config.ike_suites, ke_group=ke.group, spi_size=0)
        if len(ni) < suite.prf.key_size // 2:
            raise RemoteProtocolError(f"Nonce: {len(ni)} octets, less than half the PRF key (RFC 7296 2.10)")
        dh = DiffieHellman.generate(suite.dh_group, self._random)
        shared = dh.shared_secret(ke.data)
        nr = self._random(config.nonce_size)
        nat = self._nat_status(inbound, ZERO_SPI)
        peer_hashes = peer_hash_algorithms(inbound)
        keys = derive_ike_keys(suite, skeyseed(suite.prf, ni, nr, shared), ni, nr, self.spi_i, self.spi_r)
        chosen = Proposal(proposal.number, ProtocolId.IKE, b"", suite.transforms())
        payloads: list[Payload] = [SecurityAssociation((chosen,)), KeyExchange(suite.dh_group, dh.public_key),
                                   Nonce(nr), *self._nat_hashes(self.spi_r),
                                   Notify(NotifyType.SIGNATURE_HASH_ALGORITHMS, announced_hashes(config))]
        # commit
        self._install_keys(suite, keys)
        self._ni, self._nr, self.nat, self.peer_hashes = ni, nr, nat, peer_hashes
        self._init_request = inbound.data
        self.peer = inbound.source
        self._init_response = self._respond(inbound, payloads, protected=False)
        self._half_open_deadline = self._now + config.timers.half_open
        return Outcome.DONE

    def _answer_ike_auth(self, inbound: Inbound) -> Outcome:
        config = self._responder_config()
        suite, keys = self._ike_keys()
        idi = inbound.one(IdentificationInitiator, "IDi")
        auth = inbound.optional(Authentication, "AUTH")
        if auth is None:
            raise AuthenticationFailed("IKE_AUTH: no AUTH payload (EAP is not offered here)")
        peer_id = peer_identity(idi.id_type, idi.data)
        octets = signed_octets(suite.prf, self._init_request, self._nr, keys.sk_pi, idi.encode())
        credential = self._verify_initiator(config, inbound, peer_id, auth, octets)
        anonymous_both_ways = _asks_for_a_null_responder(inbound, auth) and PeerAuth.NULL in config.anonymous
        ours = Identity.null() if anonymous_both_ways else config.local_id
        idr = IdentificationResponder(ours.id_type, ours.data)
        our_octets = signed_octets(suite.prf, self._init_response, self._ni, keys.sk_pr, idr.encode())
        if config.signer is None or anonymous_both_ways:
            our_auth = Authentication(AuthMethod.NULL, null_auth(suite.prf, keys.sk_pr, our_octets))
            return self._finish_ike_auth(inbound, peer_id, auth.method, credential, idr, our_auth)
        # RFC 7427: a hash the peer listed, or AUTHENTICATION_FAILED when our key can make none of them
        scheme = choose_scheme(config.signer, self.peer_hashes)
        if config.signer.deferred:
            self._signing = Signing(inbound, peer_id, auth.method, credential, idr, scheme)
            self._events.append(SignatureRequested(self.spi_i, self.spi_r, our_octets, scheme))
            return Outcome.WAITING
        our_auth = sign_auth(config.signer, our_octets, scheme)
        return self._finish_ike_auth(inbound, peer_id, auth.method, credential, idr, our_auth)

    def _on_signature(self, inbound: Inbound) -> Outcome:
        """Our signature came (complete_signature): answer the IKE_AUTH request that waited for it."""
        signing = self._signing
        if signing is None:
            raise LocalProtocolError("no signature is awaited")
        our_auth = Authentication(AuthMethod.DIGITAL_SIGNATURE, encode_signature_auth(signing.scheme,
                                                                                     self._signature))
        return self._finish_ike_auth(inbound, signing.peer_id, signing.method, signing.credential, signing.idr,
                                     our_auth)

    def _still_signing(self, inbound: Inbound) -> Outcome:
        """A retransmitted IKE_AUTH request while our signature is on its way: its answer is not made yet."""
        self.dropped += 1
        return Outcome.WAITING

    def _finish_ike_auth(self, inbound: Inbound, peer_id: Identity, method: int, credential: PeerCredential,
                         idr: IdentificationResponder, our_auth: Authentication) -> Outcome:
        suite, _ = self._ike_keys()
        child_payloads: tuple[Payload, ...]
        child: tuple[ChildSa, ChildSaEstablished] | None = None
        child_error: RemoteProtocolError | None = None
        try:
            child_payloads, child = self._answer_child(inbound, self._ni, self._nr, None)
        except (NoProposalChosen, TsUnacceptable, InvalidKePayload) as exc:  # 2.21.2: the IKE SA still comes up
            child_payloads, child_error = (Notify(exc.notify or NotifyType.NO_PROPOSAL_CHOSEN, exc.notify_data),), exc
        # commit
        self.peer_id, self.peer_auth, self.peer_credential = peer_id, method, credential
        self._respond(inbound, (idr, our_auth, *child_payloads), protected=True)
        self._established = True
        self._events.append(IkeSaEstablished(self.spi_i, self.spi_r, self.local, self.peer,
                                             Identity(idr.id_type, idr.data), peer_id, method, suite, self.nat,
                                             inbound.has(NotifyType.INITIAL_CONTACT), credential))
        if child is not None:
            self._add_child(*child)
        if child_error is not None:
            self._report(inbound.header, child_error.notify, f"Child SA refused: {child_error}")
        return Outcome.DONE

    def _verify_initiator(self, config: ResponderConfig, inbound: Inbound, peer_id: Identity, auth: Authentication,
                          octets: bytes) -> PeerCredential:
        """Who the initiator is, from its AUTH (checked, changes nothing). An identity with a pinned key must sign
        with that key. Anyone else comes in unauthenticated, by one of `config.anonymous`: NULL (RFC 7619), or a
        signature by the key of the raw public key (RFC 7670) or certificate in its first CERT payload (RFC 7296
        3.6), which proves possession of that key for this exchange and nothing about who holds it."""
        pinned = config.pinned_key(peer_id)
        if pinned is not None:
            if auth.method != AuthMethod.DIGITAL_SIGNATURE:
                raise AuthenticationFailed(f"AUTH: {peer_id} has a pinned key and must sign with it (RFC 7427, "
                                           f"method 14); it used method {auth.method}")
            verify_signature_auth(pinned, auth, octets, accept=config.signature_schemes)
            return PeerCredential(PeerAuth.PINNED, key_sha256(pinned))
        if auth.method == AuthMethod.NULL:
            if PeerAuth.NULL not in config.anonymous:
                raise AuthenticationFailed(f"AUTH: NULL authentication is not accepted here, and no key is pinned "
                                           f"for {peer_id}")
            suite, keys = self._ike_keys()
            verify_mac_auth(null_auth(suite.prf, keys.sk_pi, octets), auth, AuthMethod.NULL)
            return PeerCredential(PeerAuth.NULL)
        if auth.method != AuthMethod.DIGITAL_SIGNATURE:
            raise AuthenticationFailed(f"AUTH: method {auth.method} is not accepted here (NULL, 13, and digital "
                                       "signature, 14, are)")
        certs = inbound.all(Certificate)
        if not certs:
            raise AuthenticationFailed(f"AUTH: a signature, but no key is pinned for {peer_id} and no CERT payload "
                                       "carries the key (a raw public key or a certificate)")
        presented = presented_key(certs[0].encoding, certs[0].data)
        kind = PeerAuth.RAW_KEY if presented.encoding == CertEncoding.RAW_PUBLIC_KEY else PeerAuth.CERTIFICATE
        if kind not in config.anonymous:
            what = "a raw public key" if kind is PeerAuth.RAW_KEY else "a certificate"
            raise AuthenticationFailed(f"AUTH: no key is pinned for {peer_id}, and clients with {what} we do not "
                                       "know are not accepted here")
        verify_signature_auth(presented.public_key, auth, octets, accept=config.signature_schemes)
        return PeerCredential(kind, presented.sha256, presented.subject, presented.self_signed)

    def _answer_child(self, inbound: Inbound, ni: bytes, nr: bytes,
                      ke: KeyExchange | None) -> tuple[tuple[Payload, ...], tuple[ChildSa, ChildSaEstablished]]:
        """Negotiate a Child SA from the request's SA, TSi, TSr and USE_TRANSPORT_MODE. Returns the payloads of the
        answer and the new Child SA with its event; allocates its SPI last, after every check passed."""
        config = self._responder_config()
        suite_ike, keys = self._ike_keys()
        in_ike_auth = inbound.header.exchange == ExchangeType.IKE_AUTH
        sa = inbound.one(SecurityAssociation, "SA")
        tsi = inbound.one(TrafficSelectorsInitiator, "TSi")
        tsr = inbound.one(TrafficSelectorsResponder, "TSr")
        proposal, suite = select_child_suite(sa, config.esp_suites, ke_group=None if ke is None else ke.group,
                                             in_ike_auth=in_ike_auth)
        wants_transport = inbound.has(NotifyType.USE_TRANSPORT_MODE)
        if wants_transport and Mode.TRANSPORT in config.modes:
            mode = Mode.TRANSPORT
        elif Mode.TUNNEL in config.modes:
            mode = Mode.TUNNEL
        else:
            raise NoProposalChosen("Child SA: only transport mode is allowed and the initiator did not ask for it")
        narrowed_i, narrowed_r = narrow_to_dns(tsi.selectors, tsr.selectors, config.dns, inbound.source.address,
                                               peer_behind_nat=self.nat.peer_behind_nat)
        shared: bytes | None = None
        dh: DiffieHellman | None = None
        if suite.dh_group != DhGroup.NONE:
            if ke is None:  # select_child_suite only picks a group for a KE payload of that group
                raise InvalidKePayload("KE: missing", group=suite.dh_group)
            dh = DiffieHellman.generate(suite.dh_group, self._random)
            shared = dh.shared_secret(ke.data)
        child_keys = derive_child_keys(suite_ike.prf, keys.sk_d, suite, ni, nr, shared)
        spi_in = self._spis.esp()
        spi_out = proposal.spi
        chosen = Proposal(proposal.number, ProtocolId.ESP, spi_in, suite.transforms())
        payloads: list[Payload] = []
        if mode is Mode.TRANSPORT:
            payloads.append(Notify(NotifyType.USE_TRANSPORT_MODE))
        payloads.append(SecurityAssociation((chosen,)))
        if not in_ike_auth:
            payloads.append(Nonce(nr))
            if dh is not None:
                payloads.append(KeyExchange(dh.group, dh.public_key))
        payloads += [TrafficSelectorsInitiator(narrowed_i), TrafficSelectorsResponder(narrowed_r)]
        child = ChildSa(spi_in, spi_out, suite, mode, narrowed_r, narrowed_i)
        return tuple(payloads), (child, self._child_event(child, child_keys))

    def _answer_create_child_sa(self, inbound: Inbound) -> Outcome:
        if not isinstance(self._config, ResponderConfig):  # the test initiator takes no Child SAs from its peer
            raise RemoteProtocolError("CREATE_CHILD_SA: this side accepts no Child SAs",
                                      notify=NotifyType.NO_ADDITIONAL_SAS)
        config = self._config
        sa = inbound.one(SecurityAssociation, "SA")
        ni = inbound.one(Nonce, "Nonce").data
        ke = inbound.optional(KeyExchange, "KE")
        if sa.proposals and sa.proposals[0].protocol == ProtocolId.IKE:
            return self._answer_ike_rekey(inbound, sa, ni, ke)
        rekey = inbound.notifies(NotifyType.REKEY_SA)
        old: ChildSa | None = None
        if rekey:
            if len(rekey) != 1 or rekey[0].protocol != ProtocolId.ESP or len(rekey[0].spi) != ESP_SPI_SIZE:
                raise RemoteProtocolError("REKEY_SA: one notify naming an ESP SPI is expected")
            old = next((c for c in self.children.values() if c.spi_out == rekey[0].spi), None)
            if old is None:
                raise ChildSaNotFound(f"REKEY_SA: no Child SA with SPI {rekey[0].spi.hex()}")
            # A rekeyed Child SA stays until the peer deletes it: rekeying without deleting (again and again, or
            # along a chain) would grow the kernel's SA table, so at most max_child_sas may wait for deletion.
            if old.spi_in in self._replaced or len(self._replaced) >= config.limits.max_child_sas:
                raise RemoteProtocolError(f"CREATE_CHILD_SA: {len(self._replaced)} rekeyed Child SAs not deleted "
                                          "yet (or this one is one of them)", notify=NotifyType.NO_ADDITIONAL_SAS)
        elif len(self.children) - len(self._replaced) >= config.limits.max_child_sas:
            raise RemoteProtocolError(f"CREATE_CHILD_SA: already {len(self.children)} Child SAs on this IKE SA",
                                      notify=NotifyType.NO_ADDITIONAL_SAS)
        nr = self._random(config.nonce_size)
        payloads, (child, event) = self._answer_child(inbound, ni, nr, ke)
        # commit
        self._respond(inbound, payloads, protected=True)
        self.children[child.spi_in] = child
        if old is None:
            self._events.append(event)
        else:
            self._replaced.add(old.spi_in)
            self._events.append(ChildSaRekeyed(self.spi_i, self.spi_r, old.spi_in, old.spi_out, event))
        return Outcome.DONE

    def _answer_ike_rekey(self, inbound: Inbound, sa: SecurityAssociation, ni: bytes,
                          ke: KeyExchange | None) -> Outcome:
        config = self._responder_config()
        old_suite, old_keys = self._ike_keys()
        if ke is None:
            raise RemoteProtocolError("CREATE_CHILD_SA: an IKE SA rekey needs a KE payload")
        if self._pending is not None:
            raise TemporaryFailure("CREATE_CHILD_SA: our own request is outstanding; rekey again later")
        proposal, suite = select_ike_suite(sa, config.ike_suites, ke_group=ke.group, spi_size=IKE_SPI_SIZE)
        dh = DiffieHellman.generate(suite.dh_group, self._random)
        shared = dh.shared_secret(ke.data)
        nr = self._random(config.nonce_size)
        new_spi_i, new_spi_r = proposal.spi, self._spis.ike()
        seed = rekey_skeyseed(old_suite.prf, old_keys.sk_d, shared, ni, nr)
        keys = derive_ike_keys(suite, seed, ni, nr, new_spi_i, new_spi_r)
        chosen = Proposal(proposal.number, ProtocolId.IKE, new_spi_r, suite.transforms())
        # commit
        self._respond(inbound, (SecurityAssociation((chosen,)), Nonce(nr), KeyExchange(dh.group, dh.public_key)),
                      protected=True)
        self._hand_over(Role.RESPONDER, new_spi_i, new_spi_r, suite, keys)
        return Outcome.REKEYED
