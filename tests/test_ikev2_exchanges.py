"""The IKE SA state machine, in memory: the test initiator (enclave_ike.ikev2.initiator) against the Responder, with
deterministic randomness and a clock that is just a number (the first rung of the interop ladder).

Every exchange of RFC 7296 that the responder implements is completed here, and both sides must derive the same
Child SA keys (the only keys that leave the core, in the events). The hostile cases check the RFC's answer (or its
silence) and that nothing established moved: `views()` before and after are compared whole."""

import datetime
import hashlib
from ipaddress import IPv4Address

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import NameOID

from enclave_ike.apply import ChildSaTable, DeletePolicy, DeleteSa
from enclave_ike.ikev2 import crypto as c
from enclave_ike.ikev2.config import (
    DnsSelectors,
    Endpoint,
    Identity,
    InitiatorConfig,
    Limits,
    Mode,
    PeerAuth,
    PeerCredential,
    PinnedPeer,
    ResponderConfig,
    Timers,
)
from enclave_ike.ikev2.constants import (
    AuthMethod,
    CertEncoding,
    DhGroup,
    EncrId,
    ExchangeType,
    HashAlgorithm,
    HeaderFlag,
    IntegId,
    NotifyType,
    PayloadType,
    PrfId,
    ProtocolId,
)
from enclave_ike.ikev2.cookies import CookieSecrets, make_cookie, verify_cookie
from enclave_ike.ikev2.errors import PolicyError, TsUnacceptable
from enclave_ike.ikev2.events import (
    ChildSaEstablished,
    ChildSaRekeyed,
    IkeSaEstablished,
    IkeSaRekeyed,
    PeerAlive,
    PeerErrorNotified,
    ProtocolErrorEvent,
    SaDeleted,
    SignatureRequested,
)
from enclave_ike.ikev2.initiator import Initiator, exchange
from enclave_ike.ikev2.initiator_sa import InitiatorSa
from enclave_ike.ikev2.negotiation import narrow_to_dns, offer_esp
from enclave_ike.ikev2.payloads import (
    Authentication,
    Certificate,
    IdentificationResponder,
    Message,
    Nonce,
    Notify,
    TrafficSelector,
    TrafficSelectorsInitiator,
    TrafficSelectorsResponder,
    UnknownPayload,
)
from enclave_ike.ikev2.responder import Responder
from enclave_ike.ikev2.responder_sa import ResponderSa
from enclave_ike.ikev2.state import TRANSITIONS, IkeSa, Outcome, State
from fuzz.generators import seeded
from fuzz.probe import ProbingInitiator

I_END = Endpoint(IPv4Address("10.0.0.1"), 500)
R_END = Endpoint(IPv4Address("10.0.0.53"), 500)
HOST_I = TrafficSelector(I_END.address, I_END.address)
HOST_R = TrafficSelector(R_END.address, R_END.address)
UDP_TO_R = TrafficSelector(R_END.address, R_END.address, 17)
DNS = DnsSelectors((R_END.address,))

GCM256 = c.ChildSuite(EncrId.ENCR_AES_GCM_16, 256)
CBC128 = c.ChildSuite(EncrId.ENCR_AES_CBC, 128, IntegId.AUTH_HMAC_SHA2_256_128)
IKE_X25519 = c.IkeSuite(EncrId.ENCR_AES_GCM_16, 256, PrfId.PRF_HMAC_SHA2_256, IntegId.NONE, DhGroup.CURVE25519)
IKE_P256 = c.IkeSuite(EncrId.ENCR_AES_GCM_16, 256, PrfId.PRF_HMAC_SHA2_256, IntegId.NONE, DhGroup.ECP_256)
IKE_CBC_MODP = c.IkeSuite(EncrId.ENCR_AES_CBC, 128, PrfId.PRF_HMAC_SHA2_384, IntegId.AUTH_HMAC_SHA2_384_192,
                          DhGroup.MODP_2048)

