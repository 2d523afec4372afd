"""Capture IKEv2 exchanges of libreswan's pluto, with the keys pluto logs, as test vectors.

    sudo .venv/bin/python tests/vectors/ikev2/capture_pluto.py [SCENARIO ...]

Each scenario builds two network namespaces joined by a veth pair, starts pluto as the initiator in one (its own NSS
db, run dir and log under /run, `plutodebug="all crypt private"`) and, in the other, either a second pluto or
enclave-ike's `Responder` on a UDP socket (`--serve`, below). tcpdump (`--immediate-mode -U`) records the datagrams
on the initiator's veth; `whack --initiate` runs one NULL-authenticated IKE_SA_INIT + IKE_AUTH. The host kernel has
no ESP, so pluto's kernel SA install fails after IKE_AUTH: that does not touch the IKE messages.

Written into `<scenario>/` beside this script:

- `datagrams.txt`: every IKE datagram of the pcap, in order, `i->r` or `r->i` and the hex of the UDP payload;
- `keys.txt`: what pluto's debug log gives away: the SPIs and SK_ai/SK_ei/SK_ar/SK_er (the `ikev2 I|R` lines that
  `debug-private` prints for tcpdump), the AES-GCM salts, SK_pi and SK_pr (`debug-crypt` dumps), its own nonce and the
  Child SA KEYMAT; for enclave-ike scenarios also g^ir (from the responder's recorded DH secret and pluto's KE) and
  SKEYSEED and the whole DKM computed from it by libreswan's own KDF (`/usr/libexec/ipsec/cavp -v2`). libreswan 4.10
  prints neither g^ir, SKEYSEED nor SK_d in its logs (its symkey dump is compiled out), hence the second route;
- `pluto-fields.txt`: pluto's own view of each message: the `parse` records of the pluto that received it (or the
  `emit` records of the pluto that sent it), field by field, as its debug log prints them;
- `SOURCE.md`: how, when, with which versions and configs.

tests/test_ikev2_pluto_vectors.py replays them. Run as root; it removes its namespaces, processes and /run dirs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from enclave_ike.ikev2 import crypto as c
from enclave_ike.ikev2.config import DnsSelectors, Endpoint, Identity, ResponderConfig
from enclave_ike.ikev2.payloads import KeyExchange, Message, Nonce, SecurityAssociation
from enclave_ike.ikev2.responder import Responder

HERE = Path(__file__).resolve().parent
LIBEXEC = Path("/usr/libexec/ipsec")
I_ADDR, R_ADDR = "10.71.0.1", "10.71.0.53"


@dataclass(frozen=True)
class Scenario:
    ike: str
    esp: str
    responder: str  # "pluto" or "enclave-ike"
    group: int


SCENARIOS = {
    "pluto-pluto-aes_gcm_16_256-prf_sha2_256-dh19": Scenario("aes_gcm256-sha2_256;dh19", "aes_gcm256", "pluto", 19),
    "pluto-enclave-ike-aes_gcm_16_256-prf_sha2_256-dh31": Scenario("aes_gcm256-sha2_256;dh31", "aes_gcm256",
                                                                   "enclave-ike", 31),
    "pluto-enclave-ike-aes_cbc_128-hmac_sha2_256-dh14": Scenario("aes128-sha2_256;dh14", "aes128-sha2_256",
                                                                 "enclave-ike", 14),
}

CONN = """conn v
\tleft={left}
\tright={right}
\tauthby=null
\tleftid=%null
\trightid=%null
\tikev2=insist
\tike={ike}
\tesp={esp}
\ttype=transport
\tleftprotoport={leftprotoport}
\trightprotoport={rightprotoport}
\tleftupdown=%disabled
\trightupdown=%disabled
\tauto=add
"""


def run(argv: list[str], *, check: bool = True, timeout: float = 60) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)
    if check and proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout + proc.stderr


def netns(ns: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def wait_for(what: str, predicate: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


# --- the enclave-ike side: our Responder on a socket, with its random draws recorded ---

def serve(address: str, out: Path) -> None:
    """Run enclave-ike's Responder (NULL auth) on UDP 500 until SIGTERM; then write the random draws (one is the DH
    secret) and the events to `out`."""
    draws: list[str] = []

    def random_source(n: int) -> bytes:
        data = os.urandom(n)
        draws.append(data.hex())
        return data

    local = Endpoint(IPv4Address(address), 500)
    responder = Responder(ResponderConfig(local_id=Identity.null(), dns=DnsSelectors((local.address,))), local=local,
                          random=random_source)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 500))
    sock.settimeout(0.1)
    stop: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    events: list[str] = []
    print("ready", flush=True)
    while not stop:
        try:
            data, (host, port) = sock.recvfrom(65535)
        except TimeoutError:
            continue
        responder.receive(data, Endpoint(IPv4Address(host), port), time.monotonic())
        for datagram, to in responder.datagrams_to_send():
            sock.sendto(datagram, (str(to.address), to.port))
        while (event := responder.next_event()) is not None:
            events.append(type(event).__name__)
    out.write_text(json.dumps({"draws": draws, "events": events}) + "\n")


# --- one capture ---

class Lab:
    def __init__(self, name: str, scenario: Scenario) -> None:
        self.name, self.scenario = name, scenario
        self.tag = f"ikvc{os.getpid() % 100000}"
        self.ns_i, self.ns_r = f"{self.tag}-i", f"{self.tag}-r"
        self.dir = Path(f"/run/{self.tag}")
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Lab:
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        for ns in (self.ns_i, self.ns_r):
            run(["ip", "netns", "add", ns])
        run(["ip", "link", "add", "vi", "netns", self.ns_i, "type", "veth", "peer", "name", "vr", "netns", self.ns_r])
        for ns, dev, addr in ((self.ns_i, "vi", I_ADDR), (self.ns_r, "vr", R_ADDR)):
            run(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
            run(["ip", "-n", ns, "link", "set", dev, "up"])
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for ns in (self.ns_i, self.ns_r):
            run(["ip", "netns", "del", ns], check=False)

    def pluto(self, side: str, ns: str, left: str, right: str, leftprotoport: str, rightprotoport: str) -> Path:
        d = self.dir / side
        for sub in ("nss", "run", "ipsec.d/policies"):
            (d / sub).mkdir(parents=True)
        run(["certutil", "-N", "-d", f"sql:{d / 'nss'}", "--empty-password"])
        (d / "ipsec.secrets").write_text("")
        conn = CONN.format(left=left, right=right, ike=self.scenario.ike, esp=self.scenario.esp,
                           leftprotoport=leftprotoport, rightprotoport=rightprotoport)
        (d / "ipsec.conf").write_text('config setup\n\tlogtime=no\n\tplutodebug="all crypt private"\n\n' + conn)
        self.procs.append(subprocess.Popen(netns(ns, [
            str(LIBEXEC / "pluto"), "--nofork", "--config", str(d / "ipsec.conf"), "--rundir", str(d / "run"),
            "--nssdir", str(d / "nss"), "--secretsfile", str(d / "ipsec.secrets"), "--ipsecdir", str(d / "ipsec.d"),
            "--logfile", str(d / "pluto.log")]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for(f"pluto in {ns}", (d / "run" / "pluto.ctl").exists)
        wait_for(f"pluto in {ns} listening", lambda: "listening for IKE messages" in _text(d / "pluto.log"))
        run(netns(ns, [str(LIBEXEC / "addconn"), "--config", str(d / "ipsec.conf"), "--ctlsocket",
                       str(d / "run" / "pluto.ctl"), "v"]))
        return d

    def capture(self) -> dict[str, object]:
        i_dir = self.pluto("i", self.ns_i, I_ADDR, R_ADDR, "17/0", "17/53")
        r_dir: Path | None = None
        served = self.dir / "served.json"
        if self.scenario.responder == "pluto":
            r_dir = self.pluto("r", self.ns_r, R_ADDR, I_ADDR, "17/53", "17/0")
        else:
            helper = subprocess.Popen(netns(self.ns_r, [sys.executable, str(Path(__file__).resolve()), "--serve",
                                                        R_ADDR, str(served)]),
                                      stdout=subprocess.PIPE, cwd=HERE.parents[2],
                                      env={**os.environ, "PYTHONPATH": str(HERE.parents[2])})
            self.procs.append(helper)
            assert helper.stdout is not None
            if helper.stdout.readline().strip() != b"ready":
                raise SystemExit("the enclave-ike responder did not start")
        pcap = self.dir / "capture.pcap"
        tcpdump = subprocess.Popen(netns(self.ns_i, ["tcpdump", "-i", "vi", "-n", "--immediate-mode", "-U", "-w",
                                                     str(pcap), "udp port 500 or udp port 4500"]),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.procs.append(tcpdump)
        assert tcpdump.stderr is not None
        wait_for("tcpdump", lambda: pcap.exists() and pcap.stat().st_size >= 24)
        time.sleep(0.5)
        whack = run(netns(self.ns_i, [str(LIBEXEC / "whack"), "--rundir", str(i_dir / "run"), "--name", "v",
                                      "--initiate"]), check=False, timeout=60)
        time.sleep(2.0)  # whatever follows IKE_AUTH (pluto deletes the Child SA it could not install)
        tcpdump.send_signal(signal.SIGINT)
        tcpdump.wait(10)
        self.procs.remove(tcpdump)
        if self.scenario.responder != "pluto":
            helper.terminate()
            helper.wait(10)
            self.procs.remove(helper)
        return {"pcap": pcap.read_bytes(), "whack": whack, "i_log": _text(i_dir / "pluto.log"),
                "r_log": _text(r_dir / "pluto.log") if r_dir else "",
                "served": json.loads(served.read_text()) if served.exists() else None,
                "i_conf": (i_dir / "ipsec.conf").read_text(),
                "r_conf": (r_dir / "ipsec.conf").read_text() if r_dir else ""}


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


# --- extraction ---

def pcap_datagrams(pcap: bytes) -> list[tuple[str, bytes]]:
    """UDP payloads of an Ethernet pcap, as (direction, bytes); port 4500's non-ESP marker removed."""
    magic = struct.unpack("<I", pcap[:4])[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    linktype = struct.unpack(endian + "I", pcap[20:24])[0]
    if linktype != 1:
        raise SystemExit(f"pcap link type {linktype}, expected Ethernet")
    out: list[tuple[str, bytes]] = []
    offset = 24
    while offset + 16 <= len(pcap):
        caplen = struct.unpack(endian + "I", pcap[offset + 8:offset + 12])[0]
        frame = pcap[offset + 16:offset + 16 + caplen]
        offset += 16 + caplen
        if struct.unpack("!H", frame[12:14])[0] != 0x0800:
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] != 17:
            continue
        src = str(IPv4Address(ip[12:16]))
        udp = ip[ihl:]
        sport, dport, length = struct.unpack("!HHH", udp[:6])
        payload = udp[8:length]
        if 4500 in (sport, dport):
            if payload[:4] != b"\0\0\0\0":
                continue  # ESP in UDP
            payload = payload[4:]
        out.append(("i->r" if src == I_ADDR else "r->i", payload))
    return out


