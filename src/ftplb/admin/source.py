"""What the admin API reads and changes, as plain data.

`LocalSource` wraps this process's running balancer (`app.Runtime`, seen
through the `Running` protocol: the admin layer imports nothing above it).
With several workers the supervisor uses `GroupSource` (ftplb/workers.py),
which asks every worker for its `snapshot()` and adds them up with `merge`,
and sends each change to all.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Protocol

from ftplb.balancer.pool import Backend, Pool
from ftplb.config import Config
from ftplb.logs import EVENTS


class Counting(Protocol):
    """What either mode's balancer tells the admin API (io/routed.py, io/inspect.py)."""

    def stats(self) -> dict[str, Any]:
        """sessions, sessions_total, and the counter dicts (rejected, data_connections,
        and in inspect mode logins, transfers, banned)."""

    def session_views(self) -> list[dict[str, Any]]:
        """The live sessions, as `GET /api/sessions` lists them."""

    def close_session(self, session_id: int) -> bool:
        """Close a session's control and data connections; False: no such session."""

    def ban_views(self) -> list[dict[str, Any]]:
        """Bans in force: address, until (epoch s)."""

    def lift_ban(self, ip: str) -> bool:
        """Lift a ban and forget the address's failures; False: it was not banned."""


class Running(Protocol):
    """The running balancer as the admin API sees it (app.Runtime)."""

    config: Config
    pool: Pool
    reloads: int

    @property
    def balancer(self) -> Counting: ...

    def backend(self, name: str) -> Backend | None: ...

    def set_drain(self, name: str, draining: bool) -> bool: ...

    def set_disabled(self, name: str) -> bool: ...

    def set_weight(self, name: str, weight: int) -> bool: ...

    async def reload(self) -> tuple[bool, str]: ...

    def cluster_status(self) -> dict[str, Any] | None:
        """[cluster]: node, connected, nodes; None without a cluster."""

    def stop_soon(self) -> None:
        """Stop as on SIGTERM (a worker whose supervisor went away)."""


Snapshot = dict[str, Any]
"""{"status": {...}, "backends": [backend_json...], "counters": {...}}"""

ACTIONS = ("drain", "enable", "disable")


class Source(Protocol):
    @property
    def config(self) -> Config: ...

    async def snapshot(self) -> Snapshot: ...

    async def act(self, name: str, action: str) -> dict[str, Any] | None:
        """drain | enable | disable; the backend as JSON, None when unknown."""

    async def weight(self, name: str, weight: int) -> dict[str, Any] | None: ...

    async def reload(self) -> tuple[bool, str]: ...

    async def sessions(self) -> list[dict[str, Any]]: ...

    async def close_session(self, session_id: int) -> bool: ...

    async def bans(self) -> list[dict[str, Any]]: ...

    async def lift_ban(self, ip: str) -> bool: ...

    async def events(self) -> list[dict[str, Any]]: ...


def backend_json(b: Backend) -> dict[str, Any]:
    return {
        "name": b.name,
        "address": str(b.config.address),
        "state": b.state,
        "up": b.up,
        "check": {
            "status": b.last_check,
            "last_change": b.last_change or None,
            "failures": b.check_failures_total,
        },
        "sessions": {"current": b.sessions, "total": b.sessions_total, "other_nodes": b.remote},
        "bytes": {"in": b.bytes_in, "out": b.bytes_out},
        "data_connections": b.data_connections_total,
        "weight": b.weight,
        "draining": b.draining,
        "disabled": b.disabled,
        "passive_ports": str(b.config.passive_ports) if b.config.passive_ports else None,
    }


def open_files() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # no /proc
        return -1


