"""The client side of enclave-ike's evidence endpoint (enclave_ike/evidence_endpoint.py serves it): the evidence for a
nonce, and the IKE ID the server says it authenticates as. Used by `ikectl trust` and `enclave-ike evidence`.

It speaks to that endpoint only (plain HTTP/1.1, no proxies, no redirects) and bounds the whole exchange by one
deadline. Nothing it returns is trusted: the attestation verifiers check the envelope, and the pinned key, not the
ID, is what authenticates the resolver. asyncio and the attestation package are imported by the call, not with the
module: ikectl's config needs DEFAULT_PORT, and a command that fetches nothing must not pay for them.
"""

# ruff: noqa: PLC0415 - asyncio and the envelope's bound are imported where a request is made (see above)

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from http import HTTPStatus
from ipaddress import ip_address
from typing import TYPE_CHECKING

from .errors import Error

if TYPE_CHECKING:
    import asyncio

DEFAULT_PORT = 4501  # TCP
CMW_JSON = "application/cmw+json"  # draft-ietf-rats-msg-wrap: a CMW collection in JSON
IDENTITY_VERSION = 1
MAX_IDENTITY = 4096


class EndpointError(Error):
    """The endpoint could not start, or a client could not get an answer from one."""


def fetch_evidence(address: str, port: int, nonce: bytes, timeout: float = 10.0, *, next_key: bool = False) -> bytes:
    """The envelope the endpoint at address:port makes for `nonce` (not yet verified: verify_envelope does); with
    `next_key`, for the next key of a rotation under way (404 when there is none)."""
    from .attestation.envelope import MAX_ENVELOPE

    return fetch(address, port, f"/evidence?nonce={nonce.hex()}{'&key=next' if next_key else ''}", MAX_ENVELOPE,
                 timeout)


@dataclass(frozen=True)
class ServedIdentity:
    """What GET /identity says (unverified: the key is what is pinned)."""

    id: str
    next_switch_at: int | None = None  # a rotation under way: the resolver signs with its next key from then


def fetch_identity(address: str, port: int, timeout: float = 10.0) -> str:
    """The IKE ID the server at address says it authenticates as (unverified: the key is what is pinned)."""
    return fetch_served_identity(address, port, timeout).id


def fetch_served_identity(address: str, port: int, timeout: float = 10.0) -> ServedIdentity:
    """The IKE ID, and the switch time of a rotation under way, as the server at address says."""
    body = fetch(address, port, "/identity", MAX_IDENTITY, timeout)
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if not isinstance(document, dict) or document.get("version") != IDENTITY_VERSION \
            or not isinstance(document.get("id"), str):
        raise EndpointError(f"evidence endpoint {hostport(address, port)}: /identity is not a version "
                            f"{IDENTITY_VERSION} identity")
    rotation = document.get("next")
    switch_at = rotation.get("switch_at") if isinstance(rotation, dict) else None
    if rotation is not None and (type(switch_at) is not int or switch_at <= 0):
        raise EndpointError(f"evidence endpoint {hostport(address, port)}: /identity: next is not "
                            '{"switch_at": UNIX TIME}')
    return ServedIdentity(str(document["id"]), switch_at)


def fetch(address: str, port: int, target: str, limit: int, timeout: float, what: str = "evidence endpoint") -> bytes:
    """GET target from address:port; the body of a 200 answer, at most `limit` bytes, all within `timeout`. Errors
    name the server as `what` (key release's key broker source uses this too)."""
    import asyncio

    where = f"{what} {hostport(address, port)}"
    try:
        status, body = asyncio.run(asyncio.wait_for(_get(address, port, target, limit), timeout))
    except TimeoutError:
        raise EndpointError(f"{where}: no answer within {timeout:g} s") from None
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise EndpointError(f"{where}: {reason}") from None
    if status != HTTPStatus.OK:
        said = body.decode("utf-8", "replace").strip().splitlines()
        raise EndpointError(f"{where}: {status} {said[0][:200] if said else ''}".rstrip())
    return body


async def _get(address: str, port: int, target: str, limit: int) -> tuple[int, bytes]:
    import asyncio

    reader, writer = await asyncio.open_connection(address, port, limit=16 * 1024)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: {hostport(address, port)}\r\nConnection: close\r\n"
                     f"Accept: {CMW_JSON}, application/json\r\n\r\n".encode("ascii"))
        await writer.drain()
        return await read_answer(reader, limit)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def read_answer(reader: asyncio.StreamReader, limit: int) -> tuple[int, bytes]:
    """(status, body) of an HTTP/1.x answer that ends with the connection (`Connection: close`): a body of at most
    `limit` bytes, its Content-Length (if any) checked. OSError for anything else. Key release's joiner uses it too."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status_line, *headers = head[:-4].split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not (parts[1].isascii() and parts[1].isdigit()):
        raise OSError(f"not an HTTP answer: {status_line[:80]!r}")
    body = await reader.read(limit + 1)
    while body and len(body) <= limit and (more := await reader.read(limit + 1 - len(body))):
        body += more
    if len(body) > limit:
        raise OSError(f"answer over {limit} bytes")
    length = next((value.strip() for name, _, value in (h.partition(":") for h in headers)
                   if name.strip().lower() == "content-length"), None)
    if length is not None and (not (length.isascii() and length.isdigit()) or int(length) != len(body)):
        raise OSError(f"answer of {len(body)} bytes, Content-Length {length[:20]!r}")
    return int(parts[1]), body


def hostport(address: str, port: int) -> str:
    try:
        return f"[{address}]:{port}" if ip_address(address).version == 6 else f"{address}:{port}"
    except ValueError:
        return f"{address}:{port}"
