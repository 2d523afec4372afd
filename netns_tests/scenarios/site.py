"""A small site for ikectl scenario tests: a client running the real `ikectl`, a router whose client-facing
interface is captured (the wire), and resolvers the test builds behind the router."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netns_tests.conftest import IKECTL
from netns_tests.harness.capture import Capture
from netns_tests.harness.dnsclient import Answer, query
from netns_tests.harness.topology import Host, Topology


@dataclass
class Site:
    topo: Topology
    client: Host
    router: Host
    capture: Capture
    config: Path
    former_addresses: set[str] = field(default_factory=set)  # the client's, before an address change

    def write_config(self, text: str) -> None:
        self.config.write_text(text)

    def ikectl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.topo.run(self.client, [str(IKECTL), "--config", str(self.config), *args], check=False,
                             timeout=120)

    def up(self) -> None:
        proc = self.ikectl("up")
        assert proc.returncode == 0, proc.stderr

    def status(self) -> dict[str, dict[str, Any]]:
        proc = self.ikectl("status", "--json")
        assert proc.returncode == 0, proc.stderr
        document = json.loads(proc.stdout)
        assert document["version"] == 1
        return {r["address"]: r for r in document["resolvers"]}

    def query(self, server: str, **kwargs: Any) -> Answer:
        return query(self.topo, self.client, server, **kwargs)

    def queries_for(self, server: str, seconds: float, **kwargs: Any) -> list[Answer]:
        """Queries one after another for `seconds`, each given `timeout` (default 2 s) to be answered."""
        answers = []
        deadline = time.monotonic() + seconds
        kwargs.setdefault("timeout", 2.0)
        while time.monotonic() < deadline:
            answers.append(self.query(server, **kwargs))
        return answers

    def diagnosis(self, run_dir: Path) -> str:
        """For a failed assertion: `ikectl status`, the client's XFRM policies and SAs, the ends of the logs of
        ikectl's pluto and supervisor."""
        parts = [self.ikectl("status").stdout.strip()]
        for what in (["policy"], ["state"]):
            parts.append(self.topo.run(self.client, ["ip", "xfrm", *what], check=False).stdout.strip())
        for log in ("pluto.log", "supervisor.log"):
            path = run_dir / log
            text = path.read_text(errors="replace").splitlines()[-40:] if path.exists() else ["(none)"]
            parts.append(f"the end of {path}:\n" + "\n".join(text))
        return "\n".join(parts)

    def plaintext(self, peers: Iterable[str]) -> dict[str, int]:
        """Stop the capture; plaintext port-53 packets between the client and each peer, both directions."""
        time.sleep(0.3)  # let the last packets reach the capture file
        self.capture.stop()
        count = self.capture.count({*map(str, self.client.addresses()), *self.former_addresses})
        return {peer: count.peer(peer).plaintext_dns for peer in peers} | {"all": count.plaintext_dns}


def build_site(topology: Topology, capture: Any, config: Path, client_v4: str = "10.79.1.0/24",
               client_v6: str | None = "fd79:1::/64") -> Site:
    client, router = topology.add_host("client"), topology.add_router("router")
    topology.link(client, router, client_v4, client_v6)
    topology.default_route(client, router)
    wire = capture(router, router.interface_to(client).ifname)
    return Site(topology, client, router, wire, config)


def add_resolver(site: Site, name: str, subnet4: str, subnet6: str | None = None) -> Host:
    """A resolver host behind the router at .53 (and ::53) of its subnets."""
    host = site.topo.add_host(name)
    site.topo.link(host, site.router, subnet4, subnet6, hosts=(53, 1))
    site.topo.default_route(host, site.router)
    return host
