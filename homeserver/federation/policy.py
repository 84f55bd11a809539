"""Which servers we federate with: the operator's allow and deny lists."""

from __future__ import annotations

import re
from collections.abc import Iterable


def _glob(pattern: str) -> re.Pattern[str]:
    # Server ACL style: * is any run of characters, ? one character, nothing else is special.
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.IGNORECASE)


class ServerPolicy:
    """``allows(server_name)``: federation on, the name in the allow list (when there is one)
    and not in the deny list."""

    def __init__(
        self,
        enabled: bool = True,
        allow: Iterable[str] | None = None,
        deny: Iterable[str] = (),
    ) -> None:
        self.enabled = enabled
        self._allow = None if allow is None else [_glob(p) for p in allow]
        self._deny = [_glob(p) for p in deny]

    def allows(self, server_name: str) -> bool:
        if not self.enabled:
            return False
        if self._allow is not None and not any(p.fullmatch(server_name) for p in self._allow):
            return False
        return not any(p.fullmatch(server_name) for p in self._deny)