_DUMP = re.compile(r"^\|   ([0-9a-f]{2}(?: {1,2}[0-9a-f]{2})*)")


def dump_after(lines: list[str], index: int) -> bytes:
    """The bytes of the `|   xx xx ...` hex lines that follow lines[index]."""
    out = b""
    for line in lines[index + 1:]:
        match = _DUMP.match(line)
        if not match:
            break
        out += bytes.fromhex(match.group(1).replace(" ", ""))
    return out


def symkeys(log: str) -> dict[str, bytes]:
    """Keys pluto extracted and dumped (debug-crypt): `<name> extracting all N bytes` ... `unwrapped:` + hex."""
    lines = log.splitlines()
    found: dict[str, bytes] = {}
    for i, line in enumerate(lines):
        match = re.match(r"^\| (.+?) extracting all (\d+) bytes of key@", line)
        if not match:
            continue
        for j in range(i + 1, min(i + 20, len(lines))):
            if lines[j] == "| unwrapped:":
                found.setdefault(match.group(1), dump_after(lines, j)[:int(match.group(2))])
                break
    return found


def labelled_dumps(log: str, label: str) -> list[bytes]:
    lines = log.splitlines()
    return [dump_after(lines, i) for i, line in enumerate(lines) if line == f"| {label}"]


