"""Interop: strongSwan's charon as initiator against enclave-ike's responder.

    client 10.84.1.2 (charon) -- router -- resolver 10.84.2.53 (enclave-ike + unbound)

charon runs from Debian's packages unpacked by scripts/setup (buildtools/strongswan.py; netns_tests/harness/charon.py).
It has no NULL authentication, so it signs with a raw ECDSA P-256 key or a self-signed certificate, and it pins the
server's key from `enclave-ike identity --format pem`. `enclave-ike serve` either pins the client's key in its config
(`[[peers.pinned]]`) or takes it as an unauthenticated client (`peers.anonymous`), from the certificate it sends.

The tests marked `host` need no ESP: the server runs with `apply.mode = "none"` and charon keeps its Child SAs in
its own userspace IPsec stack (kernel-libipsec), so neither side adds an SA to the kernel. The port-float test is the
exception: kernel-libipsec fakes a NAT, which would move IKE to 4500 by itself, so there charon uses the kernel,
its Child SA fails on the host (no ESP) and only its IKE SA is tested.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from netns_tests.harness import procs
from netns_tests.harness.capture import Capture
from netns_tests.harness.charon import Charon, CharonConfig
from netns_tests.harness.dnsclient import query
from netns_tests.harness.enclave_ike import config_text, servers, signing_identity
from netns_tests.harness.topology import Topology
from netns_tests.harness.unbound import Unbound
from netns_tests.scenarios.resolver_world import World, build_world

CLIENT, RESOLVER = "10.84.1.2", "10.84.2.53"
CLIENT_ID, RESOLVER_ID = "client.charon.example", "resolver.enclave.example"
CONN = "dns"
CLIENT_RE, RESOLVER_RE = re.escape(CLIENT), re.escape(RESOLVER)


@pytest.fixture
def world(topology: Topology, tmp_path: Path, unbound: Callable[..., Unbound]) -> World:
    return build_world(topology, tmp_path, unbound, "10.84")


@pytest.fixture
def client_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def fingerprint(key: ec.EllipticCurvePrivateKey) -> str:
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


@pytest.fixture
def enclave_ike(world: World, client_key: ec.EllipticCurvePrivateKey) -> Iterator[Callable[..., procs.Daemon]]:
    """Factory: `enclave_ike(apply="none")` runs `enclave-ike serve` with signature auth. `peers` is its [peers]
    section; by default the client's key is pinned there (`[[peers.pinned]]`, from a PEM file). `backend` and
    `key_type` are [identity]'s (RSA needs the software backend: the sim enclave holds ECDSA keys only)."""
    with servers(world.resolver, world.workdir, verbose=True) as serve:
        def start(*, apply: str = "none", suites: str = "", peers: str | None = None, backend: str = "sim",
                  key_type: str = "ecdsa-p256") -> procs.Daemon:
            pem = world.workdir / "client-pub.pem"
            pem.write_bytes(public_pem(client_key))
            if peers is None:
                peers = f'[peers]\n\n[[peers.pinned]]\nid = "@{CLIENT_ID}"\npubkey_file = "{pem}"\n'
            identity = signing_identity(f"@{RESOLVER_ID}", backend=backend, key_type=key_type)
            return serve(config_text(RESOLVER, identity=identity, workdir=world.workdir, apply=apply,
                                     extra=f"[evidence]\nenabled = false\n\n{peers}\n{suites}"))

        yield start


@pytest.fixture
def charon(world: World, tmp_path: Path) -> Iterator[Callable[..., Charon]]:
    """Factory: `charon(CharonConfig(...))` starts charon in the client's namespace and loads its config; a second
    charon in one test takes another `workdir`."""
    started: list[Charon] = []

    def start(config: CharonConfig, workdir: str = "charon-client") -> Charon:
        daemon = Charon(world.topo, world.client, tmp_path / workdir)
        started.append(daemon)
        daemon.write_config(config)
        daemon.start()
        daemon.load_all()
        return daemon

    yield start
    for daemon in reversed(started):
        daemon.stop()


def server_pem(world: World) -> bytes:
    """What the operator publishes: `enclave-ike identity --format pem`, run beside the server."""
    proc = world.topo.run(world.resolver, [sys.executable, "-m", "enclave_ike.cli", "identity", "--config",
                                           str(world.workdir / "enclave-ike.toml"), "--format", "pem"])
    assert proc.stdout.startswith("-----BEGIN PUBLIC KEY-----"), proc.stdout
    return proc.stdout.encode()


