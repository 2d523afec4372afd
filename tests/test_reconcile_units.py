"""The pure parts of reconciling: whose an XFRM policy is (ikectl/policies.py), the nftables table's state from
nft's JSON (ikectl/nft.py), a process's state from /proc (ikectl/observe.py), and key files that are not text."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from ipaddress import ip_address
from pathlib import Path
from typing import ClassVar

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ikecommon import keys
from ikecommon.xfrm import Action, Direction, Policy, Selector, Template
from ikectl import backstop, daemon, nft, observe, policies, protect
from ikectl.state import StateStore

A = ip_address("192.0.2.53")
IKECTL = Path(sys.executable).parent / "ikectl"


def policy(src: str, dst: str, proto: int | str = 17, dport: int | None = 53, priority: int = 3457217,
           direction: Direction = Direction.OUT, templates: tuple[Template, ...] = (Template(),),
           action: Action = Action.ALLOW, sport: int | None = None) -> Policy:
    return Policy(Selector.of(src, dst, proto, sport=sport, dport=dport), direction, priority, action, templates)


@pytest.mark.parametrize(("found", "peer"), [
    (policy("10.0.0.1/32", "192.0.2.53/32"), A),  # a trap
    (policy("10.0.0.1/32", "192.0.2.53/32", dport=None, priority=0, templates=()), A),  # a clear fallback
    (policy("192.0.2.53/32", "10.0.0.1/32", dport=None, sport=53, direction=Direction.IN), A),  # an SA's in
    (policy("10.0.0.1/32", "192.0.2.53/32", proto=0, dport=None, priority=0, templates=()), None),  # whole host
    (policy("10.0.0.1/32", "192.0.2.0/24"), None),  # not one host
    (policy("10.0.0.1/32", "192.0.2.53/32", dport=80), None),  # not DNS
    (backstop.policies()[1], None),  # ours
])
def test_policies_of_plutos_kind_name_their_resolver(found, peer):
    assert policies.pluto_dns_peer(found) == peer


def test_leftovers_put_the_ways_out_in_clear_first():
    trap = policy("10.0.0.1/32", "192.0.2.53/32")
    fallback = policy("10.0.0.1/32", "192.0.2.53/32", dport=None, priority=0, templates=())
    other = policy("10.0.0.1/32", "198.51.100.1/32")
    assert policies.leftovers([trap, fallback, other], {A}) == [fallback, trap]
    assert policies.leftovers([trap, fallback], {A}, keep=lambda p: p is trap) == [fallback]


def test_leaks_are_clear_passes_for_dns_ahead_of_the_backstop():
    others = [policy("10.0.0.1/32", "0.0.0.0/0", proto=0, dport=None, priority=2801872, templates=()),
              policy("10.0.0.1/32", "192.0.2.53/32", proto=0, dport=None, priority=0, templates=())]
    harmless = [policy("10.0.0.1/32", "0.0.0.0/0", proto=0, dport=None, priority=3850497),  # via ESP
                policy("10.0.0.1/32", "0.0.0.0/0", proto=6, dport=80, templates=()),  # not DNS
                policy("10.0.0.1/32", "0.0.0.0/0", proto=17, priority=backstop.BLOCK_PRIORITY + 1, templates=()),
                *backstop.policies()]
    assert policies.leaks([*others, *harmless]) == others
    assert "dst 0.0.0.0/0 proto any dir out priority 2801872 allow" in policies.describe(others[0])


def nft_listing(drop: str | None = None, hook: str = "output", extra: dict[str, object] | None = None) -> str:
    items: list[dict[str, object]] = [{"metainfo": {"version": "1.0.6"}},
                                      {"table": {"family": "inet", "name": "ikectl", "handle": 5}}]
    for chain, rules in nft.RULES.items():
        items.append({"chain": {"family": "inet", "table": "ikectl", "name": chain, "type": "filter",
                                "hook": hook if chain == "out" else nft.HOOKS[chain], "prio": 0, "policy": "accept"}})
        items += [{"rule": {"family": "inet", "table": "ikectl", "chain": chain, "comment": comment, "expr": []}}
                  for comment in rules if comment != drop]
    return json.dumps({"nftables": items + ([extra] if extra else [])})


def test_the_nftables_table_is_whole_only_with_every_chain_and_rule():
    assert nft.state_of(nft_listing()) == nft.TableState.INTACT
    assert nft.state_of(nft_listing(drop="ikectl: udp/53 out without IPsec")) == nft.TableState.DAMAGED
    assert nft.state_of(nft_listing(hook="input")) == nft.TableState.DAMAGED
    # Another program's rule in ikectl's table (`nft insert rule inet ikectl out udp dport 53 accept`), or a chain.
    accept = {"rule": {"family": "inet", "table": "ikectl", "chain": "out", "expr": [{"accept": None}]}}
    assert nft.state_of(nft_listing(extra=accept)) == nft.TableState.DAMAGED
    twice = {"rule": {"family": "inet", "table": "ikectl", "chain": "out", "comment": "ikectl: loopback stubs"}}
    assert nft.state_of(nft_listing(extra=twice)) == nft.TableState.DAMAGED
    chain = {"chain": {"family": "inet", "table": "ikectl", "name": "early", "hook": "output", "prio": -400}}
    assert nft.state_of(nft_listing(extra=chain)) == nft.TableState.DAMAGED
    assert nft.state_of('{"nftables": [{"metainfo": {}}]}') == nft.TableState.ABSENT
    assert nft.state_of("not json") == nft.TableState.DAMAGED
    assert "rt ipsec missing" in nft.ruleset() and nft.ruleset().startswith("add table inet ikectl\ndelete table")


def test_a_process_state_is_read_past_a_name_with_parentheses(tmp_path, monkeypatch):
    found = observe.process(1)
    assert found is not None and not found.stopped
    real = Path.read_text

    def stat(self: Path, *args: object, **kwargs: object) -> str:
        if str(self) == "/proc/77/stat":
            return "77 (odd) name) T 1 77 77 0 -1"
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", stat)
    assert observe.process(77) == observe.Process(77, "odd) name", True)
    assert observe.process(999_999_999) is None


def test_a_der_key_file_pins_and_a_binary_file_that_is_not_one_is_one_line(tmp_path):
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    der = tmp_path / "key.der"
    der.write_bytes(public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
    assert keys.load(der) == keys.from_public_key(public)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\xff\xfe\x00\x01" * 10)
    with pytest.raises(keys.PinError, match=r"junk\.bin: a binary file that is not a DER public key"):
        keys.load(junk)
    huge = tmp_path / "huge"
    huge.write_bytes(b"a" * (keys.MAX_KEY_FILE + 1))
    with pytest.raises(keys.PinError, match="not a public key"):
        keys.load(huge)


def test_a_policy_from_anyone_to_a_resolver_is_not_plutos():
    """pluto's policies name this host as well as the resolver: another program's allow from any source to a
    managed resolver is not ikectl's to delete (the adversarial review saw the supervisor delete one)."""
    theirs = policy("0.0.0.0/0", "192.0.2.53/32", dport=53, priority=1, templates=())
    assert policies.pluto_dns_peer(theirs) is None and policies.leftovers([theirs], {A}) == []
    assert policies.leaks([theirs]) == [theirs]


