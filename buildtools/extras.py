"""Man pages and bash completion for ikectl and enclave-ike, generated from their argument parsers (build time,
not installed; argparse-manpage and shtab are the `package` extra).

    python -m buildtools.extras --out DIR

writes DIR/man/ikectl.1, DIR/man/enclave-ike.1, DIR/completion/ikectl and DIR/completion/enclave-ike. The pages
hold every command and its options as the parsers define them, then EXIT STATUS, ENVIRONMENT, FILES and SEE ALSO
from this module (the paths from the code's defaults). The completion scripts are static bash: nothing runs
Python when a user presses Tab.

The output is the same on every run: help text is laid out at a fixed width (not the terminal's), and the pages'
date is SOURCE_DATE_EPOCH's (UTC) when it is set, else empty. The parsers are built afresh for each file and
adjusted here, never in the programs: the command list goes last under COMMANDS, the options every command
inherits from the program (ikectl's --config and -v) are described once, and options that take a path complete
file names (directories for a DIR).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import shtab
from argparse_manpage.manpage import Manpage  # type: ignore[import-untyped]

import enclave_ike
import ikectl
from enclave_ike import cli as enclave_ike_cli
from enclave_ike import config as enclave_ike_config
from ikectl import cli as ikectl_cli
from ikectl import config as ikectl_config
from ikectl import nm, state, truststore

# Wide enough that argparse wraps nothing: troff fills the text to the reader's width, and the output does not
# depend on the terminal the build runs in.
WIDTH = 10_000


@dataclass(frozen=True)
class Program:
    name: str
    build_parser: Callable[[], argparse.ArgumentParser]
    version: str
    exit_status: tuple[tuple[str, str], ...]
    command_exit_status: tuple[tuple[str, str], ...]  # (command, a paragraph), said when the parser has it
    environment: tuple[tuple[str, str], ...]
    files: tuple[tuple[Path, str], ...]
    see_also: tuple[tuple[str, str], ...]  # (page, section)


def ikectl_program() -> Program:
    hook, pre_up_hook = nm.hook_paths(Path("/"))
    return Program(
        name="ikectl",
        build_parser=ikectl_cli.build_parser,
        version=ikectl.__version__,
        exit_status=(
            ("0", "Success. For doctor: every check passed; for verify: every proof held."),
            ("1", "The operation failed: a command that needs root ran without it, doctor found a failing "
                  "check, verify a failed proof, up could not apply the mode (in trusted "
                  "mode it failed closed: DNS is blocked, and status says why), or nm-dispatch gave up at its "
                  "time budget. One line on stderr says why."),
            ("2", "Bad usage or config: unknown arguments, no command, an invalid config file or input "
                  "(nm-dispatch: a malformed event from NetworkManager). Nothing was touched."),
            ("143", "Ended by SIGTERM: a coffee-shop up undoes what it did, a trusted one fails closed."),
        ),
        command_exit_status=(
            ("ipsec", "ikectl ipsec exits with libreswan's exit status (128+N when a signal N ended it), or 2 for "
                      "the subcommands it refuses, or 1 when ikectl's pluto is not running."),
        ),
        environment=(
            ("IKECTL_CONFIG", f"The config file when --config is not given (default {ikectl_config.DEFAULT_PATH})."),
            ("IKECTL_STATE_DIR", f"Where the record of what up applied is kept (default {state.DEFAULT_STATE_DIR})."),
            ("IKECTL_LOG_DIR", f"log_dir when the config does not say (default {ikectl_config.DEFAULT_LOG_DIR})."),
            ("JOURNAL_STREAM", "Set by systemd: when it names stderr, each line carries its syslog priority for the "
                               "journal (identifiers ikectl and ikectl-supervisor)."),
        ),
        files=(
            (ikectl_config.DEFAULT_PATH, "The configuration (--config, $IKECTL_CONFIG)."),
            (ikectl_config.DEFAULT_RUN_DIR, "The run dir ([paths] run_dir): the rendered libreswan tree, pluto's "
                                            "NSS database, control socket and log. ikectl down removes it."),
            (state.DEFAULT_STATE_DIR, "The record of what up applied, one per network namespace "
                                      "($IKECTL_STATE_DIR)."),
            (nm.NmPaths.for_config(ikectl_config.Config()).root,
             "The NetworkManager hook's lock, tickets and portal window, beside the run dir."),
            (truststore.DEFAULT_TRUST_DIR, "The pins ikectl trust makes ([paths] trust_dir)."),
            (ikectl_config.DEFAULT_LOG_DIR, "The logs of the last two runs ([paths] log_dir): last/ and previous/, "
                                            "kept when down or a failed up removes a run dir."),
            (Path("/usr/lib/NetworkManager/dispatcher.d/10-ikectl"),
             "The NetworkManager dispatcher hook the Debian package installs (a hook of the same name in "
             "/etc/NetworkManager/dispatcher.d takes its place)."),
            (Path("/lib/systemd/system/ikectl.service"),
             "The systemd unit the Debian package installs (disabled): up at boot, down at shutdown."),
            (hook, "The NetworkManager dispatcher hook that install-nm-hook writes (and --uninstall removes)."),
            (pre_up_hook, "The same hook, for NetworkManager's pre-up events."),
        ),
        see_also=(("enclave-ike", "1"), ("ipsec", "8"), ("pluto", "8"), ("ipsec.conf", "5"),
                  ("NetworkManager-dispatcher", "8")),
    )


def enclave_ike_program() -> Program:
    return Program(
        name="enclave-ike",
        build_parser=enclave_ike_cli.build_parser,
        version=enclave_ike.__version__,
        exit_status=(
            ("0", "Success. For serve: stopped by SIGTERM or SIGINT, after a Delete for every IKE SA and removing "
                  "every installed SA and policy and the published identity."),
            ("1", "The operation failed: serve could not start (a socket that will not bind, an enclave that is "
                  "unavailable); identity found no running server's identity, a stale one, or NULL auth; "
                  "evidence could not fetch or match an envelope; collateral met a signature or issuer that does "
                  "not lead to the Intel root, a PCS that failed, or a cache it could not write (show: a cached set "
                  "that is unusable). One line on stderr says why."),
            ("2", "Bad usage or config: unknown arguments, no command, an invalid config file, format or nonce; "
                  "collateral documents that are missing, do not parse or are for another FMSPC. Nothing was "
                  "changed."),
        ),
        command_exit_status=(),
        environment=(),
        files=(
            (enclave_ike_config.DEFAULT_PATH, "The configuration (--config)."),
            (enclave_ike_config.DEFAULT_PUBLISH,
             "The running server's public identity (identity.publish), which identity prints."),
            (enclave_ike_config.DEFAULT_COLLATERAL_DIR,
             "Intel's TDX collateral, one directory per FMSPC under tdx/ (evidence.collateral_dir), which collateral "
             "import and fetch fill and serve hands out with TDX evidence."),
        ),
        see_also=(("ikectl", "1"), ("ipsec", "8"), ("pluto", "8"), ("NetworkManager-dispatcher", "8")),
    )


PROGRAMS: tuple[Callable[[], Program], ...] = (ikectl_program, enclave_ike_program)


# --- walking and adjusting a parser ------------------------------------------------------------------------------

def subparsers_action(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[Any] | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...],
                                                                                         argparse.ArgumentParser]]:
    """Every parser of the tree with its command path (the program's is ()); an alias's parser once."""
    yield path, parser
    action = subparsers_action(parser)
    if action is None:
        return
    seen: set[int] = set()
    for name, sub in action.choices.items():
        if id(sub) not in seen:
            seen.add(id(sub))
            yield from walk(sub, (*path, name))


def fixed_width(parser: argparse.ArgumentParser) -> None:
    base: Callable[..., argparse.HelpFormatter] = parser.formatter_class

    def formatter(prog: str) -> argparse.HelpFormatter:
        return base(prog=prog, width=WIDTH)

    parser.formatter_class = formatter


def mark_paths(parser: argparse.ArgumentParser) -> None:
    """shtab completes file names for an option that takes a path (type=Path, or a FILE metavar), directory
    names for a DIR."""
    for action in parser._actions:
        metavar = action.metavar if isinstance(action.metavar, str) else ""
        if metavar == "DIR":
            action.complete = shtab.DIRECTORY  # type: ignore[attr-defined]
        elif action.type is Path or "FILE" in metavar.split("|"):
            action.complete = shtab.FILE  # type: ignore[attr-defined]


def inherited(root: argparse.ArgumentParser, parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The options a command shares with the program: the same option strings and help."""
    program = {(tuple(a.option_strings), a.help) for a in root._actions
               if a.option_strings and not isinstance(a, argparse._HelpAction)}
    return [a for a in parser._actions
            if a.option_strings and a.help != argparse.SUPPRESS and (tuple(a.option_strings), a.help) in program]


def commands_last(parser: argparse.ArgumentParser) -> None:
    """The command list under COMMANDS, after the options (argparse files it under "positional arguments",
    before them, where a command's options would read as its last subcommand's)."""
    action = subparsers_action(parser)
    if action is None:
        return
    for group in parser._action_groups:
        if action in group._group_actions:
            group._group_actions.remove(action)
    parser.add_argument_group("commands")._group_actions.append(action)


def for_man_page(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    tree = list(walk(parser))
    for _, each in tree:
        fixed_width(each)
    shared = {a.option_strings[-1] for _, each in tree[1:] for a in inherited(parser, each)}
    for _, each in tree[1:]:
        each.usage = each.format_usage().removeprefix("usage: ").strip().replace("%", "%%")  # as it was
        for action in inherited(parser, each):
            action.help = argparse.SUPPRESS
    for _, each in tree:
        commands_last(each)
        commands = subparsers_action(each)
        for choice in commands._choices_actions if commands else ():
            if choice.help and choice.help != argparse.SUPPRESS:  # argparse-manpage prints it as it is
                choice.help = roff(choice.help)
    if shared:
        listed = " and ".join(a.option_strings[0] for a in parser._actions
                              if a.option_strings and a.option_strings[-1] in shared)
        parser._optionals.description = f"{listed} go before or after the command."
    return parser


# --- man page ----------------------------------------------------------------------------------------------------

def roff(text: str) -> str:
    """Text for one roff line: backslashes and hyphens escaped (\\- is the hyphen-minus one types), and a line
    that would start with a control character protected."""
    text = text.replace("\\", "\\\\").replace("-", "\\-")
    return "\\&" + text if text.startswith((".", "'")) else text


def page_date() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if not epoch:
        return ""
    try:
        when = datetime.datetime.fromtimestamp(int(epoch), datetime.UTC)
    except (ValueError, OverflowError, OSError):
        raise SystemExit(f"buildtools.extras: SOURCE_DATE_EPOCH={epoch!r}: expected seconds since 1970") from None
    return when.strftime("%Y-%m-%d")


def summary(parser: argparse.ArgumentParser) -> str:
    """The NAME line's text: the parser's description, as a phrase."""
    text = (parser.description or "").strip().removesuffix(".")
    if len(text) > 1 and text[1].islower():
        text = text[0].lower() + text[1:]
    return text


def man_page(program: Program) -> str:
    date = page_date()
    parser = for_man_page(program.build_parser())
    page: Any = Manpage(parser, format="single-commands-section")
    page.date = date
    page.source = f"{program.name} {program.version}"
    page.manual = "User Commands"
    page.section = 1
    page.description = summary(parser)
    page.synopsis = [page.synopsis[0], *map(roff, page.synopsis[1:])]  # argparse-manpage leaves them raw

    def section(heading: str, lines: list[str]) -> None:
        if lines:
            page.add_section(heading, "=", "\n".join(lines))

    commands = subparsers_action(parser)
    section("exit status", [line for code, text in program.exit_status
                            for line in (".TP", f".B {code}", roff(text))]
            + [line for command, text in program.command_exit_status
               if commands and command in commands.choices for line in (".PP", roff(text))])
    section("environment", [line for name, text in program.environment
                            for line in (".TP", f".B {name}", roff(text))])
    section("files", [line for path, text in program.files
                      for line in (".TP", f".I {roff(str(path))}", roff(text))])
    section("see also", [",\n".join(f".BR {roff(name)} ({number})" for name, number in program.see_also)])
    # No hyphenation (of command names, options and paths) and no justification, for the whole page.
    header, rest = str(page).split("\n", 1)
    return f"{header}\n.nh\n.ad l\n{rest}"


# --- completion --------------------------------------------------------------------------------------------------

def completion(program: Program) -> str:
    parser = program.build_parser()
    for _, each in walk(parser):
        mark_paths(each)
    return shtab.complete(parser, "bash")


# --- the command -------------------------------------------------------------------------------------------------

def write(out: Path) -> list[Path]:
    written = []
    for make in PROGRAMS:
        program = make()
        for path, text in ((out / "man" / f"{program.name}.1", man_page(program)),
                           (out / "completion" / program.name, completion(program))):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m buildtools.extras", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="write DIR/man/PROGRAM.1 and DIR/completion/PROGRAM there")
    parser.add_argument("-v", "--verbose", action="store_true", help="name each file written")
    args = parser.parse_args(argv)
    for path in write(args.out):
        if args.verbose:
            print(path, file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