ECDSA_KEY = ec.derive_private_key(0x5EED_0F_0C0FFEE_D15EA5E, ec.SECP256R1())
OTHER_ECDSA_KEY = ec.derive_private_key(0xBAD_C0DE, ec.SECP256R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RESOLVER_ID = Identity.fqdn("resolver.example")
CLIENT_ID = Identity.fqdn("client.example")


def responder(config: ResponderConfig | None = None, seed: bytes = b"responder", **kwargs) -> Responder:
    return Responder(config or ResponderConfig(local_id=Identity.null(), dns=DNS), local=R_END,
                     random=seeded(seed), **kwargs)


def initiator(config: InitiatorConfig | None = None, seed: bytes = b"initiator", now: float = 0.0,
              local: Endpoint = I_END) -> Initiator:
    return Initiator(config or InitiatorConfig(tsi=(HOST_I,), tsr=(UDP_TO_R,)), local=local, peer=R_END,
                     random=seeded(seed), now=now)


def drain(r: Responder) -> list:
    out = []
    while (event := r.next_event()) is not None:
        out.append(event)
    return out


def of(events: list, kind: type) -> list:
    return [e for e in events if isinstance(e, kind)]


def assert_same_child(mine: ChildSaEstablished, theirs: ChildSaEstablished) -> None:
    """Two views of one Child SA: SPIs, selectors and keys crosswise, everything else equal."""
    assert (mine.spi_in, mine.spi_out) == (theirs.spi_out, theirs.spi_in)
    assert (mine.local_ts, mine.remote_ts) == (theirs.remote_ts, theirs.local_ts)
    assert (mine.suite, mine.mode, mine.protocol) == (theirs.suite, theirs.mode, ProtocolId.ESP)
    k, t = mine.keys, theirs.keys
    assert (k.encr_in, k.integ_in, k.encr_out, k.integ_out) == (t.encr_out, t.integ_out, t.encr_in, t.integ_in)
    assert k.encr_in != k.encr_out
    assert len(k.encr_in) == mine.suite.encryption.key_size
    assert len(k.integ_in) == (mine.suite.integrity.key_size if mine.suite.integrity else 0)
    assert k.encr_in.hex() not in repr(mine)


def establish(icfg: InitiatorConfig | None = None, rcfg: ResponderConfig | None = None, **kwargs):
    ini, resp = initiator(icfg), responder(rcfg, **kwargs)
    transcript = exchange(ini, resp, 0.0)
    return ini, resp, ini.events(), drain(resp), transcript


def establish_probing(rcfg: ResponderConfig | None = None) -> tuple[ProbingInitiator, Responder, list]:
    """An established NULL IKE SA whose initiator can also send requests outside the table (fuzz/probe.py)."""
    ini = ProbingInitiator(InitiatorConfig(tsi=(HOST_I,), tsr=(UDP_TO_R,)), local=I_END, peer=R_END,
                           random=seeded(b"initiator"), now=0.0)
    resp = responder(rcfg)
    exchange(ini, resp, 0.0)
    ini.events()
    return ini, resp, drain(resp)


def established_child(ini: Initiator, resp: Responder) -> bytes:
    """The initiator's inbound SPI of its only Child SA."""
    (spi,) = ini.sa.children
    return spi


def message(data: bytes) -> Message:
    return Message.decode(data)


# --- the table ---

def test_transition_table_is_data_and_complete():
    """Every state but DELETED has entries; every entry maps REFUSED; the responder's half and the requester's
    half are both there."""
    states = {state for state, _, _ in TRANSITIONS}
    assert states == set(State) - {State.DELETED}
    for key, transition in TRANSITIONS.items():
        assert Outcome.REFUSED in transition.next_state, key
    assert (State.EXPECT_IKE_SA_INIT, ExchangeType.IKE_SA_INIT, True) in TRANSITIONS
    assert (State.ESTABLISHED, ExchangeType.IKE_SA_INIT, True) not in TRANSITIONS


def test_every_handler_in_the_table_belongs_to_a_role():
    """The table names handlers; each resolves on the shared core or on exactly the role that takes it: the
    responder's IKE_SA_INIT, IKE_AUTH and CREATE_CHILD_SA answers, the initiator's responses to its requests."""
    for key, transition in TRANSITIONS.items():
        on_responder, on_initiator = hasattr(ResponderSa, transition.handler), hasattr(InitiatorSa, transition.handler)
        assert on_responder or on_initiator, key
        shared = hasattr(IkeSa, transition.handler)
        if not shared:
            assert on_responder != on_initiator, key
    assert not hasattr(InitiatorSa, "_answer_ike_auth") and not hasattr(ResponderSa, "_on_ike_auth_response")
    assert not hasattr(IkeSa, "send_custom_request")  # probing lives in fuzz/probe.py, outside production


def test_commands_waiting_for_the_outstanding_request_are_in_the_view():
    ini, resp, *_ = establish()
    child = established_child(ini, resp)
    ini.check_liveness(1.0)
    ini.rekey_child_sa(1.0, child)
    ini.delete(1.0)
    queued = ini.sa.view().queued
    assert queued == (f"rekey Child SA 0x{child.hex()}", "delete IKE SA (deleted locally)")
    exchange(ini, resp, 1.0)
    assert ini.sa.view().queued == () and ini.sa.state is State.DELETED


# --- IKE_SA_INIT and IKE_AUTH ---

def test_null_auth_completes_and_narrows_the_child_to_udp53():
    ini, resp, i_events, r_events, transcript = establish()
    assert [d.direction for d in transcript] == ["i->r", "r->i", "i->r", "r->i"]
    (i_ike,) = of(i_events, IkeSaEstablished)
    (r_ike,) = of(r_events, IkeSaEstablished)
    assert (i_ike.ike_spi_i, i_ike.ike_spi_r) == (r_ike.ike_spi_i, r_ike.ike_spi_r)
    assert r_ike.peer_auth == i_ike.peer_auth == AuthMethod.NULL
    assert r_ike.peer_id == Identity.null() and r_ike.peer == I_END and r_ike.initial_contact
    assert r_ike.suite == i_ike.suite and r_ike.nat.detected is False
    (i_child,) = of(i_events, ChildSaEstablished)
    (r_child,) = of(r_events, ChildSaEstablished)
    assert_same_child(i_child, r_child)
    assert r_child.local_ts == (TrafficSelector(R_END.address, R_END.address, 17, 53, 53),)
    assert r_child.remote_ts == (TrafficSelector(I_END.address, I_END.address, 17),)
    assert r_child.mode is Mode.TRANSPORT and not r_child.udp_encapsulation
    assert ini.sa.state is State.ESTABLISHED and len(resp) == 1 and resp.half_open == 0


def test_any_protocol_is_narrowed_to_udp53_and_tcp53():
    _, _, i_events, r_events, _ = establish(InitiatorConfig(tsi=(HOST_I,), tsr=(HOST_R,)))
    (r_child,) = of(r_events, ChildSaEstablished)
    assert r_child.local_ts == (TrafficSelector(R_END.address, R_END.address, 17, 53, 53),
                                TrafficSelector(R_END.address, R_END.address, 6, 53, 53))
    assert r_child.remote_ts == (TrafficSelector(I_END.address, I_END.address, 17),
                                 TrafficSelector(I_END.address, I_END.address, 6))
    assert_same_child(of(i_events, ChildSaEstablished)[0], r_child)


def test_a_wide_initiator_proposal_is_narrowed_to_its_own_address():
    everything = TrafficSelector(IPv4Address("0.0.0.0"), IPv4Address("255.255.255.255"))
    tsi, tsr = narrow_to_dns((everything,), (everything,), DNS, I_END.address, peer_behind_nat=False)
    assert tsi == (TrafficSelector(I_END.address, I_END.address, 17), TrafficSelector(I_END.address, I_END.address, 6))
    assert tsr == DNS.selectors()
    udp_from_i = TrafficSelector(I_END.address, I_END.address, 17)
    tsi, tsr = narrow_to_dns((udp_from_i,), (everything,), DNS, I_END.address, peer_behind_nat=False)
    assert tsi == (udp_from_i,) and tsr == (TrafficSelector(R_END.address, R_END.address, 17, 53, 53),)
    with pytest.raises(TsUnacceptable):
        narrow_to_dns((everything,), (TrafficSelector(R_END.address, R_END.address, 17, 80, 80),), DNS,
                      I_END.address, peer_behind_nat=False)
    with pytest.raises(TsUnacceptable):  # the initiator's side must be its own address
        narrow_to_dns((TrafficSelector(IPv4Address("10.7.7.7"), IPv4Address("10.7.7.7")),), (everything,), DNS,
                      I_END.address, peer_behind_nat=False)
    with pytest.raises(TsUnacceptable):  # no range from behind a NAT
        narrow_to_dns((everything,), (everything,), DNS, I_END.address, peer_behind_nat=True)


@pytest.mark.parametrize("responder_key, initiator_key", [
    (ECDSA_KEY, None), (RSA_KEY, None), (ECDSA_KEY, ECDSA_KEY), (ECDSA_KEY, RSA_KEY), (RSA_KEY, ECDSA_KEY),
], ids=["ecdsa-resp/null-init", "rsapss-resp/null-init", "ecdsa-both", "ecdsa-resp/rsapss-init",
        "rsapss-resp/ecdsa-init"])
def test_rfc7427_signatures(responder_key, initiator_key):
    rcfg = ResponderConfig(local_id=RESOLVER_ID, dns=DNS, signer=c.SoftwareSigner(responder_key),
                           anonymous=frozenset({PeerAuth.NULL}) if initiator_key is None else frozenset(),
                           peer_keys=() if initiator_key is None else (
                               PinnedPeer(CLIENT_ID, initiator_key.public_key()),))
    icfg = InitiatorConfig(tsi=(HOST_I,), tsr=(UDP_TO_R,), responder_key=responder_key.public_key(),
                           responder_id=RESOLVER_ID,
                           local_id=Identity.null() if initiator_key is None else CLIENT_ID,
                           signer=None if initiator_key is None else c.SoftwareSigner(initiator_key))
    _, _, i_events, r_events, transcript = establish(icfg, rcfg)
    (i_ike,) = of(i_events, IkeSaEstablished)
    (r_ike,) = of(r_events, IkeSaEstablished)
    assert i_ike.peer_auth == AuthMethod.DIGITAL_SIGNATURE and i_ike.peer_id == RESOLVER_ID
    assert r_ike.peer_auth == (AuthMethod.NULL if initiator_key is None else AuthMethod.DIGITAL_SIGNATURE)
    assert_same_child(of(i_events, ChildSaEstablished)[0], of(r_events, ChildSaEstablished)[0])
    init_response = message(transcript[1].data)
    hashes = [n for n in init_response.find_all(Notify) if n.notify_type == NotifyType.SIGNATURE_HASH_ALGORITHMS]
    assert len(hashes) == 1


def test_wrong_pinned_key_fails_authentication_and_leaves_no_state():
    rcfg = ResponderConfig(local_id=Identity.null(), dns=DNS, anonymous=frozenset(),
                           peer_keys=(PinnedPeer(CLIENT_ID, OTHER_ECDSA_KEY.public_key()),))
    icfg = InitiatorConfig(tsi=(HOST_I,), tsr=(UDP_TO_R,), local_id=CLIENT_ID, signer=c.SoftwareSigner(ECDSA_KEY))
    ini, resp, i_events, r_events, _ = establish(icfg, rcfg)
    assert [e.notify for e in of(i_events, PeerErrorNotified)] == [NotifyType.AUTHENTICATION_FAILED]
    assert [e.answered for e in of(r_events, ProtocolErrorEvent)] == [NotifyType.AUTHENTICATION_FAILED]
    assert not of(r_events, IkeSaEstablished) and len(resp) == 0
    assert ini.sa.state is State.DELETED


def test_null_initiator_refused_where_null_is_not_allowed():
    rcfg = ResponderConfig(local_id=Identity.null(), dns=DNS, anonymous=frozenset(),
                           peer_keys=(PinnedPeer(CLIENT_ID, ECDSA_KEY.public_key()),))
    _, resp, i_events, _, _ = establish(rcfg=rcfg)
    assert [e.notify for e in of(i_events, PeerErrorNotified)] == [NotifyType.AUTHENTICATION_FAILED]
    assert len(resp) == 0


def test_initiator_refuses_a_responder_with_the_wrong_key():
    rcfg = ResponderConfig(local_id=RESOLVER_ID, dns=DNS, signer=c.SoftwareSigner(OTHER_ECDSA_KEY))
    icfg = InitiatorConfig(tsi=(HOST_I,), tsr=(UDP_TO_R,), responder_key=ECDSA_KEY.public_key())
    ini, _, i_events, _, _ = establish(icfg, rcfg)
    assert not of(i_events, IkeSaEstablished)
    assert ini.sa.state is State.DELETED
    assert "does not verify" in of(i_events, ProtocolErrorEvent)[0].detail


# --- RFC 7427: the hash of our AUTH is one the peer listed ---

class OneSchemeSigner(c.Signer):
    """A key that signs with one scheme only, whatever the peer listed (to play an initiator that ignores us)."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, scheme: c.SignatureScheme) -> None:
        self._key, self._scheme = key, scheme

    @property
    def schemes(self) -> tuple[c.SignatureScheme, ...]:
        return (self._scheme,)

    def sign(self, data: bytes, scheme: c.SignatureScheme) -> bytes:
        return self._key.sign(data, ec.ECDSA(scheme.hasher()))

    def public_key(self) -> c.PublicKey:
        return self._key.public_key()


SHA1_ONLY = c.SignatureScheme("sha1 (listed, never used)", b"\x30\x00", HashAlgorithm.SHA1, "ecdsa")
"""Makes the test initiator list SHA-1 alone in SIGNATURE_HASH_ALGORITHMS."""
ASN1 = {  # RFC 7427 appendix A (ECDSA) and RFC 4055 (PSS with MGF1 of the same hash, salt = digest length)
    c.ECDSA_SHA256: "300a06082a8648ce3d040302", c.ECDSA_SHA384: "300a06082a8648ce3d040303",
    c.ECDSA_SHA512: "300a06082a8648ce3d040304",
    c.RSA_PSS_SHA384: "304606092a864886f70d01010a3039a00f300d06096086480165030402020500a11c301a06092a864886f70d"
                      "010108300d06096086480165030402020500a203020130a303020101",
}


def responder_auth(ini: Initiator, transcript) -> tuple[Authentication, bytes]:
    """The responder's AUTH payload, decrypted from its IKE_AUTH response, and the octets it must sign."""
    _, payloads = c.decrypt_message(ini.sa._in, transcript[3].data)
    (auth,) = [p for p in payloads if isinstance(p, Authentication)]
    (idr,) = [p for p in payloads if isinstance(p, IdentificationResponder)]
    octets = c.signed_octets(ini.sa.suite.prf, transcript[1].data, ini.sa._ni, ini.sa._keys.sk_pr, idr.encode())
    return auth, octets


def signature_config(key, peer_schemes=c.SIGNATURE_SCHEMES, *, announce=True):
    rcfg = ResponderConfig(local_id=RESOLVER_ID, dns=DNS, signer=c.SoftwareSigner(key))
    icfg = InitiatorConfig(tsi=(HOST_I,), tsr=(UDP_TO_R,), responder_key=key.public_key(), responder_id=RESOLVER_ID,
                           signature_schemes=peer_schemes, announce_hashes=announce)
    return icfg, rcfg


@pytest.mark.parametrize("key, peer_schemes, announce, chosen", [
    (ECDSA_KEY, (c.ECDSA_SHA384,), True, c.ECDSA_SHA384),
    (ECDSA_KEY, (c.ECDSA_SHA512,), True, c.ECDSA_SHA512),
    (ECDSA_KEY, (c.ECDSA_SHA256, c.ECDSA_SHA384), True, c.ECDSA_SHA256),  # P-256's own hash first
    (ECDSA_KEY, (c.ECDSA_SHA384, c.ECDSA_SHA512), True, c.ECDSA_SHA512),  # then the strongest
    (ECDSA_KEY, c.SIGNATURE_SCHEMES, False, c.ECDSA_SHA256),  # no notify: the key's own, as before RFC 7427
    (RSA_KEY, (c.RSA_PSS_SHA384,), True, c.RSA_PSS_SHA384),
    (RSA_KEY, c.SIGNATURE_SCHEMES, True, c.RSA_PSS_SHA256),
], ids=["p256/384", "p256/512", "p256/256+384", "p256/384+512", "p256/no-notify", "rsa/384", "rsa/all"])
def test_our_auth_uses_a_hash_the_peer_listed(key, peer_schemes, announce, chosen):
    icfg, rcfg = signature_config(key, peer_schemes, announce=announce)
    ini, resp, i_events, _, transcript = establish(icfg, rcfg)
    init_request = message(transcript[0].data)
    listed = [n for n in init_request.find_all(Notify) if n.notify_type == NotifyType.SIGNATURE_HASH_ALGORITHMS]
    assert len(listed) == announce
    assert resp.views()[0].state is State.ESTABLISHED and of(i_events, IkeSaEstablished)
    auth, octets = responder_auth(ini, transcript)
    assert auth.method == AuthMethod.DIGITAL_SIGNATURE
    length = auth.data[0]
    assert auth.data[1:1 + length] == chosen.identifier
    if chosen in ASN1:
        assert chosen.identifier == bytes.fromhex(ASN1[chosen])
    signature = auth.data[1 + length:]
    digest = {HashAlgorithm.SHA2_256: hashes.SHA256(), HashAlgorithm.SHA2_384: hashes.SHA384(),
              HashAlgorithm.SHA2_512: hashes.SHA512()}[chosen.hash_algorithm]
    if isinstance(key, ec.EllipticCurvePrivateKey):
        key.public_key().verify(signature, octets, ec.ECDSA(digest))
    else:
        key.public_key().verify(signature, octets, padding.PSS(padding.MGF1(digest), digest.digest_size), digest)


@pytest.mark.parametrize("listed", [(SHA1_ONLY,), (c.RSA_PSS_SHA256, SHA1_ONLY)], ids=["sha1", "sha1+pss256"])
def test_no_hash_we_can_sign_with_is_authentication_failed(listed):
    """An ECDSA key can sign SHA-256 for an RSA-only peer too (the hash is what is listed, not the key type); only
    a list without SHA-2 leaves nothing: AUTHENTICATION_FAILED in the IKE_AUTH response, one line naming the list."""
    icfg, rcfg = signature_config(ECDSA_KEY, listed)
    ini, resp, i_events, r_events, _ = establish(icfg, rcfg)
    if len(listed) == 2:  # SHA-256 is listed: ecdsa-with-SHA256, which this initiator then refuses to verify
        assert len(resp) == 1 and ini.sa.state is State.DELETED
        return
    (error,) = of(r_events, ProtocolErrorEvent)
    assert error.answered == NotifyType.AUTHENTICATION_FAILED
    assert "lists SHA1" in error.detail and "SHA2_256, SHA2_512, SHA2_384" in error.detail
    assert not of(r_events, IkeSaEstablished) and not of(r_events, ChildSaEstablished) and len(resp) == 0
    assert [e.notify for e in of(i_events, PeerErrorNotified)] == [NotifyType.AUTHENTICATION_FAILED]


def test_a_malformed_hash_list_in_ike_sa_init_is_dropped():
    """An odd number of octets is no list of 16-bit numbers: a DecodeError, which IKE_SA_INIT may not answer
    (INVALID_SYNTAX only inside SK), so nothing is answered and nothing kept."""
    def odd_list(direction: str, data: bytes) -> bytes:
        m = message(data)
        if direction != "i->r" or m.header.exchange != ExchangeType.IKE_SA_INIT:
            return data
        payloads = tuple(Notify(NotifyType.SIGNATURE_HASH_ALGORITHMS, b"\x00\x02\x00")
                         if isinstance(p, Notify) and p.notify_type == NotifyType.SIGNATURE_HASH_ALGORITHMS else p
                         for p in m.payloads)
        return Message(m.header, payloads).encode()
    icfg, rcfg = signature_config(ECDSA_KEY)
    ini, resp = initiator(icfg), responder(rcfg)
    transcript = exchange(ini, resp, 0.0, intercept=odd_list)
    assert [d.direction for d in transcript] == ["i->r"] and len(resp) == 0


def test_the_signer_refuses_a_scheme_of_another_key_type():
    with pytest.raises(c.UnsupportedAlgorithm):
        c.SoftwareSigner(ECDSA_KEY).sign(b"x", c.RSA_PSS_SHA256)
    assert c.choose_scheme(c.SoftwareSigner(ECDSA_KEY), (HashAlgorithm.IDENTITY, HashAlgorithm.SHA2_384)) \
        == c.ECDSA_SHA384
    assert c.choose_scheme(c.SoftwareSigner(ECDSA_KEY), None) == c.ECDSA_SHA256


def test_a_peer_auth_under_a_hash_we_did_not_announce_is_refused():
    rcfg = ResponderConfig(local_id=Identity.null(), dns=DNS, anonymous=frozenset(),
                           signature_schemes=(c.ECDSA_SHA256,),
                           peer_keys=(PinnedPeer(CLIENT_ID, OTHER_ECDSA_KEY.public_key()),))
    icfg = InitiatorConfig(tsi=(HOST_I,), tsr=(UDP_TO_R,), local_id=CLIENT_ID,
                           signer=OneSchemeSigner(OTHER_ECDSA_KEY, c.ECDSA_SHA384))
    ini, resp, _, r_events, transcript = establish(icfg, rcfg)
    (notify,) = [n for n in message(transcript[1].data).find_all(Notify)
                 if n.notify_type == NotifyType.SIGNATURE_HASH_ALGORITHMS]
    assert notify.data == bytes([0, 2])  # we announced SHA2-256 only
    (error,) = of(r_events, ProtocolErrorEvent)
    assert error.answered == NotifyType.AUTHENTICATION_FAILED
    assert "SHA2_384 is not among the hashes we announced (SHA2_256)" in error.detail
    assert len(resp) == 0 and ini.sa.state is State.DELETED
    # the same initiator with SHA-256 is accepted
    icfg = InitiatorConfig(tsi=(HOST_I,), tsr=(UDP_TO_R,), local_id=CLIENT_ID,
                           signer=OneSchemeSigner(OTHER_ECDSA_KEY, c.ECDSA_SHA256))
    _, resp, _, r_events, _ = establish(icfg, rcfg)
    assert of(r_events, IkeSaEstablished)[0].peer_auth == AuthMethod.DIGITAL_SIGNATURE


# --- RFC 7296 2.21.2: the initiator refuses our AUTH afterwards ---

@pytest.mark.parametrize("notify_type", [NotifyType.AUTHENTICATION_FAILED, NotifyType.INVALID_SYNTAX, 8191],
                         ids=["authentication-failed", "invalid-syntax", "unknown-error"])
def test_an_error_notify_in_informational_tears_the_sa_down(notify_type):
    ini, resp, r_events = establish_probing()
    ini.create_child_sa(1.0)
    exchange(ini, resp, 1.0)
    r_events += drain(resp)
    table = ChildSaTable()
    for event in r_events:
        table.plan(event)
    assert len(table) == 2 and len(resp.views()[0].children) == 2
    ini.probe(2.0, ExchangeType.INFORMATIONAL, [Notify(notify_type)])
    transcript = exchange(ini, resp, 2.0)
    assert [d.direction for d in transcript] == ["i->r", "r->i"]
    (answer,) = ini.answers()
    assert answer.payloads == ()  # an empty INFORMATIONAL response
    deleted = of(drain(resp), SaDeleted)
    assert [e.protocol for e in deleted] == [ProtocolId.ESP, ProtocolId.ESP, ProtocolId.IKE]
    assert "in an INFORMATIONAL request" in deleted[-1].reason
    if notify_type == NotifyType.AUTHENTICATION_FAILED:
        assert deleted[-1].reason == ("the peer reported AUTHENTICATION_FAILED (24) in an INFORMATIONAL request: "
                                      "it refused our AUTH")
    assert len(resp) == 0 and not resp.views()
    operations = [op for event in deleted for op in table.plan(event)]
    assert len(table) == 0
    assert sum(isinstance(op, DeleteSa) for op in operations) == 4
    assert any(isinstance(op, DeletePolicy) for op in operations)


def test_a_status_notify_in_informational_changes_nothing():
    ini, resp, _ = establish_probing()
    before = resp.views()[0]
    ini.probe(2.0, ExchangeType.INFORMATIONAL, [Notify(40000), Notify(NotifyType.INITIAL_CONTACT)])
    exchange(ini, resp, 2.0)
    after = resp.views()[0]
    assert ini.answers()[0].payloads == ()
    assert after.state is State.ESTABLISHED and after.children == before.children
    assert not of(drain(resp), SaDeleted)


def test_invalid_ke_payload_retry():
    """The initiator guesses Curve25519; the responder takes only P-256 and says so; the retry completes."""
    rcfg = ResponderConfig(local_id=Identity.null(), dns=DNS, ike_suites=(IKE_P256,))
    icfg = InitiatorConfig(tsi=(HOST_I,), tsr=(UDP_TO_R,), ike_suites=(IKE_X25519, IKE_P256))
    _, _, i_events, r_events, transcript = establish(icfg, rcfg)
    assert len(transcript) == 6
    answer = message(transcript[1].data)
    (notify,) = answer.find_all(Notify)
    assert notify.notify_type == NotifyType.INVALID_KE_PAYLOAD and notify.data == (19).to_bytes(2, "big")
    assert answer.header.spi_r == bytes(8)  # no state for a refused IKE_SA_INIT
    assert of(i_events, IkeSaEstablished)[0].suite == IKE_P256
    assert [e.answered for e in of(r_events, ProtocolErrorEvent)] == [NotifyType.INVALID_KE_PAYLOAD]
    assert_same_child(of(i_events, ChildSaEstablished)[0], of(r_events, ChildSaEstablished)[0])


def test_a_guess_the_responder_accepts_needs_no_retry():
    icfg = InitiatorConfig(tsi=(HOST_I,), tsr=(UDP_TO_R,), ike_suites=(IKE_X25519, IKE_P256),
                           first_group=DhGroup.ECP_256)
    _, _, i_events, _, transcript = establish(icfg)
    assert len(transcript) == 4 and of(i_events, IkeSaEstablished)[0].suite == IKE_P256


def test_cbc_hmac_and_modp_2048():
    rcfg = ResponderConfig(local_id=Identity.null(), dns=DNS, esp_suites=(CBC128,))
    icfg = InitiatorConfig(tsi=(HOST_I,), tsr=(UDP_TO_R,), ike_suites=(IKE_CBC_MODP,), esp_suites=(CBC128,))
    _, _, i_events, r_events, _ = establish(icfg, rcfg)
    assert of(r_events, IkeSaEstablished)[0].suite == IKE_CBC_MODP
    assert_same_child(of(i_events, ChildSaEstablished)[0], of(r_events, ChildSaEstablished)[0])


def test_no_proposal_chosen():
    rcfg = ResponderConfig(local_id=Identity.null(), dns=DNS, ike_suites=(IKE_P256,))
    icfg = InitiatorConfig(tsi=(HOST_I,), tsr=(UDP_TO_R,), ike_suites=(IKE_CBC_MODP,))
    ini, resp, i_events, _, transcript = establish(icfg, rcfg)
    assert len(transcript) == 2 and len(resp) == 0
    assert [e.notify for e in of(i_events, PeerErrorNotified)] == [NotifyType.NO_PROPOSAL_CHOSEN]
    assert ini.sa.state is State.DELETED


def test_cookie_round():
    """cookie_threshold 0: every IKE_SA_INIT needs a cookie. The first answer is a stateless COOKIE; the retry with
    it as the first payload completes."""
    rcfg = ResponderConfig(local_id=Identity.null(), dns=DNS, limits=Limits(cookie_threshold=0))
    ini, resp = initiator(), responder(rcfg)
    first = ini.datagrams_to_send()
    resp.receive(first[0][0], I_END, 0.0)
    assert len(resp) == 0 and resp.cookies_sent == 1
    ((cookie_answer, to),) = resp.datagrams_to_send()
    assert to == I_END
    answer = message(cookie_answer)
    assert answer.header.spi_r == bytes(8) and answer.header.flags == HeaderFlag.RESPONSE
    (cookie,) = answer.find_all(Notify)
    assert cookie.notify_type == NotifyType.COOKIE and len(cookie.data) == 33
    ini.receive(cookie_answer, R_END, 0.0)
    transcript = exchange(ini, resp, 0.0)
    retry = message(transcript[0].data)
    assert retry.payloads[0] == cookie
    assert retry.header.spi_i == message(first[0][0]).header.spi_i
    assert of(ini.events(), ChildSaEstablished) and resp.cookies_sent == 1


def test_cookie_then_invalid_ke_keeps_the_cookie():
    rcfg = ResponderConfig(local_id=Identity.null(), dns=DNS, ike_suites=(IKE_P256,),
                           limits=Limits(cookie_threshold=0))
    icfg = InitiatorConfig(tsi=(HOST_I,), tsr=(UDP_TO_R,), ike_suites=(IKE_X25519, IKE_P256))
    _, _, i_events, _, transcript = establish(icfg, rcfg)
    answers = [[n.notify_type for n in message(d.data).find_all(Notify)] for d in transcript[1:4:2]]
    assert answers == [[NotifyType.COOKIE], [NotifyType.INVALID_KE_PAYLOAD]]
    cookie = message(transcript[1].data).payloads[0]
    assert message(transcript[2].data).payloads[0] == cookie == message(transcript[4].data).payloads[0]
    assert of(i_events, IkeSaEstablished)


def test_cookies_are_demanded_past_the_half_open_threshold():
    rcfg = ResponderConfig(local_id=Identity.null(), dns=DNS, limits=Limits(cookie_threshold=2))
    resp = responder(rcfg)
    for n in range(3):
        ini = initiator(seed=b"i%d" % n, local=Endpoint(IPv4Address(f"10.0.1.{n}"), 500))
        resp.receive(ini.datagrams_to_send()[0][0], ini.local, 0.0)
    assert resp.half_open == 2 and resp.cookies_sent == 1 and resp.demanding_cookies


def test_cookie_function_is_stateless_and_rotates():
    secrets = CookieSecrets(b"s" * 32)
    args = (b"n" * 32, IPv4Address("192.0.2.1"), b"\x01" * 8)
    cookie = make_cookie(secrets, *args)
    assert cookie == make_cookie(CookieSecrets(b"s" * 32), *args) and verify_cookie(secrets, cookie, *args)
    assert not verify_cookie(secrets, cookie, b"m" * 32, *args[1:])
    assert not verify_cookie(secrets, cookie, args[0], IPv4Address("192.0.2.2"), args[2])
    rotated = secrets.rotate(b"t" * 32)
    assert verify_cookie(rotated, cookie, *args)
    assert not verify_cookie(rotated.rotate(b"u" * 32), cookie, *args)
    assert not verify_cookie(secrets, cookie[:-1], *args)


def test_half_open_limits_per_peer():
    rcfg = ResponderConfig(local_id=Identity.null(), dns=DNS, limits=Limits(max_half_open_per_peer=2))
    resp = responder(rcfg)
    for n in range(3):
        resp.receive(initiator(seed=b"i%d" % n).datagrams_to_send()[0][0], I_END, 0.0)
    assert resp.half_open == 2 and len(resp.datagrams_to_send()) == 2 and resp.dropped == 1


def test_half_open_sa_expires():
    ini, resp = initiator(), responder()
    resp.receive(ini.datagrams_to_send()[0][0], I_END, 0.0)
    assert resp.half_open == 1 and resp.get_timer() == 30.0
    resp.handle_timer(29.9)
    assert len(resp) == 1
    resp.handle_timer(30.0)
    assert len(resp) == 0 and resp.get_timer() is None and not drain(resp)


def test_ike_sa_init_retransmission_gets_the_cached_answer():
    ini, resp = initiator(), responder()
    request = ini.datagrams_to_send()[0][0]
    resp.receive(request, I_END, 0.0)
    ((answer, _),) = resp.datagrams_to_send()
    resp.receive(request, I_END, 0.5)
    assert resp.datagrams_to_send() == [(answer, I_END)] and len(resp) == 1
    altered = Message.decode(request)
    other = Message(altered.header, altered.payloads[:-1]).encode()  # same SPIi and ID, different content
    resp.receive(other, I_END, 0.6)
    assert resp.datagrams_to_send() == [] and len(resp) == 1


def test_initiator_retransmits_and_the_responder_answers_from_its_cache():
    ini, resp = initiator(), responder()
    lost = []

    def lose_auth_answer(direction, data):
        if direction == "r->i" and message(data).header.exchange == ExchangeType.IKE_AUTH and not lost:
            lost.append(data)
            return None
        return data
    transcript = exchange(ini, resp, 0.0, intercept=lose_auth_answer)
    assert ini.sa.state is State.EXPECT_IKE_AUTH_RESPONSE and ini.get_timer() == 0.5
    ini.handle_timer(0.5)
    ((again, _),) = ini.datagrams_to_send()
    assert again == transcript[-1].data
    resp.receive(again, I_END, 0.5)
    assert resp.datagrams_to_send() == [(lost[0], I_END)]
    ini.receive(lost[0], R_END, 0.5)
    assert ini.sa.state is State.ESTABLISHED


def test_initiator_gives_up():
    icfg = InitiatorConfig(tsi=(HOST_I,), tsr=(UDP_TO_R,), timers=Timers(retransmit=1.0, retransmit_tries=3))
    ini = initiator(icfg)
    sent = [ini.datagrams_to_send()]
    for now in (1.0, 3.0):
        ini.handle_timer(now)
        sent.append(ini.datagrams_to_send())
    assert ini.get_timer() == 7.0 and len({s[0][0] for s in sent}) == 1
    ini.handle_timer(7.0)
    assert ini.sa.state is State.DELETED and ini.get_timer() is None


def test_nat_is_detected_and_the_inner_address_is_used():
    inner = Endpoint(IPv4Address("192.168.1.10"), 500)
    outside = Endpoint(IPv4Address("203.0.113.7"), 40000)
    ini = initiator(InitiatorConfig(tsi=(TrafficSelector(inner.address, inner.address),), tsr=(UDP_TO_R,)),
                    local=inner)
    resp = responder()
    exchange(ini, resp, 0.0, seen_as=outside)
    r_events = drain(resp)
    (r_ike,) = of(r_events, IkeSaEstablished)
    assert r_ike.nat.peer_behind_nat and not r_ike.nat.local_behind_nat and r_ike.peer == outside
    (i_ike,) = of(ini.events(), IkeSaEstablished)
    assert i_ike.nat.local_behind_nat and not i_ike.nat.peer_behind_nat
    (r_child,) = of(r_events, ChildSaEstablished)
    assert r_child.udp_encapsulation and r_child.remote_ts == (TrafficSelector(inner.address, inner.address, 17),)


# --- transport and tunnel mode, refused Child SAs ---

def test_tunnel_mode_when_asked():
    _, _, i_events, r_events, _ = establish(InitiatorConfig(tsi=(HOST_I,), tsr=(UDP_TO_R,), mode=Mode.TUNNEL))
    assert of(r_events, ChildSaEstablished)[0].mode is Mode.TUNNEL
    assert_same_child(of(i_events, ChildSaEstablished)[0], of(r_events, ChildSaEstablished)[0])


def test_transport_refused_by_a_tunnel_only_responder_gives_tunnel():
    rcfg = ResponderConfig(local_id=Identity.null(), dns=DNS, modes=frozenset({Mode.TUNNEL}))
    _, _, i_events, r_events, _ = establish(rcfg=rcfg)
    assert of(i_events, ChildSaEstablished)[0].mode is Mode.TUNNEL
    assert_same_child(of(i_events, ChildSaEstablished)[0], of(r_events, ChildSaEstablished)[0])


@pytest.mark.parametrize("icfg, rcfg, notify", [
    (InitiatorConfig(tsi=(HOST_I,), tsr=(UDP_TO_R,), mode=Mode.TUNNEL),
     ResponderConfig(local_id=Identity.null(), dns=DNS, modes=frozenset({Mode.TRANSPORT})),
     NotifyType.NO_PROPOSAL_CHOSEN),
    (InitiatorConfig(tsi=(HOST_I,), tsr=(TrafficSelector(IPv4Address("10.9.9.9"), IPv4Address("10.9.9.9")),)),
     None, NotifyType.TS_UNACCEPTABLE),
    (InitiatorConfig(tsi=(HOST_I,), tsr=(UDP_TO_R,), esp_suites=(CBC128,)),
     ResponderConfig(local_id=Identity.null(), dns=DNS, esp_suites=(GCM256,)), NotifyType.NO_PROPOSAL_CHOSEN),
], ids=["tunnel-to-transport-only", "not-dns", "no-esp-proposal"])
def test_a_refused_child_sa_still_establishes_the_ike_sa(icfg, rcfg, notify):
    """RFC 7296 2.21.2: the IKE SA comes up, the Child SA does not; both sides say why."""
    ini, resp, i_events, r_events, _ = establish(icfg, rcfg)
    assert of(i_events, IkeSaEstablished) and of(r_events, IkeSaEstablished)
    assert not of(i_events, ChildSaEstablished) and not of(r_events, ChildSaEstablished)
    assert [e.notify for e in of(i_events, PeerErrorNotified)] == [notify]
    assert [e.answered for e in of(r_events, ProtocolErrorEvent)] == [notify]
    assert ini.sa.state is State.ESTABLISHED and not ini.sa.children and not resp.views()[0].children


# --- CREATE_CHILD_SA ---

def test_create_child_sa_without_and_with_pfs():
    ini, resp, *_ = establish()
    for suites in ((GCM256,), (c.ChildSuite(EncrId.ENCR_AES_GCM_16, 256, dh_group=DhGroup.ECP_256),)):
        ini.create_child_sa(1.0, esp_suites=suites)
        transcript = exchange(ini, resp, 1.0)
        assert len(transcript) == 2
        (i_child,) = of(ini.events(), ChildSaEstablished)
        (r_child,) = of(drain(resp), ChildSaEstablished)
        assert_same_child(i_child, r_child)
        assert r_child.suite == suites[0]
    assert len(ini.sa.children) == 3 and len(resp.views()[0].children) == 3


def test_child_sas_per_ike_sa_are_bounded_but_rekeys_still_answered():
    rcfg = ResponderConfig(local_id=Identity.null(), dns=DNS, limits=Limits(max_child_sas=2))
    ini, resp, *_ = establish(rcfg=rcfg)
    ini.create_child_sa(1.0, esp_suites=(GCM256,))
    exchange(ini, resp, 1.0)
    assert len(resp.views()[0].children) == 2
    drain(resp)
    ini.create_child_sa(2.0, esp_suites=(GCM256,))
    exchange(ini, resp, 2.0)
    assert [e.notify for e in of(ini.events(), PeerErrorNotified)] == [NotifyType.NO_ADDITIONAL_SAS]
    assert len(resp.views()[0].children) == 2 and not of(drain(resp), ChildSaEstablished)
    ini.rekey_child_sa(3.0, next(iter(ini.sa.children)))
    exchange(ini, resp, 3.0)
    assert len(of(drain(resp), ChildSaRekeyed)) == 1 and len(resp.views()[0].children) == 2


def rekey_payloads(ini: ProbingInitiator, old_spi: bytes, new_spi: bytes) -> list:
    """A CREATE_CHILD_SA rekey of the Child SA the initiator receives on with `old_spi`, its new one `new_spi`."""
    (child,) = list(ini.sa.children.values())[:1]
    return [Notify(NotifyType.REKEY_SA, protocol=ProtocolId.ESP, spi=old_spi),
            offer_esp(ini.config.esp_suites, new_spi, in_ike_auth=False), Nonce(b"n" * 32),
            TrafficSelectorsInitiator(child.local_ts), TrafficSelectorsResponder(child.remote_ts)]


def test_rekeys_without_deletes_cannot_grow_the_child_sas_without_bound():
    """A rekeyed Child SA stays until the peer deletes it: rekeying along a chain, or the same one again, without
    ever deleting is refused once max_child_sas rekeyed ones wait (adversarial review: 40 rekeys of one Child SA
    left 41 Child SAs and 80 kernel SAs)."""
    ini, resp, _ = establish_probing(ResponderConfig(local_id=Identity.null(), dns=DNS,
                                                     limits=Limits(max_child_sas=2)))
    first = next(iter(ini.sa.children))
    spi = first
    refused = []
    for n in range(6):
        new_spi = bytes((0x10, 0, 0, n + 1))
        ini.probe(1.0 + n, ExchangeType.CREATE_CHILD_SA, rekey_payloads(ini, spi, new_spi))
        exchange(ini, resp, 1.0 + n)
        (answer,) = ini.answers()
        notifies = [p.notify_type for p in answer.payloads if isinstance(p, Notify)]
        refused.append(notifies == [NotifyType.NO_ADDITIONAL_SAS])
        spi = spi if notifies else new_spi  # rekey the newest Child SA next: a chain
    assert refused == [False, False, True, True, True, True]
    assert len(resp.views()[0].children) == 3  # the first, its rekey, that one's rekey: then no more
    ini.probe(10.0, ExchangeType.CREATE_CHILD_SA, rekey_payloads(ini, first, bytes((0x20, 0, 0, 1))))
    exchange(ini, resp, 10.0)
    (again,) = ini.answers()
    assert [n.notify_type for n in again.payloads if isinstance(n, Notify)] == [NotifyType.NO_ADDITIONAL_SAS]


def test_create_child_sa_invalid_ke_and_no_proposal():
    rcfg = ResponderConfig(local_id=Identity.null(), dns=DNS,
                           esp_suites=(c.ChildSuite(EncrId.ENCR_AES_GCM_16, 256, dh_group=DhGroup.CURVE25519),))
    ini, resp, *_ = establish(rcfg=rcfg)
    before = resp.views()
    p256 = c.ChildSuite(EncrId.ENCR_AES_GCM_16, 256, dh_group=DhGroup.ECP_256)
    x25519 = c.ChildSuite(EncrId.ENCR_AES_GCM_16, 256, dh_group=DhGroup.CURVE25519)
    ini.create_child_sa(1.0, esp_suites=(p256, x25519))
    exchange(ini, resp, 1.0)
    (refused,) = of(ini.events(), PeerErrorNotified)
    assert refused.notify == NotifyType.INVALID_KE_PAYLOAD
    ini.create_child_sa(1.0, esp_suites=(CBC128,))
    exchange(ini, resp, 1.0)
    assert [e.notify for e in of(ini.events(), PeerErrorNotified)] == [NotifyType.NO_PROPOSAL_CHOSEN]
    after = resp.views()
    assert after[0].children == before[0].children and after[0].next_peer_request == 4
    ini.create_child_sa(1.0, esp_suites=(x25519,))
    exchange(ini, resp, 1.0)
    assert_same_child(of(ini.events(), ChildSaEstablished)[0], of(drain(resp), ChildSaEstablished)[0])


def test_child_sa_rekey():
    ini, resp, i_events, r_events, _ = establish()
    old_i = of(i_events, ChildSaEstablished)[0]
    ini.rekey_child_sa(5.0, old_i.spi_in)
    transcript = exchange(ini, resp, 5.0)
    assert [message(d.data).header.exchange for d in transcript] == [
        ExchangeType.CREATE_CHILD_SA, ExchangeType.CREATE_CHILD_SA, ExchangeType.INFORMATIONAL,
        ExchangeType.INFORMATIONAL]
    i_events, r_events = ini.events(), drain(resp)
    (i_rekeyed,) = of(i_events, ChildSaRekeyed)
    (r_rekeyed,) = of(r_events, ChildSaRekeyed)
    assert (i_rekeyed.old_spi_in, i_rekeyed.old_spi_out) == (old_i.spi_in, old_i.spi_out)
    assert (r_rekeyed.old_spi_in, r_rekeyed.old_spi_out) == (old_i.spi_out, old_i.spi_in)
    assert_same_child(i_rekeyed.new, r_rekeyed.new)
    assert i_rekeyed.new.keys.encr_out != old_i.keys.encr_out
    assert i_rekeyed.new.local_ts == old_i.local_ts
    assert [(e.spi_in, e.protocol) for e in of(i_events, SaDeleted)] == [(old_i.spi_in, ProtocolId.ESP)]
    assert [(e.spi_out, e.protocol) for e in of(r_events, SaDeleted)] == [(old_i.spi_in, ProtocolId.ESP)]
    assert list(ini.sa.children) == [i_rekeyed.new.spi_in]
    assert [ch.spi_in for ch in resp.views()[0].children] == [r_rekeyed.new.spi_in]


def test_rekey_of_an_unknown_child_is_child_sa_not_found():
    ini, resp, *_ = establish()
    spi = established_child(ini, resp)
    resp_view = resp.views()[0]
    resp.sa(resp_view.spi_r).children.clear()  # the responder forgot the Child SA; the initiator rekeys it
    ini.rekey_child_sa(1.0, spi)
    exchange(ini, resp, 1.0)
    assert [e.notify for e in of(ini.events(), PeerErrorNotified)] == [NotifyType.CHILD_SA_NOT_FOUND]


def test_ike_sa_rekey_moves_the_children():
    ini, resp, i_events, r_events, _ = establish()
    old_spis = (ini.sa.spi_i, ini.sa.spi_r)
    child = of(i_events, ChildSaEstablished)[0]
    ini.rekey(10.0, ike_suites=(IKE_P256,))
    transcript = exchange(ini, resp, 10.0)
    assert [message(d.data).header.exchange for d in transcript] == [
        ExchangeType.CREATE_CHILD_SA, ExchangeType.CREATE_CHILD_SA, ExchangeType.INFORMATIONAL,
        ExchangeType.INFORMATIONAL]
    i_events, r_events = ini.events(), drain(resp)
    (i_rekeyed,) = of(i_events, IkeSaRekeyed)
    (r_rekeyed,) = of(r_events, IkeSaRekeyed)
    assert i_rekeyed == r_rekeyed and (i_rekeyed.ike_spi_i, i_rekeyed.ike_spi_r) == old_spis
    assert i_rekeyed.suite == IKE_P256
    new = (ini.sa.spi_i, ini.sa.spi_r)
    assert new == (i_rekeyed.new_spi_i, i_rekeyed.new_spi_r) and new != old_spis
    assert [(e.protocol, e.ike_spi_i) for e in of(r_events, SaDeleted)] == [(ProtocolId.IKE, old_spis[0])]
    assert [(e.protocol, e.ike_spi_i) for e in of(i_events, SaDeleted)] == [(ProtocolId.IKE, old_spis[0])]
    assert list(ini.sa.children) == [child.spi_in]
    (view,) = resp.views()
    assert (view.spi_i, view.spi_r) == new and [ch.spi_out for ch in view.children] == [child.spi_in]
    assert view.next_peer_request == 0 and view.state is State.ESTABLISHED
    # the new IKE SA works: liveness, a Child SA rekey, then a second IKE SA rekey
    ini.check_liveness(11.0)
    exchange(ini, resp, 11.0)
    assert of(ini.events(), PeerAlive)
    ini.rekey_child_sa(12.0, child.spi_in)
    exchange(ini, resp, 12.0)
    assert_same_child(of(ini.events(), ChildSaRekeyed)[0].new, of(drain(resp), ChildSaRekeyed)[0].new)
    ini.rekey(13.0)
    exchange(ini, resp, 13.0)
    assert of(ini.events(), IkeSaRekeyed) and len(resp) == 1 and resp.views()[0].state is State.ESTABLISHED


# --- a deferred signer: the signature is asked for, the event loop never waits on it ---

class DeferredSigner(c.SoftwareSigner):
    """Signs like the software signer, but says it must not be called inline (like the sim enclave's)."""

    deferred = True


def deferred_pair(seed: bytes = b"initiator", local: Endpoint = I_END) -> tuple[Initiator, ResponderConfig]:
    rcfg = ResponderConfig(local_id=RESOLVER_ID, dns=DNS, signer=DeferredSigner(ECDSA_KEY))
    icfg = InitiatorConfig(tsi=(HOST_I,), tsr=(UDP_TO_R,), responder_key=ECDSA_KEY.public_key(),
                           responder_id=RESOLVER_ID)
    return Initiator(icfg, local=local, peer=R_END, random=seeded(seed), now=0.0), rcfg


def requested_signatures(resp: Responder) -> list:
    return of(drain(resp), SignatureRequested)


def test_a_deferred_signer_is_asked_and_the_ike_auth_answer_waits_for_it():
    ini, rcfg = deferred_pair()
    resp = responder(rcfg)
    exchange(ini, resp, 0.0)  # IKE_SA_INIT answered; IKE_AUTH taken, not answered
    (request,) = requested_signatures(resp)
    (view,) = resp.views()
    assert view.state is State.SIGNING and resp.half_open == 1 and not ini.sa.established
    # the initiator retransmits: not answered (no answer exists yet), nothing else moves
    ini.handle_timer(ini.get_timer())
    exchange(ini, resp, 0.5)
    assert resp.views()[0].state is State.SIGNING and not requested_signatures(resp)
    # meanwhile another client is answered
    other, _ = deferred_pair(b"other", Endpoint(IPv4Address("10.0.0.2"), 500))
    resp.receive(other.datagrams_to_send()[0][0], other.local, 0.6)
    assert len(resp.datagrams_to_send()) == 1
    # the signature comes back: the answer goes out and verifies under the pinned key
    signature = ECDSA_KEY.sign(request.data, ec.ECDSA(hashes.SHA256()))
    resp.complete_signature(view.spi_r, 1.0, signature)
    exchange(ini, resp, 1.0)
    assert ini.sa.established and of(ini.events(), IkeSaEstablished)
    assert [type(e) for e in drain(resp)][:2] == [IkeSaEstablished, ChildSaEstablished]
    assert resp.half_open == 1  # the other client's


def test_a_forged_deferred_signature_is_refused_by_the_initiator():
    ini, rcfg = deferred_pair()
    resp = responder(rcfg)
    exchange(ini, resp, 0.0)
    (request,) = requested_signatures(resp)
    resp.complete_signature(resp.views()[0].spi_r, 1.0, OTHER_ECDSA_KEY.sign(request.data,
                                                                                ec.ECDSA(hashes.SHA256())))
    exchange(ini, resp, 1.0)
    assert not ini.sa.established


def test_a_failed_or_late_signature_leaves_no_state():
    ini, rcfg = deferred_pair()
    resp = responder(rcfg)
    exchange(ini, resp, 0.0)
    requested_signatures(resp)
    spi = resp.views()[0].spi_r
    resp.fail_signature(spi, 1.0, "the enclave is gone")
    assert len(resp) == 0 and resp.half_open == 0 and not resp.datagrams_to_send()
    resp.complete_signature(spi, 2.0, b"too late")  # ignored: the SA is gone
    # a signature that never comes ends with the half-open time
    ini2, _ = deferred_pair(b"second")
    exchange(ini2, resp, 10.0)
    assert resp.views()[0].state is State.SIGNING
    resp.handle_timer(40.0)
    assert len(resp) == 0 and resp.half_open == 0


# --- one resolver for both kinds of client ---

def test_a_signing_resolver_answers_a_client_that_asks_for_id_null_with_null_auth():
    """Coffee-shop clients (libreswan's opportunistic conns: NULL auth, IDr ID_NULL) get an unauthenticated
    resolver from a signing one that accepts NULL clients; they would refuse any identity or signature."""
    rcfg = ResponderConfig(local_id=RESOLVER_ID, dns=DNS, signer=DeferredSigner(ECDSA_KEY))
    icfg = InitiatorConfig(tsi=(HOST_I,), tsr=(UDP_TO_R,), responder_id=Identity.null())
    _, _, i_events, r_events, _ = establish(icfg, rcfg)
    (i_ike,) = of(i_events, IkeSaEstablished)
    (r_ike,) = of(r_events, IkeSaEstablished)
    assert (i_ike.peer_id, i_ike.peer_auth) == (Identity.null(), AuthMethod.NULL)
    assert r_ike.local_id == Identity.null() and not r_ike.credential.authenticated
    assert not of(r_events, SignatureRequested) and of(r_events, ChildSaEstablished)


def test_a_client_naming_the_resolver_or_no_one_gets_its_signature():
    for wanted in (RESOLVER_ID, None):
        rcfg = ResponderConfig(local_id=RESOLVER_ID, dns=DNS, signer=c.SoftwareSigner(ECDSA_KEY))
        icfg = InitiatorConfig(tsi=(HOST_I,), tsr=(UDP_TO_R,), responder_id=wanted,
                               responder_key=ECDSA_KEY.public_key())
        _, _, i_events, r_events, _ = establish(icfg, rcfg)
        (i_ike,) = of(i_events, IkeSaEstablished)
        assert (i_ike.peer_id, i_ike.peer_auth) == (RESOLVER_ID, AuthMethod.DIGITAL_SIGNATURE)
        assert of(r_events, IkeSaEstablished)[0].local_id == RESOLVER_ID


def test_a_private_resolver_never_answers_as_id_null():
    rcfg = ResponderConfig(local_id=RESOLVER_ID, dns=DNS, signer=c.SoftwareSigner(ECDSA_KEY), anonymous=frozenset(),
                           peer_keys=(PinnedPeer(CLIENT_ID, OTHER_ECDSA_KEY.public_key()),))
    icfg = InitiatorConfig(tsi=(HOST_I,), tsr=(UDP_TO_R,), responder_id=Identity.null())
    _, resp, i_events, r_events, _ = establish(icfg, rcfg)
    assert not of(i_events, IkeSaEstablished) and not of(r_events, IkeSaEstablished) and len(resp) == 0


# --- liveness and limits (RFC 7296 2.4) ---

LIVE = Timers(liveness=10.0, liveness_timeout=5.0)


def live_responder(**limits) -> ResponderConfig:
    return ResponderConfig(local_id=Identity.null(), dns=DNS, timers=LIVE, limits=Limits(**limits))


def test_a_silent_peer_is_asked_and_kept_when_it_answers():
    ini, resp, *_ = establish(rcfg=live_responder())
    assert resp.get_timer() == 10.0  # the IKE_AUTH request was the last thing heard, at 0
    resp.handle_timer(10.0)
    ((probe, _),) = resp.datagrams_to_send()
    decoded = Message.decode(probe).header
    assert (decoded.exchange, decoded.is_response) == (ExchangeType.INFORMATIONAL, False)
    ini.receive(probe, R_END, 10.2)
    exchange(ini, resp, 10.2)
    assert of(drain(resp), PeerAlive) and len(resp) == 1
    assert resp.get_timer() == pytest.approx(20.2)  # asked again after another silent `liveness`
    resp.handle_timer(40.0)
    assert len(resp) == 1  # asked at 40 (the timer was late), not yet dead


def test_a_dead_peer_is_removed_with_its_child_sas_after_liveness_and_timeout():
    ini, resp, *_ = establish(rcfg=live_responder())
    child = established_child(ini, resp)
    sent = 0
    while (deadline := resp.get_timer()) is not None and deadline <= 100.0:
        resp.handle_timer(deadline)
        sent += len(resp.datagrams_to_send())  # the probe and its retransmissions, never answered
        if not len(resp):
            break
    assert len(resp) == 0 and deadline == 15.0  # liveness 10 + liveness_timeout 5 after the last message
    assert sent == 4  # sent at 10, retransmitted at 10.5, 11.5, 13.5
    events = of(drain(resp), SaDeleted)
    assert [(e.protocol, e.spi_out) for e in events] == [(ProtocolId.ESP, child), (ProtocolId.IKE, b"")]
    assert all(e.reason.startswith("dead peer: nothing heard from it for 15 s") for e in events)
    assert resp.counts == {"IKE SA removed: dead peer": 1}


def test_a_peer_that_talks_is_never_asked():
    ini, resp, *_ = establish(rcfg=live_responder())
    for now in (8.0, 16.0, 24.0):
        ini.check_liveness(now)  # its own liveness checks are traffic too
        exchange(ini, resp, now)
        resp.handle_timer(now)
        assert not resp.datagrams_to_send()
    assert resp.get_timer() == 34.0 and len(resp) == 1


def test_a_replayed_copy_of_a_request_does_not_keep_a_dead_peer_alive():
    ini, resp, *_ = establish(rcfg=live_responder())
    ini.check_liveness(1.0)
    request = ini.datagrams_to_send()[0][0]
    resp.receive(request, I_END, 1.0)
    resp.datagrams_to_send()
    resp.receive(request, I_END, 9.0)  # an attacker replays the captured request: answered from the cache
    assert len(resp.datagrams_to_send()) == 1 and resp.get_timer() == 11.0


def test_an_address_past_max_sas_per_peer_keeps_its_newest_sas():
    resp = responder(live_responder(max_sas_per_peer=2))
    initiators = []
    for n in range(3):
        ini = initiator(seed=b"i%d" % n, now=float(n))
        exchange(ini, resp, float(n))
        initiators.append(ini)
    assert len(resp) == 2 and resp.counts == {"IKE SA replaced: max_sas_per_peer": 1}
    kept = {view.spi_i for view in resp.views()}
    assert kept == {initiators[1].sa.spi_i, initiators[2].sa.spi_i}  # the first, heard least recently, went
    (gone,) = [e for e in of(drain(resp), SaDeleted) if e.protocol == ProtocolId.IKE]
    assert gone.ike_spi_i == initiators[0].sa.spi_i and "max_sas_per_peer" in gone.reason


def test_a_replaced_peer_is_told_with_a_delete_and_its_answer_is_not_awaited():
    resp = responder(live_responder(max_sas_per_peer=1))
    first = initiator(seed=b"first")
    exchange(first, resp, 0.0)
    first.events()
    told = []

    def to_the_first(direction, data):  # the responder's Delete goes to the first client, not to the second
        if direction == "r->i" and data[:8] == first.sa.spi_i:
            told.append(data)
            return None
        return data
    exchange(initiator(seed=b"second", now=1.0), resp, 1.0, intercept=to_the_first)
    assert len(resp) == 1 and resp.counts == {"IKE SA replaced: max_sas_per_peer": 1}
    (delete,) = told
    header = Message.decode(delete).header
    assert (header.exchange, header.is_response) == (ExchangeType.INFORMATIONAL, False)
    first.receive(delete, R_END, 1.1)
    assert not first.sa.established  # it knows at once, and deletes its Child SA
    assert [e.protocol for e in of(first.events(), SaDeleted)] == [ProtocolId.ESP, ProtocolId.IKE]
    (answer, _), = first.datagrams_to_send()
    resp.receive(answer, I_END, 1.1)  # the answer finds no SA: dropped, nothing sent
    assert resp.datagrams_to_send() == [] and len(resp) == 1
    assert resp.get_timer() is not None and resp.get_timer() > 1.1  # nothing of the first is waited for


def test_a_replaced_peer_that_was_heard_recently_outlives_an_older_one():
    resp = responder(live_responder(max_sas_per_peer=2))
    first, second = initiator(seed=b"a"), initiator(seed=b"b")
    exchange(first, resp, 0.0)
    exchange(second, resp, 1.0)
    first.check_liveness(2.0)
    exchange(first, resp, 2.0)  # the first one spoke last
    exchange(initiator(seed=b"c", now=3.0), resp, 3.0)
    assert {view.spi_i for view in resp.views()} >= {first.sa.spi_i} and second.sa.spi_i not in {
        view.spi_i for view in resp.views()}


def test_max_sas_refuses_new_ike_sa_init_and_counts_it():
    resp = responder(live_responder(max_sas=1))
    exchange(initiator(seed=b"a"), resp, 0.0)
    late = initiator(seed=b"b", local=Endpoint(IPv4Address("10.0.0.2"), 500))
    exchange(late, resp, 1.0)
    assert len(resp) == 1 and resp.counts == {"IKE_SA_INIT refused: max_sas": 1}
    assert not late.sa.established


# --- INFORMATIONAL ---

def test_liveness_check():
    ini, resp, *_ = establish()
    before = resp.views()[0]
    ini.check_liveness(20.0)
    transcript = exchange(ini, resp, 20.0)
    assert len(transcript) == 2 and of(ini.events(), PeerAlive)
    after = resp.views()[0]
    assert after.next_peer_request == before.next_peer_request + 1 and after.children == before.children


def test_delete_child_sa():
    ini, resp, *_ = establish()
    spi = established_child(ini, resp)
    ini.delete_child_sa(1.0, spi)
    exchange(ini, resp, 1.0)
    assert [e.spi_in for e in of(ini.events(), SaDeleted)] == [spi]
    assert [e.spi_out for e in of(drain(resp), SaDeleted)] == [spi]
    assert not ini.sa.children and not resp.views()[0].children


def test_delete_ike_sa():
    ini, resp, *_ = establish()
    ini.create_child_sa(1.0)
    exchange(ini, resp, 1.0)
    drain(resp)
    ini.delete(2.0)
    exchange(ini, resp, 2.0)
    deleted = of(drain(resp), SaDeleted)
    assert [e.protocol for e in deleted] == [ProtocolId.ESP, ProtocolId.ESP, ProtocolId.IKE]
    assert len(resp) == 0 and ini.sa.state is State.DELETED
    assert [e.protocol for e in of(ini.events(), SaDeleted)] == [ProtocolId.ESP, ProtocolId.ESP, ProtocolId.IKE]


def test_the_responder_deletes():
    ini, resp, *_ = establish()
    resp.delete(resp.views()[0].spi_r, 3.0)
    exchange(ini, resp, 3.0)
    assert ini.sa.state is State.DELETED and len(resp) == 0
    assert of(drain(resp), SaDeleted)[-1].reason == "deleted locally"


def test_initial_contact_replaces_the_old_sa_of_an_authenticated_identity():
    rcfg = ResponderConfig(local_id=RESOLVER_ID, dns=DNS, signer=c.SoftwareSigner(ECDSA_KEY), anonymous=frozenset(),
                           peer_keys=(PinnedPeer(CLIENT_ID, ECDSA_KEY.public_key()),))
    icfg = InitiatorConfig(tsi=(HOST_I,), tsr=(UDP_TO_R,), local_id=CLIENT_ID, signer=c.SoftwareSigner(ECDSA_KEY),
                           responder_key=ECDSA_KEY.public_key())
    resp = responder(rcfg)
    first = initiator(icfg, seed=b"first")
    exchange(first, resp, 0.0)
    drain(resp)
    second = initiator(icfg, seed=b"second", local=Endpoint(I_END.address, 4500))
    exchange(second, resp, 1.0)
    events = drain(resp)
    assert [e.reason for e in of(events, SaDeleted)] == ["INITIAL_CONTACT from the same identity"] * 2
    assert len(resp) == 1 and resp.views()[0].spi_i == second.sa.spi_i


def test_null_identities_never_replace_each_other():
    resp = responder()
    for n in range(2):
        exchange(initiator(seed=b"n%d" % n), resp, 0.0)
    assert len(resp) == 2 and not of(drain(resp), SaDeleted)


# --- retransmissions, replays, message IDs ---

def test_retransmitted_request_gets_identical_cached_response():
    ini, resp, _, _, transcript = establish()
    before = resp.views()
    auth_request, auth_response = transcript[2].data, transcript[3].data
    resp.receive(auth_request, I_END, 1.0)
    assert resp.datagrams_to_send() == [(auth_response, I_END)]
    assert resp.views() == before and not drain(resp)
    ini.check_liveness(2.0)
    liveness = exchange(ini, resp, 2.0)
    resp.receive(liveness[0].data, I_END, 3.0)
    assert resp.datagrams_to_send() == [(liveness[1].data, I_END)]


def test_old_and_future_message_ids_are_ignored():
    ini, resp, _, _, transcript = establish()
    for _ in range(2):
        ini.check_liveness(1.0)
        exchange(ini, resp, 1.0)
    before = resp.views()
    resp.receive(transcript[2].data, I_END, 2.0)  # IKE_AUTH, message ID 1: older than the last one answered
    resp.receive(transcript[0].data, I_END, 2.0)  # IKE_SA_INIT again
    ini.check_liveness(3.0)
    ((request, _),) = ini.datagrams_to_send()
    future = request[:20] + (9).to_bytes(4, "big") + request[24:]
    resp.receive(future, I_END, 3.0)
    assert resp.datagrams_to_send() == [] and resp.views() == before and not drain(resp)
    resp.receive(request, I_END, 3.0)
    assert len(resp.datagrams_to_send()) == 1


def test_wrong_spi():
    _, resp, _, _, transcript = establish()
    before = resp.views()
    auth = transcript[2].data
    unknown = auth[:8] + b"\x42" * 8 + auth[16:]
    resp.receive(unknown, I_END, 1.0)
    ((answer, to),) = resp.datagrams_to_send()
    reply = message(answer)
    assert to == I_END and reply.header.is_response and not reply.header.is_initiator
    assert (reply.header.spi_i, reply.header.spi_r, reply.header.message_id) == (auth[:8], b"\x42" * 8, 1)
    assert [n.notify_type for n in reply.find_all(Notify)] == [NotifyType.INVALID_IKE_SPI]
    wrong_initiator_spi = b"\x17" * 8 + auth[8:]
    resp.receive(wrong_initiator_spi, I_END, 1.0)
    assert len(resp.datagrams_to_send()) == 1
    response = transcript[3].data  # a response to an SA we do not know: never answered
    resp.receive(response[:8] + b"\x42" * 8 + response[16:], I_END, 1.0)
    for _ in range(20):  # rate-limited: a bucket of 10, refilled at 10 a second
        resp.receive(unknown, I_END, 1.5)
    assert len(resp.datagrams_to_send()) == 10
    for _ in range(5):
        resp.receive(unknown, I_END, 1.75)
    assert len(resp.datagrams_to_send()) == 2
    assert resp.views() == before


def test_bad_icv_is_dropped_and_changes_nothing():
    ini, resp, *_ = establish()
    before = resp.views()
    ini.check_liveness(1.0)
    ((request, _),) = ini.datagrams_to_send()
    for position in (-1, -20, 40, 30):  # the ICV, the ciphertext, the IV, the SK payload header
        broken = bytearray(request)
        broken[position] ^= 0x01
        resp.receive(bytes(broken), I_END, 1.0)
    assert resp.datagrams_to_send() == [] and resp.views() == before and not drain(resp)
    resp.receive(request, I_END, 1.0)
    assert len(resp.datagrams_to_send()) == 1


def test_bad_icv_in_ike_auth_leaves_the_half_open_sa_as_it_was():
    ini, resp = initiator(), responder()

    def corrupt_auth(direction, data):
        if direction == "i->r" and message(data).header.exchange == ExchangeType.IKE_AUTH:
            return data[:-1] + bytes([data[-1] ^ 0x80])
        return data
    exchange(ini, resp, 0.0, intercept=corrupt_auth)
    (view,) = resp.views()
    assert view.state is State.EXPECT_IKE_AUTH and view.next_peer_request == 1
    ini.handle_timer(0.5)  # the initiator retransmits the intact request
    exchange(ini, resp, 0.5)
    assert resp.views()[0].state is State.ESTABLISHED


def test_truncated_messages():
    ini, resp = initiator(), responder()
    init = ini.datagrams_to_send()[0][0]
    for cut in (1, 10, len(init) - 28):
        short = init[:-cut]
        resp.receive(short, I_END, 0.0)  # header length disagrees with the datagram
        resp.receive(short[:24] + len(short).to_bytes(4, "big") + short[28:], I_END, 0.0)  # it agrees
    resp.receive(init[:20], I_END, 0.0)
    assert resp.datagrams_to_send() == [] and len(resp) == 0
    ini.receive(b"", R_END, 0.0)
    ini.receive(init[:27], R_END, 0.0)
    assert ini.sa.state is State.EXPECT_IKE_SA_INIT_RESPONSE
    ini2, resp2 = initiator(seed=b"t"), responder(seed=b"t")
    auth: list[bytes] = []

    def hold_auth(direction, data):
        if direction == "i->r" and message(data).header.exchange == ExchangeType.IKE_AUTH:
            auth.append(data)
            return None
        return data
    exchange(ini2, resp2, 0.0, intercept=hold_auth)
    before = resp2.views()
    for cut in (1, 17, 100):
        short = auth[0][:-cut]
        resp2.receive(short[:24] + len(short).to_bytes(4, "big") + short[28:], I_END, 0.0)
    assert resp2.datagrams_to_send() == [] and resp2.views() == before
    resp2.receive(auth[0], I_END, 0.0)
    assert resp2.views()[0].state is State.ESTABLISHED


def test_authenticated_but_malformed_requests_are_answered_invalid_syntax():
    ini, resp, _ = establish_probing()
    before = resp.views()[0]
    truncated_nonce = UnknownPayload(PayloadType.NONCE, b"short")
    ini.probe(1.0, ExchangeType.CREATE_CHILD_SA, [truncated_nonce])
    ini.probe(1.0, ExchangeType.CREATE_CHILD_SA, [])  # no SA, no Nonce
    ini.probe(1.0, ExchangeType.IKE_AUTH, [])  # an exchange with no entry in ESTABLISHED
    exchange(ini, resp, 1.0)
    answers = ini.answers()
    assert [[n.notify_type for n in a.payloads] for a in answers] == [[NotifyType.INVALID_SYNTAX]] * 3
    assert [e.answered for e in of(drain(resp), ProtocolErrorEvent)] == [NotifyType.INVALID_SYNTAX] * 3
    after = resp.views()[0]
    assert after.state is State.ESTABLISHED and after.children == before.children
    assert after.next_peer_request == before.next_peer_request + 3


def test_unsupported_critical_payload_in_ike_sa_init_is_answered():
    ini, resp = initiator(), responder()
    request = message(ini.datagrams_to_send()[0][0])
    hostile = Message(request.header, (*request.payloads, UnknownPayload(200, b"x", critical=True))).encode()
    resp.receive(hostile, I_END, 0.0)
    ((answer, _),) = resp.datagrams_to_send()
    (notify,) = message(answer).find_all(Notify)
    assert (notify.notify_type, notify.data) == (NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD, bytes([200]))
    assert len(resp) == 0
    harmless = Message(request.header, (*request.payloads, UnknownPayload(200, b"x"))).encode()
    resp.receive(harmless, I_END, 0.0)
    assert len(resp) == 1


def test_invalid_major_version_is_answered_in_version_2():
    ini, resp = initiator(), responder()
    request = bytearray(ini.datagrams_to_send()[0][0])
    request[17] = 0x30
    resp.receive(bytes(request), I_END, 0.0)
    ((answer, _),) = resp.datagrams_to_send()
    reply = message(answer)
    assert reply.header.major_version == 2 and reply.header.exchange == ExchangeType.IKE_SA_INIT
    assert [n.notify_type for n in reply.find_all(Notify)] == [NotifyType.INVALID_MAJOR_VERSION]
    request[19] |= HeaderFlag.RESPONSE
    resp.receive(bytes(request), I_END, 0.0)
    assert resp.datagrams_to_send() == [] and len(resp) == 0


def test_a_response_flag_or_initiator_flag_in_the_wrong_place_is_dropped():
    ini, resp, *_ = establish()
    before = resp.views()
    ini.check_liveness(1.0)
    ((request, _),) = ini.datagrams_to_send()
    for flags in (HeaderFlag.NONE, HeaderFlag.INITIATOR | HeaderFlag.RESPONSE):
        resp.receive(request[:19] + bytes([flags]) + request[20:], I_END, 1.0)
        ini.sa.receive(request[:19] + bytes([flags]) + request[20:], 1.0)  # and into the initiator's own SA
    # without the I flag the SPIs name an SA the responder does not have: unprotected INVALID_IKE_SPI at most
    answers = [message(data) for data, _ in resp.datagrams_to_send()]
    assert [[n.notify_type for n in a.find_all(Notify)] for a in answers] == [[NotifyType.INVALID_IKE_SPI]]
    assert resp.views() == before and ini.sa.datagrams_to_send() == []


def test_events_keep_keys_out_of_repr_and_policy_is_checked():
    _, _, _, r_events, _ = establish()
    child = of(r_events, ChildSaEstablished)[0]
    assert "keys" not in repr(child) and child.keys.encr_in.hex() not in repr(child.keys)
    with pytest.raises(PolicyError):
        ResponderConfig(local_id=Identity.null(), dns=DNS, signer=c.SoftwareSigner(ECDSA_KEY))
    with pytest.raises(PolicyError):
        ResponderConfig(local_id=Identity.null(), dns=DNS, anonymous=frozenset())
    with pytest.raises(PolicyError):
        DnsSelectors(())
    with pytest.raises(PolicyError):
        InitiatorConfig(tsi=(HOST_I,), tsr=(UDP_TO_R,), first_group=DhGroup.ECP_521)


# --- timers of an established responder ---

def test_a_rekeyed_ike_sa_nobody_deletes_expires():
    ini, resp, *_ = establish()
    ini.rekey(1.0)
    exchange(ini, resp, 1.0, intercept=lambda d, data: None if (
        d == "i->r" and message(data).header.exchange == ExchangeType.INFORMATIONAL) else data)
    drain(resp)
    assert sorted(v.state.name for v in resp.views()) == ["ESTABLISHED", "EXPECT_DELETE"]
    assert resp.get_timer() == 31.0
    resp.handle_timer(31.0)
    assert [v.state for v in resp.views()] == [State.ESTABLISHED] and len(resp.views()[0].children) == 1
    (deleted,) = of(drain(resp), SaDeleted)
    assert deleted.protocol == ProtocolId.IKE and "rekeyed" in deleted.reason


def test_the_responder_retransmits_its_own_request_then_gives_up():
    _, resp, *_ = establish()
    spi = resp.views()[0].spi_r
    resp.delete(spi, 0.0)
    sent = [resp.datagrams_to_send()]
    while (deadline := resp.get_timer()) is not None:
        resp.handle_timer(deadline)
        sent.append(resp.datagrams_to_send())
    assert len({s[0][0] for s in sent if s}) == 1 and sum(1 for s in sent if s) == 6  # Timers.retransmit_tries
    assert deadline is None and len(resp) == 0
    assert [e.protocol for e in of(drain(resp), SaDeleted)] == [ProtocolId.ESP, ProtocolId.IKE]


# --- who the initiator is: pinned, NULL, raw key, certificate (RFC 7619, RFC 7670, RFC 7296 3.6) ---

def spki(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def certificate(key, name: str, issuer_key=None, issuer: str | None = None) -> bytes:
    """A DER certificate for `key`: self-signed, or issued by `issuer_key` under the name `issuer`."""
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer or name)]))
            .public_key(key.public_key()).serial_number(7).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(issuer_key or key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER)


