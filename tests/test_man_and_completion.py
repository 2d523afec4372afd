"""The man pages and bash completion buildtools/extras.py generates from the argument parsers. Every expectation
is computed from the parsers (a command added to a parser must show up in both, or these fail): each page renders
with no warning from troff and has a section for every command, with that command's options; completion offers
every command, each command's options, a choice's values, and file names for an option that takes a path. The
man pages are read with man-db's `man -l` (or groff, or mandoc), the completion scripts run in bash."""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import enclave_ike
import ikectl
from enclave_ike import cli as enclave_ike_cli
from enclave_ike import config as enclave_ike_config
from ikectl import cli as ikectl_cli
from ikectl import config as ikectl_config

ROOT = Path(__file__).resolve().parents[1]
PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "ikectl": ikectl_cli.build_parser, "enclave-ike": enclave_ike_cli.build_parser}
VERSIONS = {"ikectl": ikectl.__version__, "enclave-ike": enclave_ike.__version__}
CONFIGS = {"ikectl": ikectl_config.DEFAULT_PATH, "enclave-ike": enclave_ike_config.DEFAULT_PATH}
EXIT_CODES = {"ikectl": {ikectl_cli.EXIT_OK, ikectl_cli.EXIT_FAILED, ikectl_cli.EXIT_USAGE},
              "enclave-ike": {enclave_ike_cli.EXIT_OK, enclave_ike_cli.EXIT_FAILED, enclave_ike_cli.EXIT_USAGE}}
SEE_ALSO = ("ipsec(8)", "pluto(8)", "NetworkManager-dispatcher(8)")


def subcommands(parser: argparse.ArgumentParser) -> list[str]:
    """The names (aliases too) a user may type after this parser's own arguments; none hidden with SUPPRESS."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            hidden = {a.dest for a in action._choices_actions if a.help == argparse.SUPPRESS}
            return [name for name in action.choices if name not in hidden]
    return []


def tree(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...],
                                                                                         argparse.ArgumentParser]]:
    yield path, parser
    seen: set[int] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name in subcommands(parser):
                if id(action.choices[name]) not in seen:
                    seen.add(id(action.choices[name]))
                    yield from tree(action.choices[name], (*path, name))


def visible(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.help != argparse.SUPPRESS
            and not isinstance(a, argparse._SubParsersAction | argparse._HelpAction)]


def program_options(parser: argparse.ArgumentParser) -> set[tuple[tuple[str, ...], str | None]]:
    return {(tuple(a.option_strings), a.help) for a in visible(parser) if a.option_strings}


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("extras")
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    subprocess.run([sys.executable, "-m", "buildtools.extras", "--out", str(out)], cwd=ROOT, env=env, check=True,
                   timeout=120)
    return out


# --- man pages ---------------------------------------------------------------------------------------------------

def render(page: Path) -> tuple[int, str, str]:
    """(exit code, the page as plain text 80 columns wide, troff's warnings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAN", "GROFF"))}
    env |= {"MANWIDTH": "80", "LC_ALL": "C.UTF-8", "MANPAGER": "cat", "PAGER": "cat"}
    if shutil.which("man"):
        argv = ["man", "--warnings=w", "-l", str(page)]  # man-db: groff -ww, every warning
    elif shutil.which("groff"):
        argv = ["groff", "-man", "-Tutf8", "-ww", "-rLL=80n", str(page)]
    elif shutil.which("mandoc"):
        argv = ["mandoc", "-Tutf8", "-Wwarning", "-Owidth=80", str(page)]
    else:
        pytest.fail("no man, groff or mandoc to render a man page: install man-db (scripts/setup)")
    proc = subprocess.run(argv, check=False, capture_output=True, text=True, env=env, timeout=60)
    return proc.returncode, re.sub(".\b", "", proc.stdout), proc.stderr  # overstrike bold/underline, if any


def starts(lines: list[str], word: str) -> bool:
    return any(line == word or line.startswith((f"{word} ", f"{word},")) for line in lines)


@pytest.mark.parametrize("prog", PARSERS)
def test_man_page_renders_without_warnings_with_every_command_and_its_options(generated, prog):
    code, text, warnings = render(generated / "man" / f"{prog}.1")
    assert (code, warnings) == (0, "")
    lines = [line.strip() for line in text.splitlines()]
    parser = PARSERS[prog]()
    commands = [path for path, _ in tree(parser) if path]
    assert commands
    heading = {path: lines.index(" ".join((prog, *path))) for path in commands
               if " ".join((prog, *path)) in lines}
    assert [" ".join(p) for p in commands if p not in heading] == []  # a section for every command
    bounds = sorted([*heading.values(), lines.index("EXIT STATUS")])
    shared = program_options(parser)
    before_commands = lines[:bounds[0]]
    for path, sub in tree(parser):
        part = lines[heading[path]:bounds[bounds.index(heading[path]) + 1]] if path else before_commands
        for action in visible(sub):
            # the action's own entry: its first option string (or its name) opens a line of the part; an option
            # every command shares with the program is the program's, under OPTIONS
            where = before_commands if path and (tuple(action.option_strings), action.help) in shared else part
            name = action.option_strings[0] if action.option_strings else (action.metavar or action.dest)
            assert starts(where, str(name)), f"{' '.join((prog, *path))}: {name} is missing"


@pytest.mark.parametrize("prog", PARSERS)
def test_man_page_sections_version_exit_codes_and_files(generated, prog):
    _, text, _ = render(generated / "man" / f"{prog}.1")
    lines = [line.strip() for line in text.splitlines()]
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "COMMANDS", "EXIT STATUS", "FILES", "SEE ALSO"):
        assert section in lines
    exit_status = lines[lines.index("EXIT STATUS"):lines.index("FILES")]
    assert all(starts(exit_status, str(code)) for code in EXIT_CODES[prog])
    files = lines[lines.index("FILES"):lines.index("SEE ALSO")]
    assert str(CONFIGS[prog]) in files
    see_also = " ".join(lines[lines.index("SEE ALSO"):])
    other = next(p for p in PARSERS if p != prog)
    assert all(page in see_also for page in (*SEE_ALSO, f"{other}(1)"))
    assert lines[-1].startswith(f"{prog} {VERSIONS[prog]} ")  # the footer


