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

import hashlib
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


class SharedHealth:
    """Each backend's health as worker 0's checks see it, for the other workers
    to follow (a backend sees one probe per interval, not one per worker).

    One int64 cell per backend name, found by open addressing from the name's
    bucket: `tag << 2 | state`, the tag a 48-bit hash of the name, so that two
    names never share a cell. Only worker 0 writes; an aligned 8-byte store is
    atomic, so a reader sees the old value or the new one."""

    DOWN, UP = 1, 2

    def __init__(self, cells: int = 1024) -> None:
        self.cells = cells
        self._map = mmap.mmap(-1, cells * 8)
        self._cells = memoryview(self._map).cast("q")

    @staticmethod
    def _tag(name: str) -> int:
        digest = hashlib.blake2b(name.encode("utf-8", "surrogateescape"), digest_size=6).digest()
        return int.from_bytes(digest, "big") | 1  # never 0: 0 is an empty cell

    def _slot(self, name: str, claim: bool) -> int | None:
        tag = self._tag(name)
        i = _bucket(name, self.cells)
        for _ in range(self.cells):
            value = self._cells[i]
            if value == 0:
                return i if claim else None
            if value >> 2 == tag:
                return i
            i = (i + 1) % self.cells
        return None  # full: the followers check for themselves

    def publish(self, name: str, up: bool) -> None:
        i = self._slot(name, claim=True)
        if i is not None:
            self._cells[i] = self._tag(name) << 2 | (self.UP if up else self.DOWN)

    def read(self, name: str) -> bool | None:
        """Up, down, or None when worker 0 has not checked `name` yet."""
        i = self._slot(name, claim=False)
        return None if i is None else (self._cells[i] & 3) == self.UP


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
        self.health = SharedHealth()
        """Worker 0's health checks, followed by the other workers."""

    def set_worker(self, index: int) -> None:
        self.worker = index
        for counters in (self.sessions, self.per_ip, self.data_by_client, self.backends):
            counters.worker = index