def test_down_removes_only_what_ikectl_made_in_a_run_dir_of_its_own(tmp_path):
    """A config may name a directory of the user's as run_dir: `down` removed all of it (and did so even when
    ikectl had never been up)."""
    users = tmp_path / "mine"
    (users / "sub").mkdir(parents=True)
    (users / "notes.txt").write_text("mine")
    (users / "ipsec.conf").write_text("conn mine\n")
    run = daemon.RunDir(users)
    assert not run.remove() and (users / "notes.txt").exists()  # never marked: nothing touched
    # Nor adopted (the adversarial review: `up` overwrote the user's ipsec.conf, and `down` then removed it).
    with pytest.raises(daemon.ForeignRunDir, match="holds files that are not ikectl's"):
        run.prepare()
    assert sorted(p.name for p in users.iterdir()) == ["ipsec.conf", "notes.txt", "sub"] and not run.ours()
    (tmp_path / "file").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "own-target")
    for odd in ("file", "link"):
        with pytest.raises(daemon.ForeignRunDir, match="a symlink or a file"):
            daemon.RunDir(tmp_path / odd).prepare()
    own = daemon.RunDir(tmp_path / "own")
    own.prepare()
    (own.root / "pluto.log").write_text("log\n")
    assert own.remove() and not own.root.exists()