def raw_key_config(world: World, client_key: ec.EllipticCurvePrivateKey, *, proposals: str = "default",
                   esp_proposals: str = "aes256gcm16,aes128-sha256", extra: str = "", remote_auth: str = "pubkey",
                   charon_options: dict[str, str] | None = None, kernel_sas: bool = False) -> CharonConfig:
    """One connection: charon signs with its raw ECDSA key and pins the server's; a tunnel Child SA for udp/53.
    `remote_auth` is how the server must authenticate (`pubkey-sha384`: only under SHA-384, and charon's
    SIGNATURE_HASH_ALGORITHMS then lists that hash alone)."""
    private = client_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())
    public = public_pem(client_key)
    connections = f"""  {CONN} {{
    version = 2
    local_addrs = {CLIENT}
    remote_addrs = {RESOLVER}
    proposals = {proposals}
{extra}
    local {{
      auth = pubkey
      id = @{CLIENT_ID}
      pubkeys = client.pem
    }}
    remote {{
      auth = {remote_auth}
      id = @{RESOLVER_ID}
      pubkeys = resolver.pem
    }}
    children {{
      {CONN} {{
        local_ts = dynamic[udp]
        remote_ts = {RESOLVER}/32[udp/53]
        mode = tunnel
        esp_proposals = {esp_proposals}
        start_action = none
      }}
    }}
  }}"""
    files = {"private/client.pem": private, "pubkey/client.pem": public, "pubkey/resolver.pem": server_pem(world)}
    return CharonConfig(connections, files, kernel_sas=kernel_sas, charon_options=charon_options or {})


def wrong_pin_config(world: World, client_key: ec.EllipticCurvePrivateKey) -> CharonConfig:
    """`raw_key_config` with another key pinned for the server, so charon refuses the server's AUTH."""
    config = raw_key_config(world, client_key)
    wrong = ec.generate_private_key(ec.SECP256R1()).public_key()
    files = {**config.files, "pubkey/resolver.pem": wrong.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)}
    return CharonConfig(config.connections, files, config.kernel_sas)


SERVER_ESTABLISHED = (rf"IKE SA (\S+) established with {CLIENT_RE}:\d+ \(peer {CLIENT_ID}, "
                      rf"signature auth, pinned key sha256 [0-9a-f]{{64}}; we are {RESOLVER_ID}\); (\S+)")


def child_sas(sa: dict[str, Any]) -> list[dict[str, Any]]:
    children = sa.get("child-sas", {})
    return [child for child in children.values() if isinstance(child, dict)]


@pytest.mark.host  # IKE only: apply.mode none, charon's Child SA in userspace
def test_charon_raw_ecdsa_key_completes_ike_auth(world: World, enclave_ike: Callable[..., procs.Daemon],
                                                 charon: Callable[..., Charon],
                                                 client_key: ec.EllipticCurvePrivateKey) -> None:
    server = enclave_ike()
    client = charon(raw_key_config(world, client_key))
    client.initiate(CONN)
    sa = client.wait_established(CONN)
    # charon authenticated enclave-ike's key (the one pinned from `identity --format pem`), and the other way round.
    assert sa["remote-id"] == RESOLVER_ID and sa["local-id"] == CLIENT_ID, sa
    client.wait_for_log(rf"authentication of '{RESOLVER_ID}' with ECDSA_WITH_SHA256_DER successful", timeout=5.0)
    server.wait_for_log(SERVER_ESTABLISHED, timeout=10.0)
    server.wait_for_log(rf"Child SA established under IKE SA .* tunnel .*{RESOLVER_RE} proto 17 "
                        r"port 53", timeout=10.0)
    children = child_sas(sa)
    assert [child["state"] for child in children] == ["INSTALLED"], sa
    # IKE only as far as the kernel goes: the Child SA lives in charon's userspace, XFRM holds nothing.
    for table in ("state", "policy"):
        assert world.topo.run(world.client, ["ip", "xfrm", table]).stdout.strip() == "", table
    assert "errno 38" not in client.log_text() and "unable to install" not in client.log_text()
    # charon's Delete ends the IKE SA on both sides.
    client.terminate(CONN)
    server.wait_for_log(rf"IKE SA {sa['initiator-spi']}/{sa['responder-spi']} deleted", timeout=5.0)
    assert client.list_sas() == []


