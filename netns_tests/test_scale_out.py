"""Scale-out: replicas of one resolver service share one attested identity key (enclave_ike/release).

    replica-1 10.81.1.2 --+
    replica-2 10.81.2.2 --+-- router
    replica-3 10.81.3.2 --+
    replica-4 10.81.4.2 --+     (another build: refused)

Real `enclave-ike serve` processes with the sim backend (the key in each one's sim enclave process), real sim
evidence checked against a spec, HPKE between them over TCP. IKE and ESP are not involved: these run on the host.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ikecommon.attestation.spec import MeasurementEntry, MeasurementSpec
from netns_tests.harness import procs
from netns_tests.harness.enclave_ike import LISTEN_TIMEOUT_S, config_text, signing_identity
from netns_tests.harness.topology import Host, Topology

SERVICE_ID = "@dns.service.example"
BUILD = bytes.fromhex("5e" * 48)
OTHER_BUILD = bytes.fromhex("0b" * 48)


@dataclass
class Replica:
    host: Host
    address: str
    workdir: Path

    def config(self, release: str, build: bytes = BUILD) -> str:
        identity = signing_identity(SERVICE_ID) + f'sim_registers = ["{build.hex()}"]\n'
        return config_text(self.address, identity=identity, workdir=self.workdir, apply="none",
                           extra=f"[evidence]\nenabled = false\n\n[metrics]\nenabled = false\n\n[release]\n"
                                 f'spec = "{self.workdir.parent / "spec.json"}"\nanchors = "sim"\n{release}')

    def published_key(self) -> str:
        return str(json.loads((self.workdir / "identity.json").read_text())["public_key_pem"])


@pytest.fixture
def replicas(topology: Topology, tmp_path: Path) -> list[Replica]:
    router = topology.add_router("router")
    found = []
    for number in range(1, 5):
        host = topology.add_host(f"replica{number}")
        topology.link(host, router, f"10.81.{number}.0/24", hosts=(2, 1))
        topology.default_route(host, router)
        workdir = tmp_path / f"replica{number}"
        workdir.mkdir()
        found.append(Replica(host, f"10.81.{number}.2", workdir))
    spec = MeasurementSpec((MeasurementEntry("resolver-build", "sim", ((0, BUILD),)),))
    (tmp_path / "spec.json").write_bytes(spec.encode())
    return found


@pytest.fixture
def start(replicas: list[Replica]) -> Iterator[object]:
    started: list[procs.Daemon] = []

    def run(replica: Replica, text: str, wait: str | None = r"listening on ") -> procs.Daemon:
        (replica.workdir / "enclave-ike.toml").write_text(text)
        argv = [sys.executable, "-m", "enclave_ike.cli", "serve", "--config", str(replica.workdir / "enclave-ike.toml")]
        daemon = procs.Daemon(f"enclave-ike@{replica.host.name}", argv, replica.workdir / "enclave-ike.log",
                              netns=replica.host.netns)
        started.append(daemon)
        daemon.start()
        if wait is not None:
            daemon.wait_for_log(wait, timeout=LISTEN_TIMEOUT_S)
        return daemon

    yield run
    for daemon in reversed(started):
        daemon.stop()


@pytest.mark.host
def test_replicas_obtain_the_first_ones_key_and_another_build_is_refused(replicas: list[Replica], start) -> None:
    first, second, third, other = replicas
    holder = start(first, first.config(f'listen = ["{first.address}"]\n'), r"key release endpoint on 10\.81\.1\.2:4502")
    joining = f'source = "peers"\npeers = ["{first.address}:4502"]\njoin_timeout_s = 20\n'
    for replica in (second, third):
        daemon = start(replica, replica.config(joining + f'listen = ["{replica.address}"]\n'))
        daemon.wait_for_log(r"identity key: the service key from 10\.81\.1\.2:4502 \(sim evidence matching "
                            r"'resolver-build'\)")
        assert replica.published_key() == first.published_key()
    assert len(re.findall(r"key release: granted the service key to 10\.81\.[23]\.2 \(sim evidence matching "
                          r"'resolver-build'\)", holder.log_text())) == 2

    refused = start(other, other.config(joining.replace("20", "3"), build=OTHER_BUILD), wait=None)
    procs.wait_until(lambda: not refused.running(), 60.0, "the other build's replica to give up")
    assert refused.stop() == 1
    said = refused.log_text()
    assert "key release from 10.81.1.2:4502 refused: the holder said 403 refused: the joiner's evidence does not " \
           "verify: spec[resolver-build].measurements.0: expected 5e5e" in said
    assert "replicas answered but none gave the key, so none is made here" in said
    assert "listening on" not in said and not (other.workdir / "identity.json").exists()
    holder.wait_for_log(r"key release to 10\.81\.4\.2 refused: the joiner's evidence does not verify: "
                        r"spec\[resolver-build\]\.measurements\.0: expected 5e5e[0-9a-f]* \(SIM0\), got 0b0b")
    assert "granted the service key to 10.81.4.2" not in holder.log_text()  # it asked each round; each refused


@pytest.mark.host
def test_alone_a_replica_exits_or_starts_a_new_key_as_told(replicas: list[Replica], start) -> None:
    """No peer answers (nothing listens there): `when_alone` decides, after `join_timeout_s`."""
    first, second = replicas[:2]
    alone = f'source = "peers"\npeers = ["{second.address}:4502"]\njoin_timeout_s = 2\n'
    exiting = start(first, first.config(alone), wait=None)
    procs.wait_until(lambda: not exiting.running(), 60.0, "the lone replica to exit")
    assert exiting.stop() == 1
    assert re.search(r"no replica gave the service key within 2 s \(10\.81\.2\.2:4502: .*refused.*\); with "
                     r'when_alone = "exit" no new key is made', exiting.log_text())
    founder = start(first, first.config(alone + 'when_alone = "new-key"\n'))
    assert "this replica starts the service's key (when_alone = \"new-key\")" in founder.log_text()
    assert "identity key: a new service key (no replica answered)" in founder.log_text()
