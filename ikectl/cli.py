"""The `ikectl` command line. Exit codes: 0 success, 1 operation failed, 2 bad usage or config.

Commands arrive with the issues that build them (render, up, down, status, doctor, trust, nm-dispatch);
until then `ikectl` answers only --version and --help.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ikectl",
        description="Encrypt DNS with IKEv2/IPsec (libreswan + the kernel's XFRM layer).",
    )
    parser.add_argument("--version", action="version", version=f"ikectl {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 with one line on bad usage
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
