"""Several ftplb nodes sharing state in Redis (`[cluster] redis`).

Redis is never on a session's path: decisions are made on the local state,
and Redis keeps that state current in the background.

- Bans and lifts: a ban decided here is stored (`ftplb:ban:IP`, expiring with
  it) and published; other nodes impose it on their own table. A node that
  starts later reads the stored ones.
- Failed logins: counted here as always, and added to `ftplb:fail:IP` (expiring
  after the window); when the cluster-wide count reaches the limit, the node
  that saw the last failure bans the address for everyone.
- Operator changes (drain, enable, disable, weight): stored in
  `ftplb:backend:NAME` and published; every node applies them.
- Sessions: each node (each worker) writes its per-backend session counts
  every second under `ftplb:node:NODE:WORKER` with a 5 s expiry, and reads the
  others': leastconn counts every node's sessions, and a dead node's counts
  expire instead of skewing it for ever.
- A Redis outage stops nothing: it is logged once, `ftplb_cluster_connected`
  drops to 0, the node goes on with its own state and reconnects with backoff;
  then it reads the stored state again and writes its own.

Health checks stay per node: each judges what it can reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ftplb.balancer.pool import Pool
from ftplb.config import Config
from ftplb.io.sessions import SessionCounts
from ftplb.logs import event

log = logging.getLogger("ftplb.cluster")

PREFIX = "ftplb:"
CHANNEL = PREFIX + "events"
HEARTBEAT = 1.0
NODE_TTL = 5
"""Seconds a node's session counts outlive its last heartbeat."""
OP_TIMEOUT = 0.5
"""The longest one Redis call may take before it counts as an outage."""


class ClusterHooks:
    """What the cluster changes locally when another node says so."""

    def __init__(
        self,
        impose_ban: Callable[[str, float], None],
        lift_ban: Callable[[str], None],
        backend_changed: Callable[[str, dict[str, Any], str], None],
        local_bans: Callable[[], list[tuple[str, float]]],
    ) -> None:
        self.impose_ban = impose_ban
        self.lift_ban = lift_ban
        self.backend_changed = backend_changed
        self.local_bans = local_bans
        """(address, until epoch s) of this node's bans in force: told on (re)joining."""


