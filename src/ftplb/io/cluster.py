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

- Data ports (inspect mode with `advertise`): a (port, client address) pair
  announced here is claimed in `ftplb:data:PORT:CLIENT` (no two nodes announce
  the same pair at once), with where this worker takes forwarded connections;
  a node that receives a data connection nobody waits for there looks it up
  and forwards it (io/forward.py). The claim is the one Redis round trip a
  session may wait on, bounded by CLAIM_TIMEOUT.

Health checks stay per node: each judges what it can reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ftplb.balancer.pool import Pool
from ftplb.config import Config, is_ip
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
CLAIM_TIMEOUT = 0.25
"""The longest a PASV answer waits for its port's claim; then it goes on
without one (a port is then unique on this node only, as without a cluster)."""
PER_IP_LIMIT = 10_000
"""Client addresses a heartbeat carries (max_per_ip): the busiest ones."""

# A claim is ours if nobody holds it, or this balancer does (a stale claim of
# its own: the pair is free here, DataPorts says so); a release deletes only
# the claim it made (a newer one may have taken its place).
_CLAIM = """
local held = redis.call('get', KEYS[1])
if held == false or string.sub(held, 1, string.len(ARGV[3])) == ARGV[3] then
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


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
        instance: str | None = None,
        per_ip: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        self.config = config
        self.pool = pool
        self.counts = counts
        """max_sessions across nodes: told the other nodes' session total."""
        self.per_ip = per_ip
        """This worker's sessions per client address (inspect mode: max_per_ip)."""
        self.hooks = hooks
        self.node = config.cluster.node
        self.worker = worker
        self.instance = instance or uuid.uuid4().hex
        """This balancer, all its workers: it holds the node's name, and its own
        messages are ignored when they come back (its workers share the rest)."""
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
        self._offline_backends: dict[str, dict[str, Any]] = {}
        """Operator changes made during an outage: they win when Redis is back."""
        self._offline_lifts: set[str] = set()
        """Bans lifted during an outage: lifted everywhere when Redis is back."""
        self.synced = asyncio.Event()
        """Set once the stored state (bans, backend settings) has been read."""
        self._claim = self.redis.register_script(_CLAIM)
        self._release = self.redis.register_script(_RELEASE)
        self._releases: list[tuple[str, str]] = []
        """Data-port claims to let go, sent together (release_data)."""
        self._release_due = False
        self.secret: bytes | None = None
        """The cluster's shared secret (`ftplb:secret`, made by the first node):
        forwarded data connections are signed with it (io/forward.py)."""

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
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        with contextlib.suppress(Exception):
            if self.connected:
                await self.redis.delete(self._node_key())
                owner = f"{PREFIX}owner:{self.node}"
                if self.worker == 0 and await self.redis.get(owner) == self.instance:
                    await self.redis.delete(owner)  # a restart may take the name at once
        with contextlib.suppress(Exception):
            await self.redis.aclose()

    def _node_key(self) -> str:
        return f"{PREFIX}node:{self.node}:{self.worker}"

    def _lost(self, exc: BaseException) -> None:
        if self.connected or not self._down_since:
            event(
                log, logging.ERROR, "cluster",
                "cluster: Redis at %s unreachable (%s); going on with this node's own state",
                self.config.cluster.redis, str(exc) or type(exc).__name__,
            )  # fmt: skip
            self._down_since = time.monotonic()
        self.connected = False

    async def _joined(self) -> bool:
        """(Re)join: the node's name must be ours (this balancer's, all workers)."""
        if not await self._hold_name():
            return False
        # Kept across a Redis restart: the first node back stores its own again.
        mine = self.secret.hex() if self.secret is not None else secrets.token_hex(32)
        await self.redis.set(PREFIX + "secret", mine, nx=True)
        self.secret = bytes.fromhex(str(await self.redis.get(PREFIX + "secret")))
        rejoined = not self.connected
        if rejoined:
            event(log, logging.INFO, "cluster", "cluster: connected to Redis as node %s", self.node)
        self.connected = True
        self._down_since = 0.0
        if rejoined and self.synced.is_set():
            # Back after an outage the subscription did not notice: tell what
            # happened meanwhile, read what the others did.
            await self._catch_up()
        return True

    async def _hold_name(self) -> bool:
        """Claim (worker 0) or check the name; False, and loudly once, when another
        running balancer holds it."""
        owner = f"{PREFIX}owner:{self.node}"
        holder = await self.redis.get(owner)
        if holder is None and self.worker == 0:
            await self.redis.set(owner, self.instance, nx=True, ex=NODE_TTL * 2)
            holder = await self.redis.get(owner)
        elif holder == self.instance and self.worker == 0:
            await self.redis.expire(owner, NODE_TTL * 2)
        if holder == self.instance:
            self.refused = False
            return True
        if holder is not None and not self.refused:
            if self.worker == 0:
                event(
                    log, logging.ERROR, "cluster",
                    "cluster: another running ftplb node is named %r: this one stays out of"
                    " the cluster (set [cluster] node to a name of its own)", self.node,
                )  # fmt: skip
            self.refused = True
        if self.refused:
            self.connected = False
        return False  # taken, or worker 0 has not claimed it yet

    async def _catch_up(self) -> None:
        """Bans and backend settings stored while we were away (or before we
        started), and the bans this node made meanwhile, told to the others."""
        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        lifted, self._offline_lifts = self._offline_lifts, set()
        for ip in lifted:
            self._store_lift(pipe, ip)
        changed, self._offline_backends = self._offline_backends, {}
        for name, fields in changed.items():
            self._store_backend(pipe, name, fields)
        for ip, mine in self.hooks.local_bans():
            self._store_ban(pipe, ip, mine)
        await pipe.execute()
        # Read in one round trip per kind (a ban list may be long).
        bans = [key async for key in self.redis.scan_iter(match=PREFIX + "ban:*", count=500)]
        for key, until in zip(bans, await self.redis.mget(bans) if bans else [], strict=True):
            with contextlib.suppress(ValueError, TypeError):
                if until is not None and float(until) > now:
                    self.hooks.impose_ban(key[len(PREFIX + "ban:") :], float(until))
        backends = [k async for k in self.redis.scan_iter(match=PREFIX + "backend:*", count=500)]
        pipe = self.redis.pipeline(transaction=False)
        for key in backends:
            pipe.hgetall(key)
        for key, hash_ in zip(backends, await pipe.execute(), strict=True):
            if hash_:
                name = key[len(PREFIX + "backend:") :]
                decoded = _decode(hash_)
                self.hooks.backend_changed(name, decoded, str(decoded.pop("node", "?")))

    async def _heartbeat(self) -> None:
        backoff = 0.5
        while True:
            try:
                if (not self.connected or self.refused) and not await self._joined():
                    # Refused: the other holder's claim must lapse first. Else
                    # worker 0 has not claimed the name yet: soon.
                    await asyncio.sleep(NODE_TTL if self.refused else 0.2)
                    continue
                await self._beat()
                backoff = 0.5
                await asyncio.sleep(HEARTBEAT)
            except Exception as exc:  # Redis gone, or bad data in it: never fatal
                if not isinstance(exc, RedisError | OSError | TimeoutError):
                    log.exception("cluster: heartbeat failed")
                self._lost(exc)
                for b in self.pool.backends:
                    b.remote = 0  # stale: go on with what this node knows
                if self.counts is not None:
                    self.counts.elsewhere = 0
                    self.counts.elsewhere_per_ip = {}
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _beat(self) -> None:
        mine = {b.name: b.sessions for b in self.pool.backends}
        pipe = self.redis.pipeline(transaction=False)
        beat = {"sessions": json.dumps(mine), "time": str(time.time())}
        advertise = self.config.cluster.advertise
        if advertise is not None:
            beat["advertise"] = advertise.host
        if self.per_ip is not None:
            per_ip = self.per_ip()
            if len(per_ip) > PER_IP_LIMIT:
                per_ip = dict(sorted(per_ip.items(), key=lambda kv: -kv[1])[:PER_IP_LIMIT])
            beat["per_ip"] = json.dumps(per_ip)
        pipe.hset(self._node_key(), mapping=beat)  # type: ignore[arg-type]
        pipe.expire(self._node_key(), NODE_TTL)
        await pipe.execute()
        if not await self._hold_name():
            return  # lost the name (a stall longer than its TTL): out until it is ours
        remote: dict[str, int] = {}
        remote_per_ip: dict[str, int] = {}
        members: dict[str, dict[str, Any]] = {}
        keys = [key async for key in self.redis.scan_iter(match=PREFIX + "node:*", count=500)]
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        for key, heard in zip(keys, await pipe.execute(), strict=True):
            node = key[len(PREFIX + "node:") :].rsplit(":", 1)[0]
            try:
                counts = {str(k): int(v) for k, v in json.loads(heard["sessions"]).items()}
                seen = float(heard["time"])
                per_ip = {str(k): int(v) for k, v in json.loads(heard.get("per_ip", "{}")).items()}
            except (KeyError, ValueError, TypeError, AttributeError):
                continue  # not a heartbeat we understand
            member = members.setdefault(node, {"node": node, "sessions": 0, "last_seen": 0.0})
            member["sessions"] += sum(counts.values())
            member["last_seen"] = max(member["last_seen"], seen)
            advertise = heard.get("advertise")
            if isinstance(advertise, str) and is_ip(advertise):
                member["advertise"] = advertise
            if node == self.node:
                continue  # this node's workers: the shared counters have them
            for name, count in counts.items():
                remote[name] = remote.get(name, 0) + count
            for ip, count in per_ip.items():
                remote_per_ip[ip] = remote_per_ip.get(ip, 0) + count
        for b in self.pool.backends:
            b.remote = remote.get(b.name, 0)
        if self.counts is not None:
            self.counts.elsewhere = sum(remote.values())
            self.counts.elsewhere_per_ip = remote_per_ip
        self.members = members
        self.nodes = len(members | {self.node: {}})

    async def _listen(self) -> None:
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(CHANNEL)
                # Subscribed first, then read what is stored: nothing published
                # in between is missed.
                while not self.connected or self.refused:
                    await asyncio.sleep(0.2)
                await self._catch_up()
                self.synced.set()
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._received(message["data"])
            except Exception as exc:  # Redis gone, or bad data in it: never fatal
                if not isinstance(exc, RedisError | OSError | TimeoutError):
                    log.exception("cluster: listening failed")
                self._lost(exc)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(1.0)

    def _received(self, data: str) -> None:
        try:
            message = json.loads(data)
            if message.get("from") == self.instance or self.refused:
                return
            kind = message.get("type")
            if kind == "ban":
                until = float(message["until"])
                if until > time.time():
                    self.hooks.impose_ban(str(message["address"]), until)
            elif kind == "lift":
                self.hooks.lift_ban(str(message["address"]))
            elif kind == "backend":
                node = str(message.get("node", "?"))
                self.hooks.backend_changed(str(message["name"]), dict(message["fields"]), node)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("cluster: a message not understood was ignored (%s): %.200s", exc, data)

    # -- what this node tells the others (in the background: nobody waits)

    def _send(self, work: Callable[[], Any]) -> None:
        if not self.connected or self.refused:
            return  # bans, lifts and backend changes are told on rejoining

        async def run() -> None:
            try:
                await work()
            except Exception as exc:
                if not isinstance(exc, RedisError | OSError | TimeoutError):
                    log.exception("cluster: a write failed")
                self._lost(exc)

        task = asyncio.ensure_future(run())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _publish(self, pipe: Any, message: dict[str, Any]) -> None:
        pipe.publish(CHANNEL, json.dumps({"from": self.instance, "node": self.node, **message}))

    def _store_ban(self, pipe: Any, ip: str, until: float) -> None:
        pipe.set(PREFIX + "ban:" + ip, until, ex=max(1, int(until - time.time()) + 1))
        pipe.delete(PREFIX + "fail:" + ip)
        self._publish(pipe, {"type": "ban", "address": ip, "until": until})

    def _store_lift(self, pipe: Any, ip: str) -> None:
        pipe.delete(PREFIX + "ban:" + ip, PREFIX + "fail:" + ip)
        self._publish(pipe, {"type": "lift", "address": ip})

    def _store_backend(self, pipe: Any, name: str, fields: dict[str, Any]) -> None:
        # With the node that set them: a node started later names it too.
        mapping = {k: json.dumps(v) for k, v in {**fields, "node": self.node}.items()}
        pipe.hset(PREFIX + "backend:" + name, mapping=mapping)
        self._publish(pipe, {"type": "backend", "name": name, "fields": fields})

    def _store(self, fill: Callable[[Any], None]) -> None:
        """What `fill` puts in a pipeline, sent in the background."""

        async def work() -> None:
            pipe = self.redis.pipeline(transaction=False)
            fill(pipe)
            await pipe.execute()

        self._send(work)

    def banned(self, ip: str, until: float) -> None:
        """This node banned `ip` until `until` (epoch s)."""
        self._store(lambda pipe: self._store_ban(pipe, ip, until))

    def failed(self, ip: str, limit: int, window: float, ban: float) -> None:
        """A failed login here: counted cluster-wide; at `limit`, a ban for all."""
        if limit <= 0:
            return

        async def work() -> None:
            key = PREFIX + "fail:" + ip
            # One transaction: a count never outlives its window (EXPIRE also
            # restarts the window: stricter than the local count, never looser).
            pipe = self.redis.pipeline(transaction=True)
            pipe.incr(key)
            pipe.expire(key, max(1, int(window)))
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
                self._store_ban(pipe, ip, until)
                await pipe.execute()

        self._send(work)

    def lifted(self, ip: str) -> None:
        if not self.connected:
            self._offline_lifts.add(ip)
        self._store(lambda pipe: self._store_lift(pipe, ip))

    def backend_changed(self, name: str, fields: dict[str, Any]) -> None:
        """An operator changed a backend here: stored, and every node applies it."""
        if not self.connected:
            self._offline_backends[name] = fields
        self._store(lambda pipe: self._store_backend(pipe, name, fields))

    # -- data ports (inspect mode with `advertise`; io/passive.py, io/forward.py)

    def claim_value(self, target: str) -> str:
        """What a claim holds: this balancer, where forwarded connections go
        (host:port), and a nonce (a late release never takes a newer claim)."""
        return f"{self.instance} {target} {secrets.token_hex(4)}"

    async def claim_data(self, port: int, client: str, value: str, ttl: float) -> bool:
        """Hold (port, client) cluster-wide for `ttl` s. False when another node
        holds it; True as well when Redis does not answer within CLAIM_TIMEOUT
        (unique on this node only then, as without a cluster; the heartbeat,
        not this, decides whether Redis is gone)."""
        if not self.connected or self.refused:
            return True
        try:
            async with asyncio.timeout(CLAIM_TIMEOUT):  # (wait_for: a task per call)
                held = await self._claim(
                    keys=[_data_key(port, client)],
                    args=[value, int(ttl * 1000), self.instance + " "],
                )
        except (RedisError, OSError, TimeoutError) as exc:
            log.debug("cluster: data port %d not claimed for %s: %r", port, client, exc)
            return True
        return bool(held)

    def release_data(self, port: int, client: str, value: str) -> None:
        """(port, client) connected or given up: let go, with the others let go
        in the same loop turn (one round trip for all; until then, and if this
        never reaches Redis, the claim's expiry lets go)."""
        self._releases.append((_data_key(port, client), value))
        if not self._release_due:
            self._release_due = True
            asyncio.get_running_loop().call_soon(self._flush_releases)

    def _flush_releases(self) -> None:
        self._release_due = False
        releases, self._releases = self._releases, []
        if releases and self.connected and not self.refused:
            self._send(lambda: self._release_all(releases))
        # (else their claims expire: `data_timeout` + 5 s)

    async def _release_all(self, releases: list[tuple[str, str]]) -> None:
        if len(releases) == 1:  # a pipeline costs a SCRIPT EXISTS round trip more
            await self._release(keys=[releases[0][0]], args=[releases[0][1]])
            return
        pipe = self.redis.pipeline(transaction=False)
        for key, value in releases:
            await self._release(keys=[key], args=[value], client=pipe)
        await pipe.execute()

    async def data_owner(self, port: int, client: str) -> tuple[str, int] | None:
        """Where the node holding (port, client) takes it: (host, port), or None
        (nobody holds it, or Redis does not answer)."""
        if not self.connected or self.refused:
            return None
        try:
            async with asyncio.timeout(OP_TIMEOUT):
                held = await self.redis.get(_data_key(port, client))
        except (RedisError, OSError, TimeoutError) as exc:
            log.debug("cluster: owner of data port %d for %s not read: %r", port, client, exc)
            return None
        try:
            _, target, _ = str(held).split(" ", 2)
            host, _, at = target.rpartition(":")
            return host.strip("[]"), int(at)
        except ValueError:
            return None  # None, or not a claim we understand

    def status(self) -> dict[str, Any]:
        advertise = self.config.cluster.advertise
        return {
            "node": self.node,
            "advertise": str(advertise) if advertise is not None else None,
            "connected": self.connected and not self.refused,
            "nodes": self.nodes if self.connected else 1,
            "members": sorted(self.members.values(), key=lambda m: m["node"]),
        }


def _data_key(port: int, client: str) -> str:
    return f"{PREFIX}data:{port}:{client}"


def _decode(fields: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in fields.items():
        with contextlib.suppress(ValueError):
            out[k] = json.loads(v)
    return out
