"""Profiles to libreswan config trees, through the Jinja2 templates in ikectl/templates/ (package data).

A `Profile` is everything a tree depends on, already validated (config.py, keys.py); `render_tree`
turns it into file contents and `write_tree` writes them, touching nothing else. `check_tree` asks
libreswan's own parser (`addconn --checkconfig`) whether it accepts the result.
"""

from __future__ import annotations

import functools
import os
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ikecommon.keys import PinnedKey

from . import __version__
from .config import Address, Config, Mode, TrustedResolver
from .errors import IkectlError
from .truststore import MAX_ADDRESSES

if TYPE_CHECKING:
    import jinja2

ADDCONN = Path("/usr/libexec/ipsec/addconn")
# pluto reads an opportunistic group from ipsec.d/policies/<conn name>; a group conn is of one address family, so
# coffee-shop has one per family. The other names are libreswan's own groups, written empty.
OE_GROUPS = {4: "private-or-clear", 6: "private-or-clear6"}
POLICY_GROUPS = (*OE_GROUPS.values(), "private", "clear-or-private", "clear", "block")


def trusted_pair(position: int) -> tuple[str, str]:
    """The trusted conns (udp/53, tcp/53) to the pinned resolver's address at `position` in its pin. The first
    address's keep the names they had before a pin could have several."""
    stem = "ikectl-trusted" if position == 0 else f"ikectl-trusted-{position + 1}"
    return f"{stem}-udp", f"{stem}-tcp"


def trusted_conns(count: int) -> tuple[str, ...]:
    """Every trusted conn of a pin with `count` addresses."""
    return tuple(name for position in range(count) for name in trusted_pair(position))


def is_trusted_conn(name: str) -> bool:
    """A name `trusted_pair` gives, for a pin of any size a pin can have."""
    return name in trusted_conns(MAX_ADDRESSES)


class RenderError(IkectlError):
    """A tree could not be rendered, written, or was refused by libreswan's parser."""