@pytest.mark.host  # IKE only
def test_charon_pins_an_rsa_3072_key_and_gets_rsa_pss(world: World, enclave_ike: Callable[..., procs.Daemon],
                                                      charon: Callable[..., Charon],
                                                      client_key: ec.EllipticCurvePrivateKey) -> None:
    """`key_type = "rsa"` (software backend): charon pins the 3072-bit key from `identity --format pem`, and our
    AUTH is RSASSA-PSS (RFC 7427 with RFC 8247's preference) under SHA-256, the key's own hash."""
    server = enclave_ike(backend="software", key_type="rsa")
    server.wait_for_log(r"identity @resolver\.enclave\.example leftrsasigkey=0s", timeout=1.0)
    published = serialization.load_pem_public_key(server_pem(world))
    assert isinstance(published, rsa.RSAPublicKey) and published.key_size == 3072, published
    client = charon(raw_key_config(world, client_key))
    client.initiate(CONN)
    sa = client.wait_established(CONN)
    assert sa["remote-id"] == RESOLVER_ID, sa
    client.wait_for_log(r"sending supported signature hash algorithms: sha256 sha384 sha512", timeout=1.0)
    client.wait_for_log(rf"authentication of '{RESOLVER_ID}' with RSA_EMSA_PSS_SHA2_256_SALT_32 successful",
                        timeout=5.0)
    server.wait_for_log(SERVER_ESTABLISHED, timeout=10.0)
    assert [child["state"] for child in child_sas(sa)] == ["INSTALLED"], sa


# (identity.key_type, the one hash charon accepts) -> charon's `remote.auth`, and the scheme it logs for our AUTH.
# RFC 7427: ECDSA's ecdsa-with-SHA384/512 name no curve, so the P-256 key signs under them; RSA signs RSASSA-PSS with
# a salt of the hash's size, which charon accepts only as `rsa/pss-...` (its `pubkey-sha384` means PKCS#1 v1.5 for
# an RSA key, and refuses our AUTH: `constraint checking failed`).
ONE_HASH = {
    ("ecdsa-p256", "sha384"): ("pubkey-sha384", "ECDSA_WITH_SHA384_DER"),
    ("ecdsa-p256", "sha512"): ("pubkey-sha512", "ECDSA_WITH_SHA512_DER"),
    ("rsa", "sha384"): ("rsa/pss-sha384", "RSA_EMSA_PSS_SHA2_384_SALT_48"),
    ("rsa", "sha512"): ("rsa/pss-sha512", "RSA_EMSA_PSS_SHA2_512_SALT_64"),
}


@pytest.mark.host  # IKE only
@pytest.mark.parametrize(("key_type", "hash_name"), list(ONE_HASH))
def test_charon_offering_one_hash_gets_an_auth_under_it(world: World, enclave_ike: Callable[..., procs.Daemon],
                                                        charon: Callable[..., Charon],
                                                        client_key: ec.EllipticCurvePrivateKey, key_type: str,
                                                        hash_name: str) -> None:
    """charon with `remote { auth = pubkey-sha384 }` lists only SHA-384 in SIGNATURE_HASH_ALGORITHMS and accepts
    only an AUTH under it; enclave-ike signs under that hash, not its key's own SHA-256, and IKE_AUTH completes."""
    remote_auth, scheme = ONE_HASH[key_type, hash_name]
    server = enclave_ike(backend="software" if key_type == "rsa" else "sim", key_type=key_type)
    client = charon(raw_key_config(world, client_key, remote_auth=remote_auth))
    client.initiate(CONN)
    sa = client.wait_established(CONN)
    client.wait_for_log(rf"(?m)sending supported signature hash algorithms: {hash_name}$", timeout=1.0)
    client.wait_for_log(rf"authentication of '{RESOLVER_ID}' with {scheme} successful", timeout=5.0)
    server.wait_for_log(SERVER_ESTABLISHED, timeout=10.0)
    assert [child["state"] for child in child_sas(sa)] == ["INSTALLED"], sa


