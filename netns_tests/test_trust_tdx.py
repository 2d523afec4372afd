"""TDX attestation end to end: `ikectl trust add` against an enclave-ike whose `tsm` backend makes TDX quotes and
whose evidence endpoint serves the collateral the operator imported with `enclave-ike collateral import`.

    client 10.83.1.2 -- router (capture) -- resolver 10.83.2.53 (enclave-ike serve, tsm backend; evidence on
                                                                 tcp/4501; collateral cache; unbound)

No TDX hardware here: the tsm backend runs over a fake configfs-tsm (harness/tdx_guest.py) whose quotes come from a
test PKI in Intel's place (harness/fake_intel.py: the real Sapphire Rapids quote's body and QE report, re-signed, its
report data the one enclave-ike wrote). Everything else is the product: enclave-ike's endpoint, envelope and
collateral cache, ikectl's verifier, pin and trusted mode. The client trusts the test PKI's root through
`[trust] intel_root`, as a user would name Intel's; trusting it proves nothing.

On the host (no ESP needed): the key is pinned with current collateral; one day after the collateral's nextUpdate,
re-attestation fails without a grace and passes, with a note, with `collateral_grace_days = 2`; collateral signed
under another root is refused by `enclave-ike collateral import` and, planted in the cache by hand, by the client.
In the VM: the pinned TDX resolver carries DNS over ESP, 0 plaintext port-53 packets on the wire.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ikecommon import keys
from ikecommon.attestation.spec import MeasurementEntry, MeasurementSpec
from ikecommon.attestation.tdx import TdxQuote
from netns_tests.conftest import IKECTL
from netns_tests.harness import procs
from netns_tests.harness.capture import Capture
from netns_tests.harness.dnsclient import query
from netns_tests.harness.fake_intel import REAL_QUOTE, FakeIntel, dated, real_qe_identity, up_to_date_tcb_info
from netns_tests.harness.topology import Topology
from netns_tests.harness.unbound import Unbound
from netns_tests.scenarios.resolver_world import World, build_world

ROOT = Path(__file__).resolve().parents[1]
RESOLVER = "10.83.2.53"
RESOLVER_ID = "@resolver.tdx.example"
FMSPC = "50806f000000"  # the real quote's platform, in the PCK certificate the test PKI re-issues
DAY = timedelta(days=1)


@dataclass
class TdxWorld:
    world: World
    pki: FakeIntel
    now: datetime
    enclave_config: Path
    ikectl_config: Path
    spec: Path
    trust_dir: Path
    cache: Path

    @property
    def workdir(self) -> Path:
        return self.world.workdir

    def collateral(self, name: str, next_update: datetime, pki: FakeIntel | None = None) -> Path:
        """A directory as `enclave-ike collateral fetch --out` leaves it, due at `next_update`."""
        pki = pki or self.pki
        issued = self.now - 10 * DAY
        documents = pki.documents(tcb_info=dated(up_to_date_tcb_info(), issued, next_update),
                                  qe_identity=dated(real_qe_identity(), issued, next_update),
                                  crls=(pki.crl(pki.ca, last_update=issued, next_update=next_update),
                                        pki.crl(pki.root, last_update=issued, next_update=next_update)))
        directory = self.workdir / name
        directory.mkdir()
        for file, data in documents.items():
            (directory / file).write_bytes(data)
        return directory

    def enclave_ike(self, *args: str) -> Any:
        return self.world.topo.run(self.world.resolver, [sys.executable, "-m", "enclave_ike.cli", *args, "--config",
                                                         str(self.enclave_config)], check=False, timeout=180)

    def ikectl(self, *args: str) -> Any:
        return self.world.topo.run(self.world.client, [str(IKECTL), "--config", str(self.ikectl_config), *args],
                                   check=False, timeout=180)

    def set_grace(self, days: float) -> None:
        text = self.ikectl_config.read_text().split("collateral_grace_days")[0]
        self.ikectl_config.write_text(f"{text}collateral_grace_days = {days}\n")

    def published_key(self) -> keys.PinnedKey:
        return keys.parse(self.enclave_ike("identity", "--format", "libreswan").stdout.strip())

    def pin(self) -> dict[str, Any]:
        return dict(json.loads((self.trust_dir / "dns.json").read_text()))


def tdx_spec() -> MeasurementSpec:
    body = TdxQuote.parse(REAL_QUOTE).body
    return MeasurementSpec((MeasurementEntry("td-a", "dcap-tdx",
                                             tuple(enumerate((body.mr_td, *body.rtmrs)))),))


@pytest.fixture
def tdx(topology: Topology, tmp_path: Path, unbound: Callable[..., Unbound], run_dir: Path) -> Iterator[TdxWorld]:
    world = build_world(topology, tmp_path, unbound, "10.83")
    now = datetime.now(UTC)
    pki = FakeIntel(not_before=now - 30 * DAY, not_after=now + 365 * DAY)
    pki.save(tmp_path / "pki")
    cache = tmp_path / "collateral"
    enclave_config = tmp_path / "enclave-ike.toml"
    enclave_config.write_text(
        f'[listen]\naddresses = ["{RESOLVER}"]\n\n'
        f'[identity]\nbackend = "tsm"\nid = "{RESOLVER_ID}"\nauth = "signature"\n'
        f'publish = "{tmp_path / "identity.json"}"\n\n'
        '[apply]\nmode = "kernel"\n\n'
        f'[evidence]\nport = 4501\ncollateral_dir = "{cache}"\nintel_root = "{tmp_path / "pki" / "root.pem"}"\n')
    spec = tmp_path / "spec.json"
    spec.write_bytes(tdx_spec().encode())
    trust_dir = tmp_path / "trust"
    ikectl_config = tmp_path / "ikectl.toml"
    ikectl_config.write_text(f'mode = "trusted"\n[trusted]\nattested = "dns"\n[paths]\nrun_dir = "{run_dir}"\n'
                             f'trust_dir = "{trust_dir}"\n[trust]\nintel_root = "{tmp_path / "pki" / "root.pem"}"\n')
    yield TdxWorld(world, pki, now, enclave_config, ikectl_config, spec, trust_dir, cache)


@pytest.fixture
def serving(tdx: TdxWorld) -> Iterator[procs.Daemon]:
    """`enclave-ike serve` with the tsm backend over the fake configfs-tsm, after an import of current collateral."""
    imported = tdx.enclave_ike("collateral", "import", str(tdx.collateral("current", tdx.now + 20 * DAY)))
    assert imported.returncode == 0, imported.stderr
    daemon = procs.Daemon("enclave-ike@tdx", [sys.executable, "-m", "netns_tests.harness.tdx_guest",
                                               str(tdx.workdir / "pki"), "serve", "--config", str(tdx.enclave_config)],
                          tdx.workdir / "enclave-ike.log", netns=tdx.world.resolver.netns,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    daemon.start()
    try:
        daemon.wait_for_log(r"evidence endpoint on 10\.83\.2\.53:4501", timeout=120.0)
        daemon.wait_for_log(r"listening on ", timeout=120.0)  # imports take seconds under TCG
        yield daemon
    finally:
        daemon.stop()


@pytest.mark.host
def test_tdx_pin_follows_the_collateral_policy(tdx: TdxWorld, serving: procs.Daemon) -> None:
    # 1. Current collateral: every check passes, the key enclave-ike made is pinned.
    added = tdx.ikectl("trust", "add", "dns", "--resolver", RESOLVER, "--spec", str(tdx.spec))
    assert added.returncode == 0, added.stderr + serving.log_text()
    assert added.stdout.startswith(f"pinned dns: {RESOLVER} {RESOLVER_ID} ")
    assert "(tdx measurement td-a)" in added.stdout
    pin = tdx.pin()
    assert pin["key"] == tdx.published_key().libreswan and pin["result"] == "ok"
    assert pin["evidence_kind"] == "tdx"

    # 2. The operator imports collateral one day past its nextUpdate. Policy: no grace by default, so the
    # re-attestation fails, naming the documents; the pin is marked failed.
    stale = tdx.enclave_ike("collateral", "import", str(tdx.collateral("stale", tdx.now - DAY)))
    assert stale.returncode == 0, stale.stderr
    assert "expired" in stale.stdout + stale.stderr  # said at import, never silently
    refused = tdx.ikectl("trust", "verify", "dns")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "tcb_info.nextUpdate" in refused.stderr and "qe_identity.nextUpdate" in refused.stderr
    assert "pck_ca_crl.next_update" in refused.stderr
    assert tdx.pin()["result"] == "failed"

    # 3. With a two-day grace the same collateral passes, and the user is told why.
    tdx.set_grace(2)
    graced = tdx.ikectl("trust", "verify", "dns")
    assert graced.returncode == 0, graced.stdout + graced.stderr
    assert "past its nextUpdate" in graced.stderr and "by 1 day: accepted inside the 2 days grace" in graced.stderr
    assert tdx.pin()["result"] == "ok"

    # 4. Collateral under any root but the one trusted: `import` refuses it and keeps the set it had ...
    forger = FakeIntel(not_before=tdx.now - 30 * DAY, not_after=tdx.now + 365 * DAY)
    forged = tdx.collateral("forged", tdx.now + 20 * DAY, pki=forger)
    before = {path.name: path.read_bytes() for path in (tdx.cache / "tdx" / FMSPC).iterdir()}
    refused_import = tdx.enclave_ike("collateral", "import", str(forged))
    assert refused_import.returncode != 0 and "tcb-signing-chain.pem" in refused_import.stderr, refused_import.stderr
    assert {path.name: path.read_bytes() for path in (tdx.cache / "tdx" / FMSPC).iterdir()} == before
    # ... and planted in the cache by someone who controls the resolver's host, the client refuses it.
    for path in forged.iterdir():
        (tdx.cache / "tdx" / FMSPC / path.name).write_bytes(path.read_bytes())
    planted = tdx.ikectl("trust", "verify", "dns")
    assert planted.returncode == 1, planted.stdout + planted.stderr
    assert "tcb_signing_chain" in planted.stderr
    assert tdx.pin()["result"] == "failed"


def test_tdx_pinned_resolver_carries_dns_over_esp(tdx: TdxWorld, serving: procs.Daemon, capture) -> None:
    world = tdx.world
    world.topo.sysctl(world.client, "net.core.xfrm_larval_drop", "0")  # queue the query that triggers IKE
    wire: Capture = capture(world.router, world.router.interface_to(world.client).ifname)
    added = tdx.ikectl("trust", "add", "dns", "--resolver", RESOLVER, "--spec", str(tdx.spec))
    assert added.returncode == 0, added.stderr + serving.log_text()
    up = tdx.ikectl("up")
    assert up.returncode == 0, up.stderr
    try:
        assert query(world.topo, world.client, RESOLVER, timeout=20.0).answered, serving.log_text()
        assert all(query(world.topo, world.client, RESOLVER, timeout=5.0).answered for _ in range(4))
        assert "apply: " not in serving.log_text(), "enclave-ike could not install the Child SA"
    finally:
        tdx.ikectl("down")
    wire.stop()
    counts = wire.count(world.client.addresses()).peer(RESOLVER)
    assert counts.plaintext_dns == 0, counts
    assert counts.esp_out >= 5 and counts.esp_in >= 5, counts
