"""`enclave-ike serve` in a TDX guest that is not one: the real `tsm` backend over a fake configfs-tsm whose
"kernel" answers each report request with a quote from a test PKI (fake_intel.py) that binds the report data
written to inblob, as a TDX module and quoting enclave would.

    python -m netns_tests.harness.tdx_guest PKI_DIR serve --config FILE

runs enclave-ike's own command line with `open_enclave` replaced by a TsmEnclave over `FakeTdxConfigFs`; nothing
else changes, so the endpoint, the envelope, the collateral cache and the IKE responder are the product's. A test
that trusts the PKI's root (`[trust] intel_root`) can attest this resolver end to end; trusting it proves nothing.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from enclave_ike import cli, server
from enclave_ike.config import KeyType, ServeConfig
from enclave_ike.enclave.base import Enclave
from enclave_ike.enclave.tsm import ConfigFs, TsmEnclave

from .fake_intel import FakeIntel


class FakeTdxConfigFs(ConfigFs):
    """configfs-tsm as Documentation/ABI/testing/configfs-tsm-report describes it, for a `tdx_guest` provider:
    an entry's attributes appear with it, each write bumps `generation`, outblob is the quote of the last inblob."""

    def __init__(self, pki: FakeIntel) -> None:
        self.pki = pki
        self.entries: dict[Path, dict[str, bytes]] = {}
        self.generations: dict[Path, int] = {}

    def make_entry(self, path: Path) -> None:
        if path in self.entries:
            raise FileExistsError(path)
        self.entries[path], self.generations[path] = {}, 0

    def remove_entry(self, path: Path) -> None:
        del self.entries[path], self.generations[path]

    def write(self, path: Path, data: bytes) -> None:
        self.entries[path.parent][path.name] = data
        self.generations[path.parent] += 1

    def read(self, path: Path, limit: int) -> bytes | None:
        entry = self.entries[path.parent]
        if path.name == "provider":
            return b"tdx_guest\n"
        if path.name == "generation":
            return f"{self.generations[path.parent]}\n".encode()
        if path.name == "outblob":
            inblob = entry.get("inblob")
            return None if inblob is None else self.pki.quote(report_data=inblob)
        return None  # no auxblob for tdx_guest


def main(argv: Sequence[str]) -> int:
    pki = FakeIntel.load(Path(argv[0]))
    reports = Path(tempfile.mkdtemp(prefix="fake-configfs-tsm-"))

    def open_enclave(config: ServeConfig) -> Enclave | None:
        key = (rsa.generate_private_key(public_exponent=65537, key_size=2048)
               if config.identity.key_type is KeyType.RSA else ec.generate_private_key(ec.SECP256R1()))
        return TsmEnclave(key, reports=reports, fs=FakeTdxConfigFs(pki))

    server.open_enclave = open_enclave  # the one seam: the rest is enclave-ike's `serve`
    return cli.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
