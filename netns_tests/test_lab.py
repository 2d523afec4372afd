"""The lab end to end (the README's main job): DNS over ESP to the coffee-shop resolver (pluto) and the trusted
resolver (enclave-ike serve, its key pinned) with 0 plaintext port-53 packets on the wire, clear DNS to the resolver
without IKE. Needs kernel ESP."""

from pathlib import Path

import pytest

from netns_tests.harness.procs import started_daemons
from netns_tests.lab import Lab, format_report, run_here


def test_lab_encrypts_dns_to_ike_resolvers_and_falls_back_to_clear(tmp_path: Path):
    report = run_here(tmp_path, queries=4, say=lambda message: None)
    text = format_report(report)
    print(text)
    by_name = {r.resolver.name: r for r in report.resolvers}
    for name in ("coffee", "trusted"):
        r = by_name[name]
        assert r.answered == 4, text
        assert r.ike_sas, text
        assert {sa.mode.name for sa in r.child_sas} == {"TUNNEL"}
        assert len(r.child_sas) == 2 and all(sa.counters.packets > 0 for sa in r.child_sas), text  # counters moved
        assert r.wire.esp >= 8, text
        assert r.wire.plaintext_dns == 0, text
    assert "NULL auth" in by_name["coffee"].ike_sas[0].method
    assert "ECDSA" in by_name["trusted"].ike_sas[0].method
    # the trusted resolver is enclave-ike: it logged the IKE SAs and Child SAs the client's pluto pinned
    ike_sas, child_sas = by_name["trusted"].responder_log or (0, 0)
    assert ike_sas >= 1 and child_sas >= 1, text
    assert by_name["coffee"].responder_log is None
    assert "trusted resolver 10.77.4.53 (enclave-ike serve, sim enclave)" in text
    plain = by_name["plain"]
    assert plain.answered == 4 and not plain.child_sas and not plain.ike_sas
    assert plain.wire.plaintext_dns_out >= 4 and plain.wire.plaintext_dns_in >= 4
    assert report.ok and "PASS" in text
    assert not any(d.running() for d in started_daemons())  # the lab tore its daemons down


@pytest.mark.host  # no query, no SA
def test_lab_builds_and_tears_down_without_queries(tmp_path: Path):
    with Lab(tmp_path, say=lambda message: None) as lab:
        namespaces = [h.netns for h in lab.hosts.values()]
        assert all(Path(f"/run/netns/{n}").exists() for n in namespaces)
        assert lab.trusted_server is not None and lab.trusted_server.running()
        assert lab.trusted_pin is not None and lab.trusted_pin.kind == "ecdsa"
        server = lab.trusted_server
    assert not any(Path(f"/run/netns/{n}").exists() for n in namespaces)
    assert not server.running()
