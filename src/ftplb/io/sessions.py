"""What routed and inspect mode share about a session: listening, counting and
admitting sessions, connecting a backend with redispatch, and background tasks."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from ftplb.balancer.pool import Backend, Pool
from ftplb.config import HostPort
from ftplb.shared import Shared

log = logging.getLogger("ftplb.session")


async def listen(
    loop: asyncio.AbstractEventLoop,
    at: HostPort,
    factory: Callable[[], asyncio.BaseProtocol],
    shared: Shared,
    backlog: int,
    tls: ssl.SSLContext | None = None,
    handshake_timeout: float | None = None,
) -> asyncio.Server:
    """A listener as every listener of ours is made: SO_REUSEADDR, and with
    several workers SO_REUSEPORT (each binds; the kernel spreads connections)."""
    return await loop.create_server(
        factory,
        at.host,
        at.port,
        reuse_address=True,
        reuse_port=shared.workers > 1,
        backlog=backlog,
        ssl=tls,
        ssl_handshake_timeout=handshake_timeout if tls is not None else None,
    )


def sockets_of(*servers: asyncio.Server | None) -> list[socket.socket]:
    return [sock for server in servers if server is not None for sock in server.sockets]


class SessionIds:
    """Numeric session ids, unique across workers (the admin API's
    `/api/sessions/ID`): a counter per process, the worker in the last digits."""

    SPAN = 1000
    """More workers than this would share ids (none run that many)."""

    def __init__(self, worker: int) -> None:
        self.worker = worker % self.SPAN
        self.count = 0

    def next(self) -> int:
        self.count += 1
        return self.count * self.SPAN + self.worker


TRANSFER_DIRECTIONS = {"RETR": "download", "STOR": "upload", "APPE": "upload", "STOU": "upload"}
"""What a transfer command moves, for the admin API (the rest are listings)."""


class SessionCounts:
    """Control sessions: open and total in this process, open in all workers
    (what `max_sessions` is checked against)."""

    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        self.current = 0
        self.total = 0
        self.elsewhere_per_ip: dict[str, int] = {}
        """[cluster]: the other nodes' sessions per client address (max_per_ip)."""

    def full(self, max_sessions: int) -> bool:
        """Every worker's sessions, and in a cluster the other nodes' (`elsewhere`,
        from their last heartbeats), have reached `max_sessions`."""
        return self.shared.sessions.total("") + self.elsewhere >= max_sessions

    elsewhere = 0
    """[cluster]: sessions the other nodes hold (io/cluster.py keeps it)."""

    def opened(self) -> None:
        self.current += 1
        self.total += 1
        self.shared.sessions.add("", 1)

    def closed(self) -> None:
        self.current -= 1
        self.shared.sessions.add("", -1)


class Dialer:
    """A session's way to a backend: the policy's choice first, then, while a
    backend fails before the client heard from it (refused, frozen, greeting
    421), the next one it has not tried (HAProxy's redispatch). Every backend
    it holds is assigned in the pool, and released when it gives it up."""

    def __init__(self, pool: Pool, choose: Callable[[set[str]], Backend | None]) -> None:
        self.pool = pool
        self._choose = choose
        self.tried: set[str] = set()
        self.backend: Backend | None = None

    def first(self) -> Backend | None:
        return self._take(self._choose(self.tried))

    def next(self, reason: str) -> Backend | None:
        """The current backend failed (`reason`): give it up, take another."""
        failed, self.backend = self.backend, None
        if failed is not None:
            log.warning("backend %s: %s; redispatching", failed.name, reason)
            self.pool.release(failed, connect_failed=True)
            if self.pool.retire_if_idle(failed):
                log.info("backend %s retired", failed.name)
        return self._take(self._choose(self.tried))

    async def connect(
        self, backend: Backend, attempt: Callable[[Backend], Awaitable[str]]
    ) -> tuple[Backend | None, str]:
        """`attempt` each backend in turn ('' means connected): the one that took
        it, or None and the last reason."""
        current: Backend | None = backend
        reason = ""
        while current is not None:
            reason = await attempt(current)
            if not reason:
                return current, ""
            current = self.next(reason)
        return None, reason

    def _take(self, backend: Backend | None) -> Backend | None:
        if backend is not None:
            self.tried.add(backend.name)
            self.pool.assign(backend)
        self.backend = backend
        return backend


class Tasks:
    """Background tasks of one owner, cancelled together; a finished task is
    forgotten (its frame would keep the owner's objects alive)."""

    __slots__ = ("_loop", "_tasks")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()
