"""`xfrm.Batches` over a fake netlink socket (the OS boundary): answers matched to requests by sequence number
whatever their order, stale and foreign answers ignored, and every way an answer can fail to come reported per
request, never raised. The real kernel answers in netns_tests/test_xfrm.py."""

import errno
import struct
from collections.abc import Callable
from ipaddress import ip_address

import pytest

from ikecommon.xfrm import Batches, Direction, Mode, NotFound, Policy, Request, Selector, Template, XfrmError
from ikecommon.xfrm.client import MAX_REQUESTS

HEADER = struct.Struct("=IHHII")
NLMSG_ERROR = 2


def ack(seq: int, error: int = 0) -> bytes:
    """An NLMSG_ERROR as a capped ack: the error, then the request's header."""
    return HEADER.pack(36, NLMSG_ERROR, 0x100, seq, 0) + struct.pack("=i", error) + HEADER.pack(16, 0, 0, seq, 0)


def sequence_numbers(datagram: bytes) -> list[int]:
    numbers, offset = [], 0
    while offset < len(datagram):
        length, _, _, seq, _ = HEADER.unpack_from(datagram, offset)
        numbers.append(seq)
        offset += (length + 3) & ~3
    return numbers


class FakeKernel:
    """Answers each datagram with what `answer(numbers)` returns: bytes to read (one recv each), or an exception
    for recv to raise."""

    def __init__(self, answer: Callable[[list[int]], list[bytes | OSError]]) -> None:
        self.answer, self.queued, self.datagrams = answer, list[bytes | OSError](), list[list[int]]()
        self.timeout: float | None = 5.0

    def send(self, datagram: bytes) -> int:
        self.datagrams.append(sequence_numbers(datagram))
        self.queued += self.answer(self.datagrams[-1])
        return len(datagram)

    def setblocking(self, flag: bool) -> None:
        self.timeout = None if flag else 0.0

    def settimeout(self, timeout: float | None) -> None:
        self.timeout = timeout

    def recv(self, size: int) -> bytes:
        if not self.queued:
            if self.timeout == 0.0:
                raise BlockingIOError
            raise TimeoutError
        item = self.queued.pop(0)
        if isinstance(item, OSError):
            raise item
        return item

    def close(self) -> None:
        pass


def batches(kernel: FakeKernel, sequence: int = 0) -> Batches:
    made = Batches.__new__(Batches)
    made._sock, made._sequence = kernel, sequence  # type: ignore[assignment]
    return made


def deletes(count: int) -> list[Request]:
    return [Request.delete_policy(Policy(Selector.of("10.0.0.1/32", f"10.1.{n // 250}.{n % 250}/32", "udp",
                                                     dport=53), Direction.OUT, 10,
                                         templates=(Template(Mode.TRANSPORT),))) for n in range(count)]


def test_answers_in_any_order_across_the_wrap_of_the_sequence_number():
    kernel = FakeKernel(lambda numbers: [b"".join(ack(n, -errno.ENOENT if n % 2 else 0) for n in reversed(numbers))])
    results = batches(kernel, sequence=2**32 - 3).run(deletes(6))
    assert kernel.datagrams == [[2**32 - 2, 2**32 - 1, 0, 1, 2, 3]]
    assert [type(r) for r in results] == [type(None), NotFound, type(None), NotFound, type(None), NotFound]
    assert "delete policy 10.0.0.1/32 -> 10.1.0.1/32 proto 17 dport 53 dir out" in str(results[1])


def test_stale_and_foreign_answers_are_not_taken_for_ours():
    """A late answer of a batch that timed out (queued before the run), and one with a number not ours."""
    kernel = FakeKernel(lambda numbers: [ack(numbers[0] + 100, -errno.EEXIST) + ack(numbers[0])])
    kernel.queued += [ack(1, -errno.EPERM),  # the previous batch's number 1 ...
                      OSError(errno.ENOBUFS, "No buffer space available")]  # and its socket's pending error
    made = batches(kernel)
    assert made.run(deletes(1)) == [None]  # ... and this batch's number 1 again is answered by its own ack
    assert kernel.queued == []


def test_a_long_list_goes_in_several_datagrams_and_after_one_fails_the_rest_are_not_sent():
    """The second datagram's answers are lost (ENOBUFS: the receive buffer overflowed): what the first learned is
    kept, the second's requests are reported unknown, the third is not sent."""
    def answer(numbers: list[int]) -> list[bytes | OSError]:
        if numbers[0] == 1:
            return [b"".join(ack(n) for n in numbers)]
        return [ack(numbers[0]), OSError(errno.ENOBUFS, "No buffer space available")]

    kernel = FakeKernel(answer)
    results = batches(kernel).run(deletes(2 * MAX_REQUESTS + 5))
    assert [len(d) for d in kernel.datagrams] == [MAX_REQUESTS, MAX_REQUESTS]
    first, second, third = results[:MAX_REQUESTS], results[MAX_REQUESTS:2 * MAX_REQUESTS], results[2 * MAX_REQUESTS:]
    assert first == [None] * MAX_REQUESTS
    assert second[0] is None  # its answer came before the error
    assert all(isinstance(r, XfrmError) and "the netlink socket failed: No buffer space available" in str(r)
               for r in second[1:])
    assert len(third) == 5 and all("not sent: the netlink socket failed" in str(r) for r in third)


@pytest.mark.parametrize(("failure", "words"), [
    (TimeoutError(), "the kernel did not answer within 5 s"),
    (OSError(errno.EBADF, "Bad file descriptor"), "the netlink socket failed: Bad file descriptor"),
    (b"\x10\x00\x00\x00", "an answer from the kernel does not decode"),
])
def test_no_answer_is_reported_for_each_request_never_raised(failure, words):
    kernel = FakeKernel(lambda numbers: [failure])
    results = batches(kernel).run(deletes(3))
    assert all(isinstance(r, XfrmError) and str(r).startswith("delete policy") and words in str(r) for r in results)
    assert batches(FakeKernel(lambda numbers: [ack(n) for n in numbers])).run(deletes(2)) == [None, None]


def test_a_request_too_long_for_the_limit_still_goes_alone():
    message = bytearray(Request.delete_sa(ip_address("10.0.0.53"), 1).message + bytes(40000))  # padded attributes
    HEADER.pack_into(message, 0, len(message), *HEADER.unpack_from(message)[1:])
    long_sa_delete = Request("delete SA spi 0x00000001 to 10.0.0.53", bytes(message))
    kernel = FakeKernel(lambda numbers: [ack(n) for n in numbers])
    assert batches(kernel).run([*deletes(2), long_sa_delete, *deletes(1)]) == [None] * 4
    assert [len(d) for d in kernel.datagrams] == [2, 1, 1]
