"""whack's replies (captured from pluto 4.10, tests/vectors/whack/) parsed into dataclasses; refusals
become WhackError quoting pluto's line. The runner is faked here: this is the program boundary."""

import subprocess
from ipaddress import ip_network
from pathlib import Path

import pytest

from ikectl import whack
from ikectl.whack import BareShunt, TrafficStatus, Whack, WhackError

VECTORS = Path(__file__).parent / "vectors" / "whack"


def vector(name: str) -> tuple[int, str]:
    text = (VECTORS / f"{name}.txt").read_text()
    header, _, body = text.partition("\n")
    code = int(header.rsplit("exit ", 1)[1].split()[0])
    return code, body


def fake(name: str, calls: list[list[str]] | None = None) -> Whack:
    code, output = vector(name)

    def runner(argv: list[str]) -> subprocess.CompletedProcess[str]:
        if calls is not None:
            calls.append(argv)
        return subprocess.CompletedProcess(argv, code, output, "")

    return Whack(Path("/run/ikectl"), Path("/run/ikectl/ipsec.conf"), runner=runner)


def test_traffic_status():
    assert fake("trafficstatus").traffic_status() == [
        TrafficStatus(2, "private-or-clear#10.77.2.53/32-(0--17--53)", "10.77.2.53", 154, 122, "ID_NULL"),
        TrafficStatus(4, "trusted", None, 114, 82, "@trusted.lab"),
    ]


def test_shunt_status():
    assert fake("shuntstatus").shunt_status() == [
        BareShunt(ip_network("10.77.1.1/32"), 0, 17, ip_network("10.77.1.99/32"), 53, "%pass", "oe-failed")]


def test_states():
    found = fake("showstates").states()
    assert [(s.serial, s.name, s.is_child, s.parent) for s in found] == [
        (1, "STATE_V2_ESTABLISHED_IKE_SA", False, None), (2, "STATE_V2_ESTABLISHED_CHILD_SA", True, 1),
        (3, "STATE_V2_ESTABLISHED_IKE_SA", False, None), (4, "STATE_V2_ESTABLISHED_CHILD_SA", True, 3)]
    assert found[0].peer == "10.77.2.53" and found[2].peer is None and all(s.established for s in found)


@pytest.mark.parametrize(("name", "call", "line"), [
    ("route-unknown", lambda w: w.route("no-such-conn"), "no connection or alias 'no-such-conn'"),
    ("initiate-unknown", lambda w: w.initiate("no-such-conn"), 'no connection named "no-such-conn"'),
])
def test_refusals_quote_pluto(name, call, line):
    with pytest.raises(WhackError) as error:
        call(fake(name))
    assert error.value.line == line
    assert line in str(error.value) and "\n" not in str(error.value)


def test_progress_lines_are_not_refusals():
    # "181 ... initiating IKEv2 connection" is RC_NEW_V2_STATE + a state number: the negotiation started.
    calls: list[list[str]] = []
    fake("initiate-async", calls).initiate("t")
    assert calls[0][-4:] == ["--initiate", "--asynchronous", "--name", "t"]


def test_addconn_exit_0_with_failed_add_is_an_error():
    def runner(argv):
        return subprocess.CompletedProcess(argv, 0, "", '"private-or-clear": failed to add connection: must '
                                           "specify host IP address for our side\n")

    with pytest.raises(WhackError, match="must specify host IP address"):
        Whack(Path("/run/x"), Path("/run/x/ipsec.conf"), runner=runner).add("private-or-clear")


def test_a_silent_addconn_failure_is_explained_from_plutos_log(tmp_path: Path):
    log = tmp_path / "pluto.log"
    log.write_text('Nov 23 15:32:04.997312: "private-or-clear": failed to add connection: must specify host IP '
                   "address for our side\nNov 23 15:32:05.005094: loading secrets\n")

    def runner(argv):
        return subprocess.CompletedProcess(argv, 36, "", "")  # what addconn NAME really does

    w = Whack(Path("/run/x"), Path("/run/x/ipsec.conf"), runner=runner)
    with pytest.raises(WhackError, match="addconn exited 36 without a word"):
        w.add("private-or-clear")
    with pytest.raises(WhackError, match='"private-or-clear": failed to add connection: must specify host IP'):
        Whack(w.rundir, w.config, runner=runner, log=log).add("private-or-clear")


def test_argv_builders_run_inside_the_namespace():
    calls: list[list[str]] = []
    w = fake("listen", calls)
    w = Whack(w.rundir, w.config, netns="ikt-1-client", runner=w.runner)
    w.reread_groups()
    assert calls[-1] == ["ip", "netns", "exec", "ikt-1-client", str(whack.WHACK), "--rundir", "/run/ikectl",
                         "--listen"]
    assert w.addconn_argv("c")[-5:] == ["--config", "/run/ikectl/ipsec.conf", "--ctlsocket", "/run/ikectl/pluto.ctl",
                                        "c"]


def test_a_missing_program_is_a_whack_error():
    def runner(argv):
        raise FileNotFoundError(2, "No such file or directory", argv[0])

    with pytest.raises(WhackError, match="cannot run"):
        Whack(Path("/run/x"), Path("/run/x/ipsec.conf"), runner=runner).states()


def test_continuation_lines_join_their_reply():
    assert whack.parse_reply("000 first\n  more\n002 second\n") == [whack.ReplyLine(0, "first more"),
                                                                    whack.ReplyLine(2, "second")]
