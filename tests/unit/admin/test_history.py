"""The status page's chart ring and the merged event list."""

from __future__ import annotations

from ftplb.admin.history import History
from ftplb.admin.source import merge_events


def snap(**backends: tuple[int, int]) -> dict[str, object]:
    return {
        "backends": [
            {"name": n, "sessions": {"current": s}, "bytes": {"in": b, "out": 0}}
            for n, (s, b) in backends.items()
        ]
    }


def test_series_per_backend_with_throughput_between_samples() -> None:
    h = History(keep=3)
    h.sample(snap(a=(1, 0)), 100.0)
    h.sample(snap(a=(2, 5000), b=(0, 0)), 105.0)
    h.sample(snap(a=(3, 15000), b=(1, 100)), 110.0)
    h.sample(snap(a=(0, 15000), b=(1, 600)), 115.0)  # the oldest falls out
    series = h.series()
    assert series["times"] == [105.0, 110.0, 115.0]
    assert series["backends"]["a"] == {"sessions": [2, 3, 0], "throughput": [0, 2000.0, 0.0]}
    assert series["backends"]["b"] == {"sessions": [0, 1, 1], "throughput": [0, 20.0, 100.0]}


def test_a_backend_that_comes_later_has_gaps_before() -> None:
    h = History()
    h.sample(snap(a=(1, 0)), 1.0)
    h.sample(snap(a=(1, 0), new=(4, 10)), 6.0)
    assert h.series()["backends"]["new"]["sessions"] == [None, 4]


def test_events_of_several_workers_merge_in_time_order_once_each() -> None:
    w0 = [
        {"time": 10.0, "kind": "operator", "text": "drain"},
        {"time": 12.0, "kind": "ban", "text": "x"},
    ]
    w1 = [
        {"time": 10.4, "kind": "operator", "text": "drain"},
        {"time": 11.0, "kind": "health", "text": "up"},
    ]
    later = [{"time": 20.0, "kind": "operator", "text": "drain"}]
    merged = merge_events(w0, w1, later)
    assert [(e["time"], e["text"]) for e in merged] == [
        (10.0, "drain"),
        (11.0, "up"),
        (12.0, "x"),
        (20.0, "drain"),  # a second drain later is an event of its own
    ]
