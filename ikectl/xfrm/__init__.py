"""The project's one XFRM library: policies, SAs, events and the ESP probe over NETLINK_XFRM, on pyroute2.
See docs/xfrm.md."""

from .client import EspSupport, XfrmClient, larval_drop, monitor, probe_esp, set_larval_drop
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
    Policy,
    SaCounters,
    SaInfo,
    SaSpec,
    Selector,
    Template,
    algorithm,
)

__all__ = [
    "OWNED_PRIORITY_MAX", "OWNED_PRIORITY_MIN", "Acquire", "Action", "Algorithm", "AlgorithmInfo",
    "AlreadyExists", "Direction", "EspSupport", "EspUnsupported", "Flushed", "Group", "InvalidXfrmInput",
    "KernelRefused", "Mode", "NotFound", "Policy", "PolicyAdded", "PolicyDeleted", "PolicyExpired", "SaAdded",
    "SaCounters", "SaDeleted", "SaExpired", "SaInfo", "SaSpec", "Selector", "Template", "XfrmClient",
    "XfrmDecodeError", "XfrmError", "XfrmEvent", "algorithm", "larval_drop", "monitor", "probe_esp",
    "set_larval_drop",
]
