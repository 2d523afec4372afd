"""The resolver as userspace ESP asks it (enclave_ike/upstream.py), against a real UDP resolver on loopback: every
query shares one socket with an ID of its own, each answer goes to its own query with the client's ID back, and
what is late, unknown or from elsewhere answers nothing. Each test runs on asyncio's own loop and on uvloop's (what
serve runs on)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from ipaddress import ip_address
from typing import Any

import dns.message
import dns.name
import pytest
import uvloop

from enclave_ike.config import MAX_QUERIES_IN_FLIGHT
from enclave_ike.ikev2.config import Endpoint
from enclave_ike.upstream import MAX_IN_FLIGHT, UdpResolver

TIMEOUT_S = 0.3

Run = Callable[[Coroutine[Any, Any, Any]], Any]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Run:
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(coroutine)

    return run


class Resolver(asyncio.DatagramProtocol):
    """A resolver on 127.0.0.1 that answers every query it gets (or holds them, to be answered by hand)."""

    def __init__(self, answering: bool = True) -> None:
        self.answering = answering
        self.held: list[tuple[bytes, tuple[str, int]]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.answering:
            self.answer(data, addr)
        else:
            self.held.append((data, addr))

    def answer(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(dns.message.make_response(dns.message.from_wire(data)).to_wire(), addr)


async def resolver(answering: bool = True) -> tuple[Resolver, Endpoint]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(lambda: Resolver(answering),
                                                              local_addr=("127.0.0.1", 0))
    return protocol, Endpoint(ip_address("127.0.0.1"), transport.get_extra_info("sockname")[1])


async def asking(answering: bool = True) -> tuple[Resolver, UdpResolver]:
    """A resolver on loopback, and a started UdpResolver that asks it."""
    server, endpoint = await resolver(answering)
    upstream = UdpResolver(endpoint, TIMEOUT_S)
    await upstream.start()
    return server, upstream


def query(name: str, query_id: int) -> bytes:
    message = dns.message.make_query(name, "A")
    message.id = query_id
    return message.to_wire()


def collector() -> tuple[list[bytes | None], Callable[[bytes | None], None]]:
    answers: list[bytes | None] = []
    return answers, answers.append


async def until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)


def test_queries_with_one_client_id_each_get_their_own_answer_with_that_id_back(run: Run) -> None:
    async def scenario() -> list[bytes | None]:
        _, upstream = await asking()
        answers: dict[str, list[bytes | None]] = {}
        for name in ("a.example.", "b.example.", "c.example."):  # three clients that all chose ID 7
            answers[name], answered = collector()
            upstream.ask(query(name, 7), answered)
        assert upstream.in_flight == 3
        await until(lambda: all(answers.values()))
        upstream.close()
        assert upstream.in_flight == 0
        return [answer for name in sorted(answers) for answer in answers[name]]

    got = run(scenario())
    assert len(got) == 3 and all(answer is not None for answer in got)
    messages = [dns.message.from_wire(answer) for answer in got if answer is not None]
    assert [m.id for m in messages] == [7, 7, 7]
    assert [m.question[0].name.to_text() for m in messages] == ["a.example.", "b.example.", "c.example."]


def test_no_answer_in_time_is_none_and_a_late_or_unknown_answer_is_ignored(run: Run) -> None:
    async def scenario() -> tuple[list[bytes | None], list[bytes | None]]:
        server, upstream = await asking(answering=False)
        late, answered = collector()
        upstream.ask(query("late.example.", 1), answered)
        await until(lambda: len(server.held) == 1)
        data, addr = server.held.pop()
        await until(lambda: late == [None])  # the timeout
        server.answer(data, addr)  # late: its ID is no longer in flight
        server.answer(query("forged.example.", int.from_bytes(data[:2], "big") ^ 1), addr)  # an ID never used
        later, answered = collector()
        upstream.ask(query("next.example.", 2), answered)
        await until(lambda: len(server.held) == 1)
        server.answer(*server.held.pop())
        await until(lambda: bool(later))
        await asyncio.sleep(0.05)
        upstream.close()
        return late, later

    late, later = run(scenario())
    assert late == [None]  # once, never again with the late answer
    assert len(later) == 1 and later[0] is not None
    assert dns.message.from_wire(later[0]).question[0].name.to_text() == "next.example."


def test_an_answer_from_another_address_never_reaches_a_query(run: Run) -> None:
    async def scenario() -> list[bytes | None]:
        server, upstream = await asking(answering=False)
        answers, answered = collector()
        upstream.ask(query("a.example.", 3), answered)
        await until(lambda: len(server.held) == 1)
        data, addr = server.held[0]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as spoofer:  # right ID, wrong source port
            spoofer.bind(("127.0.0.1", 0))
            spoofer.sendto(dns.message.make_response(dns.message.from_wire(data)).to_wire(), addr)
        await until(lambda: bool(answers))
        upstream.close()
        return answers

    assert run(scenario()) == [None]  # the spoofed answer was not taken; the query timed out


def test_a_resolver_that_does_not_listen_answers_none_at_once_and_the_socket_keeps_working(run: Run) -> None:
    async def scenario() -> tuple[list[bytes | None], float, list[bytes | None]]:
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed_port:
            closed_port.bind(("127.0.0.1", 0))
            port = closed_port.getsockname()[1]
        upstream = UdpResolver(Endpoint(ip_address("127.0.0.1"), port), timeout=5.0)
        await upstream.start()
        refused, answered = collector()
        asked = loop.time()
        upstream.ask(query("a.example.", 4), answered)
        await until(lambda: bool(refused))
        waited = loop.time() - asked
        server = await loop.create_datagram_endpoint(Resolver, local_addr=("127.0.0.1", port))  # it comes up
        again, answered = collector()
        upstream.ask(query("b.example.", 5), answered)
        await until(lambda: bool(again))
        server[0].close()
        upstream.close()
        return refused, waited, again

    refused, waited, again = run(scenario())
    assert refused == [None] and waited < 1.0  # ICMP port unreachable, not the 5 s timeout
    assert len(again) == 1 and again[0] is not None


def test_closing_forgets_the_queries_in_flight_and_later_queries_get_none(run: Run) -> None:
    async def scenario() -> tuple[list[bytes | None], list[bytes | None]]:
        _, upstream = await asking(answering=False)
        waiting, answered = collector()
        upstream.ask(query("a.example.", 1), answered)
        upstream.close()
        after, answered = collector()
        upstream.ask(query("b.example.", 2), answered)
        await asyncio.sleep(2 * TIMEOUT_S)
        return waiting, after

    waiting, after = run(scenario())
    assert waiting == [] and after == [None]


def test_a_late_answer_never_reaches_the_next_query_given_its_id(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    """The resolver answers a query after it timed out, when its ID on the socket went to another client's query:
    that answer repeats the first query's question, so the second query does not take it (found by a review: a
    client could have collected other clients' late answers with its own ID on them)."""
    monkeypatch.setattr("enclave_ike.upstream.secrets.randbits", lambda bits: 4242)  # every query: the same ID

    async def scenario() -> tuple[list[bytes | None], list[bytes | None]]:
        server, upstream = await asking(answering=False)
        alice, answered = collector()
        upstream.ask(query("secret.alice.example.", 1), answered)
        await until(lambda: alice == [None] and len(server.held) == 1)  # timed out, unanswered
        bob, answered = collector()
        upstream.ask(query("www.bob.example.", 2), answered)  # gets ID 4242 too
        await until(lambda: len(server.held) == 2)
        server.answer(*server.held[0])  # Alice's answer, late
        await asyncio.sleep(0.05)
        taken_by_bob = list(bob)
        server.answer(*server.held[1])  # Bob's own
        await until(lambda: bool(bob))
        upstream.close()
        return taken_by_bob, bob

    before_his_own, bob = run(scenario())
    assert before_his_own == []
    assert len(bob) == 1 and bob[0] is not None
    answer = dns.message.from_wire(bob[0])
    assert answer.id == 2 and answer.question[0].name.to_text() == "www.bob.example."


