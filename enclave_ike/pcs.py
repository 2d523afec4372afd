"""Fetching a collateral set from Intel's Provisioning Certification Service (API v4), for `enclave-ike collateral
fetch`. Plain HTTPS GETs with urllib (the environment's proxy settings apply), each bounded by a size and, as a
whole, by a timeout:

    GET {pcs}/tdx/certification/v4/tcb?fmspc=FMSPC            tcb-info.json; header TCB-Info-Issuer-Chain
    GET {pcs}/tdx/certification/v4/qe/identity                 qe-identity.json
    GET {pcs}/sgx/certification/v4/pckcrl?ca=CA&encoding=der   pck-crl.der; header SGX-PCK-CRL-Issuer-Chain
    GET {root CRL URL}                                         root-ca-crl.der (Intel: certificates.trustedservices
                                                               .intel.com/IntelSGXRootCA.der)

The issuer chains come URL-encoded (PEM, signer first, then the root) in the headers; they become
tcb-signing-chain.pem and pck-crl-issuer-chain.pem. Nothing fetched is trusted: collateral.check judges the set.
"""

from __future__ import annotations

import http.client
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message
from urllib.parse import quote, unquote

from . import collateral as co

DEFAULT_PCS_URL = "https://api.trustedservices.intel.com"
DEFAULT_ROOT_CRL_URL = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"
TCB_INFO_CHAIN = "TCB-Info-Issuer-Chain"
PCK_CRL_CHAIN = "SGX-PCK-CRL-Issuer-Chain"
DEFAULT_TIMEOUT_S = 30.0
_CHUNK = 16 * 1024


class FetchError(co.CollateralError):
    """The PCS could not be reached, or did not answer with the document asked for (exit status 1)."""


@dataclass(frozen=True)
class Request:
    url: str
    file: str                      # the collateral file the body is
    chain_header: str | None = None
    chain_file: str | None = None  # where the header's chain goes


def requests(fmspc: bytes, pck_ca: str, pcs_url: str = DEFAULT_PCS_URL,
             root_crl_url: str = DEFAULT_ROOT_CRL_URL) -> tuple[Request, ...]:
    base = pcs_url.rstrip("/")
    return (Request(f"{base}/tdx/certification/v4/tcb?fmspc={fmspc.hex()}", co.TCB_INFO, TCB_INFO_CHAIN,
                    co.SIGNING_CHAIN),
            Request(f"{base}/tdx/certification/v4/qe/identity", co.QE_IDENTITY),
            Request(f"{base}/sgx/certification/v4/pckcrl?ca={quote(pck_ca)}&encoding=der", co.PCK_CRL,
                    PCK_CRL_CHAIN, co.PCK_CRL_CHAIN),
            Request(root_crl_url, co.ROOT_CRL))


def fetch(fmspc: bytes, pck_ca: str, *, pcs_url: str = DEFAULT_PCS_URL, root_crl_url: str = DEFAULT_ROOT_CRL_URL,
          timeout: float = DEFAULT_TIMEOUT_S) -> tuple[dict[str, bytes], dict[str, str]]:
    """The documents of a set, and for each file the URL (and header) it came from, for error messages."""
    documents: dict[str, bytes] = {}
    sources: dict[str, str] = {}
    for request in requests(fmspc, pck_ca, pcs_url, root_crl_url):
        body, headers = get(request.url, co.MAX_SIZE[request.file], timeout)
        documents[request.file], sources[request.file] = body, request.url
        if request.chain_header is not None and request.chain_file is not None:
            documents[request.chain_file] = _chain(headers, request.chain_header, request.url)
            sources[request.chain_file] = f"{request.url} ({request.chain_header} header)"
    return documents, sources


def _chain(headers: Message, name: str, url: str) -> bytes:
    value = headers.get(name)
    if not value:
        raise FetchError(f"{url}: no {name} header in the answer")
    try:
        pem = unquote(value, errors="strict").encode("ascii")
    except UnicodeError:
        pem = b""
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise FetchError(f"{url}: {name} header: expected a URL-encoded PEM certificate chain")
    return pem


