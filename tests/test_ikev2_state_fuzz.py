"""Hostile datagrams into a Responder in every state: random bytes, random headers aimed at our SPIs, and mutations
of a real in-memory exchange (every exchange type, both directions, plus requests held back so that they were never
delivered).

The properties, for every input:
- `Responder.receive` returns normally (an IkeError subclass would be tolerated and counted; anything else fails);
- whatever it sends decodes, is a response, and when unprotected is an IKE_SA_INIT answer or carries only the
  Notify types RFC 7296 allows without protection (never INVALID_SYNTAX);
- the SAs that were half-open, established or waiting for deletion before the input are exactly as they were
  after it (`IkeSaView`, which covers state, SPIs, Child SAs, message IDs and the cached response).

Targets: a fresh responder (new IKE SAs in EXPECT_IKE_SA_INIT), one with a half-open SA (EXPECT_IKE_AUTH), and one
with an ESTABLISHED IKE SA and, beside it, the IKE SA it replaced, in EXPECT_DELETE.

Mutations of protected messages mostly stop at the ICV, as they should. A NULL-authenticated peer, though, is anyone:
`test_authenticated_garbage` plays such an insider and sends well-protected requests with generated payloads
(proposals, KE values, selectors, notifies, deletes, undecodable bodies) into an established SA, checking that the
responder answers within the RFC and stays consistent.

The world, the generators and the properties live in fuzz/generators.py, shared with the long fuzz target
`python -m fuzz.ikev2` (fuzz/README.md); `test_fuzz_target_runs` runs that target with a small count."""

import random
import time
from collections import Counter
from functools import cache

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fuzz import ikev2 as target_main
from fuzz.generators import (
    I_END,
    SOURCES,
    Insider,
    Violation,
    World,
    aimed_header,
    build_world,
    encodable,
    feed,
    insider_request,
    mutate,
    mutate_behind_spis,
)

STATS: Counter[str] = Counter()


@cache
def world() -> World:
    return build_world()


targets = st.integers(0, 2)
sources = st.sampled_from(SOURCES)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(targets, st.binary(max_size=600), sources)
def test_random_bytes_in_every_state(which, data, source):
    feed(world().targets[which], data, source, STATS)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(targets, st.sampled_from([34, 35, 36, 37, 0, 255]), st.integers(0, 255), st.integers(0, 5),
       st.integers(0, 60), st.binary(max_size=300), st.booleans(), sources)
def test_headers_aimed_at_our_spis(which, exchange_type, flags, message_id, first_payload, body, spi_r_zero,
                                   source):
    """A well-formed header naming an SA the responder has (or a zero SPIr), with anything behind it."""
    target = world().targets[which]
    data = aimed_header(target.responder.views(), exchange_type, flags, message_id, first_payload, body, spi_r_zero)
    feed(target, data, source, STATS)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(targets, st.integers(0, 10_000), st.integers(0, 2**32 - 1), sources)
def test_mutated_exchange_in_every_state(which, index, seed, source):
    w = world()
    original = w.corpus[index % len(w.corpus)]
    rng = random.Random(seed)
    data = mutate_behind_spis(rng, original) if rng.random() < 0.5 else mutate(rng, original)
    feed(w.targets[which], data, source, STATS)


def test_replayed_corpus_changes_nothing():
    """Every genuine datagram of the exchange, delivered again to every target: old message IDs are dropped, the
    last request of each SA is answered from its cache."""
    w = world()
    for target in w.targets:
        for data in w.corpus:
            feed(target, data, I_END, STATS)


def test_many_mutations(capsys):
    """A longer deterministic run; prints its counts (recorded in the report)."""
    w = world()
    rng = random.Random(20261123)
    start, count = time.perf_counter(), 0
    before = Counter(STATS)
    while count < 100_000:
        original = rng.choice(w.corpus)
        data = mutate_behind_spis(rng, original) if rng.random() < 0.6 else mutate(rng, original)
        feed(rng.choice(w.targets), data, rng.choice(SOURCES), STATS)
        count += 1
    elapsed = time.perf_counter() - start
    delta = Counter(STATS)
    delta.subtract(before)
    with capsys.disabled():
        print(f"\nstate fuzz: {count} mutated datagrams in {elapsed:.2f} s; {dict(delta)}; "
              f"SAs held: {[len(t.responder) for t in w.targets]}")
    assert delta["ike_error"] == 0


# --- an authenticated peer sending garbage inside SK ---

@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.randoms(use_true_random=False), min_size=1, max_size=3), st.booleans())
def test_authenticated_garbage(rngs, use_real_spis):
    """Generated payloads (fuzz.generators.insider_request) in protected requests; Insider.send checks that every
    answer decodes, that the responder's SAs stay ESTABLISHED or EXPECT_DELETE with distinct Child SPIs, and that it
    holds at most two IKE SAs for the peer."""
    insider = Insider.start()
    for rng in rngs:
        exchange_type, payloads = insider_request(rng)
        assume(encodable(payloads))
        if not insider.usable():
            break
        insider.send(exchange_type, payloads, STATS, aim_at_child=use_real_spis)


# --- the long fuzz target, with a small count ---

def test_fuzz_target_runs(capsys):
    assert target_main.main(["--inputs", "3000", "--seed", "7", "--progress", "1000"]) == 0
    out = capsys.readouterr().out
    assert "fuzz ikev2: 3000 inputs" in out and "other exceptions 0" in out
    assert out.count("failures 0") == 3


def test_fuzz_target_saves_a_failing_input(tmp_path, monkeypatch, capsys):
    """Any exception that is not a typed error, and any Violation, stops the run: exit 1, the input saved."""
    def broken(*args, **kwargs):
        raise KeyError("boom")
    monkeypatch.setattr(target_main, "decode", broken)
    assert target_main.main(["--inputs", "50", "--crash-dir", str(tmp_path)]) == 1
    saved = list(tmp_path.glob("ikev2-seed1-*.json"))
    assert len(saved) == 1
    assert "KeyError" in capsys.readouterr().err
    assert target_main.main(["--replay", str(saved[0])]) == 1  # still broken
    monkeypatch.undo()
    assert target_main.main(["--replay", str(saved[0])]) == 0


def test_a_violation_is_a_failure(tmp_path, monkeypatch):
    def changed(*args, **kwargs):
        raise Violation("an SA changed")
    monkeypatch.setattr(target_main, "feed", changed)
    assert target_main.main(["--inputs", "50", "--crash-dir", str(tmp_path)]) == 1
    assert len(list(tmp_path.glob("*.json"))) == 1