@pytest.mark.host  # IKE only
def test_charon_refuses_enclave_ike_under_the_wrong_pin(world: World, enclave_ike: Callable[..., procs.Daemon],
                                                       charon: Callable[..., Charon],
                                                       client_key: ec.EllipticCurvePrivateKey) -> None:
    """charon pins another key, so our AUTH fails its check: it reports AUTHENTICATION_FAILED in an INFORMATIONAL
    request (RFC 7296 2.21.2) and destroys its IKE SA. enclave-ike had reported the IKE SA and its Child SA
    established when its IKE_AUTH response left; it deletes both. Within 1 s of charon's report neither side
    holds an SA."""
    server = enclave_ike()
    client = charon(wrong_pin_config(world, client_key))
    out = client.swanctl("--initiate", "--child", CONN, "--timeout", "10", check=False)
    assert "initiate failed" in out, out
    client.wait_for_log(r"signature validation failed", timeout=5.0)
    report = client.wait_for_log(r"generating INFORMATIONAL request \d+ \[ N\(AUTH_FAILED\) \]", timeout=5.0)
    spi = server.wait_for_log(SERVER_ESTABLISHED, timeout=5.0).group(1)
    reason = r"the peer reported AUTHENTICATION_FAILED \(24\) in an INFORMATIONAL request: it refused our AUTH"
    deleted = [rf"Child SA in 0x\S+ out 0x\S+ deleted: {reason}", rf"IKE SA {spi} deleted: {reason}"]

    def both_empty() -> bool:
        text = server.log_text()
        return all(re.search(line, text) for line in deleted) and client.list_sas() == []

    deadline = client.logged_at(report) + 1.0
    while not (empty := both_empty()) and time.time() < deadline:
        time.sleep(0.05)
    assert empty, (f"an SA is left {time.time() - deadline + 1.0:.2f} s after charon's AUTH_FAILED report",
                   client.list_sas(), procs.tail(server.log_text()))
    # Nothing else was ever established on the server, and nothing is left on the client.
    assert len(re.findall(r"IKE SA \S+ established", server.log_text())) == 1, server.log_text()
    assert client.established(CONN) is None and client.list_sas() == []


PROPOSALS = {
    # charon's proposal -> the suite enclave-ike logs for the IKE SA
    "aes256gcm16-prfsha256-x25519": "AES_GCM_16_256/HMAC_SHA2_256/CURVE25519",
    "aes256-sha256-ecp256": "AES_CBC_256/HMAC_SHA2_256/HMAC_SHA2_256_128/ECP_256",
    "aes128-sha256-modp2048": "AES_CBC_128/HMAC_SHA2_256/HMAC_SHA2_256_128/MODP_2048",
}


@pytest.mark.host  # IKE only
@pytest.mark.parametrize("proposal", list(PROPOSALS))
def test_charon_proposals_complete(world: World, enclave_ike: Callable[..., procs.Daemon],
                                   charon: Callable[..., Charon], client_key: ec.EllipticCurvePrivateKey,
                                   proposal: str) -> None:
    server = enclave_ike()
    client = charon(raw_key_config(world, client_key, proposals=proposal))
    client.initiate(CONN)
    sa = client.wait_established(CONN)
    match = server.wait_for_log(SERVER_ESTABLISHED, timeout=10.0)
    assert match.group(2) == PROPOSALS[proposal], match.group(0)
    assert [child["state"] for child in child_sas(sa)] == ["INSTALLED"], sa


@pytest.mark.host  # IKE only
def test_charon_rekeys_the_ike_sa(world: World, enclave_ike: Callable[..., procs.Daemon],
                                  charon: Callable[..., Charon], client_key: ec.EllipticCurvePrivateKey) -> None:
    server = enclave_ike()
    client = charon(raw_key_config(world, client_key))
    client.initiate(CONN)
    before = client.wait_established(CONN)
    client.swanctl("--rekey", "--ike", CONN)
    wait = time.monotonic() + 10.0
    after = before
    while time.monotonic() < wait:
        after = client.established(CONN) or before
        if after["initiator-spi"] != before["initiator-spi"]:
            break
        time.sleep(0.1)
    assert after["initiator-spi"] != before["initiator-spi"], (before, after)
    old = f"{before['initiator-spi']}/{before['responder-spi']}"
    server.wait_for_log(rf"IKE SA {old} rekeyed: now {after['initiator-spi']}/{after['responder-spi']}",
                        timeout=10.0)
    # The Child SA moved to the new IKE SA, and the old IKE SA was deleted by charon.
    assert [child["state"] for child in child_sas(after)] == ["INSTALLED"], after
    server.wait_for_log(rf"IKE SA {old} deleted", timeout=10.0)
    assert [sa["initiator-spi"] for sa in client.list_sas()] == [after["initiator-spi"]]


