"""A test PKI in Intel's place: root, PCK CA, PCK leaf (with the real leaf's SGX extension), TCB signer and
attestation key of our own, so tests can make TDX quotes and collateral Intel never signed: a quote that binds a
fresh nonce and an IKE key, a platform whose TCB level matches, collateral that expires tomorrow, a revoked PCK.

The quotes start from the real Sapphire Rapids quote in tests/vectors/attestation (the body, the QE report) and are
re-signed here; the verifier's code path is the one real evidence takes. Trusting `FakeIntel.root` proves nothing:
tests and the lab only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from ikecommon.attestation.tdx import QuoteSignatureData, TdxCollateral, TdxQuote
from ikecommon.attestation.tdx.pck import SGX_EXTENSIONS
from ikecommon.attestation.times import iso

VECTORS = Path(__file__).resolve().parents[2] / "tests" / "vectors" / "attestation" / "tdx"
REAL_QUOTE = (VECTORS / "tdx_quote_v4_spr_e4.dat").read_bytes()
REAL_TCB_INFO = VECTORS / "tdx_tcbinfo_v3_fmspc_50806f000000.json"
REAL_QE_IDENTITY = VECTORS / "tdx_qe_identity_v2.json"

# The real quote's platform is below every level of the real TCB info (SOURCES.md); these SVNs are its own, so a
# level made of them is the one it meets.
QUOTE_SGX_SVNS = [3, 3, 2, 2, 2, 1, 0, 2] + [0] * 8
QUOTE_TDX_SVNS = [3, 0, 4] + [0] * 13


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "enclave-ike tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def raw_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA P-256 over SHA-256 as Intel's quotes and collateral carry it: r and s, 32 bytes each."""
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def real_tcb_info() -> dict[str, Any]:
    return dict(json.loads(REAL_TCB_INFO.read_bytes())["tcbInfo"])


def real_qe_identity() -> dict[str, Any]:
    return dict(json.loads(REAL_QE_IDENTITY.read_bytes())["enclaveIdentity"])


def tcb_info_with(levels: dict[int, dict[str, list[int]]], info: dict[str, Any] | None = None) -> dict[str, Any]:
    """The real TCB info with some levels' SVNs replaced: {level index: {"sgx": [...], "tdx": [...]}}."""
    info = json.loads(json.dumps(info or real_tcb_info()))
    for index, svns in levels.items():
        tcb = info["tcbLevels"][index]["tcb"]
        for kind, values in svns.items():
            for component, svn in zip(tcb[f"{kind}tcbcomponents"], values, strict=True):
                component["svn"] = svn
    return info


def up_to_date_tcb_info() -> dict[str, Any]:
    """A TCB info whose top level (UpToDate) the real quote's platform meets."""
    return tcb_info_with({0: {"sgx": QUOTE_SGX_SVNS, "tdx": QUOTE_TDX_SVNS}})


def dated(document: dict[str, Any], issued: datetime, next_update: datetime) -> dict[str, Any]:
    return {**document, "issueDate": iso(issued), "nextUpdate": iso(next_update)}