@dataclass(frozen=True)
class Profile:
    """What a client tree holds: opportunistic resolvers, a trusted one, or (the lab does this) both."""

    mode: Mode
    opportunistic: tuple[Address, ...] = ()  # coffee-shop: the resolvers tried with OE
    trusted: TrustedResolver | None = None
    left: str = "%defaultroute"  # the trusted conn's (pluto looks up the route to its resolver)
    # Coffee-shop, per address family: the address this host sends from to its resolvers (the kernel's route
    # lookup). A group conn's %defaultroute resolves towards the default gateway, which for IPv6 is usually a
    # link-local address pluto cannot use (measured with libreswan 4.10): IPv6 groups need an address.
    sources: Mapping[int, Address] = field(default_factory=dict)
    retransmit_interval_ms: int = 150
    retransmit_timeout_ms: int = 300  # coffee-shop: no IKE answer by then, DNS passes in clear
    liveness_ms: int = 1000  # coffee-shop: an idle SA is probed this often; a dead resolver is dropped
    shunt_lifetime_s: int = 60  # coffee-shop: how long a resolver without IKE stays clear before IKE is retried
    sa_lifetime_s: int | None = None  # None: libreswan's default (8 h); short ones are for rekey tests
    encapsulation: bool = False  # ESP in UDP 4500 even without a NAT (a resolver whose ESP ends in userspace)
    trusted_liveness_s: int = 1  # trusted: an SA that has heard nothing this long is checked
    trusted_dead_after_ms: int = 3000  # trusted: no answer this long: IKE starts again (DNS held)

    @classmethod
    def from_config(cls, config: Config, resolvers: tuple[Address, ...],
                    sources: Mapping[int, Address] | None = None) -> Profile:
        if config.mode == Mode.TRUSTED:
            return cls(Mode.TRUSTED, trusted=config.trusted, sa_lifetime_s=config.sa_lifetime_s,
                       encapsulation=config.encapsulation, trusted_liveness_s=config.trusted_liveness_s,
                       trusted_dead_after_ms=config.trusted_dead_after_ms)
        # pluto retransmits at interval, 2x, 4x ... until the timeout: half the IKE timeout makes the
        # first two tries fit in it.
        return cls(Mode.COFFEE_SHOP, opportunistic=resolvers, sources=dict(sources or {}),
                   retransmit_interval_ms=max(50, config.coffee_shop.ike_timeout_ms // 2),
                   retransmit_timeout_ms=config.coffee_shop.ike_timeout_ms,
                   liveness_ms=config.coffee_shop.liveness_ms,
                   shunt_lifetime_s=config.coffee_shop.retry_after_s, sa_lifetime_s=config.sa_lifetime_s,
                   encapsulation=config.encapsulation)

    def groups(self) -> list[Group]:
        """The opportunistic group conns: one per address family that has a member, or a resolver this host can
        reach (`sources`) that is out of the group for now: a resolver readmitted later (its exclusion over) needs
        its family's conn in place, which only `up` loads."""
        found = []
        for family, name in OE_GROUPS.items():
            members = tuple(a for a in self.opportunistic if a.version == family)
            if not members and family not in self.sources:
                continue
            source = self.sources.get(family)
            if source is None and family == 6:
                raise RenderError(f"no IPv6 address to reach {members[0]} from: an IPv6 opportunistic group needs "
                                  "the address this host sends from")
            found.append(Group(name, str(source) if source is not None else "%defaultroute", members))
        return found


@dataclass(frozen=True)
class Group:
    """One opportunistic group conn and the resolvers in its policies file."""

    conn: str
    left: str
    members: tuple[Address, ...]


@functools.cache
def environment() -> jinja2.Environment:
    import jinja2  # noqa: PLC0415 - 35 ms to import: loaded by the commands that render, not by every ikectl
    # Rooted at the package's own templates (found through the import system, so a wheel or a zip works too);
    # StrictUndefined: a missing value is an error, not "".
    return jinja2.Environment(loader=jinja2.PackageLoader("ikectl", "templates"), undefined=jinja2.StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                              autoescape=False)  # noqa: S701 - libreswan config, not HTML; inputs are validated


def render_tree(profile: Profile) -> dict[str, str]:
    """Relative path -> content of every file of the tree."""
    import jinja2  # noqa: PLC0415 - see environment()

    env = environment()
    groups = profile.groups()
    try:
        files = {
            "ipsec.conf": env.get_template("ipsec.conf.j2").render(
                profile=profile, trusted=profile.trusted, groups=groups, version=__version__,
                pairs=[(address, trusted_pair(position))
                       for position, address in enumerate(profile.trusted.addresses if profile.trusted else ())]),
            "ipsec.secrets": "",
        }
        files |= {f"ipsec.d/policies/{name}": "" for name in POLICY_GROUPS}
        files |= group_files(groups)
    except jinja2.TemplateError as exc:
        raise RenderError(f"template {getattr(exc, 'name', '?')}: {exc}") from None
    return files


def group_files(groups: list[Group]) -> dict[str, str]:
    """The policies file of each group: a line per resolver and DNS protocol (`192.0.2.53/32 udp 0 53`)."""
    template = environment().get_template("policies/private-or-clear.j2")
    return {f"ipsec.d/policies/{g.conn}": template.render(members=g.members) for g in groups}


def render_responder(name: str, address: Address, resolver_id: str | None = None,
                     key: PinnedKey | None = None) -> str:
    """The conns of a resolver that answers IKE for its DNS: NULL auth, or authenticated by `key`."""
    return environment().get_template("responder.conf.j2").render(name=name, address=address, id=resolver_id,
                                                                  key=key)


def write_tree(files: dict[str, str], outdir: Path) -> list[Path]:
    """Write the tree into `outdir` (made if missing), each file replaced atomically; nothing else touched."""
    written = []
    try:
        for relative, content in files.items():
            path = outdir / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            with os.fdopen(fd, "w") as out:
                out.write(content)
            os.chmod(tmp, 0o600 if relative == "ipsec.secrets" else 0o644)
            os.replace(tmp, path)
            written.append(path)
    except OSError as exc:
        raise RenderError(f"{outdir}: cannot write the tree ({exc.strerror})") from None
    return written


def check_tree(outdir: Path) -> None:
    """Ask libreswan's parser to load the tree's ipsec.conf; raise RenderError with its words if it refuses."""
    if not ADDCONN.exists():
        raise RenderError(f"{ADDCONN} not found: install libreswan to check a rendered tree")
    proc = subprocess.run([str(ADDCONN), "--checkconfig", "--config", str(outdir / "ipsec.conf")],
                          capture_output=True, text=True, check=False, timeout=30)
    said = (proc.stderr or proc.stdout).strip()
    # addconn exits 0 after some refusals ("keyword ... is not valid in a conn"): any word from it is one.
    if proc.returncode != 0 or said:
        first = said.splitlines()[0] if said else f"exit {proc.returncode}"
        raise RenderError(f"libreswan refused {outdir / 'ipsec.conf'}: {first}")
