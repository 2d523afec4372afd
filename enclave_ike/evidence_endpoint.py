"""The evidence endpoint: enclave-ike hands attestation evidence to clients over HTTP/1.1 on TCP (default port 4501).

    GET /evidence?nonce=HEX   200 application/cmw+json: the envelope (attestation/envelope.py) whose evidence binds
                              the client's nonce (16 to 64 bytes, as hex) and the IKE key (attestation/binding.py)
        ...&key=next          the same for a rotation's next key (release/rotation.py); 404 when none is under way
    GET /identity             200 application/json: {"version": 1, "id": "@resolver.example"}, the IKE ID the
                              server authenticates as, and during a rotation "next": {"switch_at": UNIX} (when
                              the next key starts to sign). Not attested: the pinned key is what authenticates

Plain HTTP on purpose: evidence authenticates itself (the TEE vendor's signature over report data that binds the
client's fresh nonce and the key), so TLS would add nothing a client may rely on, and a client never trusts anything
else this endpoint says. One request per connection, answered with `Connection: close`. Bounds, so a client cannot
hold the server: the request line and headers at most 8 KiB, read within 5 s; the answer written within 10 s; at
most 64 connections at once and 2 evidence requests in flight (each asks the enclave for a report; more get 503).

TDX evidence goes out with Intel's collateral for the quote's platform (the FMSPC in its PCK certificate) from the
cache the operator fills (collateral_store.py), read again when its files change. Without a usable set, or with an
expired one, the quote is served without it or with it, and one warning line says so and what to run (again only
when that changes): the client decides, and it refuses what does not verify. A SEV-SNP report the host gave no
certificates for goes out with the VCEK (or VLEK) the operator cached for its chip ID and REPORTED_TCB, and its ASK
(ASVK) and ARK (snp_store.py); without one, alone, and one warning line says what to run. Other evidence goes out as
it is.

The client side is ikecommon.evidence_client (`enclave-ike evidence` and `ikectl trust` use it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from http import HTTPStatus
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from ikecommon.attestation.binding import LABEL, NONCE_MAX, NONCE_MIN
from ikecommon.attestation.envelope import Collateral, Envelope, EvidenceKind
from ikecommon.attestation.errors import AttestationError
from ikecommon.attestation.tdx import TdxQuote
from ikecommon.evidence_client import CMW_JSON, IDENTITY_VERSION, EndpointError, hostport

from . import collateral as co
from .collateral_store import ServedCollateral, intel_root
from .config import DEFAULT_EVIDENCE_PORT, ServeConfig
from .diagnostics import Diagnostics, PrivacyConfig
from .enclave.attest import attest
from .enclave.base import Enclave
from .enclave.errors import NonceError
from .errors import EnclaveIkeError
from .relay import evidence_socket
from .relay_server import admit, close_servers, listen_unix
from .snp_store import ServedCertificates

if TYPE_CHECKING:
    from .release.keyring import KeyRing, NextKey

log = logging.getLogger("enclave_ike.evidence")

DEFAULT_PORT = DEFAULT_EVIDENCE_PORT
_NONCE = re.compile(rf"(?:[0-9a-fA-F]{{2}}){{{NONCE_MIN},{NONCE_MAX}}}")
_BODY_HEADERS = (b"content-length", b"transfer-encoding")

Address = IPv4Address | IPv6Address


@dataclass(frozen=True)
class Limits:
    request_bytes: int = 8192     # request line and headers
    read_timeout_s: float = 5.0   # to receive them
    write_timeout_s: float = 10.0  # to send the answer
    connections: int = 64         # open at once; more are closed unanswered
    in_flight: int = 2            # evidence requests being made; more get 503


@dataclass(frozen=True)
class Response:
    status: HTTPStatus
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def text(cls, status: HTTPStatus, line: str, *headers: tuple[str, str]) -> Response:
        return cls(status, (line + "\n").encode(), headers=headers)

    def encode(self) -> bytes:
        head = [f"HTTP/1.1 {self.status.value} {self.status.phrase}", f"Content-Type: {self.content_type}",
                f"Content-Length: {len(self.body)}", "Cache-Control: no-store", "Connection: close",
                *(f"{name}: {value}" for name, value in self.headers)]
        return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + self.body


def parse_nonce(text: str, what: str = "nonce") -> bytes:
    """A nonce from hex; NonceError (exit code 2) naming `what` for anything but 16 to 64 bytes of hex."""
    if not _NONCE.fullmatch(text):
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise NonceError(f"{what} {shown!r}: expected {NONCE_MIN} to {NONCE_MAX} bytes as hex "
                         f"({2 * NONCE_MIN} to {2 * NONCE_MAX} hex digits)")
    return bytes.fromhex(text)


class EvidenceEndpoint:
    """Serves evidence for `enclave` on `port` of every address; `start()` binds, `stop()` closes."""

    def __init__(self, enclave: Enclave, ike_id: str, addresses: Sequence[Address], port: int, *,
                 collateral: Collateral | None = None, tdx_collateral: ServedCollateral | None = None,
                 snp_certificates: ServedCertificates | None = None, limits: Limits | None = None,
                 unix_path: Path | None = None) -> None:
        """`collateral`: the same for every envelope; else, for TDX quotes, the set `tdx_collateral` has. SEV-SNP
        reports that come without the host's certificates get those `snp_certificates` has for them. With
        `unix_path` it listens there instead (behind `enclave-ike forward`, which carries TCP `port` to it)."""
        self.enclave, self.ike_id, self.addresses, self.port = enclave, ike_id, tuple(addresses), port
        self.unix_path = unix_path
        self.collateral, self.tdx_collateral, self.limits = collateral, tdx_collateral, limits or Limits()
        self.snp_certificates = snp_certificates
        self._platforms: dict[bytes, co.Platform] = {}  # by the quote's PCK chain, which is the platform's
        self._said: dict[str, str | None] = {}          # the last line logged, per FMSPC (and "sev-snp")
        self._lock = threading.Lock()
        self._servers: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[None]] = set()
        self._in_flight = 0
        self.bound: list[tuple[str, int]] = []  # (address, port) actually bound (port 0 picks one)
        # Lines naming a client: to the log until the server hands over its own Diagnostics (and its privacy).
        self.diagnostics = Diagnostics(log, PrivacyConfig(enabled=False))
        self.keys: KeyRing | None = None  # serve's, once the key is there: a rotation's next key is served too

    async def start(self) -> None:
        if self.unix_path is not None:
            try:
                self._servers.append(await listen_unix(self._connection, self.unix_path,
                                                       limit=self.limits.request_bytes))
            except OSError as exc:
                raise EndpointError(f"evidence endpoint: cannot listen on {self.unix_path}: "
                                    f"{exc.strerror or exc}") from None
            log.info("evidence endpoint on %s (relayed from tcp port %d): GET /evidence?nonce=HEX", self.unix_path,
                     self.port)
            return
        for address in self.addresses:
            try:
                server = await asyncio.start_server(self._connection, str(address), self.port,
                                                    limit=self.limits.request_bytes, reuse_address=True)
            except OSError as exc:
                await self.stop()
                raise EndpointError(f"evidence endpoint: cannot listen on {hostport(str(address), self.port)} "
                                    f"(tcp): {exc.strerror or exc}") from None
            self._servers.append(server)
            self.bound += [(str(address), int(sock.getsockname()[1])) for sock in server.sockets]
        log.info("evidence endpoint on %s (tcp): GET /evidence?nonce=HEX",
                 ", ".join(hostport(a, p) for a, p in self.bound))

    async def stop(self) -> None:
        await close_servers(self._servers, self._connections, self.unix_path)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = admit(self._connections, self.limits.connections, writer)
        if task is None:
            return
        peer = writer.get_extra_info("peername")
        try:
            response = await self._answer(reader, peer)
            if response is not None:
                writer.write(response.encode())
                await asyncio.wait_for(writer.drain(), self.limits.write_timeout_s)
        except (OSError, TimeoutError):
            pass  # the client went away or stalled: nothing to tell it
        except asyncio.CancelledError:
            pass  # serve is stopping. Ended quietly: asyncio 3.11 logs a traceback for a cancelled handler task
        except Exception as exc:  # asyncio's handler would log it, at the moment this client asked
            self.diagnostics.fail("evidence requests failed")
            self.diagnostics.client(logging.ERROR, "evidence request from %s failed: %r", peer, exc)
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(OSError, TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _answer(self, reader: asyncio.StreamReader, peer: object) -> Response | None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.limits.read_timeout_s)
        except asyncio.LimitOverrunError:
            return Response.text(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                                 f"request line and headers over {self.limits.request_bytes} bytes")
        except (asyncio.IncompleteReadError, TimeoutError):
            return None  # closed or silent before a whole request arrived
        request = _parse(head)
        return request if isinstance(request, Response) else await self._route(*request, peer)

    async def _route(self, method: str, path: str, query: str, peer: object) -> Response:
        if path not in ("/evidence", "/identity"):
            return Response.text(HTTPStatus.NOT_FOUND, f"{path}: not here (GET /evidence?nonce=HEX, GET /identity)")
        if method != "GET":
            return Response.text(HTTPStatus.METHOD_NOT_ALLOWED, f"{method}: only GET", ("Allow", "GET"))
        if path == "/evidence":
            return await self._evidence(query, peer)
        if query:
            return Response.text(HTTPStatus.BAD_REQUEST, "/identity takes no query")
        document: dict[str, object] = {"version": IDENTITY_VERSION, "id": self.ike_id}
        if (pending := self._next_key()) is not None:
            document["next"] = {"switch_at": pending.switch_at}
        return Response(HTTPStatus.OK, json.dumps(document).encode() + b"\n", "application/json")

    def _next_key(self) -> NextKey | None:
        return self.keys.next if self.keys is not None else None

    def _wanted(self, query: str) -> tuple[bytes, bytes | None] | Response:
        """(the nonce, the SPKI of the key the evidence binds: None for the current one), or the error to answer."""
        try:
            fields = parse_qs(query, keep_blank_values=True, strict_parsing=True, max_num_fields=2)
        except ValueError:
            fields = {}
        if "nonce" not in fields or set(fields) - {"nonce", "key"} or any(len(v) != 1 for v in fields.values()):
            return Response.text(HTTPStatus.BAD_REQUEST, "expected the query nonce=HEX, or nonce=HEX&key=next")
        try:
            nonce = parse_nonce(fields["nonce"][0])
        except NonceError as exc:
            return Response.text(HTTPStatus.BAD_REQUEST, str(exc))
        if "key" not in fields:
            return nonce, None
        if fields["key"] != ["next"]:
            return Response.text(HTTPStatus.BAD_REQUEST, "key: only 'next' (a rotation's next key)")
        if (pending := self._next_key()) is None:
            return Response.text(HTTPStatus.NOT_FOUND, "no rotation under way: no next key")
        return nonce, pending.spki

    async def _evidence(self, query: str, peer: object) -> Response:
        wanted = self._wanted(query)
        if isinstance(wanted, Response):
            return wanted
        nonce, key_spki = wanted
        if self._in_flight >= self.limits.in_flight:
            return Response.text(HTTPStatus.SERVICE_UNAVAILABLE, "busy making evidence; try again",
                                 ("Retry-After", "1"))
        self._in_flight += 1
        try:
            envelope = await asyncio.to_thread(self.envelope, nonce, LABEL, key_spki)
            body = envelope.encode()
        except (EnclaveIkeError, OSError) as exc:  # an OSError here is the server's, not the client going away
            self.diagnostics.client(logging.ERROR, "evidence for %s: %s", peer, exc)
            return Response.text(HTTPStatus.SERVICE_UNAVAILABLE, f"no evidence: {exc}")
        finally:
            self._in_flight -= 1
        self.diagnostics.client(logging.DEBUG, "evidence for %s, nonce %s", peer, nonce.hex())
        return Response(HTTPStatus.OK, body, CMW_JSON)

    def envelope(self, nonce: bytes, label: bytes = LABEL, key_spki: bytes | None = None) -> Envelope:
        """In a worker thread: the enclave's evidence (attest's arguments) and, for a TDX quote, the cached
        collateral; for a SEV-SNP report without the host's certificates, the cached ones (the host's win: nothing
        is looked up or said). Key release's envelopes go out with the same."""
        envelope = attest(self.enclave, nonce, self.collateral, label, key_spki)
        evidence = envelope.evidence
        if evidence.kind is EvidenceKind.SEV_SNP and self.snp_certificates is not None and not evidence.certificates:
            served = self.snp_certificates.for_report(evidence.data)
            self._say("sev-snp", served.problem, "SEV-SNP reports go out with the cached certificates (the host gives "
                                                 "none)")
            return replace(envelope, evidence=replace(evidence, certificates=served.certificates))
        if self.collateral is not None or self.tdx_collateral is None or envelope.evidence.kind is not EvidenceKind.TDX:
            return envelope
        try:
            platform = self._platform(envelope.evidence.data)
        except AttestationError as exc:
            self._say("?", f"TDX quote without a usable PCK certificate ({exc}): serving it without collateral", None)
            return envelope
        found = self.tdx_collateral.for_platform(platform, datetime.now(UTC))
        fmspc = platform.fmspc.hex()
        self._say(fmspc, found.problem, f"TDX evidence for FMSPC {fmspc} goes out with its collateral")
        return envelope if found.collateral is None else replace(envelope, collateral=found.collateral.collateral())

    def _platform(self, data: bytes) -> co.Platform:
        quote = TdxQuote.parse(data)
        key = quote.signature_data.certification.pck_chain_pem
        with self._lock:
            known = self._platforms.get(key)
        if known is None:
            known = co.platform_of(quote)
            with self._lock:
                if len(self._platforms) > 8:  # one platform in practice; bounded all the same
                    self._platforms.clear()
                self._platforms[key] = known
        return known

    def _say(self, key: str, problem: str | None, fine: str | None) -> None:
        """Log what the operator should know once, when it changes, not per request: the problem, else `fine`."""
        with self._lock:
            if key in self._said and self._said[key] == problem:
                return
            self._said[key] = problem
        if problem is not None:
            log.warning("%s", problem)
        elif fine is not None:
            log.info("%s", fine)


