"""Adversarial: IKE SA rekeys that never delete the old SA grow the responder's state past every limit."""
from ipaddress import IPv4Address

from enclave_ike.ikev2.config import Endpoint
from enclave_ike.ikev2.constants import ExchangeType
from enclave_ike.ikev2.initiator import exchange
from enclave_ike.ikev2.payloads import Message
from tests.test_ikev2_exchanges import initiator, live_responder, responder


def keep_old_sas(direction, data):
    """The client never deletes the IKE SA it rekeyed (its Delete is lost, or it never sends one)."""
    header = Message.decode(data).header
    if direction == "i->r" and header.exchange == ExchangeType.INFORMATIONAL:
        return None
    return data


def test_ike_sa_rekeys_stay_within_max_sas_and_max_sas_per_peer():
    resp = responder(live_responder(max_sas=4, max_sas_per_peer=2))
    ini = initiator(seed=b"rekeyer")
    exchange(ini, resp, 0.0)
    for n in range(1, 11):
        ini.rekey(n * 0.1)
        exchange(ini, resp, n * 0.1, intercept=keep_old_sas)
    newcomer = initiator(seed=b"newcomer", local=Endpoint(IPv4Address("10.0.0.99"), 500), now=1.5)
    exchange(newcomer, resp, 1.5)
    print("SAs held:", len(resp), "counts:", dict(resp.counts))
    assert len(resp) <= 4, f"{len(resp)} IKE SAs from one address, max_sas 4, max_sas_per_peer 2"
    assert newcomer.sa.established, "another client is locked out (max_sas) by one client's rekeys"
