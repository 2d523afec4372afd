"""strongSwan's charon per namespace, run from the tree scripts/setup unpacked (buildtools/strongswan.py).

Each charon has a work dir of its own (swanctl/ with swanctl.conf, keys and certificates; charon.log) and a run
dir under /run (short, and not on 9p in the VM) holding its strongswan.conf, vici socket and pid file. charon's pid
file path is compiled in (/var/run/charon.pid), so charon runs in a mount namespace of its own in which its run dir
is mounted on /run: two charons never see each other's pid file, and the host's /run is untouched. Inside, charon
reads /run/strongswan.conf and binds /run/charon.vici; swanctl, outside, uses the run dir's paths. Nothing else
charon reads may lie under /run (the work dir does, in the VM): swanctl reads the swanctl dir, not charon.

charon is driven with the `swanctl` program over the vici socket (`--load-all`, `--initiate`, `--rekey`,
`--list-sas --raw`, `--terminate`); `--list-sas --raw` output is parsed into dicts (`parse_raw`).

Kernel SAs: with `kernel_sas=False` (a kernel without ESP, like the host's) charon loads kernel-libipsec before
kernel-netlink, so its Child SAs are kept in charon's own userspace IPsec stack and nothing is added to XFRM;
kernel-netlink still gives it addresses and interfaces. With `kernel_sas=True` (the VM) Child SAs go into XFRM.
"""

from __future__ import annotations

import datetime
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from buildtools import strongswan

from .procs import Daemon, HarnessError, wait_until
from .topology import Host, Topology

# The plugins charon loads, in order; kernel-libipsec (when used) goes before kernel-netlink, so that charon's
# kernel interface takes its IPsec backend from it.
CHARON_PLUGINS = ("random", "nonce", "drbg", "openssl", "pem", "pkcs1", "pkcs8", "x509", "pubkey", "constraints",
                  "sha2", "sha1", "hmac", "kdf", "gcm", "aes", "kernel-netlink", "socket-default", "vici")
USERSPACE_IPSEC = "kernel-libipsec"
# A Child SA whose remote selector is the IKE peer itself (a resolver's udp/53) is refused by kernel-libipsec unless
# allowed: the route it installs through its TUN device (always, whatever charon.install_routes says) would catch
# the IKE packets too. So charon's IKE socket marks its packets and the rule to charon's routing table skips them.
USERSPACE_IPSEC_OPTIONS = ("    kernel-libipsec {\n      allow_peer_ts = yes\n    }\n"
                           "    socket-default {\n      fwmark = 0x42\n    }\n"
                           "    kernel-netlink {\n      fwmark = !0x42\n    }\n")
SWANCTL_PLUGINS = ("openssl", "pem", "pkcs1", "pkcs8", "x509", "pubkey", "constraints", "sha2", "random", "nonce")
UNIX_PATH_MAX = 108
_TIMESTAMP = re.compile(r"(\d\d):(\d\d):(\d\d)\.(\d\d\d) ")  # filelog: time_format = %H:%M:%S, time_add_ms


def tree() -> strongswan.Tree:
    """The unpacked strongSwan, or a HarnessError saying to run scripts/setup."""
    found = strongswan.installed()
    if found is None or found.missing((*CHARON_PLUGINS, USERSPACE_IPSEC)):
        raise HarnessError(f"no unpacked strongSwan under {strongswan.CACHE}: run scripts/setup "
                           "(python3 -m buildtools.strongswan)")
    return found


@dataclass(frozen=True)
class CharonConfig:
    """What one charon is given: swanctl.conf's `connections` body, credential files, and strongswan.conf knobs.

    `files` maps a path relative to the swanctl dir (private/client.pem, pubkey/resolver.pem, x509/client.pem) to
    its content. `kernel_sas`: Child SAs into XFRM (True) or into charon's userspace (False: no ESP here).
    """

    connections: str
    files: Mapping[str, bytes] = field(default_factory=dict)
    kernel_sas: bool = False
    charon_options: Mapping[str, str] = field(default_factory=dict)  # extra `charon { key = value }` lines
    log_levels: Mapping[str, int] = field(default_factory=lambda: {"default": 1, "ike": 2, "cfg": 2})
    """filelog levels by subsystem (charon's own default is 1 for all; the tests read level 2's ike and cfg lines)."""


