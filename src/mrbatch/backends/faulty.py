"""Fault points applied once, around whatever backend is configured.

The factory wraps each object store, state table and control plane it opens in a
:class:`Guarded` proxy: before every call, the proxy asks the workspace's fault file whether
the port's fault point is armed for its region (``storage``, ``state``, ``control``) and
raises UnavailableError if it is, exactly as an unreachable dependency would. No backend
module checks faults itself, so a new backend gets every chaos experiment for free.
"""

from __future__ import annotations

import functools
from typing import Any

from ..faults import FaultPoints

__all__ = ["Guarded"]


class Guarded:
    """Forwards every public call to ``inner`` after checking ``point`` for ``region``
    (no check when ``region`` is None: an operator's view of the control plane has no
    region to fail). Attributes that are not callables pass through unchecked."""

    def __init__(self, inner: Any, faults: FaultPoints, point: str, region: str | None) -> None:
        self._inner = inner
        self._faults = faults
        self._point = point
        self._region = region

    @property
    def inner(self) -> Any:
        """The backend itself (tests that damage its files on purpose reach it here)."""
        return self._inner

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name.startswith("_") or not callable(attr):
            return attr

        @functools.wraps(attr)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if self._region is not None:
                self._faults.check(self._point, self._region)
            return attr(*args, **kwargs)

        self.__dict__[name] = guarded  # found directly from now on
        return guarded

    def __repr__(self) -> str:
        return f"Guarded({self._inner!r}, {self._point}@{self._region})"
