"""ikectl nm-dispatch: NetworkManager's argv and environment to an event, the pure decision table, the lock and
supersede logic with real processes, the captive-portal window, and the installed hook run the way
nm-dispatcher runs it. No root needed for anything here, and nothing touches the system: every apply is a fake.
"""

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from ipaddress import ip_address
from pathlib import Path

import pytest

from ikecommon.keys import PinnedKey
from ikectl import cli, nm, portal, session
from ikectl.config import Config, Mode, NetworkRule, Pin, Portal, TrustedResolver
from ikectl.nm import Context, DispatcherEvent, NetworkKey, PortalStep, Record, Target
from ikectl.state import Baseline, RunState, StateStore

HOME_UUID = "0b4c9a3e-5d1f-4f6a-9c2e-7a8b1d3e5f60"
CAFE_UUID = "6a1e2b3c-4d5e-4f60-8a9b-0c1d2e3f4a5b"
OTHER_UUID = "f0e1d2c3-b4a5-4697-8879-6a5b4c3d2e1f"
VPN_UUID = "11111111-2222-4333-8444-555555555555"
PIN = TrustedResolver(ip_address("192.0.2.53"), "@dns.example.net", PinnedKey("ecdsa", "0sAAAA"))


def make_config(**changes):
    base = Config(networks=(NetworkRule(Mode.TRUSTED, uuid=HOME_UUID, pin="home"),
                            NetworkRule(Mode.COFFEE_SHOP, id="Cafe"),
                            NetworkRule(Mode.TRUSTED, ssid="office-wifi", pin="home")),
                  pins=(Pin("home", PIN),))
    return Config(**{**base.__dict__, **changes})


