"""Fetching a VCEK and its product's chain from AMD's Key Distribution Service, for `enclave-ike collateral
fetch-vcek`. Two GETs through pcs.get (urllib, the environment's proxy settings, a timeout and a size bound each):

    GET {kds}/vcek/v1/{product}/{hwID}?blSPL=B&teeSPL=T&snpSPL=S&ucodeSPL=U[&fmcSPL=F]   the VCEK, DER
    GET {kds}/vcek/v1/{product}/cert_chain                                              the ASK, then the ARK, PEM

{product} is Milan, Genoa or Turin; {hwID} is the chip ID in hex, 64 bytes, on Turin its first 8; fmcSPL is Turin's
only. KDS serves VLEKs to cloud providers alone (not by chip ID), so there is no VLEK here. Nothing fetched is
trusted: snp_certs.check judges it, and it must be the key asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

from ikecommon.attestation.snp.products import Product
from ikecommon.attestation.snp.report import TcbVersion

from . import collateral as co
from . import snp_certs as sc
from .pcs import DEFAULT_TIMEOUT_S, FetchError, get

DEFAULT_KDS_URL = "https://kdsintf.amd.com"
KDS_NAMES = {"bootloader": "blSPL", "tee": "teeSPL", "snp": "snpSPL", "microcode": "ucodeSPL", "fmc": "fmcSPL"}
VCEK_FILE, CHAIN_FILE = "vcek.der", "cert_chain.pem"  # what `--out` writes, as KDS serves them


@dataclass(frozen=True)
class Fetched:
    key: sc.KeyCertificate
    documents: dict[str, bytes]  # VCEK_FILE and CHAIN_FILE, byte for byte as KDS served them


def vcek_url(kds_url: str, product: Product, hw_id: bytes, tcb: TcbVersion) -> str:
    svns = tcb.with_layout(product.tcb).components()
    query = "&".join(f"{KDS_NAMES[name]}={svns[name]}" for name, _ in sc.TCB_PARTS if name in svns)
    return f"{kds_url.rstrip('/')}/vcek/v1/{product.name}/{hw_id.hex()}?{query}"


def chain_url(kds_url: str, product: Product) -> str:
    return f"{kds_url.rstrip('/')}/vcek/v1/{product.name}/cert_chain"


def fetch_vcek(product: Product, hw_id: bytes, tcb: TcbVersion, *, kds_url: str = DEFAULT_KDS_URL,
               timeout: float = DEFAULT_TIMEOUT_S) -> Fetched:
    """The VCEK of this chip at this TCB and its chain, checked; FetchError naming the URL for anything else."""
    key_url, chain_url_ = vcek_url(kds_url, product, hw_id, tcb), chain_url(kds_url, product)
    der, _ = get(key_url, sc.MAX_CERTIFICATE_FILE, timeout)
    chain, _ = get(chain_url_, sc.MAX_CERTIFICATE_FILE, timeout)
    try:
        (cert,) = sc.read_certificates(der, key_url)
        certs = sc.read_certificates(chain, chain_url_)
        if len(certs) != 2:
            raise FetchError(f"{chain_url_}: expected 2 certificates (ASK, ARK), got {len(certs)}")
        key = sc.check(cert, certs[0], where=key_url, issuer_where=chain_url_, ark_given=certs[1])
    except co.CollateralError as exc:  # KDS's answer, not the operator's input: exit 1
        raise FetchError(str(exc)) from None
    asked = f"{product.name} VCEK for chip ID {hw_id.hex()} at TCB {sc.tcb_name(tcb.with_layout(product.tcb))}"
    if key.kind != sc.VCEK or key.describe() != asked:
        raise FetchError(f"{key_url}: a {key.describe()}, not the {asked}")
    return Fetched(key, {VCEK_FILE: der, CHAIN_FILE: chain})
