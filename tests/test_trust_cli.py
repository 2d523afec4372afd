"""`ikectl trust add|list|verify|remove` on the command line: quiet success, a NOT SECURE warning for sim evidence,
failures whose first stderr line is one sentence followed by every mismatch (exit 1), or by what makes the evidence
unsupported or malformed, bad arguments one line and exit 2, and nothing pinned when anything is wrong."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from attestation_vectors import TDX
from trust_servers import RESOLVER_ID, hostile_endpoint, port_of, running_endpoint, sim_spec

from enclave_ike.enclave.attest import attest
from enclave_ike.enclave.software import SoftwareEnclave
from ikecommon.attestation.envelope import Envelope, Evidence, EvidenceKind
from ikectl import cli, truststore

OTHER_BUILD = bytes(range(48))
QUOTE = (TDX / "tdx_quote_v4_spr_e4.dat").read_bytes()


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "ikectl.toml"
    path.write_text(f'[paths]\nrun_dir = "{tmp_path / "run"}"\ntrust_dir = "{tmp_path / "trust"}"\n')
    return path


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "spec.json"
    path.write_bytes(sim_spec().encode())
    return path


@pytest.fixture
def endpoint():
    with running_endpoint(SoftwareEnclave()) as running:
        yield running


def ikectl(config_file: Path, *args: str) -> int:
    return cli.main(["--config", str(config_file), "trust", *args])


def add_args(endpoint, spec_file, *extra: str) -> list[str]:
    return ["add", "home", "--resolver", "127.0.0.1", "--port", str(port_of(endpoint)), "--spec", str(spec_file),
            "--anchors", "sim", *extra]


def test_add_list_verify_remove(config_file, endpoint, spec_file, capsys, tmp_path):
    assert ikectl(config_file, *add_args(endpoint, spec_file)) == 0
    out, err = capsys.readouterr()
    assert err == ("ikectl: WARNING: sim evidence is NOT SECURE: its root's private key is public, anyone can make "
                   "it; for tests and demos only\n")
    assert out.startswith(f"pinned home: 127.0.0.1 {RESOLVER_ID} ecdsa key 0s")
    assert "(sim measurement sim-default)" in out
    assert (tmp_path / "trust" / "home.json").exists()
    assert ikectl(config_file, "list") == 0
    line = capsys.readouterr().out
    assert line.startswith(f"home  127.0.0.1  {RESOLVER_ID}  attested ") and "sim evidence: NOT SECURE" in line
    assert ikectl(config_file, "list", "--json") == 0
    document = json.loads(capsys.readouterr().out)
    assert document["version"] == 1 and document["pins"][0]["result"] == "ok"
    assert ikectl(config_file, "verify", "home") == 0
    assert capsys.readouterr().out == "home: attested\n"
    endpoint.enclave = SoftwareEnclave()
    assert ikectl(config_file, "verify", "home") == 0
    assert capsys.readouterr().out == "home: attested; a new key, now pinned\n"
    assert ikectl(config_file, "remove", "home") == 0
    assert capsys.readouterr() == ("", "")
    assert ikectl(config_file, "list") == 0
    assert capsys.readouterr().out.startswith("no pins")


def test_a_failed_attestation_lists_every_mismatch_and_pins_nothing(config_file, spec_file, capsys, tmp_path):
    with running_endpoint(SoftwareEnclave(registers=(OTHER_BUILD,))) as endpoint:
        code = ikectl(config_file, *add_args(endpoint, spec_file, "--id", "@other.example"))
    err = capsys.readouterr().err.splitlines()
    assert code == 1
    assert err[1] == ("ikectl: error: resolver 127.0.0.1 failed attestation (2 mismatches): nothing pinned")
    assert err[2].startswith("  spec[sim-default].measurements.0: expected ") and err[2].endswith(OTHER_BUILD.hex())
    assert err[3] == f"  identity.id: expected @other.example, got {RESOLVER_ID}"
    assert not (tmp_path / "trust" / "home.json").exists()


def test_verify_failure_is_exit_1_with_the_mismatches(config_file, endpoint, spec_file, capsys):
    assert ikectl(config_file, *add_args(endpoint, spec_file)) == 0
    capsys.readouterr()
    endpoint.enclave = SoftwareEnclave(registers=(OTHER_BUILD,))
    assert ikectl(config_file, "verify", "home") == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("ikectl: error: resolver 127.0.0.1 failed attestation (1 mismatch); pin 'home' marked "
                             "failed")
    assert err[1].startswith("  spec[sim-default].measurements.0: expected ")
    assert ikectl(config_file, "list") == 0
    assert "home  127.0.0.1" in (out := capsys.readouterr().out) and " FAILED " in out


@pytest.mark.parametrize("args", [
    ["add", "home", "--resolver", "not-an-ip", "--spec", "x", "--anchors", "sim"],
    ["add", "home", "--resolver", "127.0.0.1", "--spec", "/nonexistent.json", "--anchors", "sim"],
    ["add", "home", "--resolver", "127.0.0.1", "--spec", "http://example/spec", "--anchors", "sim"],
    ["add", "home", "--resolver", "127.0.0.1", "--spec", "x", "--port", "0", "--anchors", "sim"],
    ["add", "../evil", "--resolver", "127.0.0.1", "--spec", "x", "--anchors", "sim"],
    ["add", "home", "--resolver", "127.0.0.1", "--spec", "x", "--id", "has space", "--anchors", "sim"],
    ["verify", "absent"],
    ["remove", "absent"],
])
def test_bad_arguments_are_one_line_and_exit_2(config_file, capsys, args, tmp_path):
    assert ikectl(config_file, *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("ikectl: error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "trust" / "home.json").exists()


@pytest.mark.parametrize("args", [["add", "home"], ["add", "home", "--resolver", "127.0.0.1"], ["frobnicate"], [],
                                  ["add", "home", "--resolver", "1.2.3.4", "--spec", "x", "--anchors", "tpm"]])
def test_argparse_usage_errors_exit_2(config_file, args):
    with pytest.raises(SystemExit) as info:
        ikectl(config_file, *args)
    assert info.value.code == 2


def test_vendor_anchors_need_no_config_and_do_not_trust_sim_evidence(config_file, endpoint, spec_file, capsys,
                                                                     tmp_path):
    args = add_args(endpoint, spec_file)
    assert ikectl(config_file, *args[:-2]) == 1  # without --anchors sim: the default, vendor: the shipped roots
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "ikectl: error: resolver 127.0.0.1 failed attestation (1 mismatch): nothing pinned"
    assert err[1].startswith("  trust_anchors.sim_root: ")
    assert not (tmp_path / "trust" / "home.json").exists()


# --- evidence that cannot be judged: unsupported and malformed read differently from a mismatch ---

def _serving(evidence: bytes):
    """An endpoint answering an envelope holding this TDX quote (for whatever nonce) and the resolver's ID."""
    sim = attest(SoftwareEnclave(), bytes(32))
    body = Envelope(Evidence(EvidenceKind.TDX, evidence), sim.ike_key, sim.nonce).encode()
    identity = json.dumps({"version": 1, "id": RESOLVER_ID}).encode()
    return hostile_endpoint(lambda path, query: (200, identity if path == "/identity" else body))


