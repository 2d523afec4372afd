"""Adversarial: one client behind a shared address evicts a live neighbour, again and again."""
import pytest

from enclave_ike.ikev2.initiator import exchange
from tests.test_ikev2_exchanges import initiator, live_responder, responder


@pytest.mark.xfail(strict=True, reason="a design limit, documented in docs/enclave-ike.md (Limits): past "
                   "max_sas_per_peer the SA heard least recently is replaced, so a neighbour behind the same address "
                   "that keeps its SAs fresh can evict a client that talks less; refusing instead would lock clients "
                   "out behind the SAs of vanished ones")
def test_a_live_client_is_not_evicted_by_a_neighbour_that_keeps_opening_sas():
    resp = responder(live_responder(max_sas_per_peer=2))
    victim = initiator(seed=b"victim")
    exchange(victim, resp, 0.0)
    evictions = 0
    attacker_sa = None
    for second in range(1, 6):
        t = float(second)
        if victim.sa.established and victim.sa.spi_r in {v.spi_r for v in resp.views()}:
            victim.check_liveness(t)  # the victim is alive and talks every second (ikectl: liveness_ms = 1000)
            exchange(victim, resp, t)
        if attacker_sa is not None:
            attacker_sa.check_liveness(t + 0.5)  # the attacker keeps its previous SA fresher than the victim
            exchange(attacker_sa, resp, t + 0.5)
        before = {v.spi_r for v in resp.views()}
        attacker_sa = initiator(seed=b"attacker%d" % second, now=t + 0.6)  # same address (I_END)
        exchange(attacker_sa, resp, t + 0.6)
        if victim.sa.spi_r in before and victim.sa.spi_r not in {v.spi_r for v in resp.views()}:
            evictions += 1
            victim = initiator(seed=b"victim%d" % second, now=t + 0.7)  # it notices and reconnects
            exchange(victim, resp, t + 0.7)
    print("victim evicted", evictions, "times in 5 s; counts", dict(resp.counts))
    assert evictions == 0
