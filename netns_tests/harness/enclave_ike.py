"""`enclave-ike serve` in a namespace, for the netns tests: one way to write its config and start it.

    with servers(world.resolver, world.workdir) as serve:
        daemon = serve(config_text(RESOLVER, identity=SIGNING, apply="none", workdir=world.workdir))

`servers` stops every server it started when the block ends; each `serve` writes `enclave-ike.toml` in the work
dir, starts the server with its log in `enclave-ike.log` there, and returns once it listens.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from . import procs
from .topology import Host

LISTEN_TIMEOUT_S = 120.0  # imports take seconds under TCG, more on a busy host

NULL_IDENTITY = 'auth = "null"\n'


def signing_identity(resolver_id: str, *, backend: str = "sim", key_type: str = "ecdsa-p256") -> str:
    """The [identity] body of a server that signs with a key in its enclave (`resolver_id`: "@name")."""
    return f'backend = "{backend}"\nkey_type = "{key_type}"\nid = "{resolver_id}"\nauth = "signature"\n'


def config_text(address: str | tuple[str, ...], *, identity: str, workdir: Path, apply: str = "none",
                extra: str = "", privacy: bool = False) -> str:
    """A whole config: listen on `address` (or each of several), the [identity] body `identity` (published into
    `workdir`), the apply mode, and `extra` (more sections, TOML) at the end. Privacy is off unless asked for: the
    tests read what the server did with each client from its log (with privacy on, those lines stay in its ring)."""
    listened = ", ".join(f'"{a}"' for a in ((address,) if isinstance(address, str) else address))
    return (f'[listen]\naddresses = [{listened}]\n\n'
            f'[identity]\n{identity}publish = "{workdir / "identity.json"}"\n\n'
            f'[apply]\nmode = "{apply}"\n\n[privacy]\nenabled = {"true" if privacy else "false"}\n\n{extra}')


@contextlib.contextmanager
def servers(host: Host, workdir: Path, *, name: str = "enclave-ike@dns",
            verbose: bool = False) -> Iterator[Callable[[str], procs.Daemon]]:
    """A factory that (re)starts `enclave-ike serve` in `host` with a config's text; all stopped at the end."""
    started: list[procs.Daemon] = []

    def serve(text: str) -> procs.Daemon:
        config = workdir / "enclave-ike.toml"
        config.write_text(text)
        argv = [sys.executable, "-m", "enclave_ike.cli", "serve", "--config", str(config), *(["-v"] if verbose else [])]
        daemon = procs.Daemon(name, argv, workdir / "enclave-ike.log", netns=host.netns)
        started.append(daemon)
        daemon.start()
        daemon.wait_for_log(r"listening on ", timeout=LISTEN_TIMEOUT_S)
        return daemon

    try:
        yield serve
    finally:
        for daemon in reversed(started):
            daemon.stop()