@pytest.mark.parametrize(("evidence", "what", "detail"), [
    (b"\x06\x00" + QUOTE[2:], "unsupported evidence", "unsupported evidence: TDX quote version 6 (supported: 4, 5)"),
    (QUOTE[:100], "malformed evidence",
     "malformed evidence: tdx_quote.body.mr_seam at offset 64: needs 48 bytes, 36 remain"),
], ids=["unsupported", "malformed"])
def test_add_says_unsupported_or_malformed_evidence(config_file, spec_file, capsys, tmp_path, evidence, what, detail):
    with _serving(evidence) as port:
        code = ikectl(config_file, "add", "home", "--resolver", "127.0.0.1", "--port", str(port), "--spec",
                      str(spec_file), "--anchors", "sim")
    err = capsys.readouterr().err.splitlines()
    assert code == 1
    assert err[1:] == [f"ikectl: error: resolver 127.0.0.1 failed attestation ({what}): nothing pinned", f"  {detail}"]
    assert not (tmp_path / "trust" / "home.json").exists()


def test_verify_records_why_the_evidence_could_not_be_judged(config_file, endpoint, spec_file, capsys, tmp_path):
    assert ikectl(config_file, *add_args(endpoint, spec_file)) == 0
    capsys.readouterr()
    pin = truststore.load(tmp_path / "trust", "home")
    with _serving(b"\x06\x00" + QUOTE[2:]) as port:
        truststore.save(tmp_path / "trust", replace(pin, port=port))
        assert ikectl(config_file, "verify", "home") == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("ikectl: error: resolver 127.0.0.1 failed attestation (unsupported evidence); pin 'home' "
                             "marked failed")
    assert err[1] == "  unsupported evidence: TDX quote version 6 (supported: 4, 5)"
    failed = truststore.load(tmp_path / "trust", "home")
    assert (failed.result, failed.reason, failed.mismatches) == (
        "failed", "resolver 127.0.0.1 failed attestation (unsupported evidence): TDX quote version 6 (supported: "
                  "4, 5)", ())
