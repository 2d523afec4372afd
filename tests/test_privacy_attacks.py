"""Attacks on enclave-ike's privacy promise (docs/enclave-ike.md, "## Privacy"), as pure logic: with privacy on,
nothing `serve` writes outside the enclave names a client or tells when one came. The host-side attacks (a real
`serve`, real clients) are netns_tests/test_enclave_ike_privacy_attacks.py. Each test whose docstring says "Leak"
failed when it was written and passes since the fix; the others held from the start.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import warnings
from ipaddress import ip_address
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from enclave_ike import config as config_module
from enclave_ike.diagnostics import Diagnostics, PrivacyConfig
from enclave_ike.enclave.software import SoftwareEnclave
from enclave_ike.evidence_endpoint import EvidenceEndpoint, Response, _parse
from enclave_ike.ikev2 import crypto as c
from enclave_ike.ikev2.config import DnsSelectors, Endpoint, Identity, InitiatorConfig, PeerAuth, ResponderConfig
from enclave_ike.ikev2.constants import CertEncoding, IdType
from enclave_ike.ikev2.crypto import presented_key
from enclave_ike.ikev2.events import IkeSaEstablished
from enclave_ike.ikev2.initiator import Initiator, exchange
from enclave_ike.ikev2.payloads import Certificate, TrafficSelector
from enclave_ike.ikev2.responder import Responder
from enclave_ike.server import _Udp, describe
from fuzz.generators import seeded

CONFIG = Path("/etc/enclave-ike/enclave-ike.toml")
LISTEN = {"listen": {"addresses": ["192.0.2.53"]}, "identity": {"backend": "sim", "id": "@resolver.example"}}


# --- a careless user's config ---

def test_a_config_without_a_privacy_section_keeps_privacy_on():
    """The promise is the default's: a config that never mentions [privacy] gets it."""
    assert config_module.parse(LISTEN, CONFIG).privacy == PrivacyConfig(enabled=True)


@pytest.mark.parametrize("privacy", [{"enabled": "false"}, {"enabled": 0}, {"enable": False}, {"ring_lines": 0},
                                     {"ring_lines": -1}, {"ring_lines": True}])
def test_a_mistyped_privacy_section_is_refused_not_taken_as_off(privacy):
    """`enabled = "false"`, `enabled = 0`, a misspelled key, a ring of nothing: a ConfigError (nothing starts), not
    privacy quietly off or a ring that keeps nothing."""
    with pytest.raises(config_module.ConfigError, match="privacy"):
        config_module.parse({**LISTEN, "privacy": privacy}, CONFIG)


# --- the evidence endpoint ---

@pytest.mark.parametrize("target", ["//[", "//]", "//[::1/evidence?nonce=00", "//x]/evidence"])
def test_a_target_the_url_parser_refuses_is_answered_400(target):
    """Leak (see netns_tests/test_enclave_ike_privacy_attacks.py::
    test_an_evidence_request_with_an_unparsable_target_writes_nothing): evidence_endpoint._parse calls
    urllib.parse.urlsplit on the request target unguarded; for a target with an unbalanced "[" or "]" in what
    urlsplit takes for a netloc it raises ValueError("Invalid IPv6 URL"), which nothing above catches."""
    request = f"GET {target} HTTP/1.1\r\n\r\n".encode()
    answer = _parse(request)
    assert isinstance(answer, Response) and answer.status == 400, answer


def test_no_request_makes_the_endpoint_call_the_loops_exception_handler():
    """The same, end to end in one process: an endpoint on loopback, the privacy ring as its Diagnostics, and a
    client that sends `GET //[ HTTP/1.1`. asyncio's StreamReaderProtocol hands the ValueError to the loop's
    exception handler (by default: "Unhandled exception in client_connected_cb" and a traceback to the log, outside
    the enclave, when that one client came); the client gets no answer."""

    async def attack() -> tuple[list[dict[str, object]], bytes]:
        loop = asyncio.get_running_loop()
        handled: list[dict[str, object]] = []
        loop.set_exception_handler(lambda _loop, context: handled.append(context))
        endpoint = EvidenceEndpoint(SoftwareEnclave(ec.generate_private_key(ec.SECP256R1())), "@resolver.example",
                                    [ip_address("127.0.0.1")], 0)
        endpoint.diagnostics = Diagnostics(logging.getLogger("test.privacy"), PrivacyConfig())
        await endpoint.start()
        try:
            reader, writer = await asyncio.open_connection(*endpoint.bound[0])
            writer.write(b"GET //[ HTTP/1.1\r\n\r\n")
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 5.0)
            writer.close()
            await asyncio.sleep(0.1)
        finally:
            await endpoint.stop()
        return handled, answer

    handled, answer = asyncio.run(attack())
    assert handled == [] and answer.startswith(b"HTTP/1.1 400 "), (handled, answer)


# --- serve -v ---

class _BareServer:
    """What _Udp needs of its server: the Diagnostics every line about a peer goes through (privacy on)."""

    def __init__(self) -> None:
        self.diagnostics = Diagnostics(logging.getLogger("enclave_ike"), PrivacyConfig())


