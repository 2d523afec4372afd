"""enclave-ike's KernelApplier over a fake netlink batch (the OS boundary): what it sends for each operation, and how
the kernel's answers become one result per operation. The real kernel answers in netns_tests/test_xfrm.py (batches)
and in the VM's kernel-mode enclave-ike tests."""

import errno
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address

import pytest

from enclave_ike.apply import AddSa, ApplyError, DeletePolicy, DeleteSa, KernelApplier, LogApplier, SetPolicy
from ikecommon import xfrm
from ikecommon.xfrm import Direction, Mode, Policy, Request, SaSpec, Selector, Template, algorithm
from ikecommon.xfrm.errors import refusal

LOCAL, PEER = ip_address("10.9.0.53"), ip_address("10.9.0.1")
SA_IN = SaSpec(PEER, LOCAL, 0x1001, (algorithm("aes-gcm-16", bytes(20)),), Mode.TRANSPORT, reqid=7)
SA_OUT = SaSpec(LOCAL, PEER, 0x1002, (algorithm("aes-gcm-16", bytes(20)),), Mode.TRANSPORT, reqid=7)
POLICY = Policy(Selector.of("10.9.0.53/32", "10.9.0.1/32", "udp", sport=53), Direction.OUT, 1_500_000,
                templates=(Template(Mode.TRANSPORT, reqid=7),))
INSTALL = (AddSa(SA_IN), AddSa(SA_OUT), SetPolicy(POLICY))
REMOVE = (DeleteSa(LOCAL, 0x1001), DeleteSa(PEER, 0x1002), DeletePolicy(POLICY))


@dataclass
class FakeBatches:
    """Answers each request with what `answers` maps its operation text to (None: done)."""

    answers: dict[str, xfrm.XfrmError | None] = field(default_factory=dict)
    silent: bool = False
    sent: list[list[str]] = field(default_factory=list)
    closed: bool = False

    def run(self, requests: Sequence[Request]) -> list[xfrm.XfrmError | None]:
        self.sent.append([r.operation for r in requests])
        if self.silent:
            return [xfrm.XfrmError(f"{r.operation}: the kernel did not answer within 5 s") for r in requests]
        return [self.answers.get(r.operation) for r in requests]

    def close(self) -> None:
        self.closed = True


def applier(fake: FakeBatches) -> KernelApplier:
    return KernelApplier(lambda: fake)  # type: ignore[arg-type, return-value]


def test_an_events_operations_go_in_one_batch_in_order():
    fake = FakeBatches()
    kernel = applier(fake)
    assert kernel.run(INSTALL) == [None, None, None]
    assert kernel.run(REMOVE) == [None, None, None]
    assert fake.sent == [[Request.add_sa(SA_IN).operation, Request.add_sa(SA_OUT).operation,
                          Request.update_policy(POLICY).operation],
                         [Request.delete_sa(LOCAL, 0x1001).operation, Request.delete_sa(PEER, 0x1002).operation,
                          Request.delete_policy(POLICY).operation]]
    kernel.close()
    assert fake.closed


def test_deleting_what_is_gone_is_done_and_adding_what_is_there_is_not():
    """An SA that expired before its Delete (the kernel answers ESRCH) or a policy already removed (ENOENT): what
    was wanted. An SA add the kernel refuses (here: it is there already, as after a replayed event) is an error of
    that operation alone."""
    add_in, delete_in = Request.add_sa(SA_IN).operation, Request.delete_sa(LOCAL, 0x1001).operation
    delete_policy = Request.delete_policy(POLICY).operation
    fake = FakeBatches({add_in: refusal(add_in, errno.EEXIST, None), delete_in: refusal(delete_in, errno.ESRCH, None),
                        delete_policy: refusal(delete_policy, errno.ENOENT, None)})
    kernel = applier(fake)
    first, *rest = kernel.run(INSTALL)
    assert isinstance(first, ApplyError) and "add SA spi 0x00001001" in str(first) and "EEXIST" in str(first)
    assert rest == [None, None]
    assert kernel.run(REMOVE) == [None, None, None]
    fake.answers = {add_in: refusal(add_in, errno.ESRCH, None)}  # ESRCH is "not found" for a delete only
    assert isinstance(kernel.run(INSTALL)[0], ApplyError)


def test_a_kernel_that_does_not_answer_fails_every_operation_of_the_batch():
    kernel = applier(FakeBatches(silent=True))
    results = kernel.run(REMOVE)  # not even a delete is known to be done
    assert len(results) == 3 and all(isinstance(r, ApplyError) and "did not answer" in str(r) for r in results)


def test_no_socket_fails_what_would_have_been_sent_and_the_next_call_tries_again():
    made: list[FakeBatches] = []

    def factory() -> FakeBatches:
        if not made:
            made.append(FakeBatches())
            raise xfrm.XfrmError("a netlink socket for XFRM requests: Too many open files")
        return made[0]

    kernel = KernelApplier(factory)  # type: ignore[arg-type]
    socket_policy = Policy(POLICY.selector, Direction.SOCKET_OUT, 1)
    first = kernel.run((AddSa(SA_IN), SetPolicy(socket_policy)))
    assert "Too many open files" in str(first[0]) and "belong to a socket" in str(first[1])
    assert kernel.run(INSTALL) == [None, None, None] and len(made[0].sent) == 1


def test_an_operation_xfrm_cannot_express_fails_alone_and_sends_nothing():
    fake = FakeBatches()
    socket_policy = Policy(POLICY.selector, Direction.SOCKET_OUT, 1)  # pluto's kind, read from dumps only
    results = applier(fake).run((AddSa(SA_IN), SetPolicy(socket_policy), AddSa(SA_OUT)))
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], ApplyError) and "belong to a socket" in str(results[1])
    assert fake.sent == [[Request.add_sa(SA_IN).operation, Request.add_sa(SA_OUT).operation]]


@pytest.mark.parametrize("operations", [(), INSTALL])
def test_the_log_applier_applies_nothing(operations):
    assert LogApplier().run(operations) == [None] * len(operations)