def anonymous_responder(*methods: PeerAuth, pinned: tuple[PinnedPeer, ...] = ()) -> ResponderConfig:
    return ResponderConfig(local_id=RESOLVER_ID, dns=DNS, signer=c.SoftwareSigner(OTHER_ECDSA_KEY),
                           anonymous=frozenset(methods), peer_keys=pinned)


def null_initiator(local_id: Identity | None = None) -> InitiatorConfig:
    return InitiatorConfig(tsi=(HOST_I,), tsr=(UDP_TO_R,), local_id=local_id or Identity.null(),
                           responder_key=OTHER_ECDSA_KEY.public_key(), responder_id=RESOLVER_ID)


def signing_initiator(key, *certs: Certificate, local_id: Identity = CLIENT_ID) -> InitiatorConfig:
    return InitiatorConfig(tsi=(HOST_I,), tsr=(UDP_TO_R,), local_id=local_id, signer=c.SoftwareSigner(key),
                           certificates=certs, responder_key=OTHER_ECDSA_KEY.public_key(), responder_id=RESOLVER_ID)


def credential_of(icfg: InitiatorConfig, rcfg: ResponderConfig) -> PeerCredential:
    ini, resp, i_events, r_events, _ = establish(icfg, rcfg)
    (event,) = of(r_events, IkeSaEstablished)
    assert of(i_events, IkeSaEstablished) and ini.sa.state is State.ESTABLISHED
    assert resp.views()[0].peer_credential == event.credential
    return event.credential


