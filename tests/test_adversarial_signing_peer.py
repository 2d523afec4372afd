"""Adversarial: a replayed IKE_AUTH request from a spoofed source while our signature is pending."""
from ipaddress import IPv4Address

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from enclave_ike.ikev2.config import Endpoint
from enclave_ike.ikev2.events import ChildSaEstablished, IkeSaEstablished
from enclave_ike.ikev2.state import State
from tests.test_ikev2_exchanges import ECDSA_KEY, I_END, deferred_pair, drain, of, requested_signatures, responder

SPOOFED = Endpoint(IPv4Address("203.0.113.66"), 4500)


def test_a_replayed_ike_auth_while_signing_does_not_move_the_peer():
    ini, rcfg = deferred_pair()
    resp = responder(rcfg)
    # IKE_SA_INIT, then IKE_AUTH, by hand so we keep a copy of the IKE_AUTH request
    (init, _), = ini.datagrams_to_send()
    resp.receive(init, I_END, 0.0)
    for data, _ in resp.datagrams_to_send():
        ini.receive(data, Endpoint(IPv4Address("10.0.0.53"), 500), 0.0)
    (auth, _), = ini.datagrams_to_send()
    resp.receive(auth, I_END, 0.0)
    (request,) = requested_signatures(resp)
    assert resp.views()[0].state is State.SIGNING
    # an on-path attacker replays the captured IKE_AUTH request from an address of its choosing
    resp.receive(auth, SPOOFED, 0.1)
    assert not resp.datagrams_to_send()
    spi = resp.views()[0].spi_r
    resp.complete_signature(spi, 0.2, ECDSA_KEY.sign(request.data, ec.ECDSA(hashes.SHA256())))
    events = drain(resp)
    (ike,) = of(events, IkeSaEstablished)
    (child,) = of(events, ChildSaEstablished)
    # the kernel SA's outer destination (apply.py: dst=event.peer.address) must be the client, not the replayer
    assert child.peer == I_END, f"Child SA installed towards {child.peer}"
    assert ike.peer == I_END
    assert resp.views()[0].peer == I_END, "liveness checks and deletes would go to the replayer's address"
