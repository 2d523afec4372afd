"""The background half of `ikectl up`. Every second: in coffee-shop mode, the upkeep of
ikectl/opportunistic.py (a resolver that refused the Child SA goes to clear and comes back for IKE later; a
group pluto dropped is reloaded); in trusted mode, re-attestation of pinned resolvers when it is due, and
at once when pluto meets a key other than the pinned one (ikectl/trust.py; a failure blocks DNS).

`up` starts it detached, with its pid in state.json; `down` stops it by pid. It also ends by itself when
ikectl is down or a newer supervisor took over, so a crash of `down` cannot leave it spinning.

    python -m ikectl.supervisor RUN_DIR
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import config, daemon, lean_pyroute2, opportunistic, session, status
from .errors import IkectlError

TICK_S = 1.0


class Supervisor:
    def __init__(self, run: daemon.RunDir) -> None:
        self.run = run
        self.log_seen = run.log.stat().st_size if run.log.exists() else 0  # pluto's log read up to here

    def tick(self, now: float) -> bool:
        """One round; False when this supervisor should end."""
        with session.state_lock(self.run):
            state = session.read_state(self.run)
            if state is None or state.get("supervisor_pid") != os.getpid():
                return False
            # Blocked (a switch to trusted failed): what is left of coffee-shop mode gets no upkeep.
            upkeep = state["mode"] == "coffee-shop" and not session.blocked(state)
            if upkeep and daemon.pluto_pid(self.run) is not None:
                record = opportunistic.upkeep(self.run, state, float(state.get("retry_after_s", 60)), now)
                if record.to_state() != state.get("opportunistic"):
                    session.write_state(self.run, {**state, "opportunistic": record.to_state()})
        if state["mode"] == "trusted" and state.get("config_path"):
            # Outside the lock: a re-attestation that pins a new key runs `up` again, which takes it.
            self.reattest(Path(state["config_path"]), now)
        return True

    def reattest(self, config_path: Path, now: float) -> None:
        # Trusted mode only: trust.py brings enclave_ike's attestation verifiers, which `up` (it imports this
        # module to start and stop supervisors) and a coffee-shop supervisor never need.
        from . import trust  # noqa: PLC0415

        try:
            cfg = config.load(config_path)
        except IkectlError as exc:
            print(f"ikectl supervisor: re-attestation skipped: {exc}", file=sys.stderr, flush=True)
            return
        for result in trust.reattest_due(cfg, self.run.root, now, key_changed=self.saw_other_key()):
            print(f"ikectl supervisor: re-attested {result.name}: {'ok' if result.ok else result.reason}",
                  file=sys.stderr, flush=True)

    def saw_other_key(self) -> bool:
        """Has pluto written, since the last round, that the trusted resolver presented another key?"""
        start, fresh = self.run.read_log(self.log_seen)
        self.log_seen = start + len(fresh)
        return status.trusted_failure(fresh.decode(errors="replace").splitlines()) == status.OTHER_KEY


def main(argv: list[str]) -> int:
    supervisor = Supervisor(daemon.RunDir(Path(argv[0])))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        try:
            if not supervisor.tick(time.time()):
                return 0
        except IkectlError as exc:  # pluto busy or restarting: say so, try again next round
            print(f"ikectl supervisor: {exc}", file=sys.stderr, flush=True)
        time.sleep(TICK_S)


def start(run: daemon.RunDir) -> int:
    """Start a supervisor for `run`, detached from the caller; its pid."""
    log = open(run.root / "supervisor.log", "ab")  # noqa: SIM115 - handed to the child, closed here after
    try:
        proc = subprocess.Popen([sys.executable, "-m", "ikectl.supervisor", str(run.root)], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, start_new_session=True, cwd="/")
    finally:
        log.close()
    return proc.pid


def running(run: daemon.RunDir, pid: object) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"ikectl.supervisor" in cmdline and str(run.root).encode() in cmdline


def stop(run: daemon.RunDir, pid: object) -> None:
    if running(run, pid):
        assert isinstance(pid, int)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


if __name__ == "__main__":
    lean_pyroute2.use()
    sys.exit(main(sys.argv[1:]))
