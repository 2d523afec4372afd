"""Real NetworkManager in a namespace: its own dbus-daemon, its own config, state and run dirs, managing one
veth; a DHCP server (busybox udhcpd) that hands out resolvers; and an HTTP server for NM's connectivity check.

    with NetworkManager(topo, client, workdir, NmConfig(managed="to-router")) as nm:
        uuid = nm.add_ethernet("home", "to-router")
        nm.up("home")

How it is isolated, so that it touches nothing of the machine it runs on:
- the network namespace of `host` (NM sees only that namespace's links; `[keyfile] unmanaged-devices` leaves
  it every link but the managed one);
- a private mount namespace (`unshare --mount --propagation private`), shared by dbus-daemon and NM, in
  which NM's fixed paths /etc/NetworkManager, /var/lib/NetworkManager and /run/NetworkManager are bind
  mounts of directories under `workdir`. nm-dispatcher, which dbus-daemon starts on NM's first event, is a
  child of dbus-daemon and so runs in that same mount namespace: it finds the hooks in `workdir`'s
  etc/NetworkManager/dispatcher.d, where `ikectl install-nm-hook --root` puts them. /sys is read-only
  there: NM then takes the links as they are, as in a container, instead of waiting for a udev that does
  not run here (it would log "startup complete is waiting for device ... (link-init)" and leave the link
  unmanaged);
- a private system bus: a dbus-daemon with a config of its own listening on `workdir`/bus (under /run:
  no unix sockets on the VM's 9p share), with DBUS_SYSTEM_BUS_ADDRESS pointing there for NM, for what
  dbus-daemon activates and for nmcli. Its service directory holds one file, for org.freedesktop.nm_dispatcher,
  the same Exec as Debian's /usr/share/dbus-1/system-services/org.freedesktop.nm_dispatcher.service plus
  `--debug`, so nm-dispatcher logs (and the hooks' stderr) land in the bus's log rather than in a syslog
  that does not exist here;
- NM runs with dns=none, rc-manager=unmanaged (never writes /etc/resolv.conf), hostname-mode=none,
  no-auto-default=*, auth-polkit=false (root only), the internal DHCP client.

Both daemons run in sessions of their own and are stopped by pid (`procs.Daemon`); nm-dispatcher and the
hooks run inside the host's namespace, which the topology removes with everything in it.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import re
import shlex
import signal
import socket
import socketserver
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import procs
from .procs import Daemon, HarnessError, wait_until
from .topology import Host, Topology

NM_BINARY = Path("/usr/sbin/NetworkManager")
NM_DISPATCHER = Path("/usr/lib/NetworkManager/nm-dispatcher")
NMCLI = Path("/usr/bin/nmcli")
DBUS_DAEMON = Path("/usr/bin/dbus-daemon")
BUSYBOX = Path("/usr/bin/busybox")
DISPATCHER_SERVICE = "org.freedesktop.nm_dispatcher"
# NetworkManager's compiled-in paths, bound to private directories in NM's mount namespace.
FIXED_DIRS = ("etc/NetworkManager", "var/lib/NetworkManager", "run/NetworkManager")
UNIX_PATH_MAX = 108


def nm_version() -> tuple[int, ...]:
    """The installed NetworkManager's version, e.g. (1, 42, 4)."""
    out = subprocess.run([str(NM_BINARY), "--version"], capture_output=True, text=True, check=True).stdout
    return tuple(int(n) for n in re.findall(r"\d+", out.split("-")[0])[:3])


# NetworkManager before 1.42.6 (Debian 12 ships 1.42.4) dispatches dhcp4-change only for the first lease of an
# activation, not after a renewal, even when the renewal brings other DNS servers: upstream commit b3584ae994 on
# the 1.42 branch (cab80c5129 on main, 1.44), "device: emit dhcp-change dispatcher event also after a lease
# renewal", https://bugzilla.redhat.com/show_bug.cgi?id=2179537.
RENEWAL_DISPATCHED_SINCE = (1, 42, 6)


def missing_programs() -> list[str]:
    """What this harness needs that is not installed (scripts/setup installs network-manager)."""
    return [str(p) for p in (NM_BINARY, NM_DISPATCHER, NMCLI, DBUS_DAEMON, BUSYBOX) if not p.exists()]


@dataclass(frozen=True)
class Connectivity:
    """NM's [connectivity] section: GET `uri`, expect a body starting with `response`; anything else is
    a portal (a failed request is LIMITED)."""

    uri: str
    response: str = "ikectl-connectivity-ok"
    interval_s: int = 5