class Cluster:
    def __init__(
        self,
        config: Config,
        pool: Pool,
        hooks: ClusterHooks,
        worker: int = 0,
        counts: SessionCounts | None = None,
    ) -> None:
        self.config = config
        self.pool = pool
        self.counts = counts
        """max_sessions across nodes: told the other nodes' session total."""
        self.hooks = hooks
        self.node = config.cluster.node
        self.worker = worker
        self.instance = uuid.uuid4().hex
        """This process: its own messages are ignored when they come back."""
        self.redis: aioredis.Redis = aioredis.Redis.from_url(
            config.cluster.redis,
            socket_timeout=OP_TIMEOUT,
            socket_connect_timeout=OP_TIMEOUT,
            decode_responses=True,
        )
        self.connected = False
        self.refused = False
        """Another running node has our name: we stay out (loudly)."""
        self.nodes = 0
        self.members: dict[str, dict[str, Any]] = {}
        """Every node seen in Redis: sessions (all its workers) and last seen (epoch s)."""
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: set[asyncio.Task[None]] = set()
        self._down_since = 0.0

    # -- life

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._heartbeat(), name="cluster heartbeat"),
            asyncio.create_task(self._listen(), name="cluster listen"),
        ]

    async def stop(self) -> None:
        for t in [*self._tasks, *self._pending]:
            t.cancel()
        for t in [*self._tasks, *self._pending]:
            with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                await t
        with contextlib.suppress(RedisError, OSError):
            if self.connected:
                await self.redis.delete(self._node_key())
        with contextlib.suppress(RedisError, OSError):
            await self.redis.aclose()

    def _node_key(self) -> str:
        return f"{PREFIX}node:{self.node}:{self.worker}"

    def _lost(self, exc: BaseException) -> None:
        if self.connected or not self._down_since:
            event(
                log, logging.ERROR, "cluster",
                "cluster: Redis at %s unreachable (%s); going on with this node's own state",
                self.config.cluster.redis, exc or type(exc).__name__,
            )  # fmt: skip
            self._down_since = time.monotonic()
        self.connected = False

    async def _joined(self) -> bool:
        """(Re)join: claim our name, then catch up with the stored state."""
        owner = f"{PREFIX}owner:{self.node}"
        if self.worker == 0:
            mine = await self.redis.set(owner, self.instance, nx=True, ex=NODE_TTL * 2)
            holder = await self.redis.get(owner)
            if not mine and holder != self.instance:
                if not self.refused:
                    event(
                        log, logging.ERROR, "cluster",
                        "cluster: another running ftplb node is named %r: this one stays out of"
                        " the cluster (set [cluster] node to a name of its own)", self.node,
                    )  # fmt: skip
                self.refused = True
                return False
            self.refused = False
        await self._catch_up()
        if not self.connected:
            event(log, logging.INFO, "cluster", "cluster: connected to Redis as node %s", self.node)
        self.connected = True
        self._down_since = 0.0
        return True

    async def _catch_up(self) -> None:
        """Bans and backend settings stored while we were away (or before we
        started), and the bans this node made meanwhile, told to the others."""
        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        for ip, mine in self.hooks.local_bans():
            pipe.set(PREFIX + "ban:" + ip, mine, ex=max(1, int(mine - now) + 1))
            self._publish(pipe, {"type": "ban", "address": ip, "until": mine})
        await pipe.execute()
        async for key in self.redis.scan_iter(match=PREFIX + "ban:*", count=500):
            stored = await self.redis.get(key)
            if stored is not None and float(stored) > now:
                self.hooks.impose_ban(key[len(PREFIX + "ban:") :], float(stored))
        async for key in self.redis.scan_iter(match=PREFIX + "backend:*", count=500):
            fields = await self.redis.hgetall(key)
            if fields:
                name = key[len(PREFIX + "backend:") :]
                decoded = _decode(fields)  # type: ignore[arg-type]
                self.hooks.backend_changed(name, decoded, str(decoded.pop("node", "?")))

    async def _heartbeat(self) -> None:
        backoff = 0.5
        while True:
            try:
                if (not self.connected or self.refused) and not await self._joined():
                    await asyncio.sleep(NODE_TTL)
                    continue
                await self._beat()
                backoff = 0.5
                await asyncio.sleep(HEARTBEAT)
            except (RedisError, OSError, TimeoutError) as exc:
                self._lost(exc)
                for b in self.pool.backends:
                    b.remote = 0  # stale: go on with what this node knows
                if self.counts is not None:
                    self.counts.elsewhere = 0
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _beat(self) -> None:
        mine = {b.name: b.sessions for b in self.pool.backends}
        pipe = self.redis.pipeline(transaction=False)
        beat = {"sessions": json.dumps(mine), "time": str(time.time())}
        pipe.hset(self._node_key(), mapping=beat)  # type: ignore[arg-type]
        pipe.expire(self._node_key(), NODE_TTL)
        if self.worker == 0:
            pipe.set(f"{PREFIX}owner:{self.node}", self.instance, xx=True, ex=NODE_TTL * 2)
        await pipe.execute()
        remote: dict[str, int] = {}
        members: dict[str, dict[str, Any]] = {}
        async for key in self.redis.scan_iter(match=PREFIX + "node:*", count=500):
            node = key[len(PREFIX + "node:") :].rsplit(":", 1)[0]
            heard: dict[str, str] = await self.redis.hgetall(key)  # type: ignore[assignment]
            counts = json.loads(heard.get("sessions", "{}"))
            member = members.setdefault(node, {"node": node, "sessions": 0, "last_seen": 0.0})
            member["sessions"] += sum(int(c) for c in counts.values())
            member["last_seen"] = max(member["last_seen"], float(heard.get("time", 0)))
            if node == self.node:
                continue  # this node's workers: the shared counters have them
            for name, count in counts.items():
                remote[name] = remote.get(name, 0) + int(count)
        for b in self.pool.backends:
            b.remote = remote.get(b.name, 0)
        if self.counts is not None:
            self.counts.elsewhere = sum(remote.values())
        self.members = members
        self.nodes = len(members | {self.node: {}})

    async def _listen(self) -> None:
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(CHANNEL)
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._received(message["data"])
            except (RedisError, OSError, TimeoutError) as exc:
                self._lost(exc)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(1.0)

    def _received(self, data: str) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            return
        if message.get("from") == self.instance or self.refused:
            return
        kind = message.get("type")
        if kind == "ban":
            self.hooks.impose_ban(str(message["address"]), float(message["until"]))
        elif kind == "lift":
            self.hooks.lift_ban(str(message["address"]))
        elif kind == "backend":
            node = str(message.get("node", "?"))
            self.hooks.backend_changed(str(message["name"]), dict(message["fields"]), node)

    # -- what this node tells the others (in the background: nobody waits)

    def _send(self, work: Callable[[], Any]) -> None:
        if not self.connected or self.refused:
            return  # caught up by the others' reads when we rejoin (bans are stored)

        async def run() -> None:
            try:
                await work()
            except (RedisError, OSError, TimeoutError) as exc:
                self._lost(exc)

        task = asyncio.ensure_future(run())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _publish(self, pipe: Any, message: dict[str, Any]) -> None:
        pipe.publish(CHANNEL, json.dumps({"from": self.instance, "node": self.node, **message}))

    def banned(self, ip: str, until: float) -> None:
        """This node banned `ip` until `until` (epoch s)."""

        async def work() -> None:
            pipe = self.redis.pipeline(transaction=False)
            pipe.set(PREFIX + "ban:" + ip, until, ex=max(1, int(until - time.time()) + 1))
            pipe.delete(PREFIX + "fail:" + ip)
            self._publish(pipe, {"type": "ban", "address": ip, "until": until})
            await pipe.execute()

        self._send(work)

    def failed(self, ip: str, limit: int, window: float, ban: float) -> None:
        """A failed login here: counted cluster-wide; at `limit`, a ban for all."""
        if limit <= 0:
            return

        async def work() -> None:
            key = PREFIX + "fail:" + ip
            pipe = self.redis.pipeline(transaction=False)
            pipe.incr(key)
            pipe.expire(key, max(1, int(window)), nx=True)
            count, _ = await pipe.execute()
            if int(count) >= limit:
                until = time.time() + ban
                self.hooks.impose_ban(ip, until)
                event(
                    log, logging.WARNING, "ban",
                    "client %s banned for %gs after %d failed logins across the cluster",
                    ip, ban, int(count),
                )  # fmt: skip
                pipe = self.redis.pipeline(transaction=False)
                pipe.set(PREFIX + "ban:" + ip, until, ex=max(1, int(ban) + 1))
                pipe.delete(key)
                self._publish(pipe, {"type": "ban", "address": ip, "until": until})
                await pipe.execute()

        self._send(work)

    def lifted(self, ip: str) -> None:
        async def work() -> None:
            pipe = self.redis.pipeline(transaction=False)
            pipe.delete(PREFIX + "ban:" + ip, PREFIX + "fail:" + ip)
            self._publish(pipe, {"type": "lift", "address": ip})
            await pipe.execute()

        self._send(work)

    def backend_changed(self, name: str, fields: dict[str, Any]) -> None:
        """An operator changed a backend here: stored, and every node applies it."""

        async def work() -> None:
            pipe = self.redis.pipeline(transaction=False)
            pipe.hset(
                PREFIX + "backend:" + name, mapping={k: json.dumps(v) for k, v in fields.items()}
            )
            self._publish(pipe, {"type": "backend", "name": name, "fields": fields})
            await pipe.execute()

        self._send(work)

    def status(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "connected": self.connected and not self.refused,
            "nodes": self.nodes if self.connected else 1,
            "members": sorted(self.members.values(), key=lambda m: m["node"]),
        }


def _decode(fields: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in fields.items():
        with contextlib.suppress(ValueError):
            out[k] = json.loads(v)
    return out