def test_a_socket_error_about_one_client_goes_to_the_ring_not_the_log(caplog):
    """Leak, `serve -v` only: server._Udp.error_received writes `log.debug("%s: %s", self.local, exc)` straight to
    the log, not through Diagnostics. asyncio calls it when sendto() to a peer fails (EACCES/EPERM for an answer
    the host's routes or firewall refuse, ENETUNREACH, ...) or when an ICMP error comes back for what was sent: each
    time in the middle of one client's exchange, so the line (without the address) tells when that client was
    there, which the promise keeps in the ring. Reproduce: `serve -v` with privacy on, `ip route add prohibit
    <client>/32` in the resolver's namespace, the client sends IKE_SA_INIT: the log gets
    "enclave-ike: <local>:500: [Errno 13] Permission denied" then."""
    caplog.set_level(logging.DEBUG, "enclave_ike")
    server = _BareServer()
    sock = _Udp(server, Endpoint(ip_address("192.0.2.53"), 500), natt=False)  # type: ignore[arg-type]
    sock.error_received(PermissionError(13, "Permission denied"))
    assert [r.getMessage() for r in caplog.records if r.name.startswith("enclave_ike")] == []
    assert len(server.diagnostics) == 1 and server.diagnostics.counts == {"answers that could not be sent": 1}


# --- what a client writes into the dump ---

def test_a_clients_id_cannot_make_a_line_of_its_own():
    """Log injection (integrity of what the operator reads, not a leak by itself): Identity.__str__ returns an
    ID_FQDN or ID_RFC822_ADDR as its ASCII bytes, control characters included, and server.describe puts it in the
    "established with" line. An anonymous client (raw key, allowed by default) with the ID
    "x\\nenclave-ike: privacy: diagnostics ring dumped ...: 0 lines about clients follow" gets, in the operator's
    SIGUSR1 dump (and in every log with privacy off), a line that is not prefixed "ring <time>Z:" and reads as the
    server's own: a forged end of the dump, after which the client's following lines look like lines the server
    wrote outside any dump. A host-side filter that keeps "ring ...Z:" lines in and ships the rest would ship
    client-chosen text."""
    forged = "enclave-ike: privacy: diagnostics ring dumped as asked by SIGUSR1 (the operator): 0 lines about " \
             "clients follow"
    i_end, r_end = Endpoint(ip_address("10.0.0.1"), 500), Endpoint(ip_address("10.0.0.53"), 500)
    server_key, client = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    resolver_id = Identity.fqdn("resolver.example")
    rcfg = ResponderConfig(local_id=resolver_id, dns=DnsSelectors((r_end.address,)),
                           signer=c.SoftwareSigner(server_key), anonymous=frozenset({PeerAuth.RAW_KEY}))
    spki = client.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    icfg = InitiatorConfig(tsi=(TrafficSelector(i_end.address, i_end.address),),
                           tsr=(TrafficSelector(r_end.address, r_end.address, 17),),
                           local_id=Identity(IdType.ID_FQDN, f"x\n{forged}".encode()),
                           signer=c.SoftwareSigner(client),
                           certificates=(Certificate(CertEncoding.RAW_PUBLIC_KEY, spki),),
                           responder_key=server_key.public_key(), responder_id=resolver_id)
    ini = Initiator(icfg, local=i_end, peer=r_end, random=seeded(b"i"), now=0.0)
    resp = Responder(rcfg, local=r_end, random=seeded(b"r"))
    exchange(ini, resp, 0.0)
    events = []
    while (event := resp.next_event()) is not None:
        events.append(event)
    (established,) = [e for e in events if isinstance(e, IkeSaEstablished)]
    line = describe(established)
    assert "\n" not in line, line


# --- Python's warnings, raised by what a client sent ---

def _der(tag: int, body: bytes) -> bytes:
    n, octets = len(body), (len(body).bit_length() + 7) // 8
    return bytes([tag]) + (bytes([n]) if n < 128 else bytes([0x80 | octets]) + n.to_bytes(octets, "big")) + body


def _serial_zero_certificate(key: ec.EllipticCurvePrivateKey) -> bytes:
    """A self-signed certificate (a valid signature) whose serial number is 0, which RFC 5280 does not allow."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client.example")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(0x7F).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    tbs = cert.tbs_certificate_bytes.replace(b"\x02\x01\x7f", b"\x02\x01\x00", 1)
    signature = key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    return _der(0x30, tbs + bytes.fromhex("300a06082a8648ce3d040302") + _der(0x03, b"\x00" + signature))


def test_parsing_a_clients_certificate_warns_nothing():
    """Leak (see netns_tests/test_enclave_ike_privacy_attacks.py::
    test_a_client_certificate_with_a_serial_of_zero_writes_nothing): enclave_ike/ikev2/crypto.py presented_key
    loads a CERT payload with x509.load_der_x509_certificate without the filter ikecommon/attestation/certs.py
    puts around the same call, so a client's certificate with a non-positive serial makes a warning that the
    default warnings filter prints to stderr, outside the enclave, when that client came."""
    key = ec.generate_private_key(ec.SECP256R1())
    data = _serial_zero_certificate(key)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        presented = presented_key(CertEncoding.X509_SIGNATURE, data)
    assert presented.self_signed  # the certificate is otherwise fine
    assert [str(w.message) for w in caught] == []