def get(url: str, limit: int, timeout: float) -> tuple[bytes, Message]:
    """One GET of at most `limit` bytes, all of it (connecting, the headers, the whole body) within `timeout`
    seconds; FetchError naming the URL for anything else. A server that answers slowly, a byte at a time, is cut
    off at the deadline as a silent one is: the request runs in a daemon thread the caller stops waiting for."""
    if not url.lower().startswith(("https://", "http://")):
        raise FetchError(f"{url}: expected an https:// (or http://) URL")
    deadline = time.monotonic() + timeout
    progress = _Progress()
    outcome: list[tuple[bytes, Message] | BaseException] = []

    def attempt() -> None:
        try:
            outcome.append(_get(url, limit, timeout, deadline, progress))
        except BaseException as exc:  # handed to the caller's thread, raised there
            outcome.append(exc)

    worker = threading.Thread(target=attempt, name=f"GET {url}", daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        if not progress.answered:
            raise FetchError(f"{url}: no answer within {timeout:g} s")
        of = f"the {progress.declared}" if progress.declared is not None else "an unknown number of"
        raise FetchError(f"{url}: no complete answer within {timeout:g} s ({progress.received} of {of} bytes)")
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result


@dataclass
class _Progress:
    """How far the request got, for the message when it does not finish in time (written by the request's thread)."""

    answered: bool = False       # the status line and headers arrived
    declared: int | None = None  # the body's Content-Length
    received: int = 0            # bytes of the body so far


def _get(url: str, limit: int, timeout: float, deadline: float, progress: _Progress) -> tuple[bytes, Message]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 - the scheme is checked above
            progress.answered, progress.declared = True, answer.length
            if answer.length is not None and answer.length > limit:
                raise FetchError(f"{url}: more than the {limit} bytes a client accepts (Content-Length "
                                 f"{answer.length})")
            body = _body(answer, url, limit, timeout, deadline, progress)
            if len(body) <= limit and answer.length:  # the connection closed before the Content-Length was read
                raise FetchError(f"{url}: incomplete answer: {len(body)} of the {progress.declared} bytes its "
                                 f"Content-Length announced")
            headers = answer.headers
    except urllib.error.HTTPError as exc:
        said = exc.headers.get("Error-Message") or exc.headers.get("Error-Code") or ""
        raise FetchError(f"{url}: {exc.code} {exc.reason}{f' ({said})' if said else ''}") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise FetchError(f"{url}: no answer within {timeout:g} s") from None
        raise FetchError(f"{url}: {getattr(exc.reason, 'strerror', None) or exc.reason}") from None
    except TimeoutError:
        raise FetchError(f"{url}: no {'complete ' if progress.answered else ''}answer within {timeout:g} s") from None
    except http.client.IncompleteRead as exc:
        raise FetchError(f"{url}: incomplete answer: the connection closed after {len(exc.partial)} bytes of a "
                         "chunk") from None
    except http.client.HTTPException as exc:
        raise FetchError(f"{url}: not an HTTP answer ({type(exc).__name__}: {exc})") from None
    except OSError as exc:
        raise FetchError(f"{url}: {exc.strerror or exc}") from None
    if len(body) > limit:
        raise FetchError(f"{url}: more than the {limit} bytes a client accepts")
    return body, headers


def _body(answer: http.client.HTTPResponse, url: str, limit: int, timeout: float, deadline: float,
          progress: _Progress) -> bytes:
    """The body, read a chunk at a time until it ends or passes `limit`; FetchError at the deadline."""
    chunks: list[bytes] = []
    while progress.received <= limit:
        if time.monotonic() >= deadline:
            raise FetchError(f"{url}: no complete answer within {timeout:g} s")
        chunk = answer.read1(min(_CHUNK, limit + 1 - progress.received))
        if not chunk:
            break
        chunks.append(chunk)
        progress.received += len(chunk)
    return b"".join(chunks)
