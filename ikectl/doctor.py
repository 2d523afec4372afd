"""`ikectl doctor`: what this host needs, checked one by one, each failure with how to fix it."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from ikecommon import xfrm

from . import daemon, nft, observe, plan, policies, system_pluto
from .config import Config
from .state import read_here
from .whack import LIBEXEC


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    warning: bool = False  # ok (the exit code stays 0), yet worth knowing: shown as WARN with its advice


def _pluto() -> Check:
    pluto = LIBEXEC / "pluto"
    if not pluto.exists():
        return Check("pluto", False, f"{pluto} not found", "apt-get install libreswan")
    version = subprocess.run([str(pluto), "--version"], capture_output=True, text=True, check=False).stdout
    first = version.split()[:2]
    return Check("pluto", True, " ".join(first) or "present")


def _certutil() -> Check:
    found = shutil.which("certutil")
    return Check("NSS tools", bool(found), found or "certutil not found", "apt-get install libnss3-tools")


def _root() -> Check:
    ok = os.geteuid() == 0
    return Check("root", ok, "running as root" if ok else "not root",
                 "run ikectl up/down/status as root (render and doctor need not)")


def _xfrm() -> Check:
    if os.geteuid() != 0:
        return Check("kernel XFRM", False, "not checked: reading the kernel's IPsec policies needs root",
                     "run ikectl doctor as root")
    try:
        with xfrm.XfrmClient() as client:
            count = len(client.policies())
    except (xfrm.XfrmError, OSError) as exc:
        return Check("kernel XFRM", False, str(exc), "a kernel with CONFIG_XFRM_USER, and root")
    return Check("kernel XFRM", True, f"netlink answers ({count} policies)")


def _esp() -> Check:
    if os.geteuid() != 0:
        return Check("kernel ESP", False, "not checked: the probe adds an SA in a throw-away namespace, as root",
                     "run ikectl doctor as root")
    try:
        support = xfrm.probe_esp()
    except (xfrm.XfrmError, OSError) as exc:
        return Check("kernel ESP", False, str(exc), "run as root")
    if support.available:
        return Check("kernel ESP", True, "AES-GCM ESP SAs can be installed")
    return Check("kernel ESP", False, support.detail,
                 "a kernel with CONFIG_INET_ESP and gcm (Debian's linux-image-amd64 has both)")


def _larval() -> Check:
    try:
        drop, expires = xfrm.larval_drop(), xfrm.acq_expires()
    except (OSError, ValueError) as exc:
        return Check("xfrm_larval_drop", False, str(exc), "a kernel with XFRM")
    if drop:
        shown = (f"1, acq_expires {expires} s (coffee-shop `up` sets 0, so the first query is queued, and "
                 f"{plan.ACQ_EXPIRES_S} s)")
    else:
        shown = f"0 (the query that triggers IKE is queued), acq_expires {expires} s"
    return Check("xfrm_larval_drop", True, shown)


def _nftables() -> Check:
    if not nft.available():
        return Check("nftables", False, "libnftables not found: trusted mode has only its XFRM backstop",
                     "apt-get install nftables (trusted mode's second backstop)")
    found = nft.program()
    version = (subprocess.run([str(found), "--version"], capture_output=True, text=True, check=False).stdout.strip()
               if found is not None else "")
    return Check("nftables", True, version or "libnftables")


def _other_ike_daemons() -> Check:
    """Another IKE daemon in this network namespace takes IKE replies meant for ikectl's pluto (the later one to
    bind port 500 gets them), and its policies can outrank ikectl's XFRM backstop."""
    if os.geteuid() != 0:
        return Check("other IKE daemons", True, "not checked: needs root")
    record = read_here()
    ours = daemon.pluto_pid(daemon.RunDir(record.run_dir)) if record is not None else None
    others = observe.ike_daemons(exclude=[ours] if ours is not None else [])
    if others:
        return Check("other IKE daemons", False, "; ".join(o.describe() for o in others),
                     "stop the other IKE daemon (e.g. systemctl stop ipsec), or run ikectl where it is alone")
    return Check("other IKE daemons", True, "none in this network namespace")


def _foreign_policies() -> Check:
    if os.geteuid() != 0:
        return Check("other programs' policies", True, "not checked: needs root")
    record = read_here()
    ours = (record.managed | set(record.resolvers)) if record is not None else frozenset()
    with xfrm.XfrmClient() as client:
        table = client.policies()
    found = [p for p in policies.leaks(table) if policies.pluto_dns_peer(p) not in ours]
    if found:
        return Check("other programs' policies", False,
                     f"{len(found)} let DNS pass in clear ahead of ikectl's XFRM backstop, e.g. "
                     f"{policies.describe(found[0])}",
                     "find the daemon that installed them (ip xfrm policy); trusted mode's nftables table drops "
                     "what they let out")
    return Check("other programs' policies", True, "none lets DNS pass in clear ahead of ikectl's backstop")


def _system_pluto(config: Config) -> Check:
    """A pluto of this namespace that is not ikectl's (the system's libreswan) shares the XFRM tables: a warning;
    a failure when a policy not ikectl's takes DNS to one of ikectl's resolvers before ikectl's own do."""
    name = "system pluto"
    if os.geteuid() != 0:
        return Check(name, True, "not checked: needs root")
    record = read_here()
    others = system_pluto.find([config.run_dir, *([record.run_dir] if record is not None else [])])
    if not others:
        return Check(name, True, "no pluto but ikectl's in this network namespace")
    shown = "; ".join(o.describe() for o in others)
    resolvers = (set(record.resolvers) if record is not None
                 else {*config.resolvers, *(config.trusted.addresses if config.trusted is not None else ())})
    with xfrm.XfrmClient() as client:
        found = system_pluto.conflicts(client.policies(), sorted(resolvers, key=str))
    if found:
        return Check(name, False, f"{shown}; {found[0].describe()}"
                     + (f" (and {len(found) - 1} more)" if len(found) > 1 else ""),
                     "keep the resolvers' DNS out of the system's conns (a narrower subnet or a `clear` group "
                     "entry), or stop it (systemctl stop ipsec); docs/coexistence.md")
    return Check(name, True, f"{shown}; it shares this namespace's XFRM tables with ikectl's pluto, and none of its "
                 "policies takes a resolver's DNS before ikectl's now",
                 "`ipsec status` asks it, `ikectl ipsec status` asks ikectl's; a conn of it covering a resolver's DNS "
                 "would override ikectl's (docs/coexistence.md)", warning=True)


def _run_dir(config: Config) -> Check:
    parent = config.run_dir if config.run_dir.exists() else config.run_dir.parent
    ok = os.access(parent, os.W_OK)
    return Check("run dir", ok, f"{config.run_dir} {'writable' if ok else 'not writable'}",
                 f"make {parent} writable for root")


def run_checks(config: Config) -> list[Check]:
    checks: list[Callable[[], Check]] = [_root, _pluto, _certutil, _nftables, _xfrm, _esp, _larval, _other_ike_daemons,
                                         lambda: _system_pluto(config), _foreign_policies, lambda: _run_dir(config)]
    return [check() for check in checks]


def format_checks(checks: list[Check]) -> str:
    lines = []
    for check in checks:
        mark = "FAIL" if not check.ok else "WARN" if check.warning else "ok  "
        advice = f"  -> fix: {check.fix}" if not check.ok else f"  -> {check.fix}" if check.warning else ""
        lines.append(f"{mark}  {check.name}: {check.detail}{advice}")
    return "\n".join(lines)


