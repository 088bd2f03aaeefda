"""Token buckets by name (an API key, a client address) in a table of bounded size.

A bucket holds up to ``burst`` tokens and gains ``per_second`` of them every second; a
request takes one. The table never grows past ``max_entries``: a full bucket carries no
information and is the first to go, so an attacker inventing names (random keys,
spoofed addresses) costs memory up to the bound and no more.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class TokenBuckets:
    def __init__(
        self,
        *,
        per_second: float,
        burst: int,
        max_entries: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_second = per_second
        self.burst = float(burst)
        self.max_entries = max_entries
        self._clock = clock
        # name -> (tokens, when they were counted); insertion order is least recently used
        self._buckets: dict[str, tuple[float, float]] = {}

    @property
    def enabled(self) -> bool:
        return self.per_second > 0

    def _level(self, name: str, now: float) -> float:
        entry = self._buckets.get(name)
        if entry is None:
            return self.burst
        tokens, stamp = entry
        return min(self.burst, tokens + (now - stamp) * self.per_second)

    def _wait(self, level: float) -> float:
        return (1.0 - level) / self.per_second

    def _store(self, name: str, level: float, now: float) -> None:
        self._buckets.pop(name, None)
        if len(self._buckets) >= self.max_entries:
            self._evict(now)
        self._buckets[name] = (level, now)

    def _evict(self, now: float) -> None:
        full = [n for n in self._buckets if self._level(n, now) >= self.burst]
        for name in full:
            del self._buckets[name]
        # Still full of busy buckets: drop the least recently used tenth.
        if len(self._buckets) >= self.max_entries:
            for name in list(self._buckets)[: max(1, self.max_entries // 10)]:
                del self._buckets[name]

    def take(self, name: str) -> float:
        """Take a token: 0 when one was there, else the seconds until there is one (and
        nothing is taken)."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        level = self._level(name, now)
        if level < 1.0:
            return self._wait(level)
        self._store(name, level - 1.0, now)
        return 0.0

    def wait_time(self, name: str) -> float:
        """Seconds until ``name`` has a token (0: it has one now); takes nothing."""
        if not self.enabled:
            return 0.0
        level = self._level(name, self._clock())
        return 0.0 if level >= 1.0 else self._wait(level)

    def charge(self, name: str) -> None:
        """Take a token whether or not there is one (down to a debt of ``burst``): for
        what is only known to count once it has happened."""
        if not self.enabled:
            return
        now = self._clock()
        self._store(name, max(-self.burst, self._level(name, now) - 1.0), now)

    def forget(self, name: str) -> None:
        self._buckets.pop(name, None)

    def __len__(self) -> int:
        return len(self._buckets)


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` in whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