@pytest.mark.host  # IKE only
def test_charon_dpd_is_answered(world: World, enclave_ike: Callable[..., procs.Daemon],
                                charon: Callable[..., Charon], client_key: ec.EllipticCurvePrivateKey) -> None:
    server = enclave_ike()
    client = charon(raw_key_config(world, client_key, extra="    dpd_delay = 1s"))
    client.initiate(CONN)
    sa = client.wait_established(CONN)
    # charon sends a DPD (an empty INFORMATIONAL request) after a second without traffic; three answered ones.
    for _ in range(3):
        client.wait_for_log(r"sending DPD request", timeout=5.0)
    client.wait_for_log(r"parsed INFORMATIONAL response \d+ \[ \]", timeout=5.0)
    time.sleep(3.5)
    text = client.log_text(this_run_only=True)
    requests = text.count("sending DPD request")
    responses = len([line for line in text.splitlines() if "parsed INFORMATIONAL response" in line])
    assert requests >= 3 and responses >= requests - 1, (requests, responses)
    assert "retransmit" not in text, procs.tail(text)
    still = client.established(CONN)
    assert still is not None and still["initiator-spi"] == sa["initiator-spi"], still
    assert server.running() and " deleted" not in server.log_text()


LIVENESS_S, LIVENESS_TIMEOUT_S = 2, 2


@pytest.mark.host  # IKE only
def test_a_killed_charon_is_found_dead_and_removed_within_the_liveness_time(
        world: World, enclave_ike: Callable[..., procs.Daemon], charon: Callable[..., Charon],
        client_key: ec.EllipticCurvePrivateKey) -> None:
    """charon SIGKILLed sends no Delete: enclave-ike's liveness check (RFC 7296 2.4) goes unanswered and the IKE SA
    and its Child SA are removed within liveness_s + liveness_timeout_s."""
    server = enclave_ike(suites=f"[limits]\nliveness_s = {LIVENESS_S}\nliveness_timeout_s = {LIVENESS_TIMEOUT_S}\n")
    client = charon(raw_key_config(world, client_key))
    client.initiate(CONN)
    client.wait_established(CONN)
    spi = server.wait_for_log(SERVER_ESTABLISHED, timeout=10.0).group(1)
    child = server.wait_for_log(rf"Child SA established under IKE SA {spi}: in (0x[0-9a-f]+)", timeout=5.0)
    os.kill(client.pid, signal.SIGKILL)
    server.wait_for_log(rf"IKE SA {spi} deleted: dead peer: nothing heard from it",
                        timeout=LIVENESS_S + LIVENESS_TIMEOUT_S + 1.5)
    server.wait_for_log(rf"Child SA in {child.group(1)} out 0x[0-9a-f]+ deleted: dead peer", timeout=0.5)
    server.stop()
    assert "IKE SA removed: dead peer: 1" in server.log_text()


# How charon is configured -> the port IKE uses from IKE_AUTH on.
FLOATS = {
    "mobike": ("    mobike = yes", 4500),  # RFC 4555: with NAT-T known from IKE_SA_INIT, IKE_AUTH goes to 4500
    "encap": ("    mobike = no\n    encap = yes", 4500),  # charon fakes a NAT (a wrong NATD hash) for ESP in UDP
    "neither": ("    mobike = no", 500),  # the control: nothing moves IKE off 500
}


