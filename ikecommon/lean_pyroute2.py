"""Load the pyroute2 modules the programs use without pyroute2's package `__init__`.

pyroute2 0.9's `__init__` imports every netlink family it supports (IPDB, NDB, conntrack, nl80211,
wireguard, plan9, ...) to export their names, and Python runs it before any submodule. ikectl and enclave-ike
use only the netlink socket, the message classes, netns and IPRoute, which import what they need themselves.
The package `__init__` is 75 of the 100 ms `ikecommon.xfrm.client` took to import on these machines, and
the NetworkManager hook must have the backstop in place within 150 ms of its call (docs/performance.md).
A program calls `use()` first thing; a library must not (it would change what `import pyroute2` gives its user).

`use()` registers an empty package module for `pyroute2` with the real package's path, so submodule
imports find their files as usual. It does nothing once pyroute2 itself is loaded. A later
`from pyroute2 import IPRoute` (a name, not a submodule) in the same process would fail, so ikectl
imports names from the submodules that define them.
"""

from __future__ import annotations

import importlib.util
import sys
import types


def use() -> None:
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.submodule_search_locations is None:
        return  # not installed as a package: the usual import reports that
    package = types.ModuleType("pyroute2", "pyroute2, loaded by ikectl without its package __init__")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    package.__file__ = spec.origin
    sys.modules["pyroute2"] = package