def test_another_namespaces_run_dir_is_not_ours(tmp_path):
    run = daemon.RunDir(tmp_path / "shared")
    run.prepare()
    run.marker.write_text("netns 1: another namespace's\n")  # this process's cookie is not 1
    assert not run.ours() and not run.remove() and run.root.exists()
    with pytest.raises(daemon.ForeignRunDir):
        run.prepare()  # nor taken over


def test_a_closed_pipe_ends_ikectl_quietly(tmp_path):
    """`ikectl status | head` printed a BrokenPipeError traceback."""
    config = tmp_path / "ikectl.toml"
    config.write_text(f'[paths]\nrun_dir = "{tmp_path / "run"}"\n')
    read, write = os.pipe()
    os.close(read)  # the reader is gone before ikectl writes a byte, as `head` is after its first line
    try:
        proc = subprocess.run([str(IKECTL), "--config", str(config), "doctor"], stdout=write, stderr=subprocess.PIPE,
                              text=True, check=False)
    finally:
        os.close(write)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


class FakeXfrm:
    """The kernel's XFRM table, as protect.first sees it: empty, and every update kept."""

    added: ClassVar[list[Policy]] = []

    def __init__(self, netns: str | None = None) -> None:
        pass

    def __enter__(self) -> FakeXfrm:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def policies(self) -> list[Policy]:
        return []

    def update_policy(self, policy: Policy) -> None:
        self.added.append(policy)


def test_an_nftables_refusal_never_keeps_the_xfrm_backstop_out(tmp_path, monkeypatch):
    """protect.first loads the nftables table first (it needs no pyroute2): its refusal must still leave the
    XFRM backstop complete, then be raised."""
    FakeXfrm.added = []
    monkeypatch.setattr(protect.xfrm, "XfrmClient", FakeXfrm)
    monkeypatch.setattr(nft, "available", lambda: True)

    def refuse() -> None:
        raise nft.NftError("nftables refused ikectl's table: no")

    monkeypatch.setattr(nft, "install", refuse)
    with pytest.raises(nft.NftError, match="refused"):
        protect.first((A,), tmp_path / "run", None, StateStore(tmp_path / "state", 1))
    assert FakeXfrm.added == backstop.policies()


@pytest.mark.parametrize("closed", [True, False])
def test_a_fail_closed_cut_short_leaves_the_marker_that_keeps_the_backstops(tmp_path, monkeypatch, closed):
    """The adversarial review: the marker of a trusted `up` under way went in a `finally` even when failing closed
    raised before the record was written (a full disk); the old coffee-shop record then let the supervisor lift
    both backstops."""
    from ikectl import config, session  # noqa: PLC0415 - the session layer, only here
    from ikectl.errors import IkectlError  # noqa: PLC0415

    cfg_path = tmp_path / "ikectl.toml"
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    (tmp_path / "dns.pem").write_text(pem)
    cfg_path.write_text(f'mode = "trusted"\n[trusted]\naddress = "{A}"\nid = "@dns.example"\n'
                        f'pubkey_file = "{tmp_path / "dns.pem"}"\n[paths]\nrun_dir = "{tmp_path / "run"}"\n')
    cfg = config.load(cfg_path)
    store = StateStore.here()
    monkeypatch.setattr(session, "_protect_first", lambda _cfg, st: protect.marker(st).write_text(f"{os.getpid()}\n"))

    def failing_up(*_: object) -> None:
        raise IkectlError("the trusted conns did not load")

    def fail_closed(*_: object) -> None:
        if not closed:
            raise IkectlError("No space left on device")

    monkeypatch.setattr(session, "_up", failing_up)
    monkeypatch.setattr(session, "_fail_closed", fail_closed)
    with pytest.raises(IkectlError):
        session.up(cfg)
    assert protect.marker(store).exists() == (not closed)
