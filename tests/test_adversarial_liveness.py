"""Adversarial: liveness edge cases."""
from enclave_ike.ikev2.config import Identity, Limits, ResponderConfig, Timers
from enclave_ike.ikev2.constants import ExchangeType
from enclave_ike.ikev2.events import SaDeleted
from enclave_ike.ikev2.initiator import exchange
from enclave_ike.ikev2.payloads import IkeHeader, Message
from tests.test_ikev2_exchanges import DNS, I_END, drain, initiator, of, responder


def run_timers(resp, until):
    while (deadline := resp.get_timer()) is not None and deadline <= until:
        resp.handle_timer(deadline)
        resp.datagrams_to_send()


def test_a_dead_peer_is_counted_whatever_liveness_timeout_is():
    # serve's [limits] liveness_timeout_s = 60 (any positive value is accepted); retransmit stays 0.5 s x 6 sends
    rcfg = ResponderConfig(local_id=Identity.null(), dns=DNS, timers=Timers(liveness=30.0, liveness_timeout=60.0),
                           limits=Limits())
    ini = initiator()
    resp = responder(rcfg)
    exchange(ini, resp, 0.0)
    drain(resp)
    run_timers(resp, 200.0)
    (gone,) = [e for e in of(drain(resp), SaDeleted) if not e.spi_in]
    print("removed:", gone.reason, "counts:", dict(resp.counts))
    assert len(resp) == 0
    assert resp.counts.get("IKE SA removed: dead peer") == 1, f"a dead peer, not counted: {gone.reason!r}"


def test_rekey_then_vanish_everything_gone_within_liveness_plus_timeout():
    """serve: liveness_s = 5, liveness_timeout_s = 5. The client rekeys its IKE SA, then vanishes before it
    deletes the old one (its Delete is lost)."""

    def lose_delete(direction, data):
        header = Message.decode(data).header
        return None if direction == "i->r" and header.exchange == ExchangeType.INFORMATIONAL else data

    rcfg = ResponderConfig(local_id=Identity.null(), dns=DNS, timers=Timers(liveness=5.0, liveness_timeout=5.0),
                           limits=Limits())
    ini = initiator()
    resp = responder(rcfg)
    exchange(ini, resp, 0.0)
    ini.rekey(1.0)
    exchange(ini, resp, 1.0, intercept=lose_delete)
    assert len(resp) == 2
    run_timers(resp, 11.0)  # last message at 1.0: gone by 1 + 5 + 5
    print("IKE SAs left at 11 s:", [v.state.name for v in resp.views()])
    assert len(resp) == 0


def test_a_captured_re_encrypted_copy_of_the_last_request_does_not_keep_a_dead_peer_alive():
    """state.py answers, and counts as heard, any authentic copy of the last request ("a peer may re-encrypt").
    A copy the attacker captured is authentic forever: replayed, it keeps a vanished client's SAs."""
    rcfg = ResponderConfig(local_id=Identity.null(), dns=DNS, timers=Timers(liveness=10.0, liveness_timeout=5.0),
                           limits=Limits())
    ini, resp = initiator(), responder(rcfg)
    exchange(ini, resp, 0.0)
    ini.check_liveness(1.0)
    (original, _), = ini.datagrams_to_send()
    header = Message.decode(original).header
    reencrypted = ini.sa._encode(IkeHeader(header.spi_i, header.spi_r, header.exchange, header.flags,
                                           header.message_id), (), protected=True)  # the client's retransmission
    assert reencrypted != original
    resp.receive(original, I_END, 1.0)
    resp.datagrams_to_send()
    # the client vanishes; an attacker who captured the re-encrypted copy replays it every 9 s
    t = 1.0
    while t < 100.0:
        t += 9.0
        run_timers(resp, t)
        resp.receive(reencrypted, I_END, t)
        resp.datagrams_to_send()
    print("IKE SAs at 100 s:", len(resp))
    assert len(resp) == 0
