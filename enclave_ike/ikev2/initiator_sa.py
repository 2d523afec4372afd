"""The original initiator's side of an IKE SA (RFC 7296): IKE_SA_INIT and IKE_AUTH requested, the responder
authenticated, Child SAs and IKE SA rekeys requested. enclave-ike's clients are libreswan's pluto; this side serves
the tests, the benchmarks and the interop ladder (`initiator.py`). Sans-I/O like the shared core (state.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from .config import Endpoint, InitiatorConfig, Mode, PeerAuth, PeerCredential
from .constants import AuthMethod, DhGroup, ExchangeType, NotifyType, ProtocolId
from .crypto import (
    ChildSuite,
    DiffieHellman,
    IkeSuite,
    RandomSource,
    SignatureScheme,
    choose_scheme,
    derive_child_keys,
    derive_ike_keys,
    key_sha256,
    null_auth,
    rekey_skeyseed,
    sign_auth,
    signed_octets,
    skeyseed,
    verify_mac_auth,
    verify_signature_auth,
)
from .errors import (
    AuthenticationFailed,
    ErrorNotified,
    LocalProtocolError,
    NoProposalChosen,
    RemoteProtocolError,
)
from .events import (
    ChildSaEstablished,
    ChildSaRekeyed,
    IkeSaEstablished,
    PeerErrorNotified,
)
from .negotiation import (
    accept_esp_choice,
    accept_ike_choice,
    check_narrowed,
    esp_offer_suites,
    offer_esp,
    offer_ike,
)
from .payloads import (
    IKE_SPI_SIZE,
    Authentication,
    IdentificationInitiator,
    IdentificationResponder,
    KeyExchange,
    Nonce,
    Notify,
    Payload,
    SecurityAssociation,
    TrafficSelector,
    TrafficSelectorsInitiator,
    TrafficSelectorsResponder,
)
from .state import (
    MAX_COOKIE_SIZE,
    MAX_INIT_RETRIES,
    ZERO_SPI,
    AuthRequest,
    ChildRequest,
    ChildSa,
    Command,
    IkeRekeyRequest,
    IkeSa,
    Inbound,
    InitRequest,
    Outcome,
    Role,
    SpiAllocator,
    State,
    announced_hashes,
    peer_hash_algorithms,
    peer_identity,
)


class InitiatorSa(IkeSa):
    """An IKE SA we started: its IKE_SA_INIT request is ready in `datagrams_to_send` once built with `start`."""

    _config: InitiatorConfig

    @classmethod
    def start(cls, config: InitiatorConfig, *, random: RandomSource, spis: SpiAllocator, local: Endpoint,
              peer: Endpoint, now: float) -> InitiatorSa:
        sa = cls(Role.INITIATOR, config, random=random, spis=spis, local=local, peer=peer, spi_i=spis.ike(),
                 spi_r=ZERO_SPI, state=State.EXPECT_IKE_SA_INIT_RESPONSE, now=now)
        group = config.first_group if config.first_group is not None else config.ike_suites[0].dh_group
        context = InitRequest(DiffieHellman.generate(group, random), random(config.nonce_size), None, 0)
        sa._send_init(context)
        return sa

    def create_child_sa(self, now: float, *, esp_suites: Sequence[ChildSuite] | None = None,
                        mode: Mode | None = None) -> None:
        """Ask for another Child SA (initiator policy only): CREATE_CHILD_SA, with PFS when the first suite has a
        group."""
        self._now = now
        config = self._initiator_config()
        suites = tuple(esp_suites or config.esp_suites)
        self._queue.append(Command("create a Child SA", lambda: self._request_child(suites, mode or config.mode, None)))
        self._flush_queue()

    def rekey_child_sa(self, now: float, spi_in: bytes) -> None:
        """Rekey a Child SA (RFC 7296 2.8): on success the old one is deleted."""
        self._now = now
        config = self._initiator_config()
        old = self.children.get(spi_in)
        if old is None:
            raise LocalProtocolError(f"no Child SA with inbound SPI {spi_in.hex()}")
        self._queue.append(Command(f"rekey Child SA 0x{spi_in.hex()}",
                                   lambda: self._request_child(config.esp_suites, old.mode, old)))
        self._flush_queue()

    def rekey(self, now: float, *, ike_suites: Sequence[IkeSuite] | None = None) -> None:
        """Rekey this IKE SA (RFC 7296 2.18): on success `successor` holds the new one and this one is deleted."""
        self._now = now
        config = self._initiator_config()
        suites = tuple(ike_suites or config.ike_suites)
        self._queue.append(Command("rekey the IKE SA", lambda: self._request_ike_rekey(suites)))
        self._flush_queue()

    def _initiator_config(self) -> InitiatorConfig:
        if not isinstance(self._config, InitiatorConfig):
            raise LocalProtocolError("this IKE SA runs a responder policy, which cannot start this exchange")
        return self._config

    def _send_init(self, context: InitRequest) -> None:
        """(Re)send IKE_SA_INIT with message ID 0: the first time, after a COOKIE, after INVALID_KE_PAYLOAD."""
        config = self._initiator_config()
        self._pending, self._next_id = None, 0
        self.spi_r = ZERO_SPI
        payloads: list[Payload] = []
        if context.cookie is not None:
            payloads.append(Notify(NotifyType.COOKIE, context.cookie))  # first (RFC 7296 2.6)
        payloads += [offer_ike(config.ike_suites), KeyExchange(context.dh.group, context.dh.public_key),
                     Nonce(context.nonce), *self._nat_hashes(ZERO_SPI)]
        if config.announce_hashes:
            payloads.append(Notify(NotifyType.SIGNATURE_HASH_ALGORITHMS, announced_hashes(config)))
        self._init_request = self._send_request(ExchangeType.IKE_SA_INIT, payloads, context)

    def _on_ike_sa_init_response(self, inbound: Inbound) -> Outcome:
        context = inbound.context
        config = self._initiator_config()
        if not isinstance(context, InitRequest):
            raise LocalProtocolError("IKE_SA_INIT response without an IKE_SA_INIT request")
        cookie = inbound.notifies(NotifyType.COOKIE)
        invalid_ke = inbound.notifies(NotifyType.INVALID_KE_PAYLOAD)
        if (cookie or invalid_ke) and context.retries >= MAX_INIT_RETRIES:
            raise ErrorNotified("IKE_SA_INIT: too many COOKIE / INVALID_KE_PAYLOAD rounds",
                                received=NotifyType.COOKIE if cookie else NotifyType.INVALID_KE_PAYLOAD)
        if cookie:
            if not 1 <= len(cookie[0].data) <= MAX_COOKIE_SIZE:
                raise RemoteProtocolError(f"COOKIE: {len(cookie[0].data)} octets")
            self._send_init(dataclasses.replace(context, cookie=cookie[0].data, retries=context.retries + 1))
            return Outcome.RETRY
        if invalid_ke:
            data = invalid_ke[0].data
            group = int.from_bytes(data, "big") if len(data) == 2 else -1
            if group == context.dh.group or group not in {s.dh_group for s in config.ike_suites}:
                raise ErrorNotified(f"INVALID_KE_PAYLOAD: group {group} was not offered",
                                    received=NotifyType.INVALID_KE_PAYLOAD)
            dh = DiffieHellman.generate(group, self._random)
            self._send_init(dataclasses.replace(context, dh=dh, retries=context.retries + 1))
            return Outcome.RETRY
        error = inbound.error_notify()
        if error is not None:
            raise ErrorNotified(f"IKE_SA_INIT refused: notify {error.notify_type}", received=error.notify_type,
                                data=error.data)
        if inbound.header.spi_r == ZERO_SPI:
            raise RemoteProtocolError("IKE_SA_INIT response without a responder SPI")
        _, suite = accept_ike_choice(inbound.one(SecurityAssociation, "SA"), config.ike_suites, spi_size=0)
        ke = inbound.one(KeyExchange, "KE")
        nr = inbound.one(Nonce, "Nonce").data
        if ke.group != suite.dh_group or ke.group != context.dh.group:
            raise NoProposalChosen(f"KE: group {ke.group} does not match the chosen group {suite.dh_group}")
        shared = context.dh.shared_secret(ke.data)
        peer_hashes = peer_hash_algorithms(inbound)
        spi_r = inbound.header.spi_r
        keys = derive_ike_keys(suite, skeyseed(suite.prf, context.nonce, nr, shared), context.nonce, nr,
                               self.spi_i, spi_r)
        # commit
        self.spi_r = spi_r
        self._install_keys(suite, keys)
        self._ni, self._nr, self._init_response = context.nonce, nr, inbound.data
        self.nat = self._nat_status(inbound, spi_r)
        self.peer_hashes = peer_hashes
        self._send_auth(config)
        return Outcome.DONE

    def _initiator_scheme(self, config: InitiatorConfig) -> SignatureScheme | None:
        """(test initiator) A hash the responder listed; with no overlap the key's own, for the responder to judge."""
        if config.signer is None:
            return None
        try:
            return choose_scheme(config.signer, self.peer_hashes)
        except AuthenticationFailed:
            return config.signer.algorithm

    def _send_auth(self, config: InitiatorConfig) -> None:
        suite, keys = self._ike_keys()
        idi = IdentificationInitiator(config.local_id.id_type, config.local_id.data)
        octets = signed_octets(suite.prf, self._init_request, self._nr, keys.sk_pi, idi.encode())
        auth = (Authentication(AuthMethod.NULL, null_auth(suite.prf, keys.sk_pi, octets))
                if config.signer is None else sign_auth(config.signer, octets, self._initiator_scheme(config)))
        offered = esp_offer_suites(config.esp_suites, in_ike_auth=True)
        esp_spi = self._spis.esp()
        payloads: list[Payload] = [idi, *config.certificates]
        if config.initial_contact:
            payloads.append(Notify(NotifyType.INITIAL_CONTACT))
        if config.responder_id is not None:
            payloads.append(IdentificationResponder(config.responder_id.id_type, config.responder_id.data))
        payloads.append(auth)
        if config.mode is Mode.TRANSPORT:
            payloads.append(Notify(NotifyType.USE_TRANSPORT_MODE))
        payloads += [offer_esp(config.esp_suites, esp_spi, in_ike_auth=True), TrafficSelectorsInitiator(config.tsi),
                     TrafficSelectorsResponder(config.tsr)]
        self._send_request(ExchangeType.IKE_AUTH, payloads,
                           AuthRequest(esp_spi, offered, config.mode, config.tsi, config.tsr),
                           answered_in=State.EXPECT_IKE_AUTH_RESPONSE)

    def _on_ike_auth_response(self, inbound: Inbound) -> Outcome:
        context = inbound.context
        config = self._initiator_config()
        suite, keys = self._ike_keys()
        if not isinstance(context, AuthRequest):
            raise LocalProtocolError("IKE_AUTH response without an IKE_AUTH request")
        auth = inbound.optional(Authentication, "AUTH")
        error = inbound.error_notify()
        if auth is None:
            notify = error.notify_type if error is not None else NotifyType.AUTHENTICATION_FAILED
            raise ErrorNotified(f"IKE_AUTH refused: notify {notify}", received=notify)
        idr = inbound.one(IdentificationResponder, "IDr")
        peer_id = peer_identity(idr.id_type, idr.data)
        if config.responder_id is not None and peer_id != config.responder_id:
            raise AuthenticationFailed(f"IDr: {peer_id}, expected {config.responder_id}")
        octets = signed_octets(suite.prf, self._init_response, self._ni, keys.sk_pr, idr.encode())
        if config.responder_key is not None:
            verify_signature_auth(config.responder_key, auth, octets, accept=config.signature_schemes)
        else:
            verify_mac_auth(null_auth(suite.prf, keys.sk_pr, octets), auth, AuthMethod.NULL)
        child: tuple[ChildSa, ChildSaEstablished] | None = None
        if error is None:
            child = self._accept_child(inbound, context.esp_spi, context.offered, context.mode, context.tsi,
                                       context.tsr, self._ni, self._nr, None)
        # commit
        credential = (PeerCredential(PeerAuth.NULL) if config.responder_key is None
                      else PeerCredential(PeerAuth.PINNED, key_sha256(config.responder_key)))
        self.peer_id, self.peer_auth, self.peer_credential = peer_id, auth.method, credential
        self._established = True
        self._events.append(IkeSaEstablished(self.spi_i, self.spi_r, self.local, self.peer, config.local_id, peer_id,
                                             auth.method, suite, self.nat, False, credential))
        if child is not None:
            self._add_child(*child)
        else:
            self._spis.release(context.esp_spi)
            if error is not None:
                self._events.append(PeerErrorNotified(self.spi_i, self.spi_r, ExchangeType.IKE_AUTH,
                                                      error.notify_type, "Child SA refused"))
        return Outcome.DONE

    def _accept_child(self, inbound: Inbound, esp_spi: bytes, offered: tuple[ChildSuite, ...], mode: Mode,
                      tsi: tuple[TrafficSelector, ...], tsr: tuple[TrafficSelector, ...], ni: bytes, nr: bytes,
                      dh: DiffieHellman | None) -> tuple[ChildSa, ChildSaEstablished]:
        """The initiator's check of a Child SA in a response: a suite we offered, selectors within ours, the mode
        we asked for (the responder may refuse transport, 1.3.1)."""
        _, keys = self._ike_keys()
        suite_ike = self.suite
        if suite_ike is None:
            raise LocalProtocolError("no IKE suite")
        spi_out, suite = accept_esp_choice(inbound.one(SecurityAssociation, "SA"), offered)
        narrowed_i = check_narrowed(tsi, inbound.one(TrafficSelectorsInitiator, "TSi").selectors, "TSi")
        narrowed_r = check_narrowed(tsr, inbound.one(TrafficSelectorsResponder, "TSr").selectors, "TSr")
        transport = inbound.has(NotifyType.USE_TRANSPORT_MODE)
        if transport and mode is not Mode.TRANSPORT:
            raise NoProposalChosen("USE_TRANSPORT_MODE in the response, tunnel mode was asked for")
        shared: bytes | None = None
        if suite.dh_group != DhGroup.NONE:
            ke = inbound.one(KeyExchange, "KE")
            if dh is None or ke.group != dh.group:
                raise NoProposalChosen(f"KE: group {ke.group} was not sent")
            shared = dh.shared_secret(ke.data)
        child_keys = derive_child_keys(suite_ike.prf, keys.sk_d, suite, ni, nr, shared)
        child = ChildSa(esp_spi, spi_out, suite, Mode.TRANSPORT if transport else Mode.TUNNEL, narrowed_i,
                        narrowed_r)
        return child, self._child_event(child, child_keys)

    def _request_child(self, suites: Sequence[ChildSuite], mode: Mode, old: ChildSa | None) -> None:
        config = self._initiator_config()
        if old is not None and old.spi_in not in self.children:
            return  # deleted meanwhile
        nonce = self._random(config.nonce_size)
        group = suites[0].dh_group
        dh = DiffieHellman.generate(group, self._random) if group != DhGroup.NONE else None
        esp_spi = self._spis.esp()
        offered = esp_offer_suites(suites, in_ike_auth=False)
        tsi, tsr = (config.tsi, config.tsr) if old is None else (old.local_ts, old.remote_ts)
        payloads: list[Payload] = []
        if old is not None:
            payloads.append(Notify(NotifyType.REKEY_SA, protocol=ProtocolId.ESP, spi=old.spi_in))
        if mode is Mode.TRANSPORT:
            payloads.append(Notify(NotifyType.USE_TRANSPORT_MODE))
        payloads += [offer_esp(suites, esp_spi, in_ike_auth=False), Nonce(nonce)]
        if dh is not None:
            payloads.append(KeyExchange(dh.group, dh.public_key))
        payloads += [TrafficSelectorsInitiator(tsi), TrafficSelectorsResponder(tsr)]
        self._send_request(ExchangeType.CREATE_CHILD_SA, payloads,
                           ChildRequest(esp_spi, offered, nonce, dh, mode, tsi, tsr, old))

    def _request_ike_rekey(self, suites: Sequence[IkeSuite]) -> None:
        config = self._initiator_config()
        nonce = self._random(config.nonce_size)
        dh = DiffieHellman.generate(suites[0].dh_group, self._random)
        new_spi_i = self._spis.ike()
        payloads = (offer_ike(suites, new_spi_i), Nonce(nonce), KeyExchange(dh.group, dh.public_key))
        self._send_request(ExchangeType.CREATE_CHILD_SA, payloads,
                           IkeRekeyRequest(new_spi_i, tuple(suites), nonce, dh))

    def _on_create_child_sa_response(self, inbound: Inbound) -> Outcome:
        context = inbound.context
        error = inbound.error_notify()
        if error is not None:
            raise ErrorNotified(f"CREATE_CHILD_SA refused: notify {error.notify_type}", received=error.notify_type,
                                data=error.data)
        nr = inbound.one(Nonce, "Nonce").data
        if isinstance(context, IkeRekeyRequest):
            return self._on_ike_rekey_response(inbound, context, nr)
        if not isinstance(context, ChildRequest):
            raise LocalProtocolError("CREATE_CHILD_SA response to another kind of request")
        child, event = self._accept_child(inbound, context.esp_spi, context.offered, context.mode, context.tsi,
                                          context.tsr, context.nonce, nr, context.dh)
        old = context.rekey_of
        if old is None:
            self._add_child(child, event)
            return Outcome.DONE
        self.children[child.spi_in] = child
        self._events.append(ChildSaRekeyed(self.spi_i, self.spi_r, old.spi_in, old.spi_out, event))
        if old.spi_in in self.children:  # RFC 7296 2.8: who rekeyed deletes the old SA
            self._queue.appendleft(Command(f"delete rekeyed Child SA 0x{old.spi_in.hex()}",
                                           lambda: self._request_delete_child(old.spi_in)))
        return Outcome.DONE

    def _on_ike_rekey_response(self, inbound: Inbound, context: IkeRekeyRequest, nr: bytes) -> Outcome:
        old_suite, old_keys = self._ike_keys()
        new_spi_r, suite = accept_ike_choice(inbound.one(SecurityAssociation, "SA"), context.offered,
                                             spi_size=IKE_SPI_SIZE)
        ke = inbound.one(KeyExchange, "KE")
        if ke.group != suite.dh_group or ke.group != context.dh.group or not any(new_spi_r):
            raise NoProposalChosen(f"KE: group {ke.group} does not match the chosen group {suite.dh_group}")
        shared = context.dh.shared_secret(ke.data)
        seed = rekey_skeyseed(old_suite.prf, old_keys.sk_d, shared, context.nonce, nr)
        keys = derive_ike_keys(suite, seed, context.nonce, nr, context.new_spi_i, new_spi_r)
        self._hand_over(Role.INITIATOR, context.new_spi_i, new_spi_r, suite, keys)
        self._queue.clear()
        self._queue.append(Command("delete the rekeyed IKE SA", lambda: self._request_delete_ike("rekeyed")))
        return Outcome.REKEYED