class Charon(Daemon):
    def __init__(self, topo: Topology, host: Host, workdir: Path) -> None:
        self.topo, self.host, self.dir = topo, host, workdir
        self.tree = tree()
        self.swanctl_dir = workdir / "swanctl"
        self.rundir = Path(tempfile.mkdtemp(prefix="ikt-charon-", dir="/run"))
        self.conf = self.rundir / "strongswan.conf"
        self.vici = self.rundir / "charon.vici"
        if len(str(self.vici)) >= UNIX_PATH_MAX:
            raise HarnessError(f"charon's vici socket path is too long: {self.vici}")
        self.plugins: tuple[str, ...] = CHARON_PLUGINS
        # ip netns exec -> unshare (private mounts) -> sh (the run dir on /run) -> env -> charon: one pid, execs.
        self._wrapper = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                         'mount --bind "$0" /run && exec "$@"', str(self.rundir), "env"]
        super().__init__(f"charon@{host.name}", self._wrapper, workdir / "charon.log", netns=host.netns)

    # --- set-up, before start ---

    def write_config(self, config: CharonConfig) -> None:
        self.plugins = CHARON_PLUGINS if config.kernel_sas else _before(USERSPACE_IPSEC, "kernel-netlink",
                                                                        CHARON_PLUGINS)
        for sub in ("private", "pubkey", "x509", "x509ca", "ecdsa", "rsa", "pkcs8"):
            (self.swanctl_dir / sub).mkdir(parents=True, exist_ok=True)
        for relative, content in config.files.items():
            path = self.swanctl_dir / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            path.chmod(0o600)
        (self.swanctl_dir / "swanctl.conf").write_text(f"connections {{\n{config.connections}\n}}\n")
        options = {"install_routes": "no", "install_virtual_ip": "no", "retransmit_tries": "3",
                   "retransmit_timeout": "1.0", **config.charon_options}
        option_text = "".join(f"  {key} = {value}\n" for key, value in options.items())
        levels = "".join(f"      {subsystem} = {level}\n" for subsystem, level in config.log_levels.items())
        self.conf.write_text(
            "charon {\n"
            f"  load = {' '.join(self.plugins)}\n"
            f"{option_text}"
            "  plugins {\n"
            f"    vici {{\n      socket = unix:///run/{self.vici.name}\n    }}\n"  # inside its mount namespace
            f"{'' if config.kernel_sas else USERSPACE_IPSEC_OPTIONS}"
            "  }\n"
            "  filelog {\n"
            f"    stderr {{\n{levels}      time_format = %H:%M:%S\n"
            "      time_add_ms = yes\n      flush_line = yes\n    }\n"
            "  }\n"
            "}\n"
            "swanctl {\n"
            f"  load = {' '.join(SWANCTL_PLUGINS)}\n"
            "}\n")
        env = self.tree.env(Path("/run") / self.conf.name, self.plugins)  # the path inside its mount namespace
        self.argv = [*self._wrapper, *(f"{key}={env[key]}" for key in ("STRONGSWAN_CONF", "LD_LIBRARY_PATH",
                                                                       "LD_PRELOAD")), str(self.tree.charon)]

    # --- running ---

    def start(self) -> None:
        if not self.conf.exists():
            raise HarnessError(f"{self.name}: write_config() before start()")
        super().start()
        self.wait_for_log(r"spawning \d+ worker threads", timeout=30.0)  # its last start-up line
        wait_until(lambda: self.vici.exists() or not self.running(), 20.0, f"{self.name}'s vici socket")
        if not self.running():
            raise HarnessError(f"{self.name} exited: {self.log_text()[-2000:]}")

    def stop(self, timeout: float = 5.0, sig: int = 15) -> int | None:
        status = super().stop(timeout, sig)
        shutil.rmtree(self.rundir, ignore_errors=True)
        return status

    def swanctl(self, *args: str, check: bool = True, timeout: float = 30.0) -> str:
        env = self.tree.env(self.conf, SWANCTL_PLUGINS, {"SWANCTL_DIR": str(self.swanctl_dir)})
        argv = [str(self.tree.swanctl), *args, "--uri", f"unix://{self.vici}"]
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        out = proc.stdout + proc.stderr
        if check and proc.returncode != 0:
            raise HarnessError(f"swanctl {' '.join(args)} failed in {self.host.name} ({proc.returncode}): "
                               f"{out.strip()}")
        return out

    def load_all(self) -> str:
        return self.swanctl("--load-all", "--noprompt")

    def initiate(self, child: str, ike: str | None = None, timeout: float = 20.0) -> str:
        """Initiate `child` (of connection `ike`) and wait for the outcome; fails when charon reports failure."""
        args = ["--initiate", "--child", child, "--timeout", str(int(timeout))]
        return self.swanctl(*args, *(["--ike", ike] if ike else []), timeout=timeout + 5)

    def terminate(self, ike: str, timeout: float = 10.0) -> str:
        """Delete the IKE SA of connection `ike` (and its Child SAs) and wait for the peer's answer."""
        return self.swanctl("--terminate", "--ike", ike, "--timeout", str(int(timeout)), timeout=timeout + 5)

    def list_sas(self) -> list[dict[str, Any]]:
        """Every IKE SA as a dict (`name`, `state`, `child-sas` ...), as `swanctl --list-sas --raw` prints it."""
        return [sa for event in parse_raw(self.swanctl("--list-sas", "--raw")) for sa in _named(event)]

    def logged_at(self, match: re.Match[str]) -> float:
        """When charon wrote the log line that `match` (from `wait_for_log`) is in, as `time.time()` would say: from
        the line's `%H:%M:%S.mmm` prefix (filelog's time_format with time_add_ms) and today's local date."""
        line_start = match.string.rfind("\n", 0, match.start()) + 1
        stamp = _TIMESTAMP.match(match.string, line_start)
        if stamp is None:
            raise HarnessError(f"{self.name}: no timestamp on {match.string[line_start:match.end()]!r}")
        now = datetime.datetime.now()
        hour, minute, second, milli = (int(part) for part in stamp.groups())
        logged = now.replace(hour=hour, minute=minute, second=second, microsecond=milli * 1000)
        if logged > now + datetime.timedelta(hours=12):  # written before midnight, read after
            logged -= datetime.timedelta(days=1)
        return logged.timestamp()

    def established(self, name: str) -> dict[str, Any] | None:
        for sa in self.list_sas():
            if sa["name"] == name and sa.get("state") == "ESTABLISHED":
                return sa
        return None

    def wait_established(self, name: str, timeout: float = 10.0) -> dict[str, Any]:
        wait_until(lambda: self.established(name) is not None, timeout, f"{self.name}: IKE SA {name} established",
                   interval=0.1)
        sa = self.established(name)
        assert sa is not None
        return sa


