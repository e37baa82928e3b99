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
import ipaddress
import mmap
import multiprocessing
import uuid
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


class SharedLogins:
    """Failed logins and bans per client address, for every worker.

    A table of cells keyed by the address itself, so that no two addresses
    share a cell (a ban never falls on a bystander). A cell holds the address,
    a ban deadline and the times of its last `ring` failures: an address is
    banned when `max_failures` of them lie within `window` seconds (a sliding
    window, exact while max_failures <= ring). Writers take a lock (failed
    logins are rare and must not be lost to a race between workers); `banned`,
    asked for every new session, reads without it: each field is one aligned
    8-byte word. Times are milliseconds of the monotonic clock all processes
    share. When the cells near an address are all live, the one whose last
    failure is oldest (and that is not banned) makes room.
    """

    PROBE = 16
    _FLAGS, _HI, _LO, _UNTIL, _NEXT = range(5)

    def __init__(self, ring: int = 16, cells: int = 1 << 14) -> None:
        self.ring = max(16, ring)
        self.cells = cells
        self.width = 5 + self.ring
        self._map = mmap.mmap(-1, cells * self.width * 8)
        self._q = memoryview(self._map).cast("Q")
        self._lock = multiprocessing.Lock()

    @staticmethod
    def _key(ip: str) -> int:
        address = ipaddress.ip_address(ip)
        if address.version == 4:
            return 0xFFFF << 32 | int(address)  # as ::ffff:a.b.c.d
        return int(address)

    def _cell(self, key: int, claim: bool, now: int, window: int) -> int | None:
        """The base index of `key`'s cell; with `claim`, a free (or freed) one if none."""
        q, width = self._q, self.width
        hi, lo = key >> 64, key & 0xFFFFFFFFFFFFFFFF
        start = zlib.crc32(key.to_bytes(16, "big")) % self.cells
        spare: int | None = None
        oldest: tuple[int, int] | None = None
        for i in range(self.PROBE):
            base = (start + i) % self.cells * width
            if q[base + self._FLAGS] and q[base + self._HI] == hi and q[base + self._LO] == lo:
                return base
            if not claim:
                continue
            last = self._last(base)
            idle = q[base + self._UNTIL] <= now and now - last >= window
            if spare is None and (not q[base + self._FLAGS] or idle):
                spare = base
            elif q[base + self._UNTIL] <= now and (oldest is None or last < oldest[0]):
                oldest = (last, base)
        if not claim:
            return None
        if spare is None and oldest is None:
            return None  # every cell near it holds a ban: this address goes uncounted
        base = spare if spare is not None else oldest[1]  # type: ignore[index]
        q[base : base + width] = memoryview(bytes(width * 8)).cast("Q")
        q[base + self._HI], q[base + self._LO] = hi, lo
        q[base + self._FLAGS] = 1
        return base

    def _last(self, base: int) -> int:
        """The time of a cell's latest failure (0: none)."""
        q = self._q
        index = (q[base + self._NEXT] - 1) % self.ring
        return int(q[base + 5 + index])

    def failed(self, ip: str, now: float, max_failures: int, window: float, ban: float) -> bool:
        """Record a failed login at `now`; True when it bans the address until now + ban."""
        if max_failures <= 0:
            return False
        now_ms, window_ms = _ms(now), _ms(window)
        with self._lock:
            base = self._cell(self._key(ip), True, now_ms, window_ms)
            if base is None:
                return False
            q = self._q
            at = q[base + self._NEXT]
            q[base + 5 + at % self.ring] = now_ms
            q[base + self._NEXT] = at + 1
            counted = min(max_failures, self.ring)
            if at + 1 < counted:
                return False
            # The max_failures-th latest failure (or the oldest one kept).
            first = q[base + 5 + (at + 1 - counted) % self.ring]
            if now_ms - first >= window_ms:
                return False
            q[base + self._UNTIL] = now_ms + _ms(ban)
            for i in range(self.ring):  # served: counting starts afresh
                q[base + 5 + i] = 0
            q[base + self._NEXT] = 0
            return True

    def impose(self, ip: str, now: float, until: float, window: float) -> None:
        """A ban decided elsewhere (another ftplb node): `ip` is refused until
        `until` (both on the monotonic clock). `window`: login_failure_window, so
        that claiming a cell never evicts another address's recent failures."""
        if until <= now:
            return
        with self._lock:
            base = self._cell(self._key(ip), True, _ms(now), _ms(window))
            if base is not None and self._q[base + self._UNTIL] < _ms(until):
                self._q[base + self._UNTIL] = _ms(until)

    def banned(self, ip: str, now: float) -> bool:
        base = self._cell(self._key(ip), False, 0, 0)
        return base is not None and self._q[base + self._UNTIL] > _ms(now)

    def lift(self, ip: str) -> bool:
        """Forget the address: its ban and its failures. True if there was a ban."""
        with self._lock:
            base = self._cell(self._key(ip), False, 0, 0)
            if base is None:
                return False
            was = bool(self._q[base + self._UNTIL])
            self._q[base + self._FLAGS] = 0
            return was

    def bans(self, now: float) -> list[tuple[str, float]]:
        """(address, until) of every ban in force, until on the monotonic clock."""
        q, width, now_ms = self._q, self.width, _ms(now)
        found = []
        for base in range(0, self.cells * width, width):
            until = q[base + self._UNTIL]
            if q[base + self._FLAGS] and until > now_ms:
                key = q[base + self._HI] << 64 | q[base + self._LO]
                address = ipaddress.IPv6Address(key)
                ip = address.ipv4_mapped or address
                found.append((str(ip), until / 1000))
        return found


def _ms(seconds: float) -> int:
    return max(0, int(seconds * 1000))


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

    def __init__(self, workers: int = 1, login_ring: int = 16) -> None:
        self.workers = workers
        self.worker = 0
        self.sessions = SharedCounters(workers, 1)
        """Control sessions open, all workers (max_sessions)."""
        self.per_ip = SharedCounters(workers)
        """Control sessions per client address (max_per_ip)."""
        self.data_by_client = SharedCounters(workers)
        """Open data connections per (client address, backend): a routed control
        session is not idle while its data moves, whichever worker carries it."""
        self.logins = SharedLogins(login_ring)
        """Failed logins and bans (inspect mode)."""
        self.backends = SharedCounters(workers)
        """Per backend: current and total sessions, all workers (leastconn)."""
        self.health = SharedHealth()
        """Worker 0's health checks, followed by the other workers."""
        self.instance = uuid.uuid4().hex
        """This running balancer, all its workers ([cluster]: who holds the node name)."""

    def set_worker(self, index: int) -> None:
        self.worker = index
        for counters in (self.sessions, self.per_ip, self.data_by_client, self.backends):
            counters.worker = index
