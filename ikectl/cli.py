"""The `ikectl` command line. Exit codes: 0 success, 1 the operation failed, 2 bad usage or config.
Errors are one line on stderr naming the bad input; success is quiet (-v says what is being done).

    ikectl render --mode coffee-shop|trusted --resolver IP [--resolver-id ID --resolver-pubkey FILE] --output DIR
    ikectl [--config FILE] up | down | status [--json] | doctor
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__, config, doctor, keys, render, session, status
from .config import CoffeeShop, Config, ConfigError, Mode, TrustedResolver, address, resolver_id
from .errors import IkectlError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ikectl",
        description="Encrypt DNS with IKEv2/IPsec (libreswan + the kernel's XFRM layer).",
    )
    parser.add_argument("--version", action="version", version=f"ikectl {__version__}")
    parser.add_argument("--config", type=Path, default=Path(os.environ.get("IKECTL_CONFIG", config.DEFAULT_PATH)),
                        help=f"the config file (default {config.DEFAULT_PATH}, or $IKECTL_CONFIG)")
    parser.add_argument("-v", "--verbose", action="store_true", help="say what is being done")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("up", help="apply the configured mode (idempotent; a failed up changes nothing)")
    commands.add_parser("down", help="remove everything ikectl installed, and nothing else")
    st = commands.add_parser("status", help="one line per resolver: encrypted, clear or blocked, and why")
    st.add_argument("--json", action="store_true", help="the same as a versioned JSON document")
    commands.add_parser("doctor", help="check what this host needs, with a fix for each failure")

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


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        raise IkectlError(f"{what} needs root (it changes the kernel's IPsec state): run it with sudo")


def cmd_up(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)  # a bad config is reported before anything else is checked
    _need_root("ikectl up")
    say = _sayer(args.verbose)
    result = session.up(cfg, say)
    say(f"up in {result.mode.value} mode for {', '.join(map(str, result.resolvers))} "
        f"(pluto pid {result.pluto_pid}) in {result.seconds:.2f} s")
    return EXIT_OK


def cmd_down(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    _need_root("ikectl down")
    if not session.down(cfg.run_dir):
        _sayer(args.verbose)("ikectl was not up: nothing to remove")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    _need_root("ikectl status")
    current = status.gather(cfg.run_dir)
    print(json.dumps(current.to_json(), indent=1) if args.json else status.format_human(current))
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    try:
        cfg = config.load(args.config)
        loaded = doctor.Check("config", True, f"{args.config} is valid")
    except config.ConfigError as exc:
        cfg = config.Config()
        loaded = doctor.Check("config", False, str(exc), f"write a valid {args.config} (see docs/modes.md)")
    checks = [loaded, *doctor.run_checks(cfg)]
    print(doctor.format_checks(checks))
    return EXIT_OK if all(c.ok for c in checks) else EXIT_FAILED


def _sayer(verbose: bool) -> Callable[[str], None]:
    def say(message: str) -> None:
        if verbose:
            print(f"ikectl: {message}", file=sys.stderr, flush=True)
    return say


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 with one line on bad usage
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        commands = {"render": cmd_render, "up": cmd_up, "down": cmd_down, "status": cmd_status,
                    "doctor": cmd_doctor}
        return commands[args.command](args)
    except IkectlError as exc:
        print(f"ikectl: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