def _parse(head: bytes) -> tuple[str, str, str] | Response:
    """(method, path, query) from the request head, or the error to answer with."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        return Response.text(HTTPStatus.BAD_REQUEST, "the request is not ASCII")
    line, *headers = text[:-4].split("\r\n")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[1].startswith("/"):
        return Response.text(HTTPStatus.BAD_REQUEST, "expected a request line: GET /evidence?nonce=HEX HTTP/1.1")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        return Response.text(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, f"{version}: HTTP/1.1 only")
    for header in headers:
        name, _, value = header.partition(":")
        if name.strip().lower().encode() in _BODY_HEADERS and value.strip() not in ("", "0"):
            return Response.text(HTTPStatus.BAD_REQUEST, "a request here has no body")
    # Origin-form only (RFC 9112 3.2.1): "/path?query". urlsplit would read "//x" as a host, and raise for "//[".
    path, _, query = target.partition("?")
    if path.startswith("//"):
        return Response.text(HTTPStatus.BAD_REQUEST, "expected a target like /evidence?nonce=HEX")
    return method, path, query


def for_config(config: ServeConfig, enclave: Enclave | None) -> EvidenceEndpoint | None:
    """The endpoint `serve` runs: none when disabled, or with NULL auth (no key, nothing to attest). A TDX enclave's
    serves the collateral cache, a SEV-SNP enclave's the cached certificates; a root that cannot be read is a
    ConfigError here, before anything is served."""
    if enclave is None or not config.evidence.enabled:
        return None
    tdx, snp = None, None
    if enclave.kind is EvidenceKind.TDX:
        tdx = ServedCollateral(config.evidence.collateral_dir, intel_root(config.evidence.intel_root))
    elif enclave.kind is EvidenceKind.SEV_SNP:
        snp = ServedCertificates(config.evidence.collateral_dir)
    relay = config.listen.relay
    return EvidenceEndpoint(enclave, config.identity.id, config.listen.addresses, config.evidence.port,
                            tdx_collateral=tdx, snp_certificates=snp,
                            unix_path=evidence_socket(relay) if relay is not None else None)


def endpoint_address(config: ServeConfig) -> str:
    """Where a command on the server's host asks its endpoint: the first listen address, loopback for a wildcard."""
    address = config.listen.addresses[0]
    if address.is_unspecified:
        address = ip_address("::1" if address.version == 6 else "127.0.0.1")
    return str(address)
