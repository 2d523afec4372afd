"""The `enclave-ike` command line. Exit codes: 0 success, 1 operation failed, 2 bad usage or config.

Commands arrive with the issues that build them (serve, identity, evidence); until then `enclave-ike`
answers only --version and --help.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="enclave-ike",
        description="An IKEv2 responder whose identity key lives inside a TEE.",
    )
    parser.add_argument("--version", action="version", version=f"enclave-ike {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