@pytest.mark.host  # IKE only: charon's Child SA fails on the host's kernel, its IKE SA stays
@pytest.mark.parametrize("how", list(FLOATS))
def test_charon_floats_to_port_4500(world: World, enclave_ike: Callable[..., procs.Daemon],
                                    charon: Callable[..., Charon], client_key: ec.EllipticCurvePrivateKey,
                                    how: str) -> None:
    """charon moves IKE from 500 to 4500 after IKE_SA_INIT, for MOBIKE or for `encap = yes`: enclave-ike answers
    IKE_AUTH on 4500, and the IKE SA works there (DPD answered on 4500, no retransmission). Only the faked NAT
    makes enclave-ike want ESP in UDP; after a MOBIKE float without a NAT its Child SA is plain ESP, as charon's is
    (RFC 7296 2.23: UDP encapsulation when a NAT is detected, not because of the port).

    charon loads kernel-netlink alone here (`kernel_sas=True`): kernel-libipsec fakes a NAT for every SA, which
    would float IKE whatever the config says. The host's kernel then refuses the ESP SA (errno 38) and charon keeps
    the IKE SA without its Child SA (`failed to establish CHILD_SA, keeping IKE_SA`), which is all this tests."""
    extra, port = FLOATS[how]
    server = enclave_ike()
    client = charon(raw_key_config(world, client_key, extra=f"{extra}\n    dpd_delay = 1s", kernel_sas=True))
    out = client.swanctl("--initiate", "--child", CONN, "--timeout", "10", check=False)
    assert "failed to establish CHILD_SA, keeping IKE_SA" in out, out  # the host's kernel, not IKE
    sa = client.established(CONN)
    assert sa is not None, out
    assert ("faking NAT situation" in client.log_text()) is (how == "encap")
    server.wait_for_log(rf"IKE SA \S+ established with {CLIENT_RE}:{port} \(peer {CLIENT_ID}, ", timeout=5.0)
    server.wait_for_log(r"Child SA in \S+ out \S+ deleted: deleted by the peer", timeout=5.0)
    applied = server.log_text()
    assert ("a NAT was detected and ESP in UDP is not supported" in applied) is (how == "encap"), applied
    plain_esp = rf"apply \(mode none, not applied\): add SA spi 0x\S+ {CLIENT_RE} -> {RESOLVER_RE} tunnel "
    assert (re.search(plain_esp, applied) is None) is (how == "encap"), applied
    # DPD every second after the float: three answered.
    def answered() -> int:
        text = client.log_text(this_run_only=True)
        first = text.find("sending DPD request")
        return 0 if first < 0 else text[first:].count("parsed INFORMATIONAL response")

    procs.wait_until(lambda: answered() >= 3, 6.0, "three DPD exchanges", interval=0.1)
    text = client.log_text(this_run_only=True)
    init = text.index("parsed IKE_SA_INIT response 0")
    # IKE_SA_INIT on 500; from IKE_AUTH on, every packet either way (IKE_AUTH, the Child SA's Delete, each DPD)
    # on `port` at both ends: enclave-ike answers where charon moved.
    before = re.findall(r"(?:sending|received) packet: from (\S+) to (\S+)", text[:init])
    after = re.findall(r"(?:sending|received) packet: from (\S+) to (\S+)", text[init:])
    assert before == [(f"{CLIENT}[500]", f"{RESOLVER}[500]"), (f"{RESOLVER}[500]", f"{CLIENT}[500]")], before
    assert len(after) >= 2 + 2 + 6 and set(after) == {(f"{CLIENT}[{port}]", f"{RESOLVER}[{port}]"),
                                                      (f"{RESOLVER}[{port}]", f"{CLIENT}[{port}]")}, after
    assert "retransmit" not in text, procs.tail(text)
    still = client.established(CONN)
    assert still is not None and still["initiator-spi"] == sa["initiator-spi"], still
    assert not re.search(r"IKE SA \S+ deleted", server.log_text()), server.log_text()


def self_signed(key: ec.EllipticCurvePrivateKey, name: str) -> bytes:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def certificate_config(world: World, client_key: ec.EllipticCurvePrivateKey) -> CharonConfig:
    """charon sends its self-signed certificate (CERT payload) and signs with its key."""
    config = raw_key_config(world, client_key, extra="    send_cert = always")  # default: only when asked
    connections = config.connections.replace("pubkeys = client.pem", "certs = client.pem")
    files = {**config.files, "x509/client.pem": self_signed(client_key, CLIENT_ID)}
    del files["pubkey/client.pem"]
    return CharonConfig(connections, files, config.kernel_sas)


