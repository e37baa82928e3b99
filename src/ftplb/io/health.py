"""The asyncio health prober: runs checks and feeds results to HealthTracker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from ftplb.balancer.health import HealthTracker
from ftplb.balancer.pool import Backend, Pool
from ftplb.config import Config
from ftplb.logs import event
from ftplb.proto import proxy_protocol
from ftplb.proto.lines import BadReply, ReplyReader
from ftplb.shared import Shared, SharedHealth

log = logging.getLogger("ftplb.health")


async def probe(host: str, port: int, check: str, timeout: float, proxy: str) -> tuple[bool, str]:
    """One check. Returns (ok, what happened)."""
    writer: asyncio.StreamWriter | None = None
    stage = "connect"
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            # A backend that expects PROXY waits for the header before it
            # greets: announce a LOCAL connection (the proxy's own).
            if proxy != "off":
                writer.write(proxy_protocol.encode(proxy, None, None))
            if check == "tcp":
                return True, "connected"
            stage = "greeting"
            replies = ReplyReader()
            while True:
                data = await reader.read(4096)
                if not data:
                    return False, "closed before greeting"
                got = replies.feed(data)
                if got:
                    break
            first = got[0]
            if isinstance(first, BadReply):
                return False, f"bad greeting: {first}"
            if first.code != 220:
                return False, f"greeted with {first.code}"
            writer.write(b"QUIT\r\n")
            return True, "greeted with 220"
    except TimeoutError:
        what = "no connection" if stage == "connect" else "no greeting"
        return False, f"{what} within {timeout:g}s"
    except OSError as exc:
        return False, f"{stage} failed: {exc.strerror or exc}"
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


class HealthChecker:
    """Checks every backend of `pool` every `interval` seconds.

    With several workers only worker 0 keeps checking and publishes what it
    finds (`shared`); the others check once at start-up (no worker accepts
    clients blind) and then follow worker 0's results."""

    def __init__(self, config: Config, pool: Pool, shared: Shared | None = None) -> None:
        self.config = config
        self.pool = pool
        h = config.health
        self.trackers = {b.name: HealthTracker(h.rise, h.fall) for b in pool.backends}
        self._tasks: list[asyncio.Task[None]] = []
        self.published: SharedHealth | None = None
        self.followed: SharedHealth | None = None
        if shared is not None and shared.workers > 1:
            if shared.worker == 0:
                self.published = shared.health
            else:
                self.followed = shared.health

    async def check(self, backend: Backend) -> None:
        h = self.config.health
        ok, status = await probe(
            backend.config.address.host,
            backend.config.address.port,
            h.check,
            h.timeout,
            self.config.proxy_version(backend.config),
        )
        backend.last_check = status
        if not ok:
            backend.check_failures_total += 1
        tracker = self.trackers[backend.name]
        first = tracker.up is None
        if tracker.record(ok):
            backend.health_changed(bool(tracker.up), time.time())
            if self.published is not None:
                self.published.publish(backend.name, backend.up)
            state = "UP" if backend.up else "DOWN"
            level = logging.INFO if backend.up or first else logging.WARNING
            event(log, level, "health", "backend %s is %s (%s)", backend.name, state, status)

    async def first_round(self) -> None:
        """One check of every backend, in parallel: bounded by the check timeout."""
        h = self.config.health
        for b in self.pool.backends:  # discovered since we were made
            self.trackers.setdefault(b.name, HealthTracker(h.rise, h.fall))
        await asyncio.gather(*(self.check(b) for b in self.pool.backends))

    def start(self) -> None:
        if self.followed is not None:
            self._tasks.append(asyncio.create_task(self._follow(), name="health (following)"))
            return
        for b in self.pool.backends:
            self._tasks.append(asyncio.create_task(self._loop(b), name=f"health {b.name}"))

    async def _follow(self) -> None:
        """Take worker 0's results as they come (a backend it has not checked yet
        keeps the state of our own start-up check, or stays down)."""
        assert self.followed is not None
        pause = min(max(self.config.health.interval / 4, 0.05), 0.5)
        while True:
            for b in self.pool.backends:
                up = self.followed.read(b.name)
                if up is not None and (up != b.up or not b.checked):
                    b.health_changed(up, time.time())
                    b.last_check = "as worker 0 checked it"
            await asyncio.sleep(pause)

    async def sync(self, config: Config) -> None:
        """After a reload: new settings, a loop per current backend (new ones checked at once)."""
        await self.stop()
        self.config = config
        h = config.health
        trackers = {}
        for b in self.pool.backends:
            known = self.trackers.get(b.name) if b.checked else None
            tracker = known or HealthTracker(h.rise, h.fall)
            tracker.rise, tracker.fall = h.rise, h.fall
            trackers[b.name] = tracker
        self.trackers = trackers
        self.start()

    async def _loop(self, backend: Backend) -> None:
        while True:
            if self.trackers[backend.name].up is not None:
                await asyncio.sleep(self.config.health.interval)
            try:
                await self.check(backend)
            except Exception:  # a bug here must not stop checking
                log.exception("health check of %s failed", backend.name)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
