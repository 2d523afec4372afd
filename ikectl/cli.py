"""The `ikectl` command line. Exit codes: 0 success, 1 the operation failed, 2 bad usage or config.
Errors are one line on stderr naming the bad input; success is quiet (-v says what is being done).

    ikectl render --mode coffee-shop|trusted --resolver IP [--resolver-id ID --resolver-pubkey FILE] --output DIR
    ikectl up | down | status [--json] | doctor | verify [--seconds S]
    ikectl nm-dispatch IFACE ACTION | install-nm-hook [--uninstall] [--root DIR]
    ikectl portal allow --minutes N | close | show
    ikectl ipsec ARGS...      libreswan's `ipsec` aimed at ikectl's pluto (ARGS unchanged; ikectl's options go before)
    ikectl trust add NAME --resolver ADDR [--resolver ADDR...] --spec FILE|INLINE|URL [--port P] [--anchors vendor|sim]
                     [--id ID]
                 | list [--json] | verify NAME | remove NAME
                 | check FILE [--spec FILE|INLINE] [--collateral DIR] [--certs DIR] [--at TIME] [--strict] [--json]

The global options (--config FILE, -v) go before or after the command, as a user types them.

Each command imports its modules when it runs: parsing the arguments (and `--help`, and a usage error) loads
config.py and what it needs, no more, and no command loads what only another needs (scapy for `verify`,
enclave_ike's attestation for `trust`). Python's start-up is most of what an `ikectl` call costs, and
NetworkManager's hook pays it on every event (docs/performance.md); tests/test_lazy_imports.py checks what
commands load.
"""

# ruff: noqa: PLC0415 - the imports inside the commands are the point (see above)

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ikecommon import lean_pyroute2