def test_the_question_is_matched_without_case_and_a_query_without_one_takes_only_an_answer_without_one(
        run: Run) -> None:
    async def scenario() -> tuple[list[bytes | None], list[bytes | None], list[bytes | None]]:
        server, upstream = await asking(answering=False)
        assert server.transport is not None
        mixed, answered = collector()
        upstream.ask(query("MiXeD.Example.", 5), answered)
        headerless, answered_headerless = collector()
        garbage = b"\x00\x09" + b"\x00" * 10  # a header with no question
        upstream.ask(garbage, answered_headerless)
        await until(lambda: len(server.held) == 2)
        (asked, addr), (garbage_sent, _) = server.held
        lower = dns.message.make_response(dns.message.from_wire(asked))
        lower.question[0].name = dns.name.from_text("mixed.example.")
        server.transport.sendto(lower.to_wire(), addr)  # the same question in another case: taken
        server.transport.sendto(garbage_sent[:2] + b"\x81\x01" + b"\x00" * 8, addr)  # FORMERR, no question: taken
        await until(lambda: bool(mixed) and bool(headerless))
        other, answered = collector()
        upstream.ask(garbage, answered)
        await until(lambda: len(server.held) == 3)
        with_question = dns.message.make_response(dns.message.make_query("a.example.", "A"))
        server.transport.sendto(server.held[2][0][:2] + with_question.to_wire()[2:], addr)  # not its answer
        await until(lambda: bool(other))  # the timeout
        upstream.close()
        return mixed, headerless, other

    mixed, headerless, other = run(scenario())
    assert mixed[0] is not None and dns.message.from_wire(mixed[0]).id == 5
    assert headerless[0] is not None and headerless[0][:2] == b"\x00\x09"
    assert other == [None]


def test_the_timeout_timer_fires_once_per_deadline_on_a_millisecond_clock(run: Run) -> None:
    """uvloop's clock counts milliseconds: a deadline a fraction of one ahead must not re-arm the timer at once,
    again and again, until the clock ticks (found by a review: ~27 firings per query with a 0.3 s timeout)."""
    fired = []

    class Counting(UdpResolver):
        def _expire(self) -> None:
            fired.append(self._loop.time())
            super()._expire()

    async def scenario() -> list[bytes | None]:
        _, endpoint = await resolver(answering=False)
        upstream = Counting(endpoint, 0.1)
        await upstream.start()
        answers, answered = collector()
        for number in range(20):
            upstream.ask(query(f"q{number}.example.", number), answered)
            await asyncio.sleep(0.013)
        await until(lambda: len(answers) == 20)
        upstream.close()
        return answers

    assert run(scenario()) == [None] * 20
    assert len(fired) <= 40, len(fired)  # one per query, or a few more when two deadlines are a tick apart


def test_the_config_allows_no_more_queries_in_flight_than_the_socket_has_ids_for() -> None:
    assert MAX_QUERIES_IN_FLIGHT == MAX_IN_FLIGHT <= 1 << 15  # half the ID space: a free ID in about two draws