def refusal(icfg: InitiatorConfig, rcfg: ResponderConfig) -> str:
    """The responder's one-line reason for refusing IKE_AUTH with AUTHENTICATION_FAILED; nothing is left."""
    ini, resp, i_events, r_events, _ = establish(icfg, rcfg)
    assert [e.notify for e in of(i_events, PeerErrorNotified)] == [NotifyType.AUTHENTICATION_FAILED]
    (error,) = of(r_events, ProtocolErrorEvent)
    assert error.answered == NotifyType.AUTHENTICATION_FAILED
    assert not of(r_events, IkeSaEstablished) and len(resp) == 0 and ini.sa.state is State.DELETED
    return error.detail


def test_a_pinned_identity_is_authenticated_by_its_pinned_key():
    rcfg = anonymous_responder(pinned=(PinnedPeer(CLIENT_ID, ECDSA_KEY.public_key()),))
    credential = credential_of(signing_initiator(ECDSA_KEY), rcfg)
    assert credential == PeerCredential(PeerAuth.PINNED, hashlib.sha256(spki(ECDSA_KEY)).digest())
    assert credential.authenticated
    assert str(credential) == f"signature auth, pinned key sha256 {credential.key_sha256.hex()}"
    # with every anonymous method allowed, a pinned identity still has to sign with its pinned key
    rcfg = anonymous_responder(PeerAuth.NULL, PeerAuth.RAW_KEY, PeerAuth.CERTIFICATE,
                               pinned=(PinnedPeer(CLIENT_ID, OTHER_ECDSA_KEY.public_key()),))
    cert = Certificate(CertEncoding.RAW_PUBLIC_KEY, spki(ECDSA_KEY))
    assert "does not verify" in refusal(signing_initiator(ECDSA_KEY, cert), rcfg)
    null_client = null_initiator(CLIENT_ID)
    assert "has a pinned key and must sign with it" in refusal(null_client, rcfg)