from . import __version__, config, logline, signals
from .config import Address, CoffeeShop, Config, ConfigError, Mode, TrustedResolver, address, resolver_id
from .errors import IkectlError, UsageError
from .truststore import DEFAULT_PORT, Anchors

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse writes to stderr only for bad usage (the usage and its error, or the help when no command is
    given): each of those lines an error where journald reads them (ikectl/logline.py)."""

    def _print_message(self, message: str, file: Any = None) -> None:
        if message and (file is None or file is sys.stderr):
            logline.write(message.rstrip("\n"), logline.ERROR)
        else:
            super()._print_message(message, file)


def _global_options(parser: argparse.ArgumentParser, top: bool) -> None:
    """--config and -v, on the program and on every command: after the command they override what was given
    before it (argparse.SUPPRESS: a command's parser sets nothing unless the option is given there)."""
    default = Path(os.environ.get("IKECTL_CONFIG", config.DEFAULT_PATH)) if top else argparse.SUPPRESS
    parser.add_argument("--config", type=Path, default=default, metavar="FILE",
                        help=f"the config file (default {config.DEFAULT_PATH}, or $IKECTL_CONFIG)")
    parser.add_argument("-v", "--verbose", action="store_true", default=False if top else argparse.SUPPRESS,
                        help="say what is being done")


class _Commands:
    """Every command's parser gets the global options (so `ikectl status --config F` works, and --help of
    each command shows them)."""

    def __init__(self, commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        self.commands = commands

    def add(self, name: str, **kwargs: str) -> argparse.ArgumentParser:
        parser = self.commands.add_parser(name, **kwargs)  # type: ignore[arg-type]
        _global_options(parser, top=False)
        return parser


def build_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = _Parser(
        prog="ikectl",
        description="Encrypt DNS with IKEv2/IPsec (libreswan + the kernel's XFRM layer).",
    )
    parser.add_argument("--version", action="version", version=f"ikectl {__version__}")
    _global_options(parser, top=True)
    commands = _Commands(parser.add_subparsers(dest="command", metavar="COMMAND"))
    commands.add("up", help="apply the configured mode (idempotent; trusted mode fails closed)")
    commands.add("down", help="remove everything ikectl installed, and nothing else")
    st = commands.add("status", help="one line per resolver: encrypted, clear or blocked, and why")
    st.add_argument("--json", action="store_true", help="the same as a versioned JSON document")
    commands.add("doctor", help="check what this host needs, with a fix for each failure")
    ver = commands.add("verify", help="prove from the wire: test queries, capture, ESP vs plaintext")
    ver.add_argument("--seconds", type=float, default=3.0, help="how long to send and capture (default 3)")

    r = commands.add("render", help="write a libreswan config tree for a mode (touches nothing else)")
    r.add_argument("--mode", required=True, choices=[m.value for m in Mode], help="the mode to render")
    r.add_argument("--resolver", required=True, action="append", metavar="IP",
                   help="a resolver's address (coffee-shop: repeat for several; trusted: exactly one)")
    r.add_argument("--resolver-id", metavar="ID", help="trusted: the resolver's IKE ID, e.g. @dns.example.net")
    r.add_argument("--resolver-pubkey", type=Path, metavar="FILE",
                   help="trusted: the resolver's public key (PEM, or libreswan's 0s... raw key)")
    r.add_argument("--source", action="append", default=[], metavar="IP",
                   help="coffee-shop: the address this host sends DNS from, per address family (default: the kernel's "
                        "route to each resolver; an IPv6 group needs one)")
    r.add_argument("--output", required=True, type=Path, metavar="DIR",
                   help="where the libreswan tree is written (created if missing)")
    r.add_argument("--no-check", action="store_true", help="do not run libreswan's parser on the result")
    _add_nm_commands(commands)
    _add_trust_commands(commands)
    # Everything after `ipsec` is libreswan's, options included: a prefix no argument can start with (NUL) leaves them
    # all to ARGS, so ikectl's --config and -v go before `ipsec`.
    ipsec = commands.commands.add_parser(
        "ipsec", prefix_chars="\0", add_help=False,
        help="libreswan's ipsec command aimed at ikectl's pluto: `ikectl ipsec status`")
    ipsec.add_argument("ipsec_args", nargs=argparse.REMAINDER, metavar="ARGS",
                       help="libreswan's `ipsec` arguments, passed unchanged (docs/coexistence.md)")
    return parser


def _add_nm_commands(commands: _Commands) -> None:
    d = commands.add("nm-dispatch", help="NetworkManager's dispatcher hook (argv and environment from NM)")
    d.add_argument("iface", metavar="IFACE", help="the interface NetworkManager names")
    d.add_argument("action", metavar="ACTION", help="the dispatcher action (up, down, vpn-up, connectivity-change...)")
    d.add_argument("--dry-run", action="store_true", help="log the plan, apply nothing")
    h = commands.add("install-nm-hook", help="put the hook into NetworkManager's dispatcher directories")
    h.add_argument("--uninstall", action="store_true", help="remove exactly what install-nm-hook installed")
    h.add_argument("--root", type=Path, default=Path("/"), metavar="DIR", help="install under DIR (default /)")
    h.add_argument("--ikectl", type=Path, metavar="PATH", help="the ikectl the hook runs (default: from PATH)")
    p = commands.add("portal", help="captive portals on trusted networks: a time-limited clear-DNS window")
    portal_commands = _Commands(p.add_subparsers(dest="portal_command", metavar="allow|close|show", required=True))
    allow = portal_commands.add("allow", help="let clear DNS through for a portal login, for N minutes")
    allow.add_argument("--minutes", type=int, required=True, metavar="N", help="how long the window stays open")
    portal_commands.add("close", help="close the window now")
    portal_commands.add("show", help="say whether a portal is waiting or a window is open")


def cmd_render(args: argparse.Namespace) -> int:
    from ikecommon import keys

    from . import render

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
    sources: dict[int, Address] = {}
    for text in args.source:
        source = address(text, f"--source {text}")
        if source.version in sources:
            raise ConfigError(f"--source {text}: one --source per address family")
        sources[source.version] = source
    if mode == Mode.COFFEE_SHOP:
        from . import routes

        for resolver in resolvers:
            if resolver.version not in sources and (found := routes.source_address(resolver)) is not None:
                sources[resolver.version] = found
    elif sources:
        raise ConfigError("--source belongs to --mode coffee-shop")
    config = Config(mode=mode, resolvers=resolvers, trusted=trusted, coffee_shop=CoffeeShop())
    files = render.render_tree(render.Profile.from_config(config, resolvers, sources))
    if not args.no_check:  # check a scratch copy first: a refused tree must not land in DIR
        with tempfile.TemporaryDirectory(prefix="ikectl-render-") as scratch:
            render.write_tree(files, Path(scratch))
            render.check_tree(Path(scratch))
    render.write_tree(files, args.output)
    return EXIT_OK


def _need_root(what: str, because: str = "it changes the kernel's IPsec state") -> None:
    if os.geteuid() != 0:
        raise IkectlError(f"{what} needs root ({because}): run it with sudo")


def cmd_up(args: argparse.Namespace) -> int:
    from . import session

    cfg = config.load(args.config)  # a bad config is reported before anything else is checked
    _need_root("ikectl up")
    say = _sayer(args.verbose)
    try:
        result = session.up(cfg, say, config_path=args.config.resolve(), warn=_warn,
                            tell=lambda line: logline.write(f"ikectl: {line}", logline.INFO))
    except IkectlError as exc:
        if cfg.mode == Mode.TRUSTED:
            raise session.Blocking(f"{exc}; trusted mode failed closed: DNS is blocked (`ikectl status` says why) "
                                   "until the next `ikectl up`") from None
        raise
    for warning in result.warnings:
        _warn(warning)
    # Quiet on success at a terminal; under systemd (ikectl.service) the journal gets this one line of what is up.
    summary = _sayer(args.verbose or logline.to_journal())
    summary(f"up in {result.mode.value} mode for {', '.join(map(str, result.resolvers))} "
            f"(pluto pid {result.pluto_pid}) in {result.seconds:.2f} s")
    return EXIT_OK


def _warn(text: str) -> None:
    logline.write(f"ikectl: warning: {text}", logline.WARNING)


def _config_or_record(args: argparse.Namespace, command: str, always: bool = False) -> Config | None:
    """The config; or, when it cannot be read but ikectl is up here, None and a warning: `down` and `status`
    work from the record of what was applied (a config that broke or went while up must not leave DNS as it
    is). `always`: None and a warning even with nothing up (`down` then has nothing to undo, and must not fail:
    the package's removal runs it)."""
    from .state import StateStore

    try:
        return config.load(args.config)
    except ConfigError as exc:
        if os.geteuid() != 0:
            raise
        if StateStore.here().read() is None:
            if not always:
                raise
            _warn(f"{exc}; nothing of ikectl's is recorded as up here, so {command} has nothing to go by")
            return None
        _warn(f"{exc}; {command} goes by the record of what `up` applied")
        return None


def cmd_down(args: argparse.Namespace) -> int:
    from . import session

    cfg = _config_or_record(args, "down", always=True)
    _need_root("ikectl down")
    log_dir = cfg.log_dir if cfg is not None else config.default_log_dir()
    if not session.down(cfg.run_dir if cfg is not None else None, _sayer(args.verbose), log_dir=log_dir, warn=_warn):
        _sayer(args.verbose)("ikectl was not up: nothing to remove")
    elif logline.to_journal():
        _sayer(True)("down: everything ikectl installed is removed")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from . import nm, status

    cfg = _config_or_record(args, "status")
    _need_root("ikectl status", "it reads ikectl's run state and the kernel's IPsec tables")
    portal_line = nm.portal_summary(cfg, time.time()) if cfg is not None else None
    current = status.gather(cfg, portal_line)
    print(json.dumps(current.to_json(), indent=1) if args.json else status.format_human(current))
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from . import verify

    config.load(args.config)  # a bad config is bad usage here as for every command
    _need_root("ikectl verify")
    if not 0.5 <= args.seconds <= 300:
        raise ConfigError(f"--seconds {args.seconds}: expected 0.5 to 300")
    proofs = verify.prove(args.seconds, _sayer(args.verbose))
    print(verify.format_proofs(proofs))
    return EXIT_FAILED if any(p.failed for p in proofs) else EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from . import doctor

    try:
        cfg = config.load(args.config)
        loaded = doctor.Check("config", True, f"{args.config} is valid")
    except config.ConfigError as exc:
        cfg = config.Config()
        loaded = doctor.Check("config", False, str(exc), f"write a valid {args.config} (see docs/modes.md)")
    checks = [loaded, *doctor.run_checks(cfg)]
    print(doctor.format_checks(checks))
    return EXIT_OK if all(c.ok for c in checks) else EXIT_FAILED


def cmd_ipsec(args: argparse.Namespace) -> int:
    from . import ipsec_passthrough

    return ipsec_passthrough.main(args.ipsec_args, args.config, say=_sayer(args.verbose))


def _sayer(verbose: bool) -> Callable[[str], None]:
    def say(message: str) -> None:
        if verbose:
            logline.write(f"ikectl: {message}", logline.INFO)
    return say


def _nm_log(message: str, priority: int = logline.INFO) -> None:
    logline.write(f"ikectl nm-dispatch: {message}", priority)


def cmd_nm_dispatch(args: argparse.Namespace) -> int:
    """Never raises: bad input or config is one log line, and the protection stays as it is."""
    from . import nm

    where = f"{args.action} {args.iface or '-'}"
    try:
        event = nm.read_event(args.iface, args.action, os.environ)
        cfg = config.load(args.config)
    except IkectlError as exc:
        _nm_log(f"{where}: {exc}; protection left as it is", logline.ERROR)
        return exc.exit_code
    if not args.dry_run and os.geteuid() != 0:
        _nm_log(f"{where}: needs root (NetworkManager runs its hooks as root); protection left as it is",
                logline.ERROR)
        return EXIT_FAILED
    lines: list[str] = []  # its one line comes as it returns: an error when it failed
    code = nm.dispatch(event, cfg, log=lines.append, dry_run=args.dry_run)
    for line in lines:
        _nm_log(line, logline.ERROR if code else logline.INFO)
    return code


def cmd_install_nm_hook(args: argparse.Namespace) -> int:
    from . import nm

    if args.uninstall:
        removed = nm.uninstall_hook(args.root)
        _sayer(args.verbose)(f"removed {', '.join(map(str, removed)) or 'nothing: no ikectl hook installed'}")
        return EXIT_OK
    found = args.ikectl or shutil.which("ikectl") or sys.argv[0]
    ikectl = Path(found).resolve()
    if not ikectl.is_file() or not os.access(ikectl, os.X_OK):
        raise UsageError(f"--ikectl {ikectl}: not an executable file")
    config.load(args.config)  # a hook pointing at a bad config would only ever log errors
    installed = nm.install_hook(args.root, ikectl, args.config.resolve())
    _sayer(args.verbose)(f"installed {', '.join(map(str, installed))}")
    return EXIT_OK


def cmd_portal(args: argparse.Namespace) -> int:
    from . import nm, portal, session

    cfg = config.load(args.config)
    paths = nm.NmPaths.for_config(cfg)
    now = time.time()
    # Even `show`: the window's state is root's (0700), and a user who cannot read it must not be told there is none.
    _need_root(f"ikectl portal {args.portal_command}", "the portal window is root's state")
    if args.portal_command == "show":
        print(nm.portal_summary(cfg, now) or "no captive portal waiting, no portal window open")
        return EXIT_OK
    with nm.holding_lock(paths, time.monotonic() + cfg.nm.budget_s):  # a hook holds it that long at most
        if args.portal_command == "close":
            session.close_portal_window()
            portal.clear(paths.window)
            print("portal window closed: trusted mode blocks DNS that is not protected again")
            return EXIT_OK
        record = nm.read_record(paths)
        window = portal.new_window(args.minutes, now, "ikectl portal allow",
                                   record.network.uuid if record.network else None)
        portal.write(paths.window, window)
        if session.open_portal_window(window.until):
            portal.spawn_closer(paths.window)
            print(f"{window.describe(now)}; closes at {time.strftime('%H:%M:%S', time.localtime(window.until))}")
        else:
            print("ikectl is not up in trusted mode: nothing to open now (coffee-shop lets a portal's DNS through); "
                  f"the window is recorded until {time.strftime('%H:%M:%S', time.localtime(window.until))}")
    return EXIT_OK


def _add_trust_commands(commands: _Commands) -> None:
    t = commands.add("trust", help="pin a resolver's key after verifying its TEE's attestation evidence")
    trust_commands = _Commands(t.add_subparsers(dest="trust_command", metavar="add|list|verify|remove|check",
                                                required=True))
    add = trust_commands.add("add", help="fetch evidence for a fresh nonce, verify it, pin the key and ID")
    add.add_argument("name", metavar="NAME", help="the pin's name ([trusted] attested = \"NAME\")")
    add.add_argument("--resolver", required=True, action="append", metavar="ADDR",
                     help="the resolver's address (IKE and DNS); repeat it for a service at several addresses, "
                          "each attested to one key and ID")
    add.add_argument("--spec", required=True, metavar="FILE|INLINE|URL",
                     help="the measurements to accept: a JSON file, gzip+base64url inline, or an https governance "
                          "feed signed by [trust] release_key")
    add.add_argument("--port", type=int, default=DEFAULT_PORT, metavar="P",
                     help=f"the evidence endpoint's TCP port (default {DEFAULT_PORT})")
    add.add_argument("--anchors", choices=[a.value for a in Anchors], default=Anchors.VENDOR.value,
                     help="vendor: Intel's and AMD's roots, shipped with ikectl or named in [trust] (default); sim: "
                          "simulated evidence, NOT SECURE")
    add.add_argument("--id", metavar="ID", help="the IKE ID to expect (default: the one the resolver states)")
    listing = trust_commands.add("list", help="every pin, with its latest attestation")
    listing.add_argument("--json", action="store_true", help="the same as a JSON document")
    verify_ = trust_commands.add("verify", help="re-attest now; on failure trusted mode blocks its DNS")
    verify_.add_argument("name", metavar="NAME", help="the pin to verify again")
    remove = trust_commands.add("remove", help="forget a pin (trusted mode using it blocks DNS)")
    remove.add_argument("name", metavar="NAME", help="the pin to remove")
    check = trust_commands.add("check", help="verify an evidence file offline and print what it holds (pins nothing)")
    check.add_argument("file", metavar="FILE", help="a raw TDX quote, a raw SEV-SNP report, a sim report or an "
                       "evidence envelope (told apart by their contents); - reads stdin")
    check.add_argument("--spec", metavar="FILE|INLINE", help="the measurements to compare: a JSON file or "
                       "gzip+base64url inline (a feed is not fetched: check is offline)")
    check.add_argument("--collateral", type=Path, metavar="DIR", help="TDX: Intel's TCB info, QE identity, TCB "
                       "signing certificate and CRLs (in place of an envelope's)")
    check.add_argument("--certs", type=Path, metavar="DIR", help="SEV-SNP: the VCEK and AMD's cert_chain (ASK, ARK), "
                       "optionally the ARK's CRL (in place of an envelope's)")
    check.add_argument("--anchors", choices=[a.value for a in Anchors], default=Anchors.VENDOR.value,
                       help="vendor: Intel's and AMD's roots, shipped with ikectl or named in [trust] (default); sim: "
                            "simulated evidence, NOT SECURE")
    check.add_argument("--at", metavar="TIME", help="judge certificates, CRLs and collateral at this ISO 8601 time "
                       "(default now; UTC unless given)")
    check.add_argument("--strict", action="store_true",
                       help="exit 1 also when the TCB level, collateral or policy checks fail, as `trust add` would")
    check.add_argument("--json", action="store_true", help="the same as a JSON document")


def cmd_trust(args: argparse.Namespace) -> int:
    if args.trust_command == "check":
        return _trust_check(args)
    from . import trust

    cfg = config.load(args.config)
    say, now = _sayer(args.verbose), time.time()
    if args.trust_command == "list":
        rows = trust.listing(cfg, now)
        print(trust.to_json(rows) if args.json else trust.format_listing(rows))
    elif args.trust_command == "add":
        if not 1 <= args.port <= 0xFFFF:
            raise UsageError(f"--port {args.port}: expected a TCP port, 1 to 65535")
        pin = trust.add(cfg, args.name, tuple(address(a, f"--resolver {a}") for a in args.resolver), args.spec, now,
                        port=args.port, anchors=Anchors(args.anchors),
                        expected_id=resolver_id(args.id, "--id") if args.id else None,
                        warn=_trust_warning)
        print(f"pinned {pin.name}: {','.join(map(str, pin.addresses))} {pin.id} {pin.key.kind} key "
              f"{pin.key.libreswan[:24]}... ({pin.evidence_kind} measurement {pin.measurement_id})")
    elif args.trust_command == "verify":
        outcome = trust.verify(cfg, args.name, now, say=say)
        for note in outcome.notes:
            _trust_warning(note)
        changed = "; a new key, now pinned" if outcome.key_changed else ""
        print(f"{args.name}: attested{changed}{'; trusted mode reloaded' if outcome.reapplied else ''}")
    else:
        blocked = trust.remove(cfg, args.name, say=say)
        say(f"removed pin {args.name}" + ("; trusted mode's conns to it deleted: DNS blocked" if blocked else ""))
    return EXIT_OK


def _trust_warning(text: str) -> None:
    logline.write(f"ikectl: WARNING: {text}", logline.WARNING)


def _trust_check(args: argparse.Namespace) -> int:
    from . import trustcheck

    return trustcheck.run(config.load(args.config).trust, args.file, spec=args.spec, collateral=args.collateral,
                          certs=args.certs, anchors=Anchors(args.anchors), at=args.at, strict=args.strict,
                          as_json=args.json)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 with one line on bad usage
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        commands = {"render": cmd_render, "up": cmd_up, "down": cmd_down, "status": cmd_status,
                    "doctor": cmd_doctor, "nm-dispatch": cmd_nm_dispatch, "install-nm-hook": cmd_install_nm_hook,
                    "portal": cmd_portal, "verify": cmd_verify, "trust": cmd_trust, "ipsec": cmd_ipsec}
        return commands[args.command](args)
    except IkectlError as exc:
        logline.write(f"ikectl: error: {exc}", logline.ERROR)
        return exc.exit_code


def run() -> None:
    """The `ikectl` program: a process of ikectl's own, so pyroute2 may load without its package __init__.
    SIGTERM unwinds like Ctrl-C (a coffee-shop `up` undoes what it did, a trusted one fails closed); a closed pipe
    (`ikectl status | head`) ends it quietly."""
    lean_pyroute2.use()
    signals.exit_on_sigterm(128 + signal.SIGTERM)
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second complaint at exit
        code = EXIT_FAILED
    sys.exit(code)


if __name__ == "__main__":
    run()
