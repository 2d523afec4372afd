"""`enclave-ike serve` with initiator keys pinned by hand, for peers that cannot authenticate with NULL.

    python -m netns_tests.harness.enclave_ike_peers --config FILE --peer @client.example=/path/client.pem [-v]

The config file has no key for pinned client keys yet (docs/enclave-ike.md, Not done yet), while the responder's
policy (`ResponderConfig.peer_keys`) has them. This runs the real server (`enclave_ike.server.serve`) with the
config file's policy plus the given identity=public key (PEM) pairs. strongSwan's charon, which has no NULL
authentication, is such a peer. Test harness only: when the config file can pin keys, tests use `enclave-ike serve`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from enclave_ike import config as config_module
from enclave_ike import server
from enclave_ike.ikev2 import config as ike
from enclave_ike.ikev2.crypto import Signer


@dataclasses.dataclass(frozen=True)
class PinnedPeersConfig(config_module.ServeConfig):
    """The config file's ServeConfig, whose responder policy also accepts these signing peers."""

    peer_keys: tuple[ike.PinnedPeer, ...] = ()

    def responder_config(self, signer: Signer | None) -> ike.ResponderConfig:
        return dataclasses.replace(super().responder_config(signer), peer_keys=self.peer_keys)


def pinned_peer(spec: str) -> ike.PinnedPeer:
    """`ID=PEMFILE`, the ID in libreswan's spelling (@fqdn or an address)."""
    identity, sep, path = spec.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{spec!r}: expected ID=PEMFILE")
    key = load_pem_public_key(Path(path).read_bytes())
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise argparse.ArgumentTypeError(f"{path}: not an ECDSA or RSA public key")
    return ike.PinnedPeer(config_module.parse_id(identity, "--peer"), key)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m netns_tests.harness.enclave_ike_peers")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--peer", type=pinned_peer, action="append", default=[], metavar="ID=PEMFILE")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    loaded = config_module.load(args.config)
    fields = {field.name: getattr(loaded, field.name) for field in dataclasses.fields(loaded)}
    config = PinnedPeersConfig(**fields, peer_keys=tuple(args.peer))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="enclave-ike: %(message)s")
    asyncio.run(server.serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