def tcpdump_keys(log: str) -> dict[str, str]:
    """The `ikev2 I|R <SPIi> <SPIr> <integ>:<key> <encr>:<key>` lines of debug-private (pluto's keys for tcpdump)."""
    keys: dict[str, str] = {}
    for role, spi_i, spi_r, integ, encr in re.findall(
            r"^\| ikev2 ([IR]) 0x([0-9a-f]{16}) 0x([0-9a-f]{16}) (\S*) (\S*)$", log, re.M):
        keys.setdefault("SPIi", spi_i)
        keys.setdefault("SPIr", spi_r)
        if (spi_i, spi_r) != (keys["SPIi"], keys["SPIr"]):
            break  # only the first IKE SA
        side = "i" if role == "I" else "r"
        integ_key = integ.partition(":")[2]
        keys[f"SK_a{side}"] = integ_key[2:] if integ_key.startswith("0x") else ""
        keys[f"SK_e{side} (without salt)"] = encr.partition(":")[2].removeprefix("0x")
    return keys


_RECORD = re.compile(r"^\| \*+(parse|emit) (.+):$")
_FIELD = re.compile(r"^\|    (\S[^:]*): (.*)$")
_RAW = re.compile(r"^\| (parsing|emitting) \d+ raw bytes of (.+) into (.+)$")


