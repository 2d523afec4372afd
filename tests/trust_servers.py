"""Servers the trust tests talk to over real sockets on 127.0.0.1: enclave-ike's evidence endpoint (in an asyncio
loop on a thread), a hostile endpoint that answers whatever a test wants, and an https server for governance feeds
with a throwaway CA made here."""

from __future__ import annotations

import asyncio
import datetime
import http.server
import ipaddress
import ssl
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from enclave_ike.enclave.base import Enclave
from enclave_ike.evidence_endpoint import EvidenceEndpoint, Limits
from ikecommon.attestation.sim import DEFAULT_REGISTERS
from ikecommon.attestation.spec import MeasurementEntry, MeasurementSpec

T = TypeVar("T")
LOCALHOST = "127.0.0.1"
RESOLVER_ID = "@resolver.example"


def sim_spec(registers: tuple[bytes, ...] = DEFAULT_REGISTERS, measurement_id: str = "sim-default") -> MeasurementSpec:
    return MeasurementSpec((MeasurementEntry(measurement_id, "sim", tuple(enumerate(registers))),))


class BackgroundLoop:
    """An asyncio loop on a thread: servers run there while a test calls blocking clients."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@contextmanager
def running_endpoint(enclave: Enclave, *, ike_id: str = RESOLVER_ID, port: int = 0,
                     limits: Limits | None = None, host: str = LOCALHOST) -> Iterator[EvidenceEndpoint]:
    loop = BackgroundLoop()
    endpoint = EvidenceEndpoint(enclave, ike_id, [ipaddress.ip_address(host)], port, limits=limits)
    try:
        loop.run(endpoint.start())
        yield endpoint
    finally:
        loop.run(endpoint.stop())
        loop.close()


def port_of(endpoint: EvidenceEndpoint) -> int:
    return endpoint.bound[0][1]


Answer = tuple[int, bytes]


@contextmanager
def hostile_endpoint(answer: Callable[[str, dict[str, list[str]]], Answer]) -> Iterator[int]:
    """An HTTP server on 127.0.0.1 answering `answer(path, query)`; yields its port."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            split = urlsplit(self.path)
            status, body = answer(split.path, parse_qs(split.query))
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((LOCALHOST, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


# --- https for governance feeds ---

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a certificate for 127.0.0.1 under it: (CA file, server certificate, server key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("ikectl test CA")).issuer_name(_name("ikectl test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(_name("127.0.0.1")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOCALHOST))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


@contextmanager
def https_server(directory: Path, files: dict[str, bytes | tuple[int, dict[str, str]]]) -> Iterator[str]:
    """Serve `files` (path -> body, or -> (status, headers)) over TLS on 127.0.0.1; yields the base URL. The CA file
    is `directory / "ca.pem"`."""
    _, cert, key = make_ca(directory)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            entry = files.get(self.path)
            if entry is None:
                self.send_error(404)
                return
            if isinstance(entry, tuple):
                status, headers = entry
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(entry)))
            self.end_headers()
            self.wfile.write(entry)

        def log_message(self, *args: object) -> None:
            pass

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = http.server.ThreadingHTTPServer((LOCALHOST, 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://{LOCALHOST}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