def snapshot_of(rt: Running) -> Snapshot:
    b = rt.config.balancer
    stats = rt.balancer.stats()
    sessions, total = stats.pop("sessions"), stats.pop("sessions_total")
    return {
        "status": {
            "mode": b.mode,
            "balance": rt.pool.policy_name,
            "listen": str(b.listen),
            "sessions": sessions,
            "reloads": rt.reloads,
            "workers": 1,
            "cluster": rt.cluster_status(),
            "processes": [
                {
                    "pid": os.getpid(),
                    "sessions": sessions,
                    "total": total,
                    # What a leak shows in first (bench/soak.py compares them at rest).
                    "tasks": len(asyncio.all_tasks()),
                    "open_files": open_files(),
                }
            ],
        },
        "backends": [backend_json(x) for x in [*rt.pool.backends, *rt.pool.retired]],
        "counters": stats,
    }


class LocalSource:
    """This process's Runtime."""

    def __init__(self, runtime: Running) -> None:
        self.runtime = runtime

    @property
    def config(self) -> Config:
        return self.runtime.config

    async def snapshot(self) -> Snapshot:
        return snapshot_of(self.runtime)

    async def act(self, name: str, action: str) -> dict[str, Any] | None:
        rt = self.runtime
        if action == "drain":
            done = rt.set_drain(name, True)
        elif action == "enable":
            done = rt.set_drain(name, False)
        else:
            done = rt.set_disabled(name)
        backend = rt.backend(name)
        return backend_json(backend) if done and backend is not None else None

    async def weight(self, name: str, weight: int) -> dict[str, Any] | None:
        backend = self.runtime.backend(name)
        if backend is None or not self.runtime.set_weight(name, weight):
            return None
        return backend_json(backend)

    async def reload(self) -> tuple[bool, str]:
        return await self.runtime.reload()

    async def sessions(self) -> list[dict[str, Any]]:
        return self.runtime.balancer.session_views()

    async def close_session(self, session_id: int) -> bool:
        return self.runtime.balancer.close_session(session_id)

    async def bans(self) -> list[dict[str, Any]]:
        return self.runtime.balancer.ban_views()

    async def lift_ban(self, ip: str) -> bool:
        return self.runtime.balancer.lift_ban(ip)

    async def events(self) -> list[dict[str, Any]]:
        return EVENTS.recent()


def merge_events(*rings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Several processes' events as one list, oldest first. An operator's change
    reaches every worker, and each records it: the same text within 2 s is one."""
    merged: list[dict[str, Any]] = []
    last: dict[tuple[str, str], float] = {}
    for e in sorted((e for ring in rings for e in ring), key=lambda e: e["time"]):
        key = (e["kind"], e["text"])
        if key in last and e["time"] - last[key] < 2:
            continue
        last[key] = e["time"]
        merged.append(e)
    return merged


_SUMMED = (
    ("sessions", "current"),
    ("sessions", "total"),
    ("bytes", "in"),
    ("bytes", "out"),
    ("check", "failures"),
)


def merge(snapshots: list[Snapshot]) -> Snapshot:
    """Several workers' snapshots as one balancer's: counts add up; settings and
    health come from the first worker (all get the same changes)."""
    first = snapshots[0]
    status = dict(first["status"])
    status["sessions"] = sum(s["status"]["sessions"] for s in snapshots)
    status["workers"] = len(snapshots)
    status["processes"] = [p for s in snapshots for p in s["status"]["processes"]]
    backends: dict[str, dict[str, Any]] = {}
    for snap in snapshots:
        for b in snap["backends"]:
            mine = backends.get(b["name"])
            if mine is None:
                backends[b["name"]] = _copy(b)
                continue
            for outer, inner in _SUMMED:
                mine[outer][inner] += b[outer][inner]
            mine["data_connections"] += b["data_connections"]
    counters: dict[str, Any] = {}
    for snap in snapshots:
        for key, value in snap["counters"].items():
            if isinstance(value, dict):
                into = counters.setdefault(key, {})
                for k, v in value.items():
                    into[k] = into.get(k, 0) + v
            else:  # banned addresses: each worker bans on its own count, shared after
                counters[key] = max(counters.get(key, 0), value)
    return {"status": status, "backends": list(backends.values()), "counters": counters}


def _copy(b: dict[str, Any]) -> dict[str, Any]:
    return {k: dict(v) if isinstance(v, dict) else v for k, v in b.items()}