def records(log: str) -> list[list[str]]:
    """pluto's parse and emit records grouped by message: a group starts at an `ISAKMP Message` record and holds the
    record headers, their `field: value` lines and the raw byte dumps (`raw <name>: <hex>`). A parse record belongs
    to the message pluto parsed last, an emit record to the one it emitted last (pluto emits the IKE_AUTH response's
    header before it parses the request's proposals and selectors)."""
    groups: list[list[str]] = []
    current: dict[str, list[str]] = {}
    lines = log.splitlines()
    open_record: list[str] | None = None  # the group whose record header came last, while its fields follow
    for i, line in enumerate(lines):
        record = _RECORD.match(line)
        if record:
            verb, name = record.groups()
            if name == "ISAKMP Message":
                current[verb] = []
                groups.append(current[verb])
            open_record = current.get(verb)
            if open_record is not None:
                open_record.append(f"{verb} {name}")
            continue
        field = _FIELD.match(line)
        if field and open_record is not None:
            open_record.append(f"    {field.group(1)}: {field.group(2)}")
            continue
        open_record = None
        raw = _RAW.match(line)
        group = current.get("parse" if line.startswith("| parsing") else "emit")
        if raw and group is not None:
            # "emitting N raw bytes of NAME into ..." and the dump; "parsing N raw bytes of ... into NAME", then
            # "| NAME" and the dump
            parsing = raw.group(1) == "parsing"
            name = raw.group(3) if parsing else raw.group(2)
            data = dump_after(lines, i + 1) if parsing else dump_after(lines, i)
            if data:
                group.append(f"    raw {name}: {data.hex()}")
    return groups


def _header(group: list[str]) -> tuple[str, int, int, bool]:
    fields = dict(line.strip().split(": ", 1) for line in group[1:8] if ": " in line)
    spi_i = fields["initiator SPI"].replace(" ", "")
    exchange = int(re.search(r"\(0x([0-9a-f]+)\)", fields["exchange type"]).group(1), 16)  # type: ignore[union-attr]
    flags = int(re.search(r"\(0x([0-9a-f]+)\)", fields["flags"]).group(1), 16)  # type: ignore[union-attr]
    return spi_i, exchange, int(fields["Message ID"].split()[0]), bool(flags & 0x20)


def message_key(data: bytes) -> tuple[str, int, int, bool]:
    return data[:8].hex(), data[18], int.from_bytes(data[20:24], "big"), bool(data[19] & 0x20)


def pluto_fields(datagrams: list[tuple[str, bytes]], logs: list[str]) -> list[str]:
    """For each datagram, the records of the pluto that parsed it, else of the one that emitted it."""
    by_key: dict[tuple[str, int, int, bool], dict[str, list[str]]] = {}
    for log in logs:
        for group in records(log):
            verb = group[0].split()[0]
            by_key.setdefault(_header(group), {}).setdefault(verb, group)
    out: list[str] = []
    for n, (direction, data) in enumerate(datagrams, 1):
        found = by_key.get(message_key(data), {})
        verb = "parse" if "parse" in found else "emit"
        out.append(f"# message {n} {direction}: pluto's {verb} records")
        out += found.get(verb, [])
    return out


