"""enclave_ike/diagnostics.py: lines about one client go to the log with privacy off, to a bounded ring with it
on, and leave the ring only through the operator's dump, which says so first."""

from __future__ import annotations

import gc
import logging
import weakref

import pytest

from enclave_ike.diagnostics import Diagnostics, PrivacyConfig

CLIENT = "198.51.100.7:4500"


class Event:
    """An argument like a Child SA's event: it carries keys, and the ring must not keep it alive."""

    def __str__(self) -> str:
        return CLIENT


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> logging.Logger:
    caplog.set_level(logging.INFO, "test.diagnostics")
    return logging.getLogger("test.diagnostics")


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_with_privacy_off_a_client_line_is_logged(log, caplog):
    diagnostics = Diagnostics(log, PrivacyConfig(enabled=False))
    diagnostics.client(logging.INFO, "IKE SA established with %s", CLIENT)
    assert messages(caplog) == [f"IKE SA established with {CLIENT}"] and len(diagnostics) == 0


def test_with_privacy_on_a_client_line_stays_in_the_ring_until_the_dump(log, caplog):
    diagnostics = Diagnostics(log, PrivacyConfig(), clock=lambda: 0.0)
    event = Event()
    gone = weakref.ref(event)
    diagnostics.client(logging.INFO, "IKE SA established with %s", event)
    diagnostics.client(logging.DEBUG, "liveness %s", Event())  # below the log's level: not kept either
    del event
    gc.collect()
    assert gone() is None  # the ring holds the line's text, not the event and its keys
    assert messages(caplog) == [] and len(diagnostics) == 1
    assert diagnostics.dump("SIGUSR1") == 1
    assert messages(caplog) == ["privacy: diagnostics ring dumped as asked by SIGUSR1: 1 lines about clients follow",
                                f"ring 1970-01-01T00:00:00Z: IKE SA established with {CLIENT}"]
    assert caplog.records[0].levelno == logging.WARNING
    caplog.clear()
    assert diagnostics.dump("SIGUSR1") == 0 and len(messages(caplog)) == 1  # emptied: nothing written twice


def test_the_ring_keeps_only_the_newest_lines(log, caplog):
    diagnostics = Diagnostics(log, PrivacyConfig(ring_lines=3))
    for n in range(10):
        diagnostics.client(logging.INFO, "client %d", n)
    diagnostics.dump("test")
    assert [m.rsplit(": ", 1)[1] for m in messages(caplog)[1:]] == ["client 7", "client 8", "client 9"]


def test_counts_are_aggregates_whatever_the_setting(log):
    for enabled in (True, False):
        diagnostics = Diagnostics(log, PrivacyConfig(enabled=enabled))
        diagnostics.count("IKE SAs established")
        diagnostics.count("IKE SAs established")
        assert diagnostics.counts == {"IKE SAs established": 2}