def test_null_is_unauthenticated():
    credential = credential_of(null_initiator(), anonymous_responder(PeerAuth.NULL))
    assert credential == PeerCredential(PeerAuth.NULL) and not credential.authenticated
    assert str(credential) == "NULL auth, unauthenticated"


@pytest.mark.parametrize("key", [ECDSA_KEY, RSA_KEY], ids=["ecdsa", "rsa-pss"])
def test_a_raw_public_key_nobody_pinned_comes_in_unauthenticated(key):
    cert = Certificate(CertEncoding.RAW_PUBLIC_KEY, spki(key))
    credential = credential_of(signing_initiator(key, cert), anonymous_responder(PeerAuth.RAW_KEY))
    fingerprint = hashlib.sha256(spki(key)).digest()
    assert credential == PeerCredential(PeerAuth.RAW_KEY, fingerprint) and not credential.authenticated
    assert str(credential) == f"signature auth, unauthenticated: raw key sha256 {fingerprint.hex()}"


def test_a_self_signed_certificate_comes_in_unauthenticated():
    cert = Certificate(CertEncoding.X509_SIGNATURE, certificate(ECDSA_KEY, "client.example"))
    credential = credential_of(signing_initiator(ECDSA_KEY, cert), anonymous_responder(PeerAuth.CERTIFICATE))
    assert credential == PeerCredential(PeerAuth.CERTIFICATE, hashlib.sha256(spki(ECDSA_KEY)).digest(),
                                        "CN=client.example", self_signed=True)
    assert str(credential).startswith("signature auth, unauthenticated: certificate 'CN=client.example' "
                                      "(self-signed), key sha256 ")