def _before(plugin: str, anchor: str, plugins: Sequence[str]) -> tuple[str, ...]:
    index = list(plugins).index(anchor)
    return (*plugins[:index], plugin, *plugins[index:])


def _named(section: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A vici list-sa event is {NAME: {...}}: yield each with its name inside."""
    for name, value in section.items():
        if isinstance(value, dict):
            yield {"name": name, **value}


# --- `swanctl --raw` output ---

_WORD = re.compile(r"[^\s{}=\[\]]+")


def parse_raw(text: str) -> list[dict[str, Any]]:
    """`swanctl --raw` lines (`list-sa event {dns {uniqueid=1 ... local-ts=[10.0.0.1/32[udp]] child-sas {...}}}`) into
    one dict per message: sections become dicts, `key=[a b]` lists of strings, `key=value` strings. Lines that are
    not messages are skipped."""
    messages = []
    for line in text.splitlines():
        _, brace, body = line.partition("{")
        if brace:
            messages.append(_RawParser(body, line).section())
    return messages


class _RawParser:
    def __init__(self, body: str, line: str) -> None:
        self.body, self.line, self.pos = body, line, 0

    def error(self) -> HarnessError:
        return HarnessError(f"cannot parse swanctl --raw output at {self.body[self.pos:self.pos + 40]!r}: {self.line}")

    def skip_space(self) -> None:
        while self.pos < len(self.body) and self.body[self.pos].isspace():
            self.pos += 1

    def word(self) -> str:
        match = _WORD.match(self.body, self.pos)
        if match is None:
            raise self.error()
        self.pos = match.end()
        return match.group(0)

    def section(self) -> dict[str, Any]:
        """From after a `{` to its `}`."""
        out: dict[str, Any] = {}
        while True:
            self.skip_space()
            if self.pos >= len(self.body):
                raise self.error()
            if self.body[self.pos] == "}":
                self.pos += 1
                return out
            key = self.word()
            self.skip_space()
            if self.body.startswith("{", self.pos):
                self.pos += 1
                out[key] = self.section()
            elif self.body.startswith("=[", self.pos):
                self.pos += 2
                out[key] = self.items()
            elif self.body.startswith("=", self.pos):
                self.pos += 1
                match = re.compile(r"[^\s{}]*").match(self.body, self.pos)
                assert match is not None  # matches the empty string at least
                self.pos = match.end()
                out[key] = match.group(0)
            else:
                raise self.error()

    def items(self) -> list[str]:
        """From after `=[` to the matching `]`: items split on spaces outside inner brackets."""
        items, depth, start = [], 0, self.pos
        while self.pos < len(self.body):
            char = self.body[self.pos]
            if char == "[":
                depth += 1
            elif char == "]" and depth > 0:
                depth -= 1
            elif char == "]" or (char == " " and depth == 0):
                if self.pos > start:
                    items.append(self.body[start:self.pos])
                start = self.pos + 1
                if char == "]":
                    self.pos += 1
                    return items
            self.pos += 1
        raise self.error()
