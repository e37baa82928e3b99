"""State that worker processes share: counters in one anonymous shared mapping.

The mapping is made before the workers are forked, so every worker sees the
same pages. Counters have one column per worker and each worker writes only
its own: no locks, and a reader sums the columns (a sum may be one event
stale, never torn: int32 stores are atomic on the platforms we run on).
Keys are hashed into a fixed number of buckets: two keys that share a bucket
count together, which can only make a limit stricter, never looser.

With one worker the same class works on private memory.
"""

from __future__ import annotations

import mmap
import zlib

BUCKETS = 1 << 14


def _bucket(key: str, buckets: int) -> int:
    return zlib.crc32(key.encode("utf-8", "surrogateescape")) % buckets


class SharedCounters:
    """`workers` columns of `buckets` int32 counters."""

    def __init__(self, workers: int = 1, buckets: int = BUCKETS) -> None:
        self.workers = workers
        self.buckets = buckets
        self.worker = 0
        """The column this process writes (set in each worker after the fork)."""
        self._map = mmap.mmap(-1, workers * buckets * 4)  # MAP_SHARED | MAP_ANONYMOUS
        self._cells = memoryview(self._map).cast("i")

    def add(self, key: str, delta: int) -> None:
        i = self.worker * self.buckets + _bucket(key, self.buckets)
        self._cells[i] += delta

    def total(self, key: str) -> int:
        b = _bucket(key, self.buckets)
        return sum(self._cells[w * self.buckets + b] for w in range(self.workers))


class SharedDeadlines:
    """A deadline per key (whole seconds of the monotonic clock, which all
    processes share), any worker may extend it: used for bans."""

    def __init__(self, buckets: int = BUCKETS) -> None:
        self.buckets = buckets
        self._map = mmap.mmap(-1, buckets * 8)
        self._cells = memoryview(self._map).cast("q")

    def extend(self, key: str, until: float) -> None:
        i = _bucket(key, self.buckets)
        self._cells[i] = max(self._cells[i], int(until) + 1)

    def active(self, key: str, now: float) -> bool:
        return self._cells[_bucket(key, self.buckets)] > now


class Shared:
    """Everything the workers of one balancer share."""

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers
        self.worker = 0
        self.sessions = SharedCounters(workers, 1)
        """Control sessions open, all workers (max_sessions)."""
        self.per_ip = SharedCounters(workers)
        """Control sessions per client address (max_per_ip)."""
        self.data_by_client = SharedCounters(workers)
        """Open data connections per (client address, backend): a routed control
        session is not idle while its data moves, whichever worker carries it."""
        self.bans = SharedDeadlines()
        self.backends = SharedCounters(workers)
        """Per backend: current and total sessions, all workers (leastconn)."""

    def set_worker(self, index: int) -> None:
        self.worker = index
        for counters in (self.sessions, self.per_ip, self.data_by_client, self.backends):
            counters.worker = index
