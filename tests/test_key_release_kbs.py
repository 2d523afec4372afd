"""`[release] source = "kbs"`: the identity key from Trustee's key broker, through the pod's confidential data hub
(CDH), here a real HTTP server on loopback that serves resources as the CDH's REST API does. The key goes into the
enclave sealed to its own recipient key (the sim enclave's child holds it, as with peers); anything that is not an
identity key the enclave can sign with is refused on one line and changes nothing."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from enclave_ike import config as cfg
from enclave_ike.enclave.attest import envelopes
from enclave_ike.enclave.sealing import spki
from enclave_ike.enclave.sim import SimEnclave
from enclave_ike.enclave.software import SoftwareEnclave
from enclave_ike.release.errors import Refused, ReleaseError
from enclave_ike.release.kbs import obtain_from_kbs
from enclave_ike.release.service import JoinFailed, join

RESOURCE = "default/enclave-ike/identity-key"


def pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class FakeCdh:
    """Answers GET /cdh/resource/REPO/TYPE/TAG from `resources`; `failures` first answers 503 that many times."""

    def __init__(self) -> None:
        self.resources: dict[str, bytes] = {}
        self.failures = 0
        self.asked: list[str] = []
        cdh = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                cdh.asked.append(self.path)
                name = self.path.removeprefix("/cdh/resource/")
                if cdh.failures:
                    cdh.failures -= 1
                    self._answer(503, b"attestation agent not ready\n")
                elif name in cdh.resources:
                    self._answer(200, cdh.resources[name])
                else:
                    self._answer(404, b"resource not found\n")

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def cdh() -> Iterator[FakeCdh]:
    served = FakeCdh()
    yield served
    served.server.shutdown()
    served.server.server_close()


def test_the_key_brokers_key_becomes_the_sim_enclaves(cdh: FakeCdh) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    cdh.resources[RESOURCE] = pem(key)
    with SimEnclave(key_type="ecdsa-p384") as enclave:
        fingerprint = obtain_from_kbs(enclave, cdh.url, RESOURCE, within=5)
        assert spki(enclave.signer().public_key()) == spki(key.public_key())
        scheme = enclave.signer().schemes[0]
        key.public_key().verify(enclave.signer().sign(b"octets", scheme), b"octets", ec.ECDSA(scheme.hasher()))
    assert cdh.asked == [f"/cdh/resource/{RESOURCE}"] and len(fingerprint) == 64


def test_a_cdh_that_is_not_ready_is_asked_again(cdh: FakeCdh) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cdh.resources[RESOURCE] = pem(key)
    cdh.failures = 2
    said: list[str] = []
    enclave = SoftwareEnclave()
    obtain_from_kbs(enclave, cdh.url, RESOURCE, within=30, say=said.append, sleep=lambda seconds: None)
    assert spki(enclave.signer().public_key()) == spki(key.public_key())
    assert len(said) == 2 and "503 attestation agent not ready; trying again" in said[0]


def test_no_key_in_time_is_one_line(cdh: FakeCdh) -> None:
    clock = iter([0.0, 0.5, 1.0, 1.5, 2.5, 3.0, 3.5, 4.0]).__next__
    with pytest.raises(ReleaseError, match=r"^no key from the key broker within 2 s: confidential data hub "
                                           r"127\.0\.0\.1:\d+: 404 resource not found$"):
        obtain_from_kbs(SoftwareEnclave(), cdh.url, RESOURCE, within=2, sleep=lambda seconds: None,
                        monotonic=clock)


@pytest.mark.parametrize(("resource", "message"), [
    (b"not a key\n", "is not a PEM private key"),
    (pem(ed25519.Ed25519PrivateKey.generate()), "is a Ed25519PrivateKey: an identity key is ECDSA or RSA"),
    (ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), "is not a PEM private key"),
])
def test_what_is_no_identity_key_is_refused_and_changes_nothing(cdh: FakeCdh, resource: bytes, message: str) -> None:
    cdh.resources[RESOURCE] = resource
    enclave = SoftwareEnclave()
    before = spki(enclave.signer().public_key())
    with pytest.raises(Refused, match=message):
        obtain_from_kbs(enclave, cdh.url, RESOURCE, within=5)
    assert spki(enclave.signer().public_key()) == before


def test_an_rsa_key_is_refused_by_the_sim_enclave(cdh: FakeCdh) -> None:
    cdh.resources[RESOURCE] = pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    with SimEnclave() as enclave:
        before = spki(enclave.signer().public_key())
        with pytest.raises(Refused, match="RSA-2048; this enclave signs with ECDSA"):
            obtain_from_kbs(enclave, cdh.url, RESOURCE, within=5)
        assert spki(enclave.signer().public_key()) == before


def _config(tmp_path: Path, release: str) -> cfg.ServeConfig:
    path = tmp_path / "enclave-ike.toml"
    path.write_text(f'[listen]\naddresses = ["192.0.2.53"]\n\n[identity]\nbackend = "software"\nid = "@dns.example"\n'
                    f'publish = "{tmp_path / "identity.json"}"\n\n[release]\n{release}')
    return cfg.load(path)


def test_serve_joins_from_the_key_broker_as_configured(cdh: FakeCdh, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cdh.resources[RESOURCE] = pem(key)
    config = _config(tmp_path, f'source = "kbs"\nkbs_resource = "{RESOURCE}"\ncdh_url = "{cdh.url}"\n'
                               'join_timeout_s = 5\n')
    enclave = SoftwareEnclave()
    said: list[str] = []
    source = join(config.release, enclave, envelopes(enclave), said.append).said
    assert source.startswith(f"the service key from the key broker ({RESOURCE}, SHA-256 ")
    assert spki(enclave.signer().public_key()) == spki(key.public_key())
    del cdh.resources[RESOURCE]
    other = SoftwareEnclave()
    with pytest.raises(JoinFailed, match="404 resource not found"):
        join(_config(tmp_path, f'source = "kbs"\nkbs_resource = "{RESOURCE}"\ncdh_url = "{cdh.url}"\n'
                               'join_timeout_s = 0\n').release, other, envelopes(other), said.append)


@pytest.mark.parametrize(("release", "message"), [
    ('source = "kbs"\n', "release.kbs_resource: missing"),
    ('source = "kbs"\nkbs_resource = "identity-key"\n', "release.kbs_resource: 'identity-key' is not repository/"),
    ('source = "kbs"\nkbs_resource = "a/b/c/d"\n', "is not repository/type/tag"),
    ('source = "kbs"\nkbs_resource = "a/b/c"\ncdh_url = "https://127.0.0.1:8006"\n', "release.cdh_url: 'https:"),
    ('source = "kbs"\nkbs_resource = "a/b/c"\ncdh_url = "http://127.0.0.1:99999"\n', "release.cdh_url:"),
    ('source = "kbs"\nkbs_resource = "a/b/c"\ncdh_url = "http://127.0.0.1:8006/cdh"\n', "release.cdh_url:"),
    ('kbs_resource = "a/b/c"\n', "release.kbs_resource: belongs to source = \"kbs\""),
    ('source = "kbs"\nkbs_resource = "a/b/c"\npeers = ["10.0.0.1"]\n', "release.peers: belongs to source = \"peers\""),
    ('join_timeout_s = 5\n', "release.join_timeout_s: belongs to source"),
])
def test_bad_kbs_config_is_one_line(tmp_path: Path, release: str, message: str) -> None:
    with pytest.raises(cfg.ConfigError) as info:
        _config(tmp_path, release)
    assert message in str(info.value) and "\n" not in str(info.value) and info.value.exit_code == 2