def nm_env(action="up", uuid=HOME_UUID, conn_id="Home", **extra):
    """An environment shaped like the one nm-dispatcher builds (NetworkManager-dispatcher(8))."""
    env = {"NM_DISPATCHER_ACTION": action, "CONNECTION_UUID": uuid, "CONNECTION_ID": conn_id,
           "CONNECTION_DBUS_PATH": "/org/freedesktop/NetworkManager/Settings/7", "DEVICE_IFACE": "wlan0",
           "DEVICE_IP_IFACE": "wlan0", "IP4_NUM_ADDRESSES": "1", "IP4_ADDRESS_0": "198.51.100.7/24 198.51.100.1",
           "IP4_GATEWAY": "198.51.100.1", "IP4_NAMESERVERS": "198.51.100.1", "IP4_NUM_ROUTES": "0",
           "DHCP4_DOMAIN_NAME_SERVERS": "198.51.100.1 198.51.100.2", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    env.update(extra)
    return env


# --- read_event ------------------------------------------------------------------------------------------

def test_an_up_event_becomes_typed():
    event = nm.read_event("wlan0", "up", nm_env(IP6_NAMESERVERS="2001:db8::53 fe80::1%wlan0"))
    assert event.connection == NetworkKey(HOME_UUID, "Home", None)
    assert event.device_iface == "wlan0" and event.connectivity is None
    assert event.nameservers == tuple(map(ip_address, ("198.51.100.1", "2001:db8::53", "fe80::1", "198.51.100.2")))


def test_connectivity_change_carries_only_the_state():
    event = nm.read_event("", "connectivity-change",
                          {"NM_DISPATCHER_ACTION": "connectivity-change", "CONNECTIVITY_STATE": "PORTAL"})
    assert event.connectivity == "PORTAL" and event.connection is None and event.iface == ""


def test_connectivity_change_without_a_state_is_unknown():
    """What NetworkManager 1.42 dispatches when it stops (seen with the real daemon)."""
    event = nm.read_event("", "connectivity-change", {"NM_DISPATCHER_ACTION": "connectivity-change"})
    assert event.connectivity == "UNKNOWN"
    assert nm.read_event("wlan0", "up", nm_env()).connectivity is None


def test_ssid_comes_from_the_keyfile(tmp_path):
    text = tmp_path / "cafe.nmconnection"
    text.write_text("[connection]\nid=Cafe\ntype=wifi\n\n[wifi]\nmode=infrastructure\nssid=office-wifi\n")
    octets = tmp_path / "octets.nmconnection"
    octets.write_text("[wifi]\nssid=111;102;102;105;99;101;\n")
    assert nm.read_event("wlan0", "up", nm_env(CONNECTION_FILENAME=str(text))).connection.ssid == "office-wifi"
    assert nm.ssid_from_keyfile(octets) == "office"
    assert nm.ssid_from_keyfile(tmp_path / "absent") is None


@pytest.mark.parametrize(("iface", "action", "env", "message"), [
    ("wlan0", "frobnicate", nm_env(), "unknown action 'frobnicate'"),
    ("wlan0", "up", nm_env(NM_DISPATCHER_ACTION="down"), "NM_DISPATCHER_ACTION='down' but the action"),
    ("wlan0", "up", {k: v for k, v in nm_env().items() if k != "CONNECTION_UUID"}, "CONNECTION_UUID is missing"),
    ("wlan0", "vpn-up", {"NM_DISPATCHER_ACTION": "vpn-up"}, "CONNECTION_UUID is missing"),
    ("wlan0", "up", nm_env(uuid="not-a-uuid"), "CONNECTION_UUID='not-a-uuid' is not a UUID"),
    ("wlan0", "up", nm_env(IP4_NAMESERVERS="198.51.100.1 evil;rm"), "IP4_NAMESERVERS=.*'evil;rm' is not an IP"),
    ("wlan0", "dhcp6-change", nm_env("dhcp6-change", DHCP6_DHCP6_NAME_SERVERS="2001:db8::zz"), "not an IP"),
    ("", "connectivity-change", {"CONNECTIVITY_STATE": ""}, "CONNECTIVITY_STATE=''"),
    ("", "connectivity-change", {"CONNECTIVITY_STATE": "SORT-OF"}, "CONNECTIVITY_STATE='SORT-OF'"),
    ("../../etc", "up", nm_env(), "not an interface name"),
])
def test_bad_input_is_one_clear_error(iface, action, env, message):
    with pytest.raises(nm.BadEvent, match=message) as error:
        nm.read_event(iface, action, env)
    assert "\n" not in str(error.value) and error.value.exit_code == 2


# --- the decision table ----------------------------------------------------------------------------------

KINDS = {  # network kind -> (the connection's key, what the hook applied there last)
    "trusted": (NetworkKey(HOME_UUID, "Home"), Target(Mode.TRUSTED, "home", (PIN.address, ip_address("198.51.100.1")))),
    "coffee-shop": (NetworkKey(CAFE_UUID, "Cafe"), Target(Mode.COFFEE_SHOP, None, (ip_address("198.51.100.1"),))),
    "unknown": (NetworkKey(OTHER_UUID, "Airport"), Target(Mode.COFFEE_SHOP, None, (ip_address("198.51.100.1"),))),
}
NETWORK_EVENT = {"trusted": "apply trusted home", "coffee-shop": "apply coffee-shop", "unknown": "apply coffee-shop"}
LEAVE = dict.fromkeys(KINDS, "leave")

# What each action does on each kind of network; connectivity-change also by the state NM reports.
# The state does not change the other actions (it sits in the record there).
DECISION_TABLE = {
    **{action: NETWORK_EVENT for action in ("pre-up", "up", "dhcp4-change", "dhcp6-change", "reapply")},
    "vpn-up": {"trusted": "leave", "coffee-shop": "apply coffee-shop", "unknown": "apply coffee-shop"},
    "vpn-down": NETWORK_EVENT,
    "down": LEAVE,
    **{action: LEAVE for action in ("pre-down", "vpn-pre-up", "vpn-pre-down", "hostname", "dns-change",
                                    "device-add", "device-delete")},
    ("connectivity-change", "PORTAL"): {"trusted": "leave, portal waiting", "coffee-shop": "leave",
                                        "unknown": "leave"},
    **{("connectivity-change", state): LEAVE for state in ("FULL", "LIMITED", "NONE", "UNKNOWN")},
}


def summary(plan):
    if plan.target is None:
        text = "leave"
    elif plan.target.mode == Mode.TRUSTED:
        text = f"apply trusted {plan.target.pin}"
    else:
        text = "apply coffee-shop"
    return text + ("" if plan.portal == PortalStep.NONE else f", portal {plan.portal.value}")


def event_for(action, kind, state):
    network, _ = KINDS[kind]
    if action == "connectivity-change":
        return DispatcherEvent("", action, connectivity=state)
    if action.startswith("vpn-"):
        return DispatcherEvent("tun0", action, NetworkKey(VPN_UUID, "Work VPN"), vpn_ip_iface="tun0",
                               nameservers=(ip_address("10.8.0.53"),))
    return DispatcherEvent("wlan0", action, network, nameservers=(ip_address("198.51.100.1"),))


@pytest.mark.parametrize("state", sorted(nm.CONNECTIVITY_STATES))
@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("action", sorted(nm.NM_ACTIONS))
def test_decision_table(action, kind, state):
    network, applied = KINDS[kind]
    record = Record(network=network, vpn=VPN_UUID if action == "vpn-down" else None, applied=applied,
                    connectivity=state)
    ctx = Context(record=record, system_resolvers=(ip_address("198.51.100.1"),), now=1000.0)
    plan = nm.decide(event_for(action, kind, state), make_config(), ctx)
    row = DECISION_TABLE.get((action, state)) or DECISION_TABLE[action]
    assert summary(plan) == row[kind], plan.reason
    # Whatever the row: only network and VPN events change the mode, and a trusted network is never left
    # for coffee-shop.
    if action not in nm.SUPERSEDING_ACTIONS:
        assert plan.target is None and plan.record.applied == applied
    if kind == "trusted" and plan.target is not None:
        assert plan.target.mode == Mode.TRUSTED and plan.target.resolvers[0] == PIN.address
    assert "\n" not in plan.reason


def test_every_nm_action_has_one_row():
    assert set(nm.DECISIONS) == nm.NM_ACTIONS


def test_matching_by_uuid_id_and_ssid_first_match_wins():
    config = make_config()
    assert nm.policy_for(config, NetworkKey(HOME_UUID.upper().lower(), "anything"))[:2] == (Mode.TRUSTED, "home")
    assert nm.policy_for(config, NetworkKey(OTHER_UUID, "Cafe"))[:2] == (Mode.COFFEE_SHOP, None)
    assert nm.policy_for(config, NetworkKey(OTHER_UUID, "x", "office-wifi"))[:2] == (Mode.TRUSTED, "home")
    assert nm.policy_for(config, NetworkKey(OTHER_UUID, "x", "other"))[:2] == (Mode.COFFEE_SHOP, None)
    trusted_default = make_config(default_mode=Mode.TRUSTED, default_pin="home")
    assert nm.policy_for(trusted_default, NetworkKey(OTHER_UUID))[:2] == (Mode.TRUSTED, "home")


def test_event_resolvers_come_first_explicit_ones_win_and_no_resolver_leaves_things_alone():
    event = DispatcherEvent("wlan0", "up", NetworkKey(OTHER_UUID), nameservers=(ip_address("198.51.100.9"),))
    ctx = Context(system_resolvers=(ip_address("198.51.100.1"), ip_address("198.51.100.9")))
    assert nm.decide(event, make_config(), ctx).target.resolvers == (ip_address("198.51.100.9"),
                                                                     ip_address("198.51.100.1"))
    explicit = make_config(resolvers=(ip_address("203.0.113.53"),))
    assert nm.decide(event, explicit, ctx).target.resolvers == (ip_address("203.0.113.53"),)
    bare = DispatcherEvent("wlan0", "pre-up", NetworkKey(OTHER_UUID))
    plan = nm.decide(bare, make_config(), Context())
    assert plan.target is None and "no resolver is known yet" in plan.reason


def test_a_repeated_event_is_idempotent_while_pluto_runs():
    event = DispatcherEvent("wlan0", "dhcp4-change", NetworkKey(HOME_UUID, "Home"),
                            nameservers=(ip_address("198.51.100.1"),))
    first = nm.decide(event, make_config(), Context())
    assert first.target is not None
    again = nm.decide(event, make_config(), Context(record=first.record, pluto_running=True))
    assert again.target is None and "already in place" in again.reason
    assert nm.decide(event, make_config(), Context(record=first.record, pluto_running=False)).target == first.target


def test_the_network_applied_last_is_applied_again_after_a_failed_switch_blocked_dns():
    """The record still names the coffee-shop network a failed switch to trusted mode left; its next event
    must apply it again (taking the backstop away), not find it "already in place"."""
    event = DispatcherEvent("wlan0", "up", NetworkKey(OTHER_UUID, "Cafe"), nameservers=(ip_address("198.51.100.1"),))
    first = nm.decide(event, make_config(), Context())
    blocked = Context(record=first.record, pluto_running=True, blocked=True)
    assert nm.decide(event, make_config(), blocked).target == first.target


@pytest.mark.parametrize("action", sorted(nm.SUPERSEDING_ACTIONS))
def test_a_connection_made_outside_networkmanager_changes_nothing(tmp_path, action):
    """Real NM (netns_tests/test_nm_real.py) dispatches pre-up and up with CONNECTION_EXTERNAL=1 for a link that
    was configured when it started; a container bridge gets the same. Neither is a network the user joined."""
    env = nm_env(action, uuid=OTHER_UUID, conn_id="docker0", CONNECTION_EXTERNAL="1")
    event = nm.read_event("docker0", action, env)
    assert event.external
    trusted, applied = KINDS["trusted"]
    ctx = Context(record=Record(network=trusted, vpn=VPN_UUID, applied=applied), pluto_running=True,
                  system_resolvers=(ip_address("198.51.100.1"),))
    plan = nm.decide(event, make_config(), ctx)
    assert plan.target is None and plan.record == ctx.record and plan.portal == PortalStep.NONE
    assert "CONNECTION_EXTERNAL=1" in plan.reason
    # Nor does it take a ticket: it must not supersede the event of a real network waiting for the lock.
    paths = nm.NmPaths(tmp_path / "nm")
    lines, plans = [], []
    assert nm.dispatch(event, Config(run_dir=tmp_path / "run"), log=lines.append, gather=lambda c, p: ctx,
                       apply=lambda plan, *_: plans.append(plan), paths=paths) == 0
    assert [p.target for p in plans] == [None] and "left as is" in lines[0]
    assert nm.latest_ticket(paths) == 0
    assert not nm.read_event("wlan0", action, nm_env(action)).external


def test_vpn_in_networks_gets_its_mode_and_vpn_down_returns_to_the_base_network():
    config = make_config(networks=(*make_config().networks, NetworkRule(Mode.TRUSTED, id="Work VPN", pin="home")))
    cafe, applied = KINDS["coffee-shop"]
    up = nm.decide(event_for("vpn-up", "coffee-shop", None), config, Context(record=Record(cafe, None, applied)))
    assert summary(up) == "apply trusted home" and up.record.vpn == VPN_UUID and up.record.network == cafe
    down = nm.decide(event_for("vpn-down", "coffee-shop", None), config,
                     Context(record=up.record, system_resolvers=(ip_address("198.51.100.1"),)))
    assert summary(down) == "apply coffee-shop" and down.record.vpn is None
    assert ip_address("10.8.0.53") not in down.target.resolvers  # the VPN's resolver went with it
    stranger = nm.decide(event_for("vpn-down", "coffee-shop", None), config, Context(record=down.record))
    assert stranger.target is None


# --- captive portals -------------------------------------------------------------------------------------

def portal_ctx(window=None, now=1000.0, kind="trusted", connectivity=None):
    network, applied = KINDS[kind]
    return Context(record=Record(network, None, applied, connectivity), window=window, now=now)


PORTAL = DispatcherEvent("", "connectivity-change", connectivity="PORTAL")
FULL = DispatcherEvent("", "connectivity-change", connectivity="FULL")


def test_trusted_portal_stays_closed_and_says_so():
    plan = nm.decide(PORTAL, make_config(), portal_ctx())
    assert plan.portal == PortalStep.WAITING and plan.target is None
    assert "captive portal waiting" in plan.reason and "ikectl portal allow" in plan.reason
    assert plan.record.portal_waiting_since == 1000.0


def test_an_open_window_lets_the_portal_through_and_full_connectivity_closes_it():
    window = portal.new_window(5, 900.0, "ikectl portal allow", HOME_UUID)
    plan = nm.decide(PORTAL, make_config(), portal_ctx(window))
    assert plan.portal == PortalStep.OPEN and plan.window == window
    closed = nm.decide(FULL, make_config(), portal_ctx(window))
    assert closed.portal == PortalStep.CLOSE and closed.record.portal_waiting_since is None
    expired = nm.decide(PORTAL, make_config(), portal_ctx(window, now=900.0 + 5 * 60))
    assert expired.portal == PortalStep.WAITING


def test_config_opt_in_opens_one_window_per_network():
    config = make_config(portal=Portal(allow_minutes=3))
    plan = nm.decide(PORTAL, config, portal_ctx())
    assert plan.portal == PortalStep.OPEN and plan.window.source == "[portal] allow_minutes"
    assert plan.window.until - plan.window.opened_at == 180 and plan.window.network == HOME_UUID
    later = nm.decide(PORTAL, config, portal_ctx(plan.window, now=1000.0 + 181))
    assert later.portal == PortalStep.WAITING  # ran out: not reopened by itself


def test_network_events_keep_a_window_for_its_network_and_close_it_for_another():
    window = portal.new_window(5, 900.0, "ikectl portal allow", HOME_UUID)
    home = DispatcherEvent("wlan0", "dhcp4-change", NetworkKey(HOME_UUID, "Home"))
    assert nm.decide(home, make_config(), portal_ctx(window)).portal == PortalStep.OPEN
    elsewhere = DispatcherEvent("wlan0", "up", NetworkKey(OTHER_UUID), nameservers=(ip_address("198.51.100.1"),))
    assert nm.decide(elsewhere, make_config(), portal_ctx(window)).portal == PortalStep.CLOSE


def test_portal_window_logic(tmp_path):
    window = portal.new_window(2, 100.0, "ikectl portal allow")
    assert window.is_open(100.0) and window.is_open(219.9) and not window.is_open(220.0)
    assert not window.is_open(99.0)  # a clock that went back does not open it
    assert "1 min 0 s more" in window.describe(160.0) and window.describe(300.0) == "portal window closed"
    for bad in (0, 121, -5):
        with pytest.raises(portal.UsageError, match="--minutes"):
            portal.new_window(bad, 0.0, "x")
    path = tmp_path / "portal.json"
    portal.write(path, window)
    assert portal.read(path) == window and portal.open_window(path, 150.0) == window
    assert portal.open_window(path, 500.0) is None
    path.write_text('{"opened_at": "soon"')
    assert portal.read(path) is None  # damaged: opens nothing
    assert portal.clear(path) and not portal.clear(path)


def test_session_opens_and_closes_the_window_only_in_trusted_mode(tmp_path, monkeypatch):
    """The window's end goes into the record, so the supervisor's watch leaves the backstops out until then."""
    calls = []
    monkeypatch.setattr(session.backstop, "remove", lambda: calls.append("remove"))
    monkeypatch.setattr(session.backstop, "install", lambda: calls.append("install"))
    store = StateStore.here()
    assert not session.open_portal_window(500.0)  # not up
    record = RunState(Mode.COFFEE_SHOP, (PIN.address,), tmp_path / "run", 1.0, Baseline(True))
    store.write(record)
    assert not session.open_portal_window(500.0) and not session.close_portal_window()
    store.write(replace(record, mode=Mode.TRUSTED, trusted=PIN.addresses))
    assert session.open_portal_window(500.0)
    opened = store.read()
    assert isinstance(opened, RunState) and opened.portal_until == 500.0
    assert session.close_portal_window()
    closed = store.read()
    assert isinstance(closed, RunState) and closed.portal_until is None
    assert calls == ["remove", "install"]


# --- lock, supersede, time budget: real processes --------------------------------------------------------

WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from ikectl import nm
    from ikectl.config import Config, NmSettings

    root, label, action, hold_s = Path(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
    # "config:N": no budget given to dispatch, the config's [nm] budget_s = N
    budget_s = None if sys.argv[5].startswith("config:") else float(sys.argv[5])
    paths = nm.NmPaths(root / "nm")
    config = Config(run_dir=root / "run", nm=NmSettings(budget_s=int(sys.argv[5].partition(":")[2] or 10)))

    def apply(plan, config, paths, say):
        with open(root / "applied", "a") as out:
            out.write(f"{label} start\\n")
        say(f"{label} holding on")
        if hold_s < 0:  # hold until the test says so
            while not (root / "release").exists():
                time.sleep(0.01)
        time.sleep(max(hold_s, 0))
        with open(root / "applied", "a") as out:
            out.write(f"{label} done\\n")

    def gather(config, paths):
        return nm.Context(record=nm.read_record(paths))

    uuid = sys.argv[6]
    if action == "connectivity-change":
        event = nm.DispatcherEvent("", action, connectivity="FULL")
    else:
        event = nm.DispatcherEvent(label, action, nm.NetworkKey(uuid, label), nameservers=(__import__(
            "ipaddress").ip_address("198.51.100.1"),))
    sys.exit(nm.dispatch(event, config, log=lambda m: print(m, file=sys.stderr, flush=True), budget_s=budget_s,
                         gather=gather, apply=apply, paths=paths))
""")


def start(tmp_path, label, action="up", hold_s=0.0, budget_s: float | str = 10.0):
    script = tmp_path / "worker.py"
    if not script.exists():
        script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen([sys.executable, str(script), str(tmp_path), label, action, str(hold_s), str(budget_s),
                             OTHER_UUID],
                            stderr=subprocess.PIPE, text=True, env=env)


def wait_for(path, text, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.01)
    raise AssertionError(f"{text!r} never appeared in {path}")


def test_a_burst_converges_on_the_last_network_event(tmp_path):
    first = start(tmp_path, "first", hold_s=-1)
    wait_for(tmp_path / "applied", "first start")  # holds the lock while the burst arrives
    burst = []
    for label in ("second", "third", "fourth"):
        burst.append((label, start(tmp_path, label)))
        wait_for(tmp_path / "nm" / "tickets", str(len(burst) + 1))  # arrival order = ticket order
    connectivity = start(tmp_path, "connectivity", action="connectivity-change")
    time.sleep(0.3)  # let the connectivity event queue for the lock too
    (tmp_path / "release").touch()
    assert first.wait(timeout=20) == 0
    results = {label: (proc.wait(timeout=20), proc.stderr.read()) for label, proc in burst}
    assert connectivity.wait(timeout=20) == 0  # not a network event: never superseded, never supersedes
    applied = (tmp_path / "applied").read_text().split()
    assert [w for w in applied if w not in ("start", "done", "connectivity")] == ["first", "first", "fourth", "fourth"]
    assert "connectivity" in applied
    assert all(rc == 0 for rc, _ in results.values())
    assert "superseded by a later network event" in results["second"][1]
    assert "superseded by a later network event" in results["third"][1]
    record = json.loads((tmp_path / "nm" / "record.json").read_text())
    assert record["network"]["id"] == "fourth" and record["connectivity"] == "FULL"


def test_waiting_for_the_lock_is_bounded(tmp_path):
    holder = start(tmp_path, "holder", hold_s=3.0)
    wait_for(tmp_path / "applied", "holder start")
    began = time.monotonic()
    late = start(tmp_path, "late", budget_s=0.5)
    rc, err = late.wait(timeout=10), late.stderr.read()
    assert rc == 1 and time.monotonic() - began < 2.5
    assert "gave up after" in err and "protection left as it is" in err and len(err.strip().splitlines()) == 1
    assert "late" not in (tmp_path / "applied").read_text()
    holder.kill()
    holder.wait()


def test_applying_is_bounded_and_a_late_apply_records_nothing(tmp_path):
    slow = start(tmp_path, "slow", hold_s=5.0, budget_s=0.5)
    rc, err = slow.wait(timeout=10), slow.stderr.read()
    assert rc == 1 and "not done within the 0.5 s budget; last step: slow holding on)" in err
    assert "slow done" not in (tmp_path / "applied").read_text()
    assert not (tmp_path / "nm" / "record.json").exists()


def test_the_time_budget_is_the_configs(tmp_path):
    slow = start(tmp_path, "slow", hold_s=5.0, budget_s="config:2")
    rc, err = slow.wait(timeout=10), slow.stderr.read()
    assert rc == 1 and "not done within the 2 s budget" in err
    assert "slow done" not in (tmp_path / "applied").read_text()


def test_a_failed_apply_is_one_line_and_records_nothing(tmp_path):
    def apply(*_):
        raise session.UpError("pluto did not start")

    lines = []
    event = DispatcherEvent("wlan0", "up", NetworkKey(OTHER_UUID), nameservers=(ip_address("198.51.100.1"),))
    rc = nm.dispatch(event, Config(run_dir=tmp_path / "run"), log=lines.append, apply=apply,
                     gather=lambda c, p: Context(), paths=nm.NmPaths(tmp_path / "nm"))
    assert rc == 1 and lines == ["up wlan0: failed: pluto did not start; protection left as it was"]
    assert not (tmp_path / "nm" / "record.json").exists()


def test_the_nm_files_live_beside_the_run_dir_which_down_removes():
    assert nm.NmPaths.for_config(Config()).root == Path("/run/ikectl-nm")


# --- the CLI: bad input never touches the protection -----------------------------------------------------

@pytest.fixture
def no_session(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("bad input must not change the protection")

    for name in ("up", "down", "open_portal_window", "close_portal_window"):
        monkeypatch.setattr(session, name, refuse)


def write_config(tmp_path, text=""):
    path = tmp_path / "ikectl.toml"
    path.write_text(f'{text}\n[paths]\nrun_dir = "{tmp_path / "run"}"\n')
    return path


@pytest.mark.parametrize(("argv", "env", "message"), [
    (["wlan0", "bogus"], nm_env(), "bogus wlan0: unknown action 'bogus'"),
    (["wlan0", "up"], {"NM_DISPATCHER_ACTION": "up"}, "up wlan0: CONNECTION_UUID is missing"),
    (["wlan0", "up"], nm_env(IP4_NAMESERVERS="1.2.3"), "up wlan0: IP4_NAMESERVERS='1.2.3'"),
])
def test_bad_dispatcher_input_is_one_line_and_changes_nothing(tmp_path, monkeypatch, capsys, no_session, argv,
                                                              env, message):
    monkeypatch.setattr(os, "environ", env)
    assert cli.main(["--config", str(write_config(tmp_path)), "nm-dispatch", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ikectl nm-dispatch: {message}") and err.count("\n") == 1
    assert "protection left as it is" in err
    assert not (tmp_path / "run-nm").exists()


def test_an_unreadable_config_is_one_line_and_changes_nothing(tmp_path, monkeypatch, capsys, no_session):
    monkeypatch.setattr(os, "environ", nm_env())
    assert cli.main(["--config", str(tmp_path), "nm-dispatch", "wlan0", "up"]) == 2  # a directory
    err = capsys.readouterr().err
    assert "not a regular file" in err and err.count("\n") == 1
    bad = write_config(tmp_path, 'default_mode = "paranoid"')
    assert cli.main(["--config", str(bad), "nm-dispatch", "wlan0", "up"]) == 2
    assert "default_mode = 'paranoid'" in capsys.readouterr().err


def test_dry_run_logs_the_plan_and_touches_nothing(tmp_path, monkeypatch, capsys, no_session):
    monkeypatch.setattr(os, "environ", nm_env())
    cfg = write_config(tmp_path, f'[[networks]]\nuuid = "{HOME_UUID}"\nmode = "trusted"\npin = "home"\n'
                                 '[pins.home]\naddress = "192.0.2.53"\nid = "@dns.example.net"\n'
                                 'pubkey = "0sRxw+dYxJBChbun5TEY7Q9SSt6wdX0lvS+Oew1236cUzdUg96yoqLkXrMN/Ud6PDJu+OthYOC5'
                                 'wLcJaEtCfeoWA=="')
    assert cli.main(["--config", str(cfg), "nm-dispatch", "--dry-run", "wlan0", "up"]) == 0
    err = capsys.readouterr().err
    assert "would apply: 'Home': [[networks]] uuid=" in err and "trusted, pin home" in err
    assert not (tmp_path / "run-nm").exists() and not (tmp_path / "run").exists()


# --- the installed hook, run the way nm-dispatcher runs it -----------------------------------------------

FAKE_IKECTL = f"""#!{sys.executable}
# A stand-in for ikectl: records how it was called.
import json, os, sys
with open(os.environ["FAKE_RECORD"], "w") as out:
    json.dump({{"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}}, out)
"""


def nm_would_run(path: Path) -> bool:
    """NetworkManager-dispatcher(8): "a regular executable file owned by root ... not writable by group or other,
    and not setuid" (its check_permissions: st_uid 0, no S_IWGRP|S_IWOTH|S_ISUID, S_IXUSR). Ownership is
    only checked when the tests run as root."""
    st = path.stat()
    owned = st.st_uid == 0 or os.geteuid() != 0
    return (stat.S_ISREG(st.st_mode) and owned and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH | stat.S_ISUID)
            and bool(st.st_mode & stat.S_IXUSR) and not path.name.startswith("."))


@pytest.fixture
def nm_root(tmp_path, monkeypatch):
    (tmp_path / "root/etc/NetworkManager").mkdir(parents=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "ikectl"
    fake.write_text(FAKE_IKECTL)
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return tmp_path


def test_install_writes_both_hooks_as_nm_requires(nm_root, capsys):
    cfg = write_config(nm_root)
    assert cli.main(["--config", str(cfg), "install-nm-hook", "--root", str(nm_root / "root")]) == 0
    main_hook, pre_up = nm.hook_paths(nm_root / "root")
    for hook in (main_hook, pre_up):
        assert nm_would_run(hook) and stat.S_IMODE(hook.stat().st_mode) == 0o755
        assert f"exec {nm_root / 'bin/ikectl'} --config {cfg} nm-dispatch \"$1\" \"$2\"" in hook.read_text()
    assert pre_up.parent.name == "pre-up.d"
    assert sorted(p.name for p in main_hook.parent.iterdir()) == [main_hook.name, "pre-up.d"]  # no temp files
    assert cli.main(["--config", str(cfg), "install-nm-hook", "--root", str(nm_root / "root")]) == 0  # again: fine
    assert capsys.readouterr().err == ""


def test_the_hook_runs_as_nm_dispatcher_runs_it(nm_root):
    """nm-dispatcher (src/nm-dispatcher/nm-dispatcher.c, script_dispatch) runs each script with
    g_spawn_async("/", {script, iface, action}, envp, ...): working directory "/", the interface ("" for
    connectivity-change) and the action as arguments, and only the environment it built
    (nm_dispatcher_utils_construct_envp) plus PATH; it kills the script after SCRIPT_TIMEOUT (600 s). The
    variables are those of NetworkManager-dispatcher(8)."""
    cfg = write_config(nm_root)
    assert cli.main(["--config", str(cfg), "install-nm-hook", "--root", str(nm_root / "root")]) == 0
    main_hook, pre_up = nm.hook_paths(nm_root / "root")
    record = nm_root / "called.json"
    for hook, iface, action, nm_vars in (
        (pre_up, "wlan0", "pre-up", nm_env("pre-up")),
        (main_hook, "wlan0", "up", nm_env("up")),
        (main_hook, "", "connectivity-change", {"NM_DISPATCHER_ACTION": "connectivity-change",
                                                 "CONNECTIVITY_STATE": "PORTAL"}),
    ):
        # nm-dispatcher passes its own PATH; the hook names ikectl by its full path, so a bare one will do.
        env = {**nm_vars, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "FAKE_RECORD": str(record)}
        done = subprocess.run([str(hook), iface, action], cwd="/", env=env, timeout=30, capture_output=True,
                              text=True, check=False)
        assert done.returncode == 0, done.stderr
        called = json.loads(record.read_text())
        assert called["argv"] == ["--config", str(cfg), "nm-dispatch", iface, action]
        assert called["cwd"] == "/"
        assert {k: called["env"][k] for k in env} == env  # NM's variables reach ikectl untouched


def test_the_hook_answers_the_actions_ikectl_always_leaves_without_starting_it(nm_root):
    """nm-dispatcher runs the hook for every event; for these, starting Python would change nothing."""
    skipped = set(nm.actions_always_left())
    assert {"down", "hostname", "dns-change", "device-add", "device-delete", "vpn-pre-up"} <= skipped
    assert not skipped & (nm.SUPERSEDING_ACTIONS | {"connectivity-change"})
    for action in sorted(skipped):  # every row, every kind of network: nothing applied, nothing recorded
        for network, applied in KINDS.values():
            ctx = Context(record=Record(network=network, applied=applied, connectivity="PORTAL",
                                        portal_waiting_since=1.0), now=1000.0, pluto_running=True)
            plan = nm.decide(DispatcherEvent("wlan0", action, network), make_config(), ctx)
            assert plan.target is None and plan.record == ctx.record and plan.portal == PortalStep.NONE
    cfg = write_config(nm_root)
    assert cli.main(["--config", str(cfg), "install-nm-hook", "--root", str(nm_root / "root")]) == 0
    main_hook, pre_up = nm.hook_paths(nm_root / "root")
    record = nm_root / "called.json"
    for hook, action in ((main_hook, "down"), (main_hook, "hostname"), (pre_up, "vpn-pre-up")):
        env = {**nm_env(action), "FAKE_RECORD": str(record)}
        done = subprocess.run([str(hook), "wlan0", action], cwd="/", env=env, timeout=30, check=False)
        assert done.returncode == 0 and not record.exists()


def test_install_refuses_a_foreign_file_and_uninstall_removes_only_ours(nm_root):
    root = nm_root / "root"
    cfg = write_config(nm_root)
    main_hook, pre_up = nm.hook_paths(root)
    main_hook.parent.mkdir(parents=True)
    main_hook.write_text("#!/bin/sh\necho someone else's\n")
    assert cli.main(["--config", str(cfg), "install-nm-hook", "--root", str(root)]) == 1
    assert "someone else's" in main_hook.read_text() and not pre_up.exists()
    main_hook.unlink()
    neighbour = main_hook.parent / "20-other"
    neighbour.write_text("#!/bin/sh\n")
    assert cli.main(["--config", str(cfg), "install-nm-hook", "--root", str(root)]) == 0
    assert cli.main(["--config", str(cfg), "install-nm-hook", "--uninstall", "--root", str(root)]) == 0
    assert not main_hook.exists() and not pre_up.exists() and neighbour.exists()
    assert nm.uninstall_hook(root) == []  # nothing left of ours


def test_install_without_networkmanager_is_an_error(tmp_path):
    with pytest.raises(nm.IkectlError, match="is NetworkManager installed"):
        nm.install_hook(tmp_path, Path("/bin/true"), tmp_path / "ikectl.toml")


def test_portal_show_says_what_is_waiting(tmp_path, capsys):
    cfg = write_config(tmp_path)
    assert cli.main(["--config", str(cfg), "portal", "show"]) == 0
    assert capsys.readouterr().out.startswith("no captive portal waiting")
    paths = nm.NmPaths(tmp_path / "run-nm")
    paths.root.mkdir()
    nm.write_record(paths, Record(KINDS["trusted"][0], None, KINDS["trusted"][1], "PORTAL", time.time() - 30))
    assert cli.main(["--config", str(cfg), "portal", "show"]) == 0
    assert "captive portal waiting for 30 s" in capsys.readouterr().out
    portal.write(paths.window, portal.new_window(5, time.time(), "ikectl portal allow"))
    assert cli.main(["--config", str(cfg), "portal", "show"]) == 0
    assert "portal window open" in capsys.readouterr().out


def test_record_round_trips(tmp_path):
    paths = nm.NmPaths(tmp_path)
    record = Record(NetworkKey(HOME_UUID, "Home", "office-wifi"), VPN_UUID, KINDS["trusted"][1], "PORTAL", 12.5)
    nm.write_record(paths, record)
    assert nm.read_record(paths) == record
    paths.record.write_text("{not json")
    assert nm.read_record(paths) == Record()