class FakeIntel:
    """Root, PCK CA, PCK leaf, TCB signer and attestation key of our own (see the module docstring)."""

    _instance: FakeIntel | None = None

    def __init__(self, *, not_before: datetime = datetime(2023, 1, 1, tzinfo=UTC),
                 not_after: datetime = datetime(2030, 1, 1, tzinfo=UTC)) -> None:
        self.not_before, self.not_after = not_before, not_after
        self.root_key, self.ca_key, self.leaf_key, self.tcb_key, self.attestation_key = (
            ec.generate_private_key(ec.SECP256R1()) for _ in range(5))
        self.root = self._cert("Test SGX Root CA", self.root_key, None, ca=True, path_length=1)
        issued_by_root = (self.root, self.root_key)
        self.ca = self._cert("Test SGX PCK Platform CA", self.ca_key, issued_by_root, ca=True, path_length=0)
        real_leaf = x509.load_pem_x509_certificates(TdxQuote.parse(REAL_QUOTE).signature_data.certification
                                                    .pck_chain_pem)[0]
        self.sgx = real_leaf.extensions.get_extension_for_oid(x509.ObjectIdentifier(SGX_EXTENSIONS)).value
        self.leaf = self.pck_certificate("Test SGX PCK Certificate")
        self.tcb_signer = self._cert("Intel SGX TCB Signing", self.tcb_key, issued_by_root, ca=False)

    KEYS, CERTS = ("root_key", "ca_key", "leaf_key", "tcb_key", "attestation_key"), ("root", "ca", "leaf", "tcb_signer")

    def save(self, directory: Path) -> None:
        """Keys and certificates to files, so another process (a resolver in a namespace) signs as this PKI."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "keys.pem").write_bytes(b"".join(
            getattr(self, name).private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()) for name in self.KEYS))
        (directory / "certs.pem").write_bytes(b"".join(getattr(self, name).public_bytes(serialization.Encoding.PEM)
                                                       for name in self.CERTS))
        (directory / "root.pem").write_bytes(self.root_pem())

    @classmethod
    def load(cls, directory: Path) -> FakeIntel:
        pki = cls.__new__(cls)
        blocks = (directory / "keys.pem").read_bytes().split(b"-----END PRIVATE KEY-----\n")
        for name, block in zip(cls.KEYS, blocks, strict=False):
            setattr(pki, name, serialization.load_pem_private_key(block + b"-----END PRIVATE KEY-----\n", None))
        for name, cert in zip(cls.CERTS, x509.load_pem_x509_certificates((directory / "certs.pem").read_bytes()),
                              strict=True):
            setattr(pki, name, cert)
        pki.not_before, pki.not_after = pki.root.not_valid_before_utc, pki.root.not_valid_after_utc
        pki.sgx = pki.leaf.extensions.get_extension_for_oid(x509.ObjectIdentifier(SGX_EXTENSIONS)).value
        return pki

    @classmethod
    def instance(cls) -> FakeIntel:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def pck_certificate(self, common_name: str) -> x509.Certificate:
        return self._cert(common_name, self.leaf_key, (self.ca, self.ca_key), ca=False, extra=self.sgx)

    def _cert(self, common_name: str, key: ec.EllipticCurvePrivateKey,
              issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None, *, ca: bool,
              path_length: int | None = None, extra: x509.ExtensionType | None = None) -> x509.Certificate:
        """Self-signed when `issuer` (certificate, key) is None."""
        issuer_name, issuer_key = (issuer[0].subject, issuer[1]) if issuer else (_name(common_name), key)
        builder = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(issuer_name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(self.not_before).not_valid_after(self.not_after)
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
                critical=True)
        if extra is not None:
            builder = builder.add_extension(extra, critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def quote(self, td_attributes: bytes | None = None, leaf: x509.Certificate | None = None, *,
              report_data: bytes | None = None, base: bytes = REAL_QUOTE) -> bytes:
        """The real quote's body (optionally changed: its TD attributes, its report data), attested by our
        attestation key, QE report and PCK chain. `base` is another real quote to start from (the v5 one)."""
        real = TdxQuote.parse(base)
        key = self.attestation_key.public_key().public_bytes(serialization.Encoding.X962,
                                                             serialization.PublicFormat.UncompressedPoint)[1:]
        certification = real.signature_data.certification
        qe_report = replace(certification.qe_report,
                            report_data=hashlib.sha256(key + certification.qe_auth_data).digest() + bytes(32))
        chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf or self.leaf, self.ca, self.root))
        certification = replace(certification, qe_report=qe_report, pck_chain_pem=chain,
                                qe_report_signature=raw_signature(self.leaf_key, qe_report.to_bytes()))
        body = real.body
        if td_attributes is not None:
            body = replace(body, td_attributes=td_attributes)
        if report_data is not None:
            body = replace(body, report_data=report_data)
        unsigned = replace(real, body=body, signature_data=QuoteSignatureData(bytes(64), key, certification))
        signature = raw_signature(self.attestation_key, unsigned.signed_bytes)
        return replace(unsigned, signature_data=replace(unsigned.signature_data, signature=signature)).to_bytes()

    def signed_json(self, body_key: str, body: dict[str, Any], key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
        """A PCS document: the body's raw bytes and a signature over exactly them."""
        raw = json.dumps(body, separators=(",", ":")).encode()
        signature = raw_signature(key or self.tcb_key, raw).hex()
        return b'{"%s":%s,"signature":"%s"}' % (body_key.encode(), raw, signature.encode())

    def crl(self, issuer: x509.Certificate, revoked: tuple[x509.Certificate, ...] = (),
            key: ec.EllipticCurvePrivateKey | None = None, *, last_update: datetime = datetime(2023, 6, 1, tzinfo=UTC),
            next_update: datetime = datetime(2023, 8, 1, tzinfo=UTC)) -> x509.CertificateRevocationList:
        builder = (x509.CertificateRevocationListBuilder().issuer_name(issuer.subject)
                   .last_update(last_update).next_update(next_update))
        for cert in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(cert.serial_number)
                .revocation_date(last_update).build())
        signer = key or (self.root_key if issuer is self.root else self.ca_key)
        return builder.sign(signer, hashes.SHA256())

    def documents(self, *, tcb_info: dict[str, Any] | None = None, qe_identity: dict[str, Any] | None = None,
                  crls: tuple[x509.CertificateRevocationList, ...] | None = None) -> dict[str, bytes]:
        """The collateral as the PCS serves it: TCB info and QE identity (signed JSON), the TCB signing chain
        (PEM, signer then root, as the issuer-chain headers carry it) and the two CRLs (DER)."""
        crls = crls if crls is not None else (self.crl(self.ca), self.crl(self.root))
        return {
            "tcb-info.json": self.signed_json("tcbInfo", tcb_info or real_tcb_info()),
            "qe-identity.json": self.signed_json("enclaveIdentity", qe_identity or real_qe_identity()),
            "tcb-signing-chain.pem": b"".join(c.public_bytes(serialization.Encoding.PEM)
                                              for c in (self.tcb_signer, self.root)),
            "pck-crl.der": crls[0].public_bytes(serialization.Encoding.DER),
            "root-ca-crl.der": crls[1].public_bytes(serialization.Encoding.DER),
        }

    def collateral(self, *, tcb_info: dict[str, Any] | None = None, qe_identity: dict[str, Any] | None = None,
                   crls: tuple[x509.CertificateRevocationList, ...] | None = None) -> TdxCollateral:
        chain = self.tcb_signer.public_bytes(serialization.Encoding.PEM)
        collateral = TdxCollateral.load(tcb_info=self.signed_json("tcbInfo", tcb_info or real_tcb_info()),
                                        qe_identity=self.signed_json("enclaveIdentity",
                                                                     qe_identity or real_qe_identity()),
                                        tcb_signing_chain=chain, crls=())
        return replace(collateral, crls=crls if crls is not None else (self.crl(self.ca), self.crl(self.root)))

    def root_pem(self) -> bytes:
        return self.root.public_bytes(serialization.Encoding.PEM)
