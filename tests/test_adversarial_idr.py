"""Adversarial: hostile IDr payloads at a signing resolver that accepts NULL clients."""
import pytest

from enclave_ike.ikev2.config import Identity, InitiatorConfig, PeerAuth, ResponderConfig
from enclave_ike.ikev2.constants import IdType
from enclave_ike.ikev2.events import IkeSaEstablished, SignatureRequested
from tests.test_ikev2_exchanges import (
    DNS,
    ECDSA_KEY,
    HOST_I,
    RESOLVER_ID,
    UDP_TO_R,
    DeferredSigner,
    establish,
    of,
)


def raw_identity(id_type: int, data: bytes) -> Identity:
    """An Identity the config would refuse, to put odd IDr payloads on the wire."""
    ident = object.__new__(Identity)
    object.__setattr__(ident, "id_type", id_type)
    object.__setattr__(ident, "data", data)
    return ident


def signing_resolver(anonymous=frozenset({PeerAuth.NULL})) -> ResponderConfig:
    return ResponderConfig(local_id=RESOLVER_ID, dns=DNS, signer=DeferredSigner(ECDSA_KEY), anonymous=anonymous)


@pytest.mark.parametrize("idr", [raw_identity(IdType.ID_NULL, b"resolver.example"),
                                 raw_identity(IdType.ID_NULL, b"\0")])
def test_an_id_null_idr_with_data_is_treated_like_idi(idr):
    """IDi ID_NULL with data fails authentication ("names no one"); IDr ID_NULL with data should not be read as
    the RFC 7619 ID_NULL request either (or: be refused)."""
    icfg = InitiatorConfig(tsi=(HOST_I,), tsr=(UDP_TO_R,), responder_id=idr)
    _, _, _, r_events, _ = establish(icfg, signing_resolver())
    established = of(r_events, IkeSaEstablished)
    answered_as_null = bool(established) and established[0].local_id == Identity.null()
    print("established:", bool(established), "as ID_NULL:", answered_as_null,
          "signature asked:", bool(of(r_events, SignatureRequested)))
    assert not answered_as_null


def test_a_null_client_asking_for_id_null_where_null_is_not_accepted_is_refused():
    icfg = InitiatorConfig(tsi=(HOST_I,), tsr=(UDP_TO_R,), responder_id=Identity.null())
    _, resp, _, r_events, _ = establish(icfg, signing_resolver(frozenset({PeerAuth.RAW_KEY})))
    assert not of(r_events, IkeSaEstablished) and len(resp) == 0