def cavp(prf_hash: str, gir: bytes, ni: bytes, nr: bytes, spi_i: bytes, spi_r: bytes, bits: int) -> dict[str, str]:
    """libreswan's IKEv2 KDF on these inputs (its CAVP driver): SKEYSEED and DKM."""
    out = run([str(LIBEXEC / "cavp"), "-v2", "-hashAlg", prf_hash, "-derivedKeyingMaterialLength", str(bits),
               "-tcId", "1", "-gir", gir.hex(), "-girNew", gir.hex(), "-nInit", ni.hex(), "-nResp", nr.hex(),
               "-spiInit", spi_i.hex(), "-spiResp", spi_r.hex()])
    values = dict(re.findall(r"^(SKEYSEED|DKM) = ([0-9a-f]+)$", out, re.M))
    return {"SKEYSEED (libreswan cavp)": values["SKEYSEED"], "DKM (libreswan cavp)": values["DKM"]}


def keys_file(name: str, scenario: Scenario, result: dict[str, object],
              datagrams: list[tuple[str, bytes]]) -> list[str]:
    i_log, r_log = str(result["i_log"]), str(result["r_log"])
    keys = tcpdump_keys(i_log)
    init_request, init_response = Message.decode(datagrams[0][1]), Message.decode(datagrams[1][1])
    ni = init_request.find(Nonce).data  # type: ignore[union-attr]
    nr = init_response.find(Nonce).data  # type: ignore[union-attr]
    generated = labelled_dumps(i_log, "Generated nonce:")
    if generated[:1] != [ni]:
        raise SystemExit("pluto's logged nonce is not the Ni on the wire")
    lines = [f"# {name}: keys from pluto's debug log (libreswan {libreswan_version()}), see SOURCE.md.",
             "# Names as in RFC 7296 2.14; SK_ei and SK_er end with their 4-octet salt for AES-GCM (RFC 5282).",
             f"SPIi = {keys['SPIi']}", f"SPIr = {keys['SPIr']}",
             f"Ni = {ni.hex()}", f"Nr = {nr.hex()}"]
    dumped = symkeys(i_log)
    for side, salt in (("i", "initiator salt"), ("r", "responder salt")):
        lines.append(f"SK_a{side} = {keys[f'SK_a{side}']}")
        lines.append(f"SK_e{side} = {keys[f'SK_e{side} (without salt)']}{dumped.get(salt, b'').hex()}")
    lines += [f"SK_pi = {dumped['chunk_SK_pi'].hex()}", f"SK_pr = {dumped['chunk_SK_pr'].hex()}"]
    # Child SA KEYMAT: pluto's responder dumps "our keymat" i->r first, its initiator r->i first (ikev2_crypto.c)
    for log, role in ((i_log, "initiator"), (r_log, "responder")):
        ours, peers = labelled_dumps(log, "our  keymat"), labelled_dumps(log, "peer keymat")
        if ours and peers:
            i_to_r, r_to_i = (peers[0], ours[0]) if role == "initiator" else (ours[0], peers[0])
            lines += [f"KEYMAT i->r ({role}) = {i_to_r.hex()}", f"KEYMAT r->i ({role}) = {r_to_i.hex()}"]
    served = result["served"]
    if isinstance(served, dict):
        ke_i = init_request.find(KeyExchange)
        ke_r = init_response.find(KeyExchange)
        assert ke_i is not None and ke_r is not None
        private = next(bytes.fromhex(d) for d in served["draws"]
                       if len(d) == 2 * c.dh_private_size(scenario.group)
                       and c.DiffieHellman.from_private(scenario.group, bytes.fromhex(d)).public_key == ke_r.data)
        gir = c.DiffieHellman.from_private(scenario.group, private).shared_secret(ke_i.data)
        chosen = init_response.find(SecurityAssociation)
        assert chosen is not None
        suite = c.IkeSuite.from_proposal(chosen.proposals[0])
        bits = 8 * (2 * suite.prf.key_size + 2 * (suite.integrity.key_size if suite.integrity else 0)
                    + 2 * suite.encryption.key_size + suite.prf.key_size)
        lines += [f"responder DH private (enclave-ike) = {private.hex()}", f"g^ir = {gir.hex()}"]
        values = cavp("SHA-256", gir, ni, nr, bytes.fromhex(keys["SPIi"]), bytes.fromhex(keys["SPIr"]), bits)
        lines += [f"{k} = {v}" for k, v in values.items()]
    return lines


