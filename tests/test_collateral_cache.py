"""`enclave-ike collateral`: the cache of Intel's TDX collateral the evidence endpoint serves. Real Intel documents
(expired in 2023) import with warnings that say so; documents of a test PKI in Intel's place import under its root;
every refused import (a flipped signature, another root, another FMSPC, a missing file, garbage JSON, a truncated
CRL) is one line with its exit status and leaves the set before it as it was; `show` dates every document; `fetch`
gets a set from a PCS on 127.0.0.1 (the issuer chains URL-encoded in headers, as Intel's PCS sends them), imports
it or writes it for an import elsewhere, and says clearly what a 404, a silent server or a bad header was."""

from __future__ import annotations

import http.server
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote as urlquote

import pytest
from attestation_vectors import SNP, TDX
from cryptography.hazmat.primitives import serialization

from enclave_ike import cli
from enclave_ike import collateral as co
from enclave_ike import collateral_store as store
from enclave_ike import config as cfg
from ikecommon.attestation.envelope import Envelope, Evidence, EvidenceKind
from netns_tests.harness.fake_intel import FakeIntel, dated, real_qe_identity, up_to_date_tcb_info

FMSPC = "50806f000000"  # the real quote's platform; FakeIntel's PCK certificate carries the same extension
NOW = datetime.now(UTC)
DAY = timedelta(days=1)
REAL = {co.TCB_INFO: TDX / "tdx_tcbinfo_v3_fmspc_50806f000000.json", co.QE_IDENTITY: TDX / "tdx_qe_identity_v2.json",
        co.SIGNING_CHAIN: TDX / "intel_tcb_signing_chain.pem", co.PCK_CRL: TDX / "intel_pck_platform_crl.der",
        co.ROOT_CRL: TDX / "intel_sgx_root_ca_crl.der"}


def current(pki: FakeIntel, next_update: datetime = NOW + 20 * DAY) -> dict[str, bytes]:
    """FakeIntel's set, issued ten days ago, due at `next_update`."""
    issued = NOW - 10 * DAY
    return pki.documents(tcb_info=dated(up_to_date_tcb_info(), issued, next_update),
                         qe_identity=dated(real_qe_identity(), issued, next_update),
                         crls=(pki.crl(pki.ca, last_update=issued, next_update=next_update),
                               pki.crl(pki.root, last_update=issued, next_update=next_update)))


def pem(*certs) -> bytes:
    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in certs)