@pytest.mark.host  # IKE only
def test_charon_self_signed_certificate_completes_ike_auth(world: World, enclave_ike: Callable[..., procs.Daemon],
                                                           charon: Callable[..., Charon],
                                                           client_key: ec.EllipticCurvePrivateKey) -> None:
    """charon sends its self-signed certificate and signs with its key, which the server pins from that certificate
    (`certificate_file`): the pin wins over the anonymous way in."""
    cert = world.workdir / "client-cert.pem"
    cert.write_bytes(self_signed(client_key, CLIENT_ID))
    server = enclave_ike(peers=f'[peers]\n\n[[peers.pinned]]\nid = "@{CLIENT_ID}"\ncertificate_file = "{cert}"\n')
    client = charon(certificate_config(world, client_key))
    client.initiate(CONN)
    sa = client.wait_established(CONN)
    client.wait_for_log(r"sending end entity cert", timeout=5.0)
    match = server.wait_for_log(SERVER_ESTABLISHED, timeout=10.0)
    assert fingerprint(client_key) in match.group(0)
    assert [child["state"] for child in child_sas(sa)] == ["INSTALLED"], sa


@pytest.mark.host  # IKE only
def test_charon_self_signed_certificate_without_a_pin_is_an_unauthenticated_client(
        world: World, enclave_ike: Callable[..., procs.Daemon], charon: Callable[..., Charon],
        client_key: ec.EllipticCurvePrivateKey) -> None:
    """A public resolver (the default `peers.anonymous`, nothing pinned): charon's signature verifies with the key of
    the certificate it sent, so IKE_AUTH completes; charon pins enclave-ike's key; the server logs the client as
    unauthenticated, with the certificate's subject and the key's SHA-256."""
    server = enclave_ike(peers="")
    client = charon(certificate_config(world, client_key))
    client.initiate(CONN)
    sa = client.wait_established(CONN)
    assert sa["remote-id"] == RESOLVER_ID and sa["local-id"] == CLIENT_ID, sa
    client.wait_for_log(rf"authentication of '{RESOLVER_ID}' with ECDSA_WITH_SHA256_DER successful", timeout=5.0)
    server.wait_for_log(rf"IKE SA \S+ established with {CLIENT_RE}:\d+ \(peer {CLIENT_ID}, signature auth, "
                        rf"unauthenticated: certificate 'CN={CLIENT_ID}' \(self-signed\), key sha256 "
                        rf"{fingerprint(client_key)}; we are {RESOLVER_ID}\)", timeout=10.0)
    server.wait_for_log(r"Child SA established under IKE SA .* tunnel", timeout=10.0)
    assert [child["state"] for child in child_sas(sa)] == ["INSTALLED"], sa


@pytest.mark.host  # IKE only
def test_charon_raw_key_without_a_pin_is_refused_for_want_of_a_cert_payload(
        world: World, enclave_ike: Callable[..., procs.Daemon], charon: Callable[..., Charon],
        client_key: ec.EllipticCurvePrivateKey) -> None:
    """strongSwan 5.9.8 does not send a raw public key in a CERT payload (it knows no RFC 7670 encoding 15), even
    with `send_cert = always`: a server that has not pinned the key has nothing to verify the signature with, and
    says so. (The raw-key way in is tested with our own initiator, tests/test_ikev2_exchanges.py.)"""
    server = enclave_ike(peers="")
    client = charon(raw_key_config(world, client_key, extra="    send_cert = always"))
    out = client.swanctl("--initiate", "--child", CONN, "--timeout", "10", check=False)
    assert "initiate failed" in out, out
    client.wait_for_log(r"received AUTHENTICATION_FAILED notify error", timeout=5.0)
    server.wait_for_log(rf"AUTH: a signature, but no key is pinned for {CLIENT_ID} and no CERT payload carries the "
                        r"key", timeout=5.0)
    assert client.list_sas() == [] and " established with " not in server.log_text()


