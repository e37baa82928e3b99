"""The status page's charts: per-backend sessions and throughput over the last
15 minutes, sampled from the admin API's own snapshots into a small ring (a
sample every 5 s, 180 kept). Throughput is the growth of the byte counters
between samples (they grow when a connection ends, so a long transfer shows
as one step when it completes)."""

from __future__ import annotations

from collections import deque
from typing import Any

INTERVAL = 5.0
KEEP = 180


class History:
    def __init__(self, keep: int = KEEP) -> None:
        self.samples: deque[tuple[float, dict[str, tuple[int, int]]]] = deque(maxlen=keep)

    def sample(self, snapshot: dict[str, Any], now: float) -> None:
        """Record each backend's current sessions and byte total at `now` (epoch s)."""
        self.samples.append(
            (
                now,
                {
                    b["name"]: (b["sessions"]["current"], b["bytes"]["in"] + b["bytes"]["out"])
                    for b in snapshot["backends"]
                },
            )
        )

    def series(self) -> dict[str, Any]:
        """{"interval", "times": [...], "backends": {name: {"sessions", "throughput"}}};
        throughput in bytes/s between a sample and the one before it (0 first)."""
        times = [t for t, _ in self.samples]
        names: list[str] = []
        for _, values in self.samples:
            names += [n for n in values if n not in names]
        backends: dict[str, dict[str, list[float | None]]] = {}
        for name in names:
            sessions: list[float | None] = []
            throughput: list[float | None] = []
            previous: tuple[float, int] | None = None
            for t, values in self.samples:
                value = values.get(name)
                if value is None:
                    sessions.append(None)
                    throughput.append(None)
                    previous = None
                    continue
                sessions.append(value[0])
                if previous is None or t <= previous[0]:
                    throughput.append(0)
                else:
                    throughput.append(max(0, value[1] - previous[1]) / (t - previous[0]))
                previous = (t, value[1])
            backends[name] = {"sessions": sessions, "throughput": throughput}
        return {"interval": INTERVAL, "times": times, "backends": backends}
