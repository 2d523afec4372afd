"""ikectl's errors: the project's one hierarchy (ikecommon.errors), its root named for ikectl. The CLI turns an
IkectlError into one line on stderr and its `exit_code` (1: the operation failed, 2: bad usage or config)."""

from __future__ import annotations

from ikecommon.errors import Error as IkectlError
from ikecommon.errors import UsageError

__all__ = ["IkectlError", "UsageError"]