def test_a_certificate_from_some_ca_only_carries_the_key():
    """We do not validate certificates: one issued by a CA we do not know is as good as self-signed, and as
    unauthenticated; the CA certificate that follows it is ignored."""
    ca = ec.generate_private_key(ec.SECP256R1())
    leaf = Certificate(CertEncoding.X509_SIGNATURE, certificate(ECDSA_KEY, "client.example", ca, "Some CA"))
    chain = Certificate(CertEncoding.X509_SIGNATURE, certificate(ca, "Some CA"))
    credential = credential_of(signing_initiator(ECDSA_KEY, leaf, chain), anonymous_responder(PeerAuth.CERTIFICATE))
    assert credential.kind is PeerAuth.CERTIFICATE and not credential.self_signed
    assert "(not self-signed, issuer not checked)" in str(credential)


def test_a_signature_without_a_cert_payload_or_a_pin_is_refused():
    detail = refusal(signing_initiator(ECDSA_KEY), anonymous_responder(PeerAuth.NULL, PeerAuth.RAW_KEY,
                                                                       PeerAuth.CERTIFICATE))
    assert detail == ("AUTH: a signature, but no key is pinned for client.example and no CERT payload carries the "
                      "key (a raw public key or a certificate)")


@pytest.mark.parametrize("accepted, client, reason", [
    ((PeerAuth.RAW_KEY, PeerAuth.CERTIFICATE), "null", "NULL authentication is not accepted here"),
    ((PeerAuth.NULL, PeerAuth.CERTIFICATE), "raw-key", "clients with a raw public key we do not know are not "
                                                       "accepted here"),
    ((PeerAuth.NULL, PeerAuth.RAW_KEY), "certificate", "clients with a certificate we do not know are not "
                                                       "accepted here"),
])
def test_an_anonymous_method_that_is_not_accepted_is_refused(accepted, client, reason):
    icfg = {
        "null": null_initiator(),
        "raw-key": signing_initiator(ECDSA_KEY, Certificate(CertEncoding.RAW_PUBLIC_KEY, spki(ECDSA_KEY))),
        "certificate": signing_initiator(ECDSA_KEY, Certificate(CertEncoding.X509_SIGNATURE,
                                                                certificate(ECDSA_KEY, "c"))),
    }[client]
    assert reason in refusal(icfg, anonymous_responder(*accepted))


