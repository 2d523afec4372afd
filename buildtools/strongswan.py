"""strongSwan's charon and swanctl, unpacked from Debian's packages into the repository's cache (set-up time).

    python3 -m buildtools.strongswan [--cache DIR]     # scripts/setup runs this; prints what it did

Debian's strongSwan packages conflict with libreswan, which the project needs installed, so charon is never
installed: `apt-get download` fetches the .debs of PACKAGES (the candidate versions, all from one source build)
and `dpkg -x` unpacks them under `.cache/strongswan/<version>/root`. A stamp file records the version and the
package list; a tree whose stamp matches is kept as it is.

The unpacked programs expect /usr/lib/ipsec (their RUNPATH and plugin directory), which does not exist here.
`Tree` says how to run them from the cache instead, without touching the system:

- shared libraries: LD_LIBRARY_PATH is the unpacked usr/lib/ipsec (it is searched before RUNPATH);
- plugins: each one charon or swanctl should load is named in strongswan.conf (`charon.load`, `swanctl.load`)
  and its file preloaded (LD_PRELOAD). strongSwan's plugin loader looks up `<name>_plugin_create` in the
  process before it looks for a file in its compiled-in directory, so a preloaded plugin is used as a built-in;
- strongswan.conf: the STRONGSWAN_CONF environment variable; swanctl's config dir: SWANCTL_DIR.

charon's pid file (/var/run/charon.pid, compiled in) is dealt with where charon runs
(netns_tests/harness/charon.py): each charon gets a private mount of its own run dir on /run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent
CACHE = TOP / ".cache" / "strongswan"
SOURCE_PACKAGE = "strongswan-charon"  # whose candidate version names the tree
PACKAGES = (
    "libstrongswan",                   # libstrongswan, the crypto/credential plugins, kernel-netlink
    "libstrongswan-standard-plugins",  # openssl (ECDSA, RSA, x25519, modp), gcm, aesni
    "strongswan-libcharon",            # libcharon, socket-default
    "strongswan-charon",               # /usr/lib/ipsec/charon, the daemon
    "strongswan-swanctl",              # swanctl and the vici plugin
    "libcharon-extra-plugins",         # kernel-libipsec: Child SAs in charon's userspace (hosts without ESP)
)
STAMP = "installed"


class UnpackError(RuntimeError):
    """apt-get or dpkg failed: the message names the command and shows its output."""


@dataclass(frozen=True)
class Tree:
    """One unpacked strongSwan: where its files are and the environment that runs them from there."""

    root: Path

    @property
    def libdir(self) -> Path:
        return self.root / "usr/lib/ipsec"

    @property
    def charon(self) -> Path:
        return self.libdir / "charon"

    @property
    def swanctl(self) -> Path:
        return self.root / "usr/sbin/swanctl"

    def plugin_file(self, name: str) -> Path:
        return self.libdir / "plugins" / f"libstrongswan-{name}.so"

    def missing(self, plugins: Iterable[str] = ()) -> list[Path]:
        """Files this tree should have and does not (empty: usable)."""
        wanted = [self.charon, self.swanctl, *(self.plugin_file(p) for p in plugins)]
        return [path for path in wanted if not path.exists()]

    def env(self, conf: Path, plugins: Sequence[str], extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment for charon or swanctl reading `conf` and loading `plugins` (as its `load` list says)."""
        env = {key: value for key, value in os.environ.items() if key not in ("LD_PRELOAD", "LD_LIBRARY_PATH")}
        env.update(STRONGSWAN_CONF=str(conf), LD_LIBRARY_PATH=str(self.libdir),
                   LD_PRELOAD=":".join(str(self.plugin_file(p)) for p in plugins))
        env.update(extra or {})
        return env


def installed(cache: Path = CACHE) -> Tree | None:
    """The unpacked tree whose stamp is complete, newest first; None when there is none."""
    stamps = sorted(cache.glob(f"*/{STAMP}"), key=lambda p: p.stat().st_mtime, reverse=True) if cache.is_dir() else []
    for stamp in stamps:
        if stamp.read_text().split() == _stamp_text(stamp.parent.name).split():
            return Tree(stamp.parent / "root")
    return None


def candidate_version(package: str = SOURCE_PACKAGE) -> str:
    """What `apt-get download package` would fetch (apt-cache policy's Candidate)."""
    out = _run(["apt-cache", "policy", package])
    for line in out.splitlines():
        key, _, value = line.strip().partition(":")
        if key == "Candidate" and value.strip() not in ("", "(none)"):
            return value.strip()
    raise UnpackError(f"apt-cache policy {package}: no candidate version (run apt-get update)")


def unpack(cache: Path = CACHE, version: str | None = None) -> tuple[Tree, bool]:
    """Make sure the tree of `version` (default: the candidate) is unpacked; returns it and whether work was done."""
    if version is None:
        try:
            version = candidate_version()
        except UnpackError:  # no package lists (a fresh image): fetch them once
            _run(["apt-get", "update", "-q"])
            version = candidate_version()
    target = cache / version
    tree = Tree(target / "root")
    stamp = target / STAMP
    if stamp.exists() and stamp.read_text() == _stamp_text(version) and not tree.missing():
        return tree, False
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="download-", dir=cache) as tmp:
        debs = Path(tmp)
        argv = ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root",
                *(f"{name}={version}" for name in PACKAGES)]
        try:
            _run(argv, cwd=debs)
        except UnpackError:
            # The lists may be older than the mirror (a security update replaced the version): refresh once.
            _run(["apt-get", "update", "-q"])
            _run(argv, cwd=debs)
        staging = cache / f".{version}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "root").mkdir(parents=True)
        for deb in sorted(debs.glob("*.deb")):
            _run(["dpkg-deb", "-x", str(deb), str(staging / "root")])
        if Tree(staging / "root").missing():
            raise UnpackError(f"unpacked {', '.join(PACKAGES)} {version} but {Tree(staging / 'root').missing()[0]} "
                              "is not there")
        (staging / STAMP).write_text(_stamp_text(version))
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    for old in cache.iterdir():  # one version at a time
        if old.is_dir() and old != target and not old.name.startswith("download-"):
            shutil.rmtree(old, ignore_errors=True)
    return tree, True


def _stamp_text(version: str) -> str:
    return "".join(f"{name}={version}\n" for name in PACKAGES)


def _run(argv: list[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False, timeout=600)
    if proc.returncode != 0:
        raise UnpackError(f"{' '.join(argv)} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m buildtools.strongswan", description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, default=CACHE, help=f"where trees are unpacked (default: {CACHE})")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        tree, worked = unpack(args.cache)
    except UnpackError as exc:
        print(f"strongswan: error: {exc}", file=sys.stderr)
        return 1
    what = "unpacked" if worked else "already unpacked"
    print(f"strongSwan {tree.root.parent.name} {what} in {tree.root} ({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