def generate(out: Path, **env: str) -> dict[str, bytes]:
    base = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    subprocess.run([sys.executable, "-m", "buildtools.extras", "--out", str(out)], cwd=ROOT, env=base | env,
                   check=True, timeout=120)
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_output_is_the_same_on_every_run_and_terminal(generated, tmp_path):
    first = {str(p.relative_to(generated)): p.read_bytes() for p in sorted(generated.rglob("*")) if p.is_file()}
    assert sorted(first) == ["completion/enclave-ike", "completion/ikectl", "man/enclave-ike.1", "man/ikectl.1"]
    assert generate(tmp_path / "narrow", COLUMNS="40") == first
    dated = generate(tmp_path / "dated", SOURCE_DATE_EPOCH="1700000000")
    header = f'.TH IKECTL "1" "2023\\-11\\-14" "ikectl {VERSIONS["ikectl"]}" "User Commands"'
    assert dated["man/ikectl.1"].decode().splitlines()[0] == header
    assert {k: v for k, v in dated.items() if k.startswith("completion/")} == {
        k: v for k, v in first.items() if k.startswith("completion/")}


# --- bash completion ---------------------------------------------------------------------------------------------

# Sources the script, finds the function `complete -F` registered for the program, and calls it the way bash
# does on Tab: COMP_WORDS and COMP_CWORD set, arguments (command, word, previous word); prints COMPREPLY.
COMPLETE = r"""
source "$1"; shift
spec=$(complete -p "$1") || exit 3
fn=${spec##* -F }; fn=${fn%% *}
COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
"$fn" "$1" "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}" || exit 4
printf '%s\n' "${COMPREPLY[@]}"
"""


def complete(script: Path, cwd: Path, *words: str) -> list[str]:
    proc = subprocess.run(["bash", "--norc", "--noprofile", "-c", COMPLETE, "complete", str(script), *words],
                          check=False, capture_output=True, text=True, cwd=cwd, timeout=30)
    assert (proc.returncode, proc.stderr) == (0, "")
    return [line for line in proc.stdout.splitlines() if line]


def cases() -> Iterator[tuple[str, tuple[str, ...], set[str] | str]]:
    """(program, the words typed with the last one being completed, what completion offers: the set of words,
    or "FILE"/"DIR" for the file names in the fixture's directory)."""
    for prog, build in PARSERS.items():
        for path, parser in tree(build()):
            if names := subcommands(parser):
                yield prog, (*path, ""), set(names)
            yield prog, (*path, "--"), {o for a in parser._actions if a.help != argparse.SUPPRESS
                                        for o in a.option_strings if o.startswith("--")}
            for action in visible(parser):
                if action.option_strings and action.type is Path:
                    yield prog, (*path, action.option_strings[-1], "so"), "DIR" if action.metavar == "DIR" else "FILE"
                elif action.option_strings and action.choices:
                    yield prog, (*path, action.option_strings[-1], ""), set(map(str, action.choices))


CASES = list(cases())


@pytest.mark.parametrize(("prog", "words", "offered"), CASES, ids=[" ".join((p, *w)) for p, w, _ in CASES])
def test_completion(generated, tmp_path, prog, words, offered):
    (tmp_path / "some.toml").touch()
    (tmp_path / "somedir").mkdir()
    reply = complete(generated / "completion" / prog, tmp_path, prog, *words)
    if offered == "FILE":
        assert "some.toml" in reply
    elif offered == "DIR":
        assert reply == ["somedir"]
    else:
        assert set(reply) == offered


def test_completion_examples(generated, tmp_path):
    script = generated / "completion" / "ikectl"
    assert {"up", "down", "status", "trust"} <= set(complete(script, tmp_path, "ikectl", ""))
    assert set(complete(script, tmp_path, "ikectl", "trust", "")) == {"add", "list", "verify", "remove", "check"}
    assert {"--spec", "--collateral", "--certs", "--at", "--strict", "--json"} <= set(
        complete(script, tmp_path, "ikectl", "trust", "check", "--"))
    assert "--config" in complete(script, tmp_path, "ikectl", "up", "--")
    (tmp_path / "ikectl.toml").touch()
    assert complete(script, tmp_path, "ikectl", "up", "--config", "ike") == ["ikectl.toml"]
    assert complete(script, tmp_path, "ikectl", "--config", "ikectl.toml", "tr") == ["trust"]


# --- build time only ---------------------------------------------------------------------------------------------

def test_the_programs_never_load_the_generators():
    code = ("import json, sys\nfrom ikectl import cli\nfrom enclave_ike import cli as e\n"
            "for main in (cli.main, e.main):\n"
            "    try:\n        main(['--help'])\n    except SystemExit:\n        pass\n"
            "print(json.dumps(sorted(sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60,
                          cwd=ROOT)
    modules = json.loads(proc.stdout.splitlines()[-1])
    assert [m for m in modules if m.split(".")[0] in {"buildtools", "shtab", "argparse_manpage", "build_manpages"}] \
        == []


def test_buildtools_is_not_installed():
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    assert not any(fnmatch.fnmatchcase(name, pattern) for pattern in include
                   for name in ("buildtools", "buildtools.extras"))