def write_dir(path: Path, documents: dict[str, bytes]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, data in documents.items():
        (path / name).write_bytes(data)
    return path


def read_dir(path: Path) -> dict[str, bytes]:
    return {child.name: child.read_bytes() for child in sorted(path.iterdir())}


class Site:
    """A config with its own cache, trusting `root_pem`; `run(...)` is `enclave-ike collateral ...` with it."""

    def __init__(self, tmp_path: Path, root_pem: bytes, capsys: pytest.CaptureFixture[str]) -> None:
        self.tmp_path, self.capsys = tmp_path, capsys
        self.cache = tmp_path / "cache"
        (tmp_path / "root.pem").write_bytes(root_pem)
        self.config = tmp_path / "enclave-ike.toml"
        self.config.write_text(f'[listen]\naddresses = ["127.0.0.1"]\n\n[evidence]\ncollateral_dir = "{self.cache}"\n'
                               f'intel_root = "{tmp_path / "root.pem"}"\n')

    def run(self, *argv: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = cli.main(["collateral", *argv, "--config", str(self.config)])
        out, err = self.capsys.readouterr()
        return code, out, err

    @property
    def set_dir(self) -> Path:
        return self.cache / "tdx" / FMSPC

    def kept(self) -> dict[str, bytes]:
        return read_dir(self.set_dir)


@pytest.fixture(scope="module")
def pki() -> FakeIntel:
    return FakeIntel()


@pytest.fixture
def site(tmp_path, capsys, pki) -> Site:
    return Site(tmp_path, pki.root_pem(), capsys)


def test_the_real_vectors_import_under_intels_root_and_their_expiry_is_said(tmp_path, capsys):
    real = Site(tmp_path, (TDX / "intel_sgx_root_ca.pem").read_bytes(), capsys)
    source = write_dir(tmp_path / "from-pcs", {name: path.read_bytes() for name, path in REAL.items()})
    code, out, err = real.run("import", str(source))
    assert code == 0, err
    assert out.startswith(f"imported FMSPC {FMSPC} into {real.set_dir}: tcbEvaluationDataNumber 15; first to expire: "
                          "qe-identity.json nextUpdate 2023-07-08, expired ") and out.count("\n") == 1
    assert re.search(r"warning: tcb-info\.json nextUpdate 2023-07-18T08:42:58Z: expired \d+ days ago", err)
    for expired in ("qe-identity.json nextUpdate", "pck-crl.der nextUpdate", "root-ca-crl.der nextUpdate",
                    "tcb-signing-chain.pem: Intel SGX TCB Signing notAfter 2025-05-21T10:50:10Z: expired"):
        assert f"enclave-ike: warning: {expired}" in err
    assert "pck-crl.der: signature not checked" in err  # five files carry no PCK CA: said, not skipped silently
    assert real.kept() == read_dir(source)  # byte for byte, as Intel served them
    # With Intel's PCK CRL issuer chain beside them, that CRL is checked too.
    (source / co.PCK_CRL_CHAIN).write_bytes((TDX / "intel_pck_crl_issuer_chain.pem").read_bytes())
    code, _, err = real.run("import", str(source))
    assert code == 0 and "signature not checked" not in err and real.kept() == read_dir(source)


def test_fake_intel_documents_import_under_its_root_and_show_dates_them(site, pki):
    code, out, err = site.run("import", str(write_dir(site.tmp_path / "set", current(pki))))
    assert code == 0, err
    assert "expired" not in err and "valid 19 more days" in out
    code, out, err = site.run("show")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == f"{FMSPC}  tcbEvaluationDataNumber 15"
    for line, name in zip(lines[1:5], (co.TCB_INFO, co.QE_IDENTITY, co.PCK_CRL, co.ROOT_CRL), strict=True):
        assert line.startswith(f"  {name}") and "issueDate " in line and line.endswith("valid 19 more days")
    assert lines[5].startswith("  first to expire:  ") and lines[5].endswith("valid 19 more days")
    # A second platform, already past its date: listed, in order, with how long ago.
    other = json.loads(json.dumps(up_to_date_tcb_info()))
    other["fmspc"] = "00906ed50000"
    stale = current(pki, NOW - 3 * DAY)
    stale[co.TCB_INFO] = pki.signed_json("tcbInfo", dated(other, NOW - 40 * DAY, NOW - 3 * DAY))
    assert site.run("import", str(write_dir(site.tmp_path / "stale", stale)))[0] == 0
    code, out, _ = site.run("show")
    assert out.splitlines()[0] == "00906ed50000  tcbEvaluationDataNumber 15"
    assert "expired 3 days ago" in out and out.splitlines()[6] == f"{FMSPC}  tcbEvaluationDataNumber 15"


def test_show_with_nothing_cached_and_with_a_broken_set(site, pki):
    code, out, _ = site.run("show")
    assert code == 0
    assert out == (f"no TDX collateral in {site.cache / 'tdx'} (enclave-ike collateral import DIR, or fetch)\n"
                   f"no SEV-SNP certificates in {site.cache / 'snp'} (enclave-ike collateral import-vcek FILE..., or "
                   "fetch-vcek)\n")
    write_dir(site.set_dir, {**current(pki), co.QE_IDENTITY: b"{"})  # planted by hand, not imported
    code, out, _ = site.run("show")
    assert code == 1 and out.startswith(f"{FMSPC}  unusable: {site.set_dir / co.QE_IDENTITY}: qe_identity")


def flip_signature(document: bytes) -> bytes:
    head, signature = document.rsplit(b'"signature":"', 1)
    return head + b'"signature":"' + (b"0" if signature[:1] != b"0" else b"1") + signature[1:]


def other_pki_documents(pki: FakeIntel) -> dict[str, bytes]:
    return current(FakeIntel())


REFUSED: list[tuple[str, Callable[[FakeIntel, dict[str, bytes]], dict[str, bytes]], tuple[str, ...], int, str]] = [
    ("signature flipped", lambda pki, d: {**d, co.TCB_INFO: flip_signature(d[co.TCB_INFO])}, (), 1,
     r"set/tcb-info\.json: signature: not made by the TCB signing key \(Intel SGX TCB Signing in .*set/"
     r"tcb-signing-chain\.pem\)$"),
    ("QE identity signed by another key", lambda pki, d: {**d, co.QE_IDENTITY: pki.signed_json(
        "enclaveIdentity", real_qe_identity(), key=pki.ca_key)}, (), 1, r"set/qe-identity\.json: signature: not made"),
    ("signed by the PCK CA, not the TCB signing key", lambda pki, d: {
        **d, co.TCB_INFO: pki.signed_json("tcbInfo", up_to_date_tcb_info(), key=pki.ca_key),
        co.QE_IDENTITY: pki.signed_json("enclaveIdentity", real_qe_identity(), key=pki.ca_key),
        co.SIGNING_CHAIN: pem(pki.ca, pki.root)}, (), 1,
     r"set/tcb-signing-chain\.pem: tcb_signer\.subject: expected the common name 'Intel SGX TCB Signing', got "
     r"CN=Test SGX PCK Platform CA"),
    ("chain to another root", lambda pki, d: other_pki_documents(pki), (), 1,
     r"set/tcb-signing-chain\.pem: root: expected the configured root CN=Test SGX Root CA,O=enclave-ike tests "
     r"\(sha256 "),
    ("signer not issued by the root", lambda pki, d: {**d, co.SIGNING_CHAIN: pem(FakeIntel().tcb_signer)}, (), 1,
     r"set/tcb-signing-chain\.pem: tcb_signer\.signature: expected a valid signature by CN=Test SGX Root CA"),
    ("root CRL by another root", lambda pki, d: {**d, co.ROOT_CRL: other_pki_documents(pki)[co.ROOT_CRL]}, (), 1,
     r"set/root-ca-crl\.der: signature: not made by the configured root"),
    ("PCK CRL chain under another root", lambda pki, d: {**d, co.PCK_CRL_CHAIN: pem(FakeIntel().ca)}, (), 1,
     r"set/pck-crl-issuer-chain\.pem: pck_ca\.signature: expected a valid signature by CN=Test SGX Root CA"),
    ("PCK CRL not the chain's CA's", lambda pki, d: {**d, co.PCK_CRL_CHAIN: pem(pki.ca, pki.root),
                                                     co.PCK_CRL: other_pki_documents(pki)[co.PCK_CRL]}, (), 1,
     r"set/pck-crl\.der: signature: not made by the PCK CA of .*set/pck-crl-issuer-chain\.pem"),
    ("FMSPC not the one given", lambda pki, d: d, ("--fmspc", "00906ed50000"), 2,
     r"set/tcb-info\.json: tcbInfo\.fmspc: expected 00906ed50000, got 50806f000000$"),
    ("bad --fmspc", lambda pki, d: d, ("--fmspc", "50806f"), 2, r"^--fmspc '50806f': expected an FMSPC"),
    ("missing file", lambda pki, d: {k: v for k, v in d.items() if k != co.PCK_CRL}, (), 2,
     r"set/pck-crl\.der: missing \(a set is tcb-info\.json, qe-identity\.json, tcb-signing-chain\.pem, pck-crl\.der, "
     r"root-ca-crl\.der\)$"),
    ("garbage JSON", lambda pki, d: {**d, co.QE_IDENTITY: b'{"enclaveIdentity": [1, 2'}, (), 2,
     r"set/qe-identity\.json: qe_identity at offset \d+: not JSON"),
    ("an SGX TCB info", lambda pki, d: {**d, co.TCB_INFO: pki.signed_json("tcbInfo", {**up_to_date_tcb_info(),
                                                                                     "id": "SGX"})}, (), 2,
     r"set/tcb-info\.json: tcbInfo\.id: expected 'TDX' \(TDX\), got 'SGX'$"),
    ("a TCB info of version 2", lambda pki, d: {**d, co.TCB_INFO: pki.signed_json("tcbInfo", {
        **up_to_date_tcb_info(), "version": 2})}, (), 2, r"set/tcb-info\.json: tcbInfo\.version: expected 3, got 2$"),
    ("a QE identity of version 1", lambda pki, d: {**d, co.QE_IDENTITY: pki.signed_json("enclaveIdentity", {
        **real_qe_identity(), "version": 1})}, (), 2,
     r"set/qe-identity\.json: enclaveIdentity\.version: expected 2, got 1$"),
    ("truncated DER", lambda pki, d: {**d, co.ROOT_CRL: d[co.ROOT_CRL][:-7]}, (), 2,
     r"set/root-ca-crl\.der: root_ca_crl: not a DER CRL"),
    ("the root CRL as the PCK CRL", lambda pki, d: {**d, co.PCK_CRL: d[co.ROOT_CRL]}, (), 2,
     r"set/pck-crl\.der: issuer: the root CA's, expected a PCK CA's"),
    ("a file too big", lambda pki, d: {**d, co.SIGNING_CHAIN: d[co.SIGNING_CHAIN] * 20}, (), 2,
     r"set/tcb-signing-chain\.pem: more than the 16384 bytes a client accepts$"),
]


@pytest.mark.parametrize(("change", "options", "code", "error"), [case[1:] for case in REFUSED],
                         ids=[case[0] for case in REFUSED])
def test_a_refused_import_is_one_line_and_keeps_the_set_it_had(site, pki, change, options, code, error):
    assert site.run("import", str(write_dir(site.tmp_path / "first", current(pki))))[0] == 0
    before = site.kept()
    refused, out, err = site.run("import", str(write_dir(site.tmp_path / "set", change(pki, current(pki)))), *options)
    assert (refused, out) == (code, "") and err.count("\n") == 1, err
    assert err.startswith("enclave-ike: ") and re.search(error, err.removeprefix("enclave-ike: ").strip()), err
    assert site.kept() == before
    assert sorted(p.name for p in (site.cache / "tdx").iterdir()) == [FMSPC]  # no temporary directory left


@pytest.mark.parametrize("plant", ["directory", "fifo"])
def test_something_not_a_regular_file_in_the_set_is_one_line_and_changes_nothing(site, pki, plant):
    assert site.run("import", str(write_dir(site.tmp_path / "first", current(pki))))[0] == 0
    before = site.kept()
    source = write_dir(site.tmp_path / "set", {k: v for k, v in current(pki).items() if k != co.TCB_INFO})
    (source / co.TCB_INFO).mkdir() if plant == "directory" else os.mkfifo(source / co.TCB_INFO)
    code, out, err = site.run("import", str(source), "--fmspc", FMSPC)
    assert (code, out, err) == (2, "", f"enclave-ike: {source / co.TCB_INFO}: not a regular file\n")
    assert site.kept() == before
    # Planted in the cache by hand: show names it and exits 1.
    (site.set_dir / co.QE_IDENTITY).unlink()
    (site.set_dir / co.QE_IDENTITY).mkdir()
    code, out, _ = site.run("show")
    assert code == 1 and f"{FMSPC}  unusable: {site.set_dir / co.QE_IDENTITY}: not a regular file" in out


def test_a_directory_named_after_another_fmspc_is_refused(site, pki):
    code, _, err = site.run("import", str(write_dir(site.tmp_path / "00906ed50000", current(pki))))
    assert code == 2 and "tcbInfo.fmspc: expected 00906ed50000, got 50806f000000" in err
    assert not (site.cache / "tdx").exists() or not any((site.cache / "tdx").iterdir())


def test_a_missing_directory_root_or_config_is_exit_2(site, pki, tmp_path):
    assert site.run("import", str(tmp_path / "nowhere"))[:2] == (2, "")
    (tmp_path / "root.pem").write_bytes(b"not a certificate")
    code, _, err = site.run("import", str(write_dir(tmp_path / "set", current(pki))))
    assert code == 2 and err.startswith("enclave-ike: evidence.intel_root: ")
    code = cli.main(["collateral", "show", "--config", str(tmp_path / "absent.toml")])
    assert code == 2


def test_the_cache_swaps_sets_whole_even_without_renameat2(site, pki, monkeypatch):
    first, second = current(pki), current(pki, NOW + 40 * DAY)
    assert site.run("import", str(write_dir(site.tmp_path / "a", first)))[0] == 0
    assert site.kept() == first
    monkeypatch.setattr(store, "_exchange", lambda a, b: False)  # a filesystem without RENAME_EXCHANGE
    assert site.run("import", str(write_dir(site.tmp_path / "b", second)))[0] == 0
    assert site.kept() == second and sorted(p.name for p in (site.cache / "tdx").iterdir()) == [
        f".{FMSPC}.replaced-set", FMSPC]  # the set replaced, kept for a reader until the next import
    assert read_dir(store.replaced_dir(site.set_dir)) == first
    with_chain = {**second, co.PCK_CRL_CHAIN: pem(pki.ca, pki.root)}
    monkeypatch.undo()
    assert site.run("import", str(write_dir(site.tmp_path / "c", with_chain)))[0] == 0
    assert site.kept() == with_chain
    assert site.run("import", str(write_dir(site.tmp_path / "d", first)))[0] == 0
    assert site.kept() == first  # the optional file of the set before does not linger


@pytest.mark.parametrize("imports", [1, 2, 5])
def test_a_read_that_imports_overtake_still_gets_one_whole_set(site, pki, monkeypatch, imports):
    """The endpoint opens the set's directory, imports swap other sets in (and remove the ones they replaced), then
    it reads the files: every file is there, all from one set."""
    sets = [current(pki, NOW + (20 + i) * DAY) for i in range(imports + 1)]
    store.install(sets[0], site.set_dir)
    read = store._read
    overtaken = []

    def read_late(dir_fd: int, directory: Path, name: str) -> bytes | None:
        if not overtaken:
            overtaken.append(name)
            for documents in sets[1:]:
                store.install(documents, site.set_dir)
        return read(dir_fd, directory, name)

    monkeypatch.setattr(store, "_read", read_late)
    got = store.read_documents(site.set_dir)
    assert overtaken and got in sets
    assert sorted(p.name for p in (site.cache / "tdx").iterdir()) == [f".{FMSPC}.replaced-set", FMSPC]


def test_imports_while_the_endpoint_reads_never_leave_a_quote_without_collateral(tmp_path, pki, monkeypatch):
    monkeypatch.setattr(store.os, "fsync", lambda fd: None)  # the race, not the disk: 200 imports in a second or two
    served = store.ServedCollateral(tmp_path, pki.root)
    platform = co.platform_of(pki.quote())
    sets = [current(pki), current(pki, NOW + 30 * DAY)]
    store.install(sets[0], store.set_dir(tmp_path, platform.fmspc))
    stop, reads, problems = threading.Event(), [0, 0], []

    def serve() -> None:
        while not stop.is_set():
            found = served.for_platform(platform, NOW)
            if found.collateral is None or found.problem is not None:
                problems.append(found.problem)
            reads[0] += 1

    def read() -> None:
        while not stop.is_set():
            try:
                assert store.read_documents(store.set_dir(tmp_path, platform.fmspc)) in sets
            except co.CollateralError as exc:
                problems.append(str(exc))
            reads[1] += 1

    readers = [threading.Thread(target=serve), threading.Thread(target=serve), threading.Thread(target=read)]
    for thread in readers:
        thread.start()
    try:
        for i in range(200):
            store.install(sets[i % 2], store.set_dir(tmp_path, platform.fmspc))
    finally:
        stop.set()
        for thread in readers:
            thread.join()
    assert problems == [] and min(reads) > 0


def test_a_cache_that_cannot_be_written_is_exit_1(site, pki, tmp_path):
    site.cache.write_text("a file where the cache should be")
    code, _, err = site.run("import", str(write_dir(tmp_path / "set", current(pki))))
    assert code == 1 and err.startswith(f"enclave-ike: {site.cache}") and err.count("\n") == 1


def test_collateral_config_keys(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[listen]\naddresses = ["127.0.0.1"]\n')
    evidence = cfg.load(path).evidence
    assert evidence.collateral_dir == Path("/var/lib/enclave-ike/collateral") and evidence.intel_root is None
    for line, words in (('collateral_dir = "cache"', "evidence.collateral_dir: 'cache' must be an absolute path"),
                        ("intel_root = 1", "evidence.intel_root: expected a string"),
                        ('intel_root = "root.pem"', "evidence.intel_root: 'root.pem' must be an absolute path")):
        path.write_text(f'[listen]\naddresses = ["127.0.0.1"]\n[evidence]\n{line}\n')
        with pytest.raises(cfg.ConfigError, match=re.escape(words)):
            cfg.load(path)


# --- the platform's FMSPC ---

def test_fmspc_from_a_quote_file_or_an_envelope(site, pki, tmp_path):
    quote = tmp_path / "quote.dat"
    quote.write_bytes(pki.quote())
    assert site.run("fmspc", "--quote", str(quote))[:2] == (0, f"{FMSPC} platform\n")
    envelope = tmp_path / "envelope.json"
    key = pki.leaf.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    envelope.write_bytes(Envelope(Evidence(EvidenceKind.TDX, (TDX / "tdx_quote_v5_td15.dat").read_bytes()), key,
                                  bytes(32)).encode())
    assert site.run("fmspc", "--quote", str(envelope))[:2] == (0, "90c06f000000 platform\n")
    quote.write_bytes(b"\x04\x00" + bytes(40))
    code, _, err = site.run("fmspc", "--quote", str(quote))
    assert code == 2 and err.startswith(f"enclave-ike: {quote}: ") and err.count("\n") == 1
    report = SNP / "snp_report_milan.bin"  # the other TEE's evidence is named for what it is, not "SGX"
    for command in ("fmspc", "fetch"):
        code, out, err = site.run(command, "--quote", str(report))
        assert (code, out, err) == (2, "", f"enclave-ike: {report}: an SEV-SNP report, not a TDX quote: use "
                                           f"`enclave-ike collateral snp-id --report {report}` (and fetch-vcek)\n")


# --- fetch, from a PCS on 127.0.0.1 ---

Route = tuple[int, bytes, dict[str, str]]
DRIP, CUT = "X-Test-Drip", "X-Test-Cut"


@contextmanager
def fake_pcs(routes: dict[str, Route], delay: float = 0.0) -> Iterator[tuple[str, list[str]]]:
    """A PCS on 127.0.0.1 answering path?query with (status, body, headers); yields its URL and the requests seen.
    Two headers are not sent but act: DRIP (seconds) sends the body a byte at a time, that long apart; CUT (a byte
    count) closes the connection after that much of the body, under the whole body's Content-Length."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            time.sleep(delay)
            status, body, headers = routes.get(self.path, (404, b"", {"Error-Message": "no such thing"}))
            headers = dict(headers)
            drip, cut = float(headers.pop(DRIP, 0)), int(headers.pop(CUT, len(body)))
            self.send_response(status)
            for name, value in {"Content-Length": str(len(body)), **headers}.items():
                self.send_header(name, value)
            self.end_headers()
            try:
                for at in range(0, cut, 1 if drip else max(cut, 1)):
                    self.wfile.write(body[at:at + 1] if drip else body[:cut])
                    self.wfile.flush()
                    time.sleep(drip)
            except OSError:
                pass  # the client gave up

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def pcs_routes(pki: FakeIntel, documents: dict[str, bytes], fmspc: str = FMSPC,
               ca: str = "platform") -> dict[str, Route]:
    """What Intel's PCS serves for these documents: the chains URL-encoded in headers, as it sends them."""
    return {
        f"/tdx/certification/v4/tcb?fmspc={fmspc}": (200, documents[co.TCB_INFO], {
            "Content-Type": "application/json", "TCB-Info-Issuer-Chain": urlquote(documents[co.SIGNING_CHAIN])}),
        "/tdx/certification/v4/qe/identity": (200, documents[co.QE_IDENTITY], {
            "SGX-Enclave-Identity-Issuer-Chain": urlquote(documents[co.SIGNING_CHAIN])}),
        f"/sgx/certification/v4/pckcrl?ca={ca}&encoding=der": (200, documents[co.PCK_CRL], {
            "SGX-PCK-CRL-Issuer-Chain": urlquote(pem(pki.ca, pki.root))}),
        "/IntelSGXRootCA.der": (200, documents[co.ROOT_CRL], {"Content-Type": "application/pkix-crl"}),
    }


def fetch_args(url: str, *more: str) -> tuple[str, ...]:
    return ("fetch", "--pcs-url", url, "--root-crl-url", f"{url}/IntelSGXRootCA.der", "--timeout", "2", *more)


def test_fetch_gets_a_set_from_the_pcs_checks_and_imports_it(site, pki):
    documents = current(pki)
    with fake_pcs(pcs_routes(pki, documents)) as (url, seen):
        code, out, err = site.run(*fetch_args(url, "--fmspc", FMSPC))
    assert code == 0, err
    assert err == "" and out.startswith(f"fetched FMSPC {FMSPC} into {site.set_dir}: tcbEvaluationDataNumber 15")
    assert seen == [f"/tdx/certification/v4/tcb?fmspc={FMSPC}", "/tdx/certification/v4/qe/identity",
                    "/sgx/certification/v4/pckcrl?ca=platform&encoding=der", "/IntelSGXRootCA.der"]
    assert site.kept() == {**documents, co.PCK_CRL_CHAIN: pem(pki.ca, pki.root)}


def test_fetch_out_writes_a_set_that_imports_elsewhere(site, pki, tmp_path):
    documents = current(pki)
    out_dir = tmp_path / "carry"
    quote = tmp_path / "quote.dat"
    quote.write_bytes(pki.quote())  # the FMSPC and PCK CA come from the platform's own quote
    with fake_pcs(pcs_routes(pki, documents)) as (url, _):
        code, out, err = site.run(*fetch_args(url, "--quote", str(quote), "--out", str(out_dir)))
    assert code == 0, err
    assert out.startswith(f"wrote FMSPC {FMSPC} to {out_dir} (import it with `enclave-ike collateral import "
                          f"{out_dir}`)")
    assert not site.cache.exists()  # nothing imported here
    assert read_dir(out_dir) == {**documents, co.PCK_CRL_CHAIN: pem(pki.ca, pki.root)}
    code, out, err = site.run("import", str(out_dir))
    assert code == 0 and "signature not checked" not in err and site.kept() == read_dir(out_dir)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    code, _, err = site.run(*fetch_args("http://127.0.0.1:9", "--fmspc", FMSPC, "--out", str(tmp_path / "busy")))
    assert code == 2 and "holds 'notes.txt', not a collateral set" in err


def test_fetch_serves_real_intel_documents_too(tmp_path, capsys):
    real = Site(tmp_path, (TDX / "intel_sgx_root_ca.pem").read_bytes(), capsys)
    documents = {name: path.read_bytes() for name, path in REAL.items()}
    routes = pcs_routes(FakeIntel.instance(), documents)
    routes["/sgx/certification/v4/pckcrl?ca=platform&encoding=der"] = (200, documents[co.PCK_CRL], {
        "SGX-PCK-CRL-Issuer-Chain": urlquote((TDX / "intel_pck_crl_issuer_chain.pem").read_bytes())})
    with fake_pcs(routes) as (url, _):
        code, _, err = real.run(*fetch_args(url, "--fmspc", FMSPC))
    assert code == 0 and "expired" in err and "signature not checked" not in err


def changed_route(path_part: str, change: Callable[[Route], Route]) -> Callable[[dict[str, Route]], dict[str, Route]]:
    def apply(routes: dict[str, Route]) -> dict[str, Route]:
        return {path: change(route) if path_part in path else route for path, route in routes.items()}
    return apply


FETCH_ERRORS = [
    ("404", lambda routes: {p: r for p, r in routes.items() if "qe/identity" not in p},
     r"/tdx/certification/v4/qe/identity: 404 Not Found \(no such thing\)$"),
    ("no chain header", changed_route("/tcb?", lambda r: (r[0], r[1], {})),
     r"/tcb\?fmspc=50806f000000: no TCB-Info-Issuer-Chain header in the answer$"),
    ("chain header not URL-encoded PEM", changed_route("/tcb?", lambda r: (r[0], r[1], {
        "TCB-Info-Issuer-Chain": "%ff%fe"})),
     r"TCB-Info-Issuer-Chain header: expected a URL-encoded PEM certificate chain$"),
    ("chain header of another root", changed_route("/tcb?", lambda r: (r[0], r[1], {
        "TCB-Info-Issuer-Chain": urlquote(pem(FakeIntel().tcb_signer, FakeIntel.instance().root))})),
     r"\(TCB-Info-Issuer-Chain header\): root: expected the configured root"),
    ("a body that is no CRL", changed_route("IntelSGXRootCA", lambda r: (200, b"<html>maintenance</html>", {})),
     r"/IntelSGXRootCA\.der: root_ca_crl: not a DER CRL"),
    ("another FMSPC's TCB info", changed_route("/tcb?", lambda r: (200, FakeIntel.instance().signed_json(
        "tcbInfo", {**up_to_date_tcb_info(), "fmspc": "00906ed50000"}), r[2])),
     r"tcbInfo\.fmspc: expected 50806f000000, got 00906ed50000$"),
]


@pytest.mark.parametrize(("change", "error"), [case[1:] for case in FETCH_ERRORS], ids=[c[0] for c in FETCH_ERRORS])
def test_a_failed_fetch_is_one_line_exit_1_and_changes_nothing(site, pki, change, error):
    documents = current(pki)
    assert site.run("import", str(write_dir(site.tmp_path / "first", documents)))[0] == 0
    before = site.kept()
    with fake_pcs(change(pcs_routes(pki, documents))) as (url, _):
        code, out, err = site.run(*fetch_args(url, "--fmspc", FMSPC))
    assert (code, out) == (1, "") and err.count("\n") == 1 and re.search(error, err.strip()), err
    assert site.kept() == before


def test_a_silent_pcs_and_a_closed_port_are_one_line(site, pki):
    with fake_pcs(pcs_routes(pki, current(pki)), delay=3.0) as (url, _):
        started = time.monotonic()
        code, _, err = site.run(*fetch_args(url, "--fmspc", FMSPC, "--timeout", "0.5"))
        assert time.monotonic() - started < 2.5
    assert code == 1 and err.strip().endswith(f"/tdx/certification/v4/tcb?fmspc={FMSPC}: no answer within 0.5 s")
    code, _, err = site.run(*fetch_args("http://127.0.0.1:9", "--fmspc", FMSPC))
    assert code == 1 and err.startswith("enclave-ike: http://127.0.0.1:9/tdx/certification/v4/tcb?fmspc=")
    code, _, err = site.run(*fetch_args("file:///etc", "--fmspc", FMSPC))
    assert code == 1 and "expected an https:// (or http://) URL" in err


def test_the_timeout_bounds_each_whole_request_and_a_short_body_is_incomplete(site, pki):
    """A PCS that sends a byte every 0.2 s never lets one read wait a whole --timeout: the timeout still ends it."""
    documents = current(pki)
    assert site.run("import", str(write_dir(site.tmp_path / "first", documents)))[0] == 0
    before = site.kept()
    tcb = f"/tdx/certification/v4/tcb?fmspc={FMSPC}"
    with fake_pcs(changed_route("/tcb?", lambda r: (r[0], r[1], {**r[2], DRIP: "0.2"}))(
            pcs_routes(pki, documents))) as (url, _):
        started = time.monotonic()
        code, out, err = site.run(*fetch_args(url, "--fmspc", FMSPC, "--timeout", "1"))
        took = time.monotonic() - started
    assert took < 2.0, took
    size = len(documents[co.TCB_INFO])
    late = rf"enclave-ike: {re.escape(url + tcb)}: no complete answer within 1 s \(\d of the {size} bytes\)"
    assert (code, out) == (1, "") and re.fullmatch(late + "\n", err), err
    with fake_pcs(changed_route("/tcb?", lambda r: (r[0], r[1], {**r[2], CUT: "10"}))(
            pcs_routes(pki, documents))) as (url, _):
        code, out, err = site.run(*fetch_args(url, "--fmspc", FMSPC))
    assert (code, out, err) == (1, "", f"enclave-ike: {url + tcb}: incomplete answer: 10 of the "
                                       f"{len(documents[co.TCB_INFO])} bytes its Content-Length announced\n")
    assert site.kept() == before


def test_without_intel_root_the_root_shipped_with_the_package_is_the_one(tmp_path, capsys, pki):
    config = tmp_path / "enclave-ike.toml"
    config.write_text(f'[listen]\naddresses = ["127.0.0.1"]\n[evidence]\ncollateral_dir = "{tmp_path / "cache"}"\n')
    real = write_dir(tmp_path / "real", {name: path.read_bytes() for name, path in REAL.items()})
    assert cli.main(["collateral", "import", str(real), "--config", str(config)]) == 0
    capsys.readouterr()
    assert cli.main(["collateral", "import", str(write_dir(tmp_path / "fake", current(pki))), "--config",
                     str(config)]) == 1
    assert "root: expected the configured root C=US,ST=CA,L=Santa Clara,O=Intel Corporation,CN=Intel SGX Root CA" \
        in capsys.readouterr().err
