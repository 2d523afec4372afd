"""The `enclave-ike` command line. Exit codes: 0 success, 1 operation failed, 2 bad usage or config.

    enclave-ike serve --config FILE [-v]
    enclave-ike forward --listen ADDRESS... --enclave SOCKET [--ike-port 500] [--natt-port 4500]
                        [--evidence-port 4501 | --no-evidence] [--metrics-port 9464 | --no-metrics]
    enclave-ike identity [--config FILE] --format libreswan|pem|json
    enclave-ike rotate [--config FILE] [--wait SECONDS]     (a rotation of the service key: docs/scale-out.md)
    enclave-ike evidence --nonce HEX [--config FILE]
    enclave-ike collateral import DIR | fetch ... | show | fmspc    (collateral_cli.py: Intel's TDX collateral)
    enclave-ike collateral import-vcek FILE... | fetch-vcek ... | snp-id    (vcek_cli.py: AMD's SEV-SNP certificates)

The identity key is made inside the enclave when `serve` starts and is never written out, so there is no key until
a server runs: `serve` publishes its public identity (identity.publish in the config) and `identity` prints what
the running server published, and `evidence` asks the running server's evidence endpoint for an envelope binding
the nonce and that key. Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from ipaddress import ip_address
from pathlib import Path
from typing import TYPE_CHECKING

from ikecommon import lean_pyroute2

from . import __version__
from . import config as config_module
from .errors import EnclaveIkeError
from .relay import socket_path_problem

if TYPE_CHECKING:
    from .server import PublishedIdentity

# Each command imports what it runs when it runs (the server, the forwarder, the collateral tools): a process pays
# only for its own command, which matters most where every import is slow (serve's start under TCG).

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
ROTATE_WAIT_S = 10.0
COLLATERAL_HELP = "keep Intel's TDX collateral and AMD's SEV-SNP certificates, which evidence is served with"


def build_parser(with_collateral: bool = True) -> argparse.ArgumentParser:
    """The whole command line; without `with_collateral`, `collateral` is listed but takes no arguments (a command
    line that does not name it never reaches its subcommands, and they import the collateral tools)."""
    parser = argparse.ArgumentParser(
        prog="enclave-ike",
        description="An IKEv2 responder whose identity key lives inside a TEE.",
    )
    parser.add_argument("--version", action="version", version=f"enclave-ike {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser("serve", help="answer IKE for the configured DNS addresses")
    serve.add_argument("--config", type=Path, default=config_module.DEFAULT_PATH, metavar="FILE",
                       help=f"TOML config file (default {config_module.DEFAULT_PATH})")
    serve.add_argument("-v", "--verbose", action="store_true", help="log every datagram-level decision too")
    forward = commands.add_parser("forward", help="relay UDP 500/4500 between the network and an enclave (run it "
                                                  "outside the enclave: it holds no key)")
    forward.add_argument("--listen", required=True, nargs="+", type=_address, metavar="ADDRESS",
                         help="the host addresses clients reach (the enclave's listen.addresses)")
    forward.add_argument("--enclave", required=True, metavar="SOCKET",
                         help="the Unix socket `enclave-ike serve` listens on (its listen.relay)")
    forward.add_argument("--ike-port", type=_port, default=500, metavar="PORT")
    forward.add_argument("--natt-port", type=_port, default=4500, metavar="PORT")
    forward.add_argument("--evidence-port", type=_port, default=config_module.DEFAULT_EVIDENCE_PORT, metavar="PORT",
                         help="TCP port piped to the enclave's evidence endpoint (default %(default)s)")
    forward.add_argument("--no-evidence", action="store_true", help="pipe no evidence port (a NULL-auth enclave)")
    forward.add_argument("--metrics-port", type=_port, default=config_module.DEFAULT_METRICS_PORT, metavar="PORT",
                         help="TCP port piped to the enclave's metrics endpoint (default %(default)s)")
    forward.add_argument("--no-metrics", action="store_true", help="pipe no metrics port")
    identity = commands.add_parser("identity", help="print the running server's public identity")
    identity.add_argument("--config", type=Path, default=config_module.DEFAULT_PATH, metavar="FILE",
                          help="the running server's config (where it published its identity)")
    identity.add_argument("--format", choices=("libreswan", "pem", "json"), default="libreswan",
                          help="libreswan's raw key (0s...), a PEM public key, or JSON")
    rotate = commands.add_parser("rotate", help="start a rotation of the service key on the running server (SIGUSR2), "
                                                "and say when every replica switches")
    rotate.add_argument("--config", type=Path, default=config_module.DEFAULT_PATH, metavar="FILE",
                        help="the running server's config (where it published its identity)")
    rotate.add_argument("--wait", type=float, default=ROTATE_WAIT_S, metavar="SECONDS",
                        help="how long to wait for the server to announce the next key (default %(default)s)")
    evidence = commands.add_parser("evidence", help="print the running server's attestation evidence for a nonce")
    evidence.add_argument("--config", type=Path, default=config_module.DEFAULT_PATH, metavar="FILE",
                          help="the running server's config")
    evidence.add_argument("--nonce", required=True, metavar="HEX", help="16 to 64 bytes as hex, fresh for each use")
    if with_collateral:
        from . import collateral_cli  # noqa: PLC0415

        collateral_cli.add_commands(commands, COLLATERAL_HELP)
    else:
        commands.add_parser("collateral", help=COLLATERAL_HELP)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    lean_pyroute2.use()  # before anything imports pyroute2: only the modules the XFRM client uses (kernel mode)
    parser = build_parser(with_collateral="collateral" in arguments)
    args = parser.parse_args(arguments)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    run: dict[str, Callable[[], int]] = {
        "serve": lambda: _serve(args.config, args.verbose),
        "forward": lambda: _forward(args.listen, (args.ike_port, args.natt_port), args.enclave,
                                    None if args.no_evidence else args.evidence_port,
                                    None if args.no_metrics else args.metrics_port),
        "evidence": lambda: _evidence(args.config, args.nonce),
        "identity": lambda: _identity(args.config, args.format),
        "rotate": lambda: _rotate(args.config, args.wait),
        "collateral": lambda: _collateral(args),
    }
    try:
        return run[args.command]()
    except EnclaveIkeError as exc:
        print(f"enclave-ike: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_FAILED


def _serve(path: Path, verbose: bool) -> int:
    import uvloop  # noqa: PLC0415

    from . import server  # noqa: PLC0415

    config = config_module.load(path)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="enclave-ike: %(message)s")
    # uvloop, libuv's event loop behind asyncio's interface: a datagram's way through the loop costs about half of
    # what asyncio's own loop costs, and every DNS query over userspace ESP takes that way four times (forwarder
    # in, serve in, the resolver's answer, forwarder out). docs/performance.md has the numbers.
    uvloop.run(server.serve(config))
    return EXIT_OK


def _forward(addresses: list[config_module.Address], ports: tuple[int, int], enclave: str,
             evidence_port: int | None, metrics_port: int | None) -> int:
    if ports[0] == ports[1]:
        raise config_module.ConfigError(f"--natt-port {ports[1]}: must differ from --ike-port")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="enclave-ike forward: %(message)s")
    if evidence_port is not None and evidence_port == metrics_port:
        raise config_module.ConfigError(f"--metrics-port {metrics_port}: must differ from --evidence-port")
    if (problem := socket_path_problem(Path(enclave))) is not None:
        raise config_module.ConfigError(f"--enclave {enclave!r}: {problem}")
    import uvloop  # noqa: PLC0415

    from . import forwarder  # noqa: PLC0415

    uvloop.run(forwarder.forward(addresses, ports, enclave, evidence_port, metrics_port))  # as serve's: _serve
    return EXIT_OK


def _address(text: str) -> config_module.Address:
    try:
        return ip_address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from None


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"{text!r} is not a UDP port (1-65535)")
    return int(text)


def _identity(path: Path, output: str) -> int:
    config, identity = _published(path)
    if output == "json":
        sys.stdout.write(identity.to_json())
        return EXIT_OK
    value = identity.libreswan if output == "libreswan" else identity.public_key_pem
    if value is None:
        raise EnclaveIkeError(f"{config.path}: identity.auth is \"null\": the server has no key to pin")
    print(value.rstrip("\n"))
    return EXIT_OK


def _published(path: Path) -> tuple[config_module.ServeConfig, PublishedIdentity]:
    """The config, and the identity the running server published (EnclaveIkeError: none, or a dead server's)."""
    config = config_module.load(path)
    return config, _identity_of(config)


def _identity_of(config: config_module.ServeConfig) -> PublishedIdentity:
    publish = config.identity.publish
    try:
        text = publish.read_text()
    except FileNotFoundError:
        raise EnclaveIkeError(f"{publish}: no identity published; start `enclave-ike serve --config {config.path}` "
                              "(the key is made inside the enclave at start and never stored)") from None
    except OSError as exc:
        raise EnclaveIkeError(f"{publish}: cannot read it ({exc.strerror})") from None
    from .server import PublishedIdentity as Published  # noqa: PLC0415

    identity = Published.from_json(text, str(publish))
    if not _alive(identity.pid):
        raise EnclaveIkeError(f"{publish}: stale: the server that published it (pid {identity.pid}) is not running, "
                              "and its key died with it")
    return identity


def _rotate(path: Path, wait: float) -> int:
    """SIGUSR2 to the running server, then its published identity until it names the next key (docs/scale-out.md,
    "Rotation"). A refusal is the server's to say, in its log: here only that none was announced in time."""
    if not 0 < wait <= 600:
        raise config_module.ConfigError(f"--wait {wait:g}: expected seconds, more than 0 and at most 600")
    config, identity = _published(path)
    if identity.public_key_pem is None:
        raise EnclaveIkeError(f"{config.path}: identity.auth is \"null\": there is no key to rotate")
    if identity.next_switch_at is None:
        os.kill(identity.pid, signal.SIGUSR2)
        deadline = time.monotonic() + wait
        while identity.next_switch_at is None and time.monotonic() < deadline:
            time.sleep(0.1)
            identity = _identity_of(config)  # the config as read once: only the published file changes
        if identity.next_switch_at is None:
            raise EnclaveIkeError(f"serve (pid {identity.pid}) announced no next key within {wait:g} s: its log "
                                  "says why (\"rotation not started: ...\")")
        said = "rotation started"
    else:
        said = "a rotation is already under way"
    assert identity.next_public_key_pem is not None
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    from ikecommon.unixtime import utc  # noqa: PLC0415

    from .release.keyring import fingerprint  # noqa: PLC0415

    der = serialization.load_pem_public_key(identity.next_public_key_pem.encode()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    print(f"{said} by serve (pid {identity.pid}): next key {fingerprint(der)}; every replica switches to it "
          f"at {utc(identity.next_switch_at)} (in {max(0, identity.next_switch_at - int(time.time()))} s)")
    return EXIT_OK


def _collateral(args: argparse.Namespace) -> int:
    from . import collateral_cli  # noqa: PLC0415

    return collateral_cli.run(args)


def _evidence(path: Path, nonce_hex: str) -> int:
    from ikecommon import evidence_client  # noqa: PLC0415
    from ikecommon.attestation.envelope import Envelope  # noqa: PLC0415

    from . import evidence_endpoint  # noqa: PLC0415

    nonce = evidence_endpoint.parse_nonce(nonce_hex, "--nonce")  # bad hex: exit 2 before anything else
    config = config_module.load(path)
    if config.identity.auth is config_module.Auth.NULL:
        raise EnclaveIkeError(f"{config.path}: identity.auth is \"null\": the server has no key to attest")
    if not config.evidence.enabled:
        raise EnclaveIkeError(f"{config.path}: evidence.enabled is false: the server serves no evidence")
    address = evidence_endpoint.endpoint_address(config)  # loopback when listening everywhere
    body = evidence_client.fetch_evidence(address, config.evidence.port, nonce)
    if Envelope.decode(body).nonce != nonce:
        raise EnclaveIkeError(f"evidence endpoint {address}: the envelope answers another nonce")
    print(body.decode())
    return EXIT_OK


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
