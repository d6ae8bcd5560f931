"""Which adapter a request reaches: the live one, whatever version name the client holds.

vLLM has no model aliases, so loopd gives clients one stable name (``proxy.model_name``)
and resolves it per request to the serving name of the live adapter (or the bare base
model). A client that still names a version loopd served before (``loopd-v0003``) reaches
the live one too: a swap never fails a request, and no client changes names.

The live name is read from the store at most every ``ttl_s``; between reads a request may
still reach the version just swapped out, which serves it until drained. When that
version is already retired, the backend refuses the lease and the caller asks again with
``fresh=True``.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable


class UnknownModel(LookupError):
    """The client named a model the proxy does not serve."""


class ModelRouter:
    def __init__(
        self,
        public_name: str,
        live_name: Callable[[], str | None],
        *,
        version_prefix: str,
        ttl_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.public_name = public_name
        self._live_name = live_name
        self._versions = re.compile(re.escape(version_prefix) + r"-v\d{4,}")
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, str | None] | None = None

    def accepts(self, model: str) -> bool:
        return model == self.public_name or self._versions.fullmatch(model) is not None

    def resolve(self, model: str, *, fresh: bool = False) -> str | None:
        """The serving name ``model`` reaches now (None: the base model)."""
        if not self.accepts(model):
            raise UnknownModel(
                f"model: {model!r} is not served here; use {self.public_name!r} "
                "(GET /v1/models), which always reaches the live adapter"
            )
        return self.live(fresh=fresh)

    def live(self, *, fresh: bool = False) -> str | None:
        now = self._clock()
        with self._lock:
            if not fresh and self._cached is not None and now - self._cached[0] < self._ttl_s:
                return self._cached[1]
        name = self._live_name()
        with self._lock:
            self._cached = (now, name)
        return name
