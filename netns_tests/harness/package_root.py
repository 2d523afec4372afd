"""Install the Debian packages into a disposable root on this host, use them, purge them, and say what was seen.

    unshare --mount --propagation private python -m netns_tests.harness.package_root OUT.json IKECTL.deb ENCLAVE.deb

Run in a mount namespace of its own (netns_tests/test_package_install.py starts it so): /usr, /etc and /var get
overlays whose upper directories are in RAM, /run a tmpfs, so nothing reaches the host. In a network namespace made
here, trusted mode is brought up with the conffile, so the purge has policies, an nftables table, pluto and the
supervisor to take away. The facts go to OUT.json for the test to judge; this module asserts nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from ikecommon import keys

ROOT = Path("/run/ikt-pkg-root")  # on the tmpfs mounted over /run below
NETNS = "ikt-pkg"
RESOLVER = "192.0.2.53"
UNITS = ("/lib/systemd/system/ikectl.service", "/lib/systemd/system/enclave-ike.service")
HOOKS = ("/usr/lib/NetworkManager/dispatcher.d/10-ikectl", "/usr/lib/NetworkManager/dispatcher.d/pre-up.d/10-ikectl")
GONE_AFTER_PURGE = ("/etc/ikectl", "/etc/enclave-ike", "/var/lib/ikectl", "/var/log/ikectl", "/run/ikectl",
                    "/run/ikectl-state", "/run/ikectl-nm", "/run/enclave-ike", "/usr/lib/ikectl",
                    "/usr/lib/enclave-ike", "/usr/bin/ikectl", "/usr/bin/enclave-ike")
USER_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LANG": "C.UTF-8"}


def run(argv: list[str], netns: bool = False, env: dict[str, str] | None = None,
        timeout: float = 600) -> dict[str, Any]:
    full = ["ip", "netns", "exec", NETNS, *argv] if netns else argv
    done = subprocess.run(full, capture_output=True, text=True, timeout=timeout, check=False,
                          env={**USER_ENV, **(env or {})})
    return {"rc": done.returncode, "out": done.stdout[-4000:], "err": done.stderr[-4000:]}


def sh(script: str, netns: bool = False) -> dict[str, Any]:
    return run(["sh", "-c", script], netns=netns)


def disposable_root() -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "ikt-pkg-run", "/run"], check=True)
    for name in ("usr", "etc", "var"):
        upper, work = ROOT / name / "upper", ROOT / name / "work"
        upper.mkdir(parents=True)
        work.mkdir(parents=True)
        subprocess.run(["mount", "-t", "overlay", f"ikt-pkg-{name}", "-o",
                        f"lowerdir=/{name},upperdir={upper},workdir={work}", f"/{name}"], check=True)


def files_written(name: str) -> list[str]:
    upper = ROOT / name / "upper"
    return sorted(f"/{name}/{p.relative_to(upper)}" for p in upper.rglob("*") if not p.is_dir())


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def trusted_config() -> str:
    pin = keys.from_public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
    return (f'mode = "trusted"\n[trusted]\naddress = "{RESOLVER}"\nid = "@resolver.test"\n'
            f'pubkey = "{pin.libreswan}"\n')


def processes() -> list[str]:
    """ikectl's processes in the protected host's namespace (pluto, the supervisor, ikectl itself)."""
    try:
        ours = os.stat(f"/run/netns/{NETNS}").st_ino
    except OSError:
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.stat(entry / "ns/net").st_ino != ours:
                    continue
                argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "ikectl" in argv or "pluto" in argv:
                found.append(f"{entry.name}: {argv.strip()}")
    return found


def scenario(facts: dict[str, Any], debs: list[str]) -> None:
    """Fill `facts` step by step (what was seen up to a failure still reaches the test)."""
    disposable_root()
    facts["install"] = run(["apt-get", "install", "-y", "-q", *debs], timeout=900)
    if facts["install"]["rc"] != 0:
        return
    facts["links"] = {p: os.path.realpath(p) for p in ("/usr/bin/ikectl", "/usr/bin/enclave-ike")}
    facts["conffiles"] = run(["dpkg-query", "-W", "-f=${Conffiles}\n", "ikectl", "enclave-ike"])["out"]
    facts["hooks"] = {h: {"text": Path(h).read_text(), "mode": oct(Path(h).stat().st_mode & 0o7777),
                          "uid": Path(h).stat().st_uid} for h in HOOKS}
    facts["verify"] = run(["systemd-analyze", "verify", *UNITS])
    facts["man"] = run(["man", "-P", "cat", "ikectl"], env={"MANWIDTH": "100"})
    facts["man_enclave"] = run(["man", "-P", "cat", "enclave-ike"], env={"MANWIDTH": "100"})
    facts["completion"] = run(["bash", "-c", "source /usr/share/bash-completion/completions/ikectl; "
                               "f=$(complete -p ikectl | sed 's/.*-F \\([^ ]*\\) .*/\\1/'); "
                               "COMP_WORDS=(ikectl ''); COMP_CWORD=1; COMP_LINE='ikectl '; COMP_POINT=7; "
                               "$f ikectl '' ikectl; printf '%s\\n' \"${COMPREPLY[@]}\""])
    facts["version"] = run(["ikectl", "--version"])
    facts["interpreter"] = os.path.realpath("/usr/lib/ikectl/bin/python3")
    # A caller's PYTHONPATH (apt's environment in prerm, sudo -E) must not reach the packaged program.
    evil = ROOT / "evil" / "ikectl"
    evil.mkdir(parents=True)
    (evil / "__init__.py").write_text("print('IMPORTED FROM PYTHONPATH')\n")
    facts["pythonpath"] = run(["ikectl", "--version"], env={"PYTHONPATH": str(evil.parent)})
    facts["doctor"] = run(["ikectl", "doctor"])
    facts["enclave_shipped_config"] = run(["enclave-ike", "serve"], timeout=60)

    # The protected host: a namespace with a route to the resolver, trusted mode from the conffile. This kernel has
    # no ESP; IKECTL_ASSUME_ESP (the netns suite's knob, docs/testing.md) lets `up` start pluto all the same, so
    # pluto, the supervisor, the backstops and the nftables table are all there for the purge to remove.
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    sh("ip link set lo up && ip link add ikt0 type veth peer name ikt1 && ip link set ikt0 up && ip link set ikt1 up "
       "&& ip addr add 10.99.0.2/24 dev ikt0 && ip addr add 10.99.0.1/24 dev ikt1 && "
       "ip route add default via 10.99.0.1 dev ikt0", netns=True)
    Path("/etc/ikectl/ikectl.toml").write_text(trusted_config())
    facts["up"] = run(["ikectl", "up"], netns=True, env={"IKECTL_ASSUME_ESP": "1"})
    facts["while_up"] = {"policies": sh("ip xfrm policy list", netns=True)["out"],
                         "tables": sh("nft list tables", netns=True)["out"], "processes": processes()}
    # An upgrade (a reinstall runs the same maintainer scripts) while up: the protection stays.
    facts["maintscripts"] = {f"{pkg}.{kind}": _read(Path(f"/var/lib/dpkg/info/{pkg}.{kind}"))
                             for pkg in ("ikectl", "enclave-ike") for kind in ("preinst", "postinst", "prerm")}
    facts["reinstall"] = run(["apt-get", "install", "--reinstall", "-y", "-q", debs[0]], netns=True, timeout=900)
    facts["after_reinstall"] = {"policies": sh("ip xfrm policy list", netns=True)["out"],
                                "tables": sh("nft list tables", netns=True)["out"], "processes": processes()}
    facts["purge"] = run(["apt-get", "purge", "-y", "-q", "ikectl", "enclave-ike"], netns=True, timeout=900)
    facts["after_purge"] = {"policies": sh("ip xfrm policy list", netns=True)["out"],
                            "tables": sh("nft list tables", netns=True)["out"], "processes": processes(),
                            "left": [p for p in GONE_AFTER_PURGE if os.path.lexists(p)],
                            "usr": files_written("usr"),
                            "status": run(["dpkg-query", "-W", "-f=${db:Status-Status}\n", "ikectl",
                                           "enclave-ike"])["out"]}


def main() -> int:
    out, debs = Path(sys.argv[1]), sys.argv[2:]
    facts: dict[str, Any] = {}
    try:
        scenario(facts, debs)
    finally:  # whatever happened: none of the scenario's processes or namespaces outlive it
        for pid in [int(line.split(":")[0]) for line in processes()]:
            subprocess.run(["kill", "-9", str(pid)], check=False)
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True, check=False)
        out.write_text(json.dumps(facts, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