def libreswan_version() -> str:
    match = re.search(r"Libreswan (\S+)", run([str(LIBEXEC / "pluto"), "--version"], check=False))
    return match.group(1) if match else "unknown"


def source_md(name: str, scenario: Scenario, result: dict[str, object], argv: list[str]) -> str:
    responder = ("a second pluto" if scenario.responder == "pluto"
                 else "enclave-ike's `Responder` (NULL auth, default suites; `capture_pluto.py --serve`)")
    return f"""# {name}

Captured {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')} by `{' '.join(argv)}`
(tests/vectors/ikev2/capture_pluto.py), as root, on Linux {platform.release()} ({platform.machine()}),
libreswan {libreswan_version()} (Debian package), Python {platform.python_version()}.

- Initiator: pluto in namespace A ({I_ADDR}), `plutodebug="all crypt private"`, started with `whack --initiate`.
- Responder: {responder} in namespace B ({R_ADDR}).
- Datagrams: `tcpdump -i <veth> -n --immediate-mode -U -w capture.pcap 'udp port 500 or udp port 4500'` on A's veth;
  the UDP payloads, in order, are `datagrams.txt`.
- Keys: `keys.txt`, taken from the initiator's pluto log (see the docstring of capture_pluto.py for which line
  gives which key). The host kernel has no ESP: the Child SA's kernel install fails after IKE_AUTH (pluto then
  logs TS_UNACCEPTABLE or deletes the Child SA), which does not change the IKE messages.
- Fields: `pluto-fields.txt`, pluto's parse (or emit) records of each message.
- Only the first IKE SA is kept: {result['left_out']} later datagrams (pluto reviving the connection with a new IKE
  SA after the failed kernel install) were left out.

whack said:

```
{str(result['whack']).strip()}
```

Initiator's ipsec.conf:

```
{str(result['i_conf']).strip()}
```
""" + (f"""
Responder's ipsec.conf:

```
{str(result['r_conf']).strip()}
```
""" if result["r_conf"] else "")


def write(name: str, scenario: Scenario, result: dict[str, object], argv: list[str]) -> None:
    captured = pcap_datagrams(bytes(result["pcap"]))  # type: ignore[arg-type]
    # Only the first IKE SA: after the failed kernel install pluto deletes it and revives the connection.
    datagrams = [d for d in captured if captured and d[1][:8] == captured[0][1][:8]]
    result["left_out"] = len(captured) - len(datagrams)
    if len(datagrams) < 4:
        raise SystemExit(f"{name}: only {len(datagrams)} IKE datagrams captured; whack said: {result['whack']}")
    out = HERE / name
    out.mkdir(exist_ok=True)
    (out / "datagrams.txt").write_text(
        f"# {name}: the IKE datagrams (UDP payloads) on the initiator's veth, in order; see SOURCE.md\n"
        + "".join(f"{direction} {data.hex()}\n" for direction, data in datagrams))
    (out / "keys.txt").write_text("\n".join(keys_file(name, scenario, result, datagrams)) + "\n")
    fields = pluto_fields(datagrams, [str(result["i_log"]), str(result["r_log"])])
    (out / "pluto-fields.txt").write_text(
        f"# {name}: pluto's own parse/emit records of each message, from its debug log; see SOURCE.md\n"
        + "\n".join(fields) + "\n")
    (out / "SOURCE.md").write_text(source_md(name, scenario, result, argv))
    print(f"{name}: {len(datagrams)} datagrams -> {out}")


@contextlib.contextmanager
def _root() -> Iterator[None]:
    if os.geteuid() != 0:
        raise SystemExit("run as root: it creates network namespaces and runs pluto")
    yield


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=f"default: all of {', '.join(SCENARIOS)}")
    parser.add_argument("--serve", nargs=2, metavar=("ADDRESS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve[0], Path(args.serve[1]))
        return 0
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]}; known: {', '.join(SCENARIOS)}")
    with _root():
        for name in args.scenarios or list(SCENARIOS):
            with Lab(name, SCENARIOS[name]) as lab:
                result = lab.capture()
                write(name, SCENARIOS[name], result, ["capture_pluto.py", name])
                shutil.rmtree(lab.dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