@dataclass(frozen=True)
class NmConfig:
    managed: str  # the one interface NM may manage; it leaves every other link alone
    connectivity: Connectivity | None = None
    log_level: str = "INFO"

    def render(self, keyfile_dir: Path) -> str:
        text = (
            "[main]\n"
            "plugins=keyfile\n"
            "dns=none\n"
            "rc-manager=unmanaged\n"
            "systemd-resolved=false\n"
            "hostname-mode=none\n"
            "no-auto-default=*\n"
            "auth-polkit=false\n"
            "dhcp=internal\n"
            "\n[keyfile]\n"
            f"path={keyfile_dir}\n"
            f"unmanaged-devices=except:interface-name:{self.managed}\n"
            "\n[logging]\n"
            f"level={self.log_level}\n"
            "domains=ALL\n"
        )
        if self.connectivity is None:
            return text + "\n[connectivity]\nenabled=false\n"
        c = self.connectivity
        return text + (f"\n[connectivity]\nenabled=true\nuri={c.uri}\nresponse={c.response}\n"
                       f"interval={c.interval_s}\n")


def _bus_config(socket_path: Path, service_dir: Path) -> str:
    # A system bus (NM and nm-dispatcher insist on the system bus) that lets root do anything: the only
    # clients are NM, nm-dispatcher and nmcli, all root. No <servicehelper>: dbus-daemon starts
    # nm-dispatcher itself, with its own environment (DBUS_SYSTEM_BUS_ADDRESS included).
    return (
        '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"\n'
        ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">\n'
        "<busconfig>\n"
        "  <type>system</type>\n"
        f"  <listen>unix:path={socket_path}</listen>\n"
        "  <auth>EXTERNAL</auth>\n"
        f"  <servicedir>{service_dir}</servicedir>\n"
        '  <policy context="default">\n'
        '    <allow user="root"/>\n'
        '    <allow own="*"/>\n'
        '    <allow send_destination="*"/>\n'
        '    <allow receive_sender="*"/>\n'
        "  </policy>\n"
        "</busconfig>\n"
    )


def _dispatcher_service() -> str:
    return (f"[D-BUS Service]\nName={DISPATCHER_SERVICE}\nExec={NM_DISPATCHER} --debug\nUser=root\n")


