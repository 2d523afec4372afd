"""Adversarial: Child SA rekeys that never delete the old Child SA (max_child_sas skipped for rekeys)."""
import os

from enclave_ike.apply import ChildSaTable
from enclave_ike.ikev2.constants import ExchangeType, NotifyType, ProtocolId
from enclave_ike.ikev2.initiator import exchange
from enclave_ike.ikev2.negotiation import offer_esp
from enclave_ike.ikev2.payloads import Nonce, Notify, TrafficSelectorsInitiator, TrafficSelectorsResponder
from tests.test_ikev2_exchanges import drain, establish_probing


def test_child_sa_rekeys_without_deletes_stay_bounded():
    ini, resp, events = establish_probing()
    table = ChildSaTable()
    for e in events:
        table.plan(e)
    (child,) = ini.sa.children.values()
    kernel_sas = 0
    for n in range(40):  # rekey the same Child SA again and again, never deleting the old one
        payloads = [Notify(NotifyType.REKEY_SA, protocol=ProtocolId.ESP, spi=child.spi_in),
                    offer_esp(ini.config.esp_suites, os.urandom(4), in_ike_auth=False), Nonce(os.urandom(32)),
                    TrafficSelectorsInitiator(child.local_ts), TrafficSelectorsResponder(child.remote_ts)]
        ini.probe(1.0 + n, ExchangeType.CREATE_CHILD_SA, payloads)
        exchange(ini, resp, 1.0 + n)
        for e in drain(resp):
            kernel_sas += sum(1 for op in table.plan(e) if type(op).__name__ == "AddSa")
    (view,) = resp.views()
    limit = resp.config.limits.max_child_sas
    print(f"Child SAs on one IKE SA: {len(view.children)} (max_child_sas {limit}); kernel SAs added: {kernel_sas}")
    assert len(view.children) <= limit
