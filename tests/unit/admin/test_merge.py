"""`admin.source.merge`: several workers' snapshots read as one balancer's."""

from __future__ import annotations

import copy
from typing import Any

from ftplb.admin.source import Snapshot, backend_json, merge
from ftplb.balancer.pool import Backend
from ftplb.config import parse_config

CONFIG = parse_config(
    {
        "balancer": {"listen": "127.0.0.1:2121", "workers": 3},
        "backends": [
            {"name": "a", "address": "127.0.1.1:21", "passive_ports": "30000-30099"},
            {"name": "b", "address": "127.0.1.2:21", "passive_ports": "30100-30199"},
        ],
    }
)


def backend(index: int, n: int, **state: Any) -> dict[str, Any]:
    """Backend `index` as worker `n` reports it: counters that differ per worker."""
    b = Backend(CONFIG.backends[index])
    b.sessions, b.sessions_total = n, 10 * n
    b.bytes_in, b.bytes_out = 100 * n, 1000 * n
    b.check_failures_total = n
    b.data_connections_total = 7 * n
    for key, value in state.items():
        setattr(b, key, value)
    return backend_json(b)


def snapshot(
    n: int, backends: list[dict[str, Any]], counters: dict[str, Any], **status: Any
) -> Snapshot:
    return {
        "status": {
            "mode": "routed",
            "balance": "leastconn",
            "listen": "127.0.0.1:2121",
            "sessions": 2 * n,
            "reloads": 1,
            "workers": 1,
            "processes": [{"pid": 100 + n, "sessions": 2 * n, "total": 5 * n}],
            **status,
        },
        "backends": backends,
        "counters": counters,
    }


def three_workers() -> list[Snapshot]:
    return [
        snapshot(
            1,
            [backend(0, 1, up=True, last_check="220 greeting"), backend(1, 1, draining=True)],
            {"rejected": {"full": 1}, "logins": {"ok": 3, "failed": 1}, "banned": 2},
        ),
        snapshot(
            2,
            # Health and flags as a later worker saw them: not what the merge shows.
            [backend(0, 2, up=False, last_check="refused"), backend(1, 2, weight=9)],
            {"rejected": {"full": 2, "banned": 4}, "logins": {"ok": 1}, "banned": 5},
            reloads=7,
            balance="roundrobin",
        ),
        snapshot(
            3,
            [backend(0, 3), backend(1, 3)],
            {"rejected": {}, "logins": {"failed": 6}, "transfers": {"ok": 2}, "banned": 1},
            reloads=8,
            listen="127.0.0.1:2122",
        ),
    ]


def test_status_adds_up_sessions_and_lists_every_process() -> None:
    status = merge(three_workers())["status"]
    assert status == {
        "mode": "routed",
        "balance": "leastconn",
        "listen": "127.0.0.1:2121",
        "sessions": 2 + 4 + 6,
        "reloads": 1,
        "workers": 3,
        "processes": [
            {"pid": 101, "sessions": 2, "total": 5},
            {"pid": 102, "sessions": 4, "total": 10},
            {"pid": 103, "sessions": 6, "total": 15},
        ],
    }


def test_backend_counts_add_up_health_and_settings_from_the_first() -> None:
    merged = merge(three_workers())["backends"]
    assert [b["name"] for b in merged] == ["a", "b"]
    a, b = merged
    assert a["sessions"] == {"current": 1 + 2 + 3, "total": 10 + 20 + 30, "other_nodes": 0}
    assert a["bytes"] == {"in": 600, "out": 6000}
    assert a["data_connections"] == 42
    assert a["check"] == {"status": "220 greeting", "last_change": None, "failures": 6}
    assert (a["state"], a["up"]) == ("UP", True)
    assert (b["state"], b["draining"], b["weight"]) == ("DRAIN", True, 1)
    assert b["passive_ports"] == "30100-30199" and b["address"] == "127.0.1.2:21"


def test_counters_dicts_are_summed_and_banned_is_the_largest() -> None:
    assert merge(three_workers())["counters"] == {
        "rejected": {"full": 3, "banned": 4},
        "logins": {"ok": 4, "failed": 7},
        "transfers": {"ok": 2},
        "banned": 5,
    }


def test_a_backend_only_some_workers_know_is_kept() -> None:
    """A worker that has not applied a reload yet may still list a retired backend."""
    first = snapshot(1, [backend(0, 1)], {})
    second = snapshot(2, [backend(0, 2), backend(1, 2, retired=True)], {})
    merged = merge([first, second])["backends"]
    assert [(b["name"], b["state"], b["sessions"]["current"]) for b in merged] == [
        ("a", "DOWN", 3),
        ("b", "RETIRED", 2),
    ]


def test_the_workers_snapshots_are_left_as_they_were() -> None:
    snapshots = three_workers()
    before = copy.deepcopy(snapshots)
    merge(snapshots)
    assert snapshots == before


def test_one_worker_merges_to_itself() -> None:
    only = three_workers()[0]
    assert merge([only]) == only