def test_a_private_resolver_refuses_every_unpinned_client():
    rcfg = anonymous_responder(pinned=(PinnedPeer(CLIENT_ID, ECDSA_KEY.public_key()),))
    other = Identity.fqdn("stranger.example")
    for icfg in (null_initiator(),
                 signing_initiator(ECDSA_KEY, Certificate(CertEncoding.RAW_PUBLIC_KEY, spki(ECDSA_KEY)),
                                   local_id=other)):
        assert "not accepted here" in refusal(icfg, rcfg)


@pytest.mark.parametrize("cert, reason", [
    (Certificate(CertEncoding.RAW_PUBLIC_KEY, spki(OTHER_ECDSA_KEY)), "signature does not verify"),
    (Certificate(CertEncoding.X509_SIGNATURE, certificate(OTHER_ECDSA_KEY, "c")), "signature does not verify"),
    (Certificate(CertEncoding.RAW_PUBLIC_KEY, b"\x30\x03junk"), "is not a DER SubjectPublicKeyInfo"),
    (Certificate(CertEncoding.X509_SIGNATURE, spki(ECDSA_KEY)), "X.509 certificate does not parse"),
    (Certificate(CertEncoding.HASH_URL_X509_CERT, b"x" * 20), "encoding 12 is not accepted here"),
    (Certificate(CertEncoding.RAW_PUBLIC_KEY, x509.load_der_x509_certificate(certificate(
        ec.generate_private_key(ec.SECP256R1()), "c")).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)), "signature does not verify"),
], ids=["raw-key-of-another", "certificate-of-another", "raw-key-garbage", "certificate-garbage", "hash-and-url",
        "raw-key-of-a-third"])