@pytest.mark.host  # IKE only
def test_a_private_resolver_refuses_an_unpinned_charon_and_takes_a_pinned_one(
        world: World, enclave_ike: Callable[..., procs.Daemon], charon: Callable[..., Charon],
        client_key: ec.EllipticCurvePrivateKey) -> None:
    """`peers.anonymous = []` with one pinned key: charon with a self-signed certificate of another key is refused
    (AUTHENTICATION_FAILED, no SA on either side); charon with the pinned key comes in, authenticated."""
    pem = world.workdir / "client-pub.pem"
    server = enclave_ike(peers=f'[peers]\nanonymous = []\n\n[[peers.pinned]]\nid = "@{CLIENT_ID}"\n'
                               f'pubkey_file = "{pem}"\n')
    stranger_key = ec.generate_private_key(ec.SECP256R1())
    config = certificate_config(world, stranger_key)
    stranger = CharonConfig(config.connections.replace(f"id = @{CLIENT_ID}", "id = @stranger.charon.example"),
                            {**config.files, "x509/client.pem": self_signed(stranger_key, "stranger.charon.example")},
                            config.kernel_sas)
    client = charon(stranger)
    out = client.swanctl("--initiate", "--child", CONN, "--timeout", "10", check=False)
    assert "initiate failed" in out, out
    client.wait_for_log(r"received AUTHENTICATION_FAILED notify error", timeout=5.0)
    server.wait_for_log(r"AUTH: no key is pinned for stranger\.charon\.example, and clients with a certificate we "
                        r"do not know are not accepted here", timeout=5.0)
    assert client.list_sas() == [] and " established with " not in server.log_text()
    client.stop()
    pinned = charon(raw_key_config(world, client_key), workdir="charon-pinned")
    pinned.initiate(CONN)
    sa = pinned.wait_established(CONN)
    server.wait_for_log(SERVER_ESTABLISHED, timeout=10.0)
    assert [child["state"] for child in child_sas(sa)] == ["INSTALLED"], sa


@pytest.mark.host  # IKE only
def test_charon_rekeys_the_child_sa(world: World, enclave_ike: Callable[..., procs.Daemon],
                                    charon: Callable[..., Charon], client_key: ec.EllipticCurvePrivateKey) -> None:
    server = enclave_ike()
    client = charon(raw_key_config(world, client_key))
    client.initiate(CONN)
    before = child_sas(client.wait_established(CONN))[0]
    client.swanctl("--rekey", "--child", CONN)
    server.wait_for_log(rf"Child SA rekeyed under IKE SA .*: old in 0x{before['spi-out']} out 0x{before['spi-in']}; "
                        r"new in 0x(\S+)", timeout=10.0)
    deadline = time.monotonic() + 10.0
    children = [before]
    while time.monotonic() < deadline:
        sa = client.established(CONN)
        children = child_sas(sa) if sa else []
        if [child["spi-in"] for child in children if child["state"] == "INSTALLED"] not in ([], [before["spi-in"]]):
            break
        time.sleep(0.1)
    installed = [child for child in children if child["state"] == "INSTALLED"]
    assert len(installed) == 1 and installed[0]["spi-in"] != before["spi-in"], children


def test_dns_answered_over_charon_esp(world: World, enclave_ike: Callable[..., procs.Daemon],
                                      charon: Callable[..., Charon], client_key: ec.EllipticCurvePrivateKey,
                                      capture: Callable[..., Capture]) -> None:
    """Needs ESP in the kernel (the VM): charon's Child SA (kernel-netlink) and enclave-ike's carry DNS to unbound."""
    wire = capture(world.router, world.router.interface_to(world.client).ifname)
    server = enclave_ike(apply="kernel")
    config = raw_key_config(world, client_key)
    client = charon(CharonConfig(config.connections, config.files, kernel_sas=True))
    client.initiate(CONN)
    sa = client.wait_established(CONN)
    assert [child["state"] for child in child_sas(sa)] == ["INSTALLED"], sa
    server.wait_for_log(r"Child SA established", timeout=5.0)
    assert "apply: " not in server.log_text(), "enclave-ike could not install the Child SA"
    for host in (world.client, world.resolver):
        states = world.topo.run(host, ["ip", "xfrm", "state"]).stdout
        assert "proto esp" in states, (host.name, states)
    answers = [query(world.topo, world.client, RESOLVER, timeout=5.0) for _ in range(10)]
    time.sleep(0.2)
    wire.stop()
    counts = wire.count(world.client.addresses()).peer(RESOLVER)
    assert [a.answered for a in answers] == [True] * len(answers)
    assert counts.esp_out >= len(answers) and counts.esp_in >= len(answers), counts
    assert counts.plaintext_dns == 0, counts
