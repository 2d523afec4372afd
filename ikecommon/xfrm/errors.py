"""Errors of the XFRM layer: bad input (nothing was sent), the kernel's refusals, undecodable replies."""

from __future__ import annotations

import errno as errno_codes

from ..errors import Error, UsageError


class XfrmError(Error):
    """Something in the XFRM layer went wrong."""


class InvalidXfrmInput(XfrmError, UsageError):
    """A selector, prefix, port, template or algorithm that cannot be installed: nothing was sent."""


class XfrmDecodeError(XfrmError):
    """A netlink message from the kernel that does not decode as linux/xfrm.h says it must."""


class KernelRefused(XfrmError):
    """The kernel answered a request with an error; `errno` and the kernel's own words are kept."""

    def __init__(self, operation: str, errno: int, detail: str | None) -> None:
        self.operation, self.errno, self.detail = operation, errno, detail or ""
        reason = errno_codes.errorcode.get(errno, str(errno))
        super().__init__(f"{operation}: the kernel refused ({reason}){': ' + detail if detail else ''}")


class NotFound(KernelRefused):
    """No such policy or SA: ENOENT, and ESRCH for an SA (what the kernel answers to deleting one that is not
    there)."""


class AlreadyExists(KernelRefused):
    """EEXIST: the policy or SA is already there (use update)."""


class EspUnsupported(KernelRefused):
    """This kernel cannot install ESP SAs (no CONFIG_INET_ESP, or the algorithm is not built)."""


def refusal(operation: str, errno: int, detail: str | None) -> KernelRefused:
    if errno == errno_codes.ENOENT or (errno == errno_codes.ESRCH and operation.startswith("delete SA")):
        return NotFound(operation, errno, detail)
    if errno == errno_codes.EEXIST:
        return AlreadyExists(operation, errno, detail)
    if errno in (errno_codes.ENOSYS, errno_codes.EPROTONOSUPPORT) and operation.startswith("add SA"):
        return EspUnsupported(operation, errno, detail)
    return KernelRefused(operation, errno, detail)