def test_a_cert_payload_whose_key_does_not_verify_the_auth_is_refused(cert, reason):
    assert reason in refusal(signing_initiator(ECDSA_KEY, cert), anonymous_responder(PeerAuth.RAW_KEY,
                                                                                      PeerAuth.CERTIFICATE))


def test_presented_keys_are_ecdsa_or_rsa_of_bounded_size():
    big = rsa.RSAPublicNumbers(65537, (1 << 8199) | 1).public_key()  # no need for primes: only parsed
    big_der = big.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(c.AuthenticationFailed, match="RSA key of 8200 bits; at most 8192"):
        c.presented_key(CertEncoding.RAW_PUBLIC_KEY, big_der)
    edwards = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(c.AuthenticationFailed, match=r"holds a .*Ed25519PublicKey; only ECDSA and RSA"):
        c.presented_key(CertEncoding.RAW_PUBLIC_KEY, edwards)
    presented = c.presented_key(CertEncoding.RAW_PUBLIC_KEY, spki(RSA_KEY))
    assert presented.sha256 == hashlib.sha256(spki(RSA_KEY)).digest() and presented.subject == ""


def test_unauthenticated_identities_never_replace_each_other():
    """INITIAL_CONTACT from a raw key nobody pinned names no one: a second client claiming the same ID (and another
    key) does not remove the first one's SA."""
    resp = responder(anonymous_responder(PeerAuth.RAW_KEY))
    for seed, key in ((b"first", ECDSA_KEY), (b"second", OTHER_ECDSA_KEY)):
        icfg = signing_initiator(key, Certificate(CertEncoding.RAW_PUBLIC_KEY, spki(key)))
        exchange(initiator(icfg, seed=seed), resp, 0.0)
    events = drain(resp)
    assert len(of(events, IkeSaEstablished)) == 2 and all(e.initial_contact for e in of(events, IkeSaEstablished))
    assert len(resp) == 2 and not of(events, SaDeleted)


def test_the_credential_survives_an_ike_rekey():
    rcfg = anonymous_responder(PeerAuth.RAW_KEY)
    ini, resp, *_ = establish(signing_initiator(ECDSA_KEY, Certificate(CertEncoding.RAW_PUBLIC_KEY, spki(ECDSA_KEY))),
                              rcfg)
    before = resp.views()[0].peer_credential
    ini.sa.rekey(1.0)
    exchange(ini, resp, 1.0)
    after = [v.peer_credential for v in resp.views() if v.state is State.ESTABLISHED]
    assert before is not None and before.kind is PeerAuth.RAW_KEY and after == [before]


def test_policy_of_anonymous_methods():
    with pytest.raises(PolicyError, match="no initiator could authenticate"):
        anonymous_responder()
    with pytest.raises(PolicyError, match="not a way to come in anonymously"):
        anonymous_responder(PeerAuth.PINNED)
    with pytest.raises(PolicyError, match="pinned twice"):
        anonymous_responder(pinned=(PinnedPeer(CLIENT_ID, ECDSA_KEY.public_key()),
                                    PinnedPeer(CLIENT_ID, OTHER_ECDSA_KEY.public_key())))
