"""Adversarial checks that held (kept as evidence)."""
from ipaddress import IPv4Address

from enclave_ike.ikev2.config import Endpoint
from enclave_ike.ikev2.events import IkeSaRekeyed, PeerAlive
from enclave_ike.ikev2.initiator import exchange
from tests.test_ikev2_exchanges import (
    I_END,
    R_END,
    deferred_pair,
    drain,
    initiator,
    live_responder,
    of,
    requested_signatures,
    responder,
)

OTHER = Endpoint(IPv4Address("198.51.100.99"), 500)


def test_spis_and_indexes_are_released_after_everything_ends():
    resp = responder(live_responder())
    for n in range(5):
        ini = initiator(seed=b"x%d" % n, local=Endpoint(IPv4Address(f"10.0.0.{n + 1}"), 500))
        exchange(ini, resp, 0.0)
        ini.rekey(1.0)
        exchange(ini, resp, 1.0)
        ini.create_child_sa(2.0)
        exchange(ini, resp, 2.0)
    half = initiator(seed=b"half", local=Endpoint(IPv4Address("10.0.0.77"), 500))
    resp.receive(half.datagrams_to_send()[0][0], half.local, 3.0)
    while (deadline := resp.get_timer()) is not None:
        resp.handle_timer(deadline)
        resp.datagrams_to_send()
    drain(resp)
    assert len(resp) == 0 and len(resp._spis) == 0 and not resp._by_peer and not resp._by_init
    assert not resp._half_open_per_peer and not resp._by_identity and not resp._address and not resp._init_key


def test_a_replayed_last_request_from_elsewhere_moves_nothing_and_keeps_nothing_alive():
    ini, resp = initiator(), responder(live_responder())
    exchange(ini, resp, 0.0)
    ini.check_liveness(1.0)
    (req, _), = ini.datagrams_to_send()
    resp.receive(req, I_END, 1.0)
    resp.datagrams_to_send()
    for t in (5.0, 9.0, 12.0, 14.0):
        resp.receive(req, OTHER, t)
        (_, to), = resp.datagrams_to_send()  # reflected to the spoofed source, same size as the cache
        assert to == OTHER
        while (deadline := resp.get_timer()) is not None and deadline <= t:
            resp.handle_timer(deadline)
            resp.datagrams_to_send()
    assert resp.views()[0].peer == I_END
    while (deadline := resp.get_timer()) is not None and deadline <= 16.0:
        resp.handle_timer(deadline)
    assert len(resp) == 0  # dead at 1 + 10 + 5


def test_a_retransmitted_ike_auth_while_signing_from_the_same_source_changes_nothing():
    ini, rcfg = deferred_pair()
    resp = responder(rcfg)
    exchange(ini, resp, 0.0)
    requested_signatures(resp)
    before = resp.views()
    ini.handle_timer(ini.get_timer())
    exchange(ini, resp, 0.5)
    assert resp.views() == before and not requested_signatures(resp)


def test_a_client_rekey_while_our_liveness_check_is_outstanding():
    ini, resp = initiator(), responder(live_responder())
    exchange(ini, resp, 0.0)
    resp.handle_timer(10.0)
    (probe, _), = resp.datagrams_to_send()
    ini.rekey(10.1)
    exchange(ini, resp, 10.1)  # crosses our probe: TEMPORARY_FAILURE (we have a request outstanding)
    print([type(e).__name__ for e in ini.events()])
    ini.receive(probe, R_END, 10.2)
    exchange(ini, resp, 10.2)
    assert of(drain(resp), PeerAlive)
    ini.rekey(10.3)
    exchange(ini, resp, 10.3)
    assert of(drain(resp), IkeSaRekeyed)
    (live,) = [v for v in resp.views() if v.state.name == "ESTABLISHED"]
    assert resp.sa(live.spi_r).last_heard == 10.3 and resp.sa(live.spi_r).get_timer() == 20.3
    while (deadline := resp.get_timer()) is not None and deadline <= 25.3:
        resp.handle_timer(deadline)
        resp.datagrams_to_send()
    assert len(resp) == 0 and resp.counts["IKE SA removed: dead peer"] == 1


def test_garbage_to_a_known_sa_does_not_grow_the_timer_heap_without_bound():
    ini, resp = initiator(), responder(live_responder())
    exchange(ini, resp, 0.0)
    ini.check_liveness(1.0)
    (req, _), = ini.datagrams_to_send()
    bogus = req[:-1] + bytes([req[-1] ^ 1])  # bad ICV: dropped, but collected
    for n in range(20_000):
        resp.receive(bogus, I_END, 1.0 + n * 1e-4)
    assert len(resp._timers) <= 4 * len(resp) + 1025
