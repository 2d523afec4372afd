"""The project's one XFRM library: policies, SAs, events and the ESP probe over NETLINK_XFRM, on pyroute2.
See docs/xfrm.md.

The model, constants and errors load with the package; the names that need pyroute2 (the client and the
event codec) load on first use, so `from . import xfrm` costs an ikectl command nothing until it talks to the
kernel (importing pyroute2 takes about 0.1 s, and a command that finds ikectl down never needs it)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .constants import Action, Direction, Group, Mode
from .errors import (
    AlreadyExists,
    EspUnsupported,
    InvalidXfrmInput,
    KernelRefused,
    NotFound,
    XfrmDecodeError,
    XfrmError,
)
from .model import (
    OWNED_PRIORITY_MAX,
    OWNED_PRIORITY_MIN,
    Algorithm,
    AlgorithmInfo,
    Lifetime,
    Policy,
    SaCounters,
    SaInfo,
    SaSpec,
    Selector,
    Template,
    algorithm,
)

if TYPE_CHECKING:
    from .client import (
        Batches,
        EspSupport,
        PreparedPolicies,
        Request,
        XfrmClient,
        acq_expires,
        event_socket,
        events,
        larval_drop,
        monitor,
        probe_esp,
        set_acq_expires,
        set_larval_drop,
    )
    from .codec import (
        Acquire,
        Flushed,
        PolicyAdded,
        PolicyDeleted,
        PolicyExpired,
        SaAdded,
        SaDeleted,
        SaExpired,
        XfrmEvent,
    )

_LAZY = {
    **dict.fromkeys(("Batches", "EspSupport", "PreparedPolicies", "Request", "XfrmClient", "acq_expires",
                     "event_socket", "events", "larval_drop", "monitor", "probe_esp", "set_acq_expires",
                     "set_larval_drop"), "client"),
    **dict.fromkeys(("Acquire", "Flushed", "PolicyAdded", "PolicyDeleted", "PolicyExpired", "SaAdded", "SaDeleted",
                     "SaExpired", "XfrmEvent"), "codec"),
}


def __getattr__(name: str) -> object:
    """The pyroute2 half of the API, imported when first asked for (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:  # also how `from ikecommon.xfrm import codec` falls through to the submodule
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def preload() -> None:
    """Import the pyroute2 half now, for a process that sleeps and must then act at once (the portal closer:
    importing pyroute2 at its deadline kept clear DNS open seconds longer under TCG)."""
    for name in _LAZY:
        __getattr__(name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "OWNED_PRIORITY_MAX",
    "OWNED_PRIORITY_MIN",
    "Acquire",
    "Action",
    "Algorithm",
    "AlgorithmInfo",
    "AlreadyExists",
    "Batches",
    "Direction",
    "EspSupport",
    "EspUnsupported",
    "Flushed",
    "Group",
    "InvalidXfrmInput",
    "KernelRefused",
    "Lifetime",
    "Mode",
    "NotFound",
    "Policy",
    "PolicyAdded",
    "PolicyDeleted",
    "PolicyExpired",
    "PreparedPolicies",
    "Request",
    "SaAdded",
    "SaCounters",
    "SaDeleted",
    "SaExpired",
    "SaInfo",
    "SaSpec",
    "Selector",
    "Template",
    "XfrmClient",
    "XfrmDecodeError",
    "XfrmError",
    "XfrmEvent",
    "acq_expires",
    "algorithm",
    "event_socket",
    "events",
    "larval_drop",
    "monitor",
    "probe_esp",
    "set_acq_expires",
    "set_larval_drop",
]