class NetworkManager:
    """dbus-daemon and NetworkManager in `host`'s namespace, in a mount namespace of their own."""

    def __init__(self, topo: Topology, host: Host, workdir: Path, config: NmConfig) -> None:
        self.topo, self.host, self.dir, self.config = topo, host, workdir, config
        self.root = workdir / "root"  # what /etc/NetworkManager etc. are bound to: root/etc/NetworkManager, ...
        self.etc = self.root / "etc/NetworkManager"
        self.connections = self.etc / "system-connections"
        self.bus = workdir / "bus"
        if len(str(self.bus)) >= UNIX_PATH_MAX:
            raise HarnessError(f"the bus socket path is too long for a unix socket: {self.bus}")
        self.bus_address = f"unix:path={self.bus}"
        self.env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                    "DBUS_SYSTEM_BUS_ADDRESS": self.bus_address, "LANG": "C.UTF-8"}
        self._made_mountpoints: list[Path] = []
        self.dbus: Daemon | None = None
        self.nm: Daemon | None = None

    # --- life cycle ---

    def __enter__(self) -> NetworkManager:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def prepare(self) -> None:
        """Write the config tree (before `start`; hooks may be installed into `self.root` after this)."""
        for sub in FIXED_DIRS:
            (self.root / sub).mkdir(parents=True, exist_ok=True, mode=0o755)
        for sub in ("dispatcher.d/pre-up.d", "dispatcher.d/pre-down.d", "dispatcher.d/no-wait.d", "conf.d",
                    "system-connections"):
            (self.etc / sub).mkdir(parents=True, exist_ok=True, mode=0o755)
        (self.etc / "NetworkManager.conf").write_text(self.config.render(self.connections))
        services = self.dir / "dbus-services"
        services.mkdir(parents=True, exist_ok=True)
        (services / f"{DISPATCHER_SERVICE}.service").write_text(_dispatcher_service())
        (self.dir / "bus.conf").write_text(_bus_config(self.bus, services))
        (self.dir / "system-conf.d").mkdir(exist_ok=True)  # empty: no packaged defaults

    def start(self, timeout: float = 60.0) -> None:
        if missing := missing_programs():
            raise HarnessError(f"NetworkManager harness: {', '.join(missing)} missing: run scripts/setup "
                               "(it installs network-manager)")
        if not self.etc.exists():
            self.prepare()
        binds = []
        for sub in FIXED_DIRS:
            target = Path("/") / sub
            if not target.exists():
                self._made_mountpoints.append(target)  # created by the mount below, removed by stop()
            binds.append(f"mkdir -p {shlex.quote(str(target))} && "
                         f"mount --bind {shlex.quote(str(self.root / sub))} {shlex.quote(str(target))}")
        # A read-only /sys tells NM that no udev manages the links here (as in a container): without it, NM
        # waits for udev to announce each link, which never happens, and leaves the link unmanaged.
        binds.append("mount -o remount,bind,ro /sys")
        script = " && ".join([*binds, f'exec {DBUS_DAEMON} --nofork --nopidfile --config-file="$1"'])
        self.dbus = Daemon(f"dbus-daemon@{self.host.name}",
                           ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                            str(self.dir / "bus.conf")],
                           self.dir / "dbus.log", netns=self.host.netns, env=self.env)
        self.dbus.start()
        wait_until(lambda: self.bus.exists() or not self.dbus_running(), timeout, "the private bus socket")
        if not self.dbus_running():
            raise HarnessError(f"dbus-daemon exited; log:\n{procs.tail(self.dbus.log_text())}")
        self._wait_mounted(timeout)
        argv = ["nsenter", f"--target={self.dbus.pid}", "--mount", "--net", "--", str(NM_BINARY), "--debug",
                "--config", str(self.etc / "NetworkManager.conf"), "--config-dir", str(self.etc / "conf.d"),
                "--system-config-dir", str(self.dir / "system-conf.d"),
                "--intern-config", str(self.root / "var/lib/NetworkManager/NetworkManager-intern.conf"),
                "--state-file", str(self.root / "var/lib/NetworkManager/NetworkManager.state"),
                "--pid-file", str(self.dir / "NetworkManager.pid")]
        self.nm = Daemon(f"NetworkManager@{self.host.name}", argv, self.dir / "NetworkManager.log", env=self.env)
        self.nm.start()
        wait_until(lambda: self._nm_answers() or not self.nm_running(), timeout, "NetworkManager on its bus",
                   interval=0.2)
        if not self.nm_running():
            raise HarnessError(f"NetworkManager exited; log:\n{procs.tail(self.nm.log_text())}")

    def _wait_mounted(self, timeout: float) -> None:
        assert self.dbus is not None
        mountinfo = Path(f"/proc/{self.dbus.pid}/mountinfo")

        def mounted() -> bool:
            try:
                text = mountinfo.read_text()
            except OSError:
                return False
            return all(f" /{sub} " in text for sub in FIXED_DIRS)

        wait_until(mounted, timeout, "the private bind mounts of NetworkManager's directories")

    def dbus_running(self) -> bool:
        return self.dbus is not None and self.dbus.running()

    def nm_running(self) -> bool:
        return self.nm is not None and self.nm.running()

    def _nm_answers(self) -> bool:
        proc = self.nmcli("-t", "-f", "RUNNING", "general", check=False, timeout=10)
        return proc.returncode == 0 and "running" in proc.stdout

    def stop(self) -> None:
        if self.nm is not None:
            self.nm.stop(timeout=10)
        if self.dbus is not None:
            # nm-dispatcher (activated by the bus) runs in the host's namespace: stop it by pid too.
            for pid in self.dispatcher_pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            self.dbus.stop(timeout=5)
        for target in reversed(self._made_mountpoints):
            with contextlib.suppress(OSError):
                target.rmdir()  # only if empty, and only the ones this harness made
        self._made_mountpoints.clear()

    def dispatcher_pids(self) -> list[int]:
        found = []
        for pid in procs.pids_in_namespace(self.host.netns):
            try:
                if Path(f"/proc/{pid}/exe").resolve() == NM_DISPATCHER.resolve():
                    found.append(pid)
            except OSError:
                continue
        return found

    # --- nmcli ---

    def nmcli(self, *args: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """nmcli against this NM's bus (it needs no namespace: it only speaks D-Bus)."""
        proc = subprocess.run([str(NMCLI), *args], capture_output=True, text=True, env=self.env, timeout=timeout,
                              check=False)
        if check and proc.returncode != 0:
            raise HarnessError(f"nmcli {' '.join(args)} failed ({proc.returncode}): "
                               f"{(proc.stderr or proc.stdout).strip()}")
        return proc

    def add_ethernet(self, name: str, ifname: str, *settings: str) -> str:
        """A DHCP ethernet profile on `ifname`, not autoconnected; returns its UUID."""
        self.nmcli("connection", "add", "type", "ethernet", "con-name", name, "ifname", ifname,
                   "connection.autoconnect", "no", "ipv4.method", "auto", "ipv6.method", "ignore", *settings)
        return self.nmcli("-g", "connection.uuid", "connection", "show", name).stdout.strip()

    def up(self, name: str, wait_s: float = 600.0) -> subprocess.CompletedProcess[str]:
        return self.nmcli("--wait", str(int(wait_s)), "connection", "up", name, timeout=wait_s + 10)

    def down(self, name: str, wait_s: float = 600.0) -> subprocess.CompletedProcess[str]:
        return self.nmcli("--wait", str(int(wait_s)), "connection", "down", name, timeout=wait_s + 10)

    def reapply(self, ifname: str) -> subprocess.CompletedProcess[str]:
        """`nmcli device reapply`: NM dispatches `reapply` with the device's current lease."""
        return self.nmcli("device", "reapply", ifname)

    def connectivity(self, check: bool = False) -> str:
        """NM's global connectivity state (`check`: ask NM to check now)."""
        args = ("networking", "connectivity", "check") if check else ("networking", "connectivity")
        return self.nmcli("-t", *args).stdout.strip()

    def device_state(self, ifname: str) -> dict[str, str]:
        """GENERAL.STATE, GENERAL.CONNECTION and IP4.DNS of a device; a list (IP4.DNS[1], [2]...) joined by spaces."""
        out = self.nmcli("-t", "-f", "GENERAL.STATE,GENERAL.CONNECTION,IP4.DNS", "device", "show", ifname).stdout
        fields: dict[str, list[str]] = {}
        for line in out.splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(re.sub(r"\[\d+\]$", "", key), []).append(value)
        return {key: " ".join(values) for key, values in fields.items()}

    # --- logs ---

    def dispatcher_log(self) -> str:
        """nm-dispatcher's --debug output and the hooks' stderr, which reach the bus's log."""
        return self.dbus.log_text() if self.dbus is not None else ""

    def nm_log(self) -> str:
        return self.nm.log_text() if self.nm is not None else ""


# --- DHCP ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DhcpConfig:
    """One address, always the same one, handed to whoever asks on `interface`, with these resolvers."""

    interface: str
    address: str  # the pool: this one address
    router: str
    dns: Sequence[str]
    lease_s: int = 3600
    subnet: str = "255.255.255.0"

    def render(self, workdir: Path) -> str:
        return (
            f"interface {self.interface}\n"
            f"start {self.address}\n"
            f"end {self.address}\n"
            "max_leases 1\n"
            f"min_lease {min(self.lease_s, 60)}\n"
            f"lease_file {workdir}/udhcpd.leases\n"
            f"pidfile {workdir}/udhcpd.pid\n"
            "auto_time 0\n"
            f"option subnet {self.subnet}\n"
            f"option router {self.router}\n"
            f"option dns {' '.join(self.dns)}\n"
            f"option lease {self.lease_s}\n"
        )


class DhcpServer(Daemon):
    """busybox udhcpd in the foreground; `reconfigure` restarts it with new options (the lease file stays,
    so the client keeps its address and sees the new resolvers at its next renewal)."""

    def __init__(self, host: Host, workdir: Path, config: DhcpConfig) -> None:
        self.host, self.dir, self.config = host, workdir, config
        self.conf = workdir / "udhcpd.conf"
        # -a 100: wait 100 ms (not 2 s) for an ARP answer before offering the address.
        super().__init__(f"udhcpd@{host.name}", [str(BUSYBOX), "udhcpd", "-f", "-a", "100", str(self.conf)],
                         workdir / "udhcpd.log", netns=host.netns)

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "udhcpd.leases").touch()
        self.conf.write_text(self.config.render(self.dir))
        super().start()
        self.wait_for_log(r"started", timeout=10)

    def reconfigure(self, config: DhcpConfig) -> None:
        self.stop()
        self.config = config
        self.start()


# --- the connectivity check's server --------------------------------------------------------------------------

@dataclass
class PortalState:
    """What the connectivity server answers: the expected body (online), or a login page (a portal)."""

    response: str
    portal: bool = False
    requests: list[float] = field(default_factory=list)


class ConnectivityServer:
    """An HTTP server in a namespace answering NM's connectivity check; `portal = True` makes it a captive
    portal (a login page instead of the expected body). A thread of this process, on a socket made in the
    namespace: nothing to stop by pid."""

    def __init__(self, topo: Topology, host: Host, address: str, response: str, port: int = 80) -> None:
        self.state = PortalState(response)
        state = self.state

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                state.requests.append(time.time())
                body = (b"<html>log in to use this network</html>" if state.portal
                        else state.response.encode())
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return None

        sock = topo.socket(host, kind=socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(16)
        self.server = socketserver.TCPServer((address, port), Handler, bind_and_activate=False)
        self.server.socket.close()
        self.server.socket = sock
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                       daemon=True)

    def __enter__(self) -> ConnectivityServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def portal(self) -> bool:
        return self.state.portal

    @portal.setter
    def portal(self, value: bool) -> None:
        self.state.portal = value
