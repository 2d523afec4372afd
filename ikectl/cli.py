"""The `ikectl` command line. Exit codes: 0 success, 1 the operation failed, 2 bad usage or config.
Errors are one line on stderr naming the bad input.

    ikectl render --mode coffee-shop|trusted --resolver IP [--resolver-id ID --resolver-pubkey FILE] --output DIR
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from . import __version__, keys, render
from .config import CoffeeShop, Config, ConfigError, Mode, TrustedResolver, address, resolver_id
from .errors import IkectlError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ikectl",
        description="Encrypt DNS with IKEv2/IPsec (libreswan + the kernel's XFRM layer).",
    )
    parser.add_argument("--version", action="version", version=f"ikectl {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    r = commands.add_parser("render", help="write a libreswan config tree for a mode (touches nothing else)")
    r.add_argument("--mode", required=True, choices=[m.value for m in Mode])
    r.add_argument("--resolver", required=True, action="append", metavar="IP",
                   help="a resolver's address (coffee-shop: repeat for several; trusted: exactly one)")
    r.add_argument("--resolver-id", metavar="ID", help="trusted: the resolver's IKE ID, e.g. @dns.example.net")
    r.add_argument("--resolver-pubkey", type=Path, metavar="FILE",
                   help="trusted: the resolver's public key (PEM, or libreswan's 0s... raw key)")
    r.add_argument("--output", required=True, type=Path, metavar="DIR")
    r.add_argument("--no-check", action="store_true", help="do not run libreswan's parser on the result")
    return parser


def cmd_render(args: argparse.Namespace) -> int:
    resolvers = tuple(address(a, f"--resolver {a}") for a in args.resolver)
    mode = Mode(args.mode)
    trusted = None
    if mode == Mode.TRUSTED:
        if len(resolvers) != 1 or args.resolver_id is None or args.resolver_pubkey is None:
            raise ConfigError("--mode trusted needs exactly one --resolver, with --resolver-id and --resolver-pubkey")
        trusted = TrustedResolver(resolvers[0], resolver_id(args.resolver_id, "--resolver-id"),
                                  keys.load(args.resolver_pubkey))
    elif args.resolver_id or args.resolver_pubkey:
        raise ConfigError("--resolver-id and --resolver-pubkey belong to --mode trusted")
    config = Config(mode=mode, resolvers=resolvers, trusted=trusted, coffee_shop=CoffeeShop())
    files = render.render_tree(render.Profile.from_config(config, resolvers))
    if not args.no_check:  # check a scratch copy first: a refused tree must not land in DIR
        with tempfile.TemporaryDirectory(prefix="ikectl-render-") as scratch:
            render.write_tree(files, Path(scratch))
            render.check_tree(Path(scratch))
    render.write_tree(files, args.output)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 with one line on bad usage
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return {"render": cmd_render}[args.command](args)
    except IkectlError as exc:
        print(f"ikectl: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
