"""State shared by worker processes: counters, and worker 0's health results."""

from __future__ import annotations

import os

from ftplb.shared import SharedCounters, SharedHealth


def test_health_is_unknown_until_published_then_follows_every_change() -> None:
    health = SharedHealth()
    assert health.read("ftp1") is None
    health.publish("ftp1", True)
    health.publish("ftp2", False)
    assert health.read("ftp1") is True and health.read("ftp2") is False
    health.publish("ftp1", False)
    assert health.read("ftp1") is False
    assert health.read("ftp3") is None


def test_names_never_share_a_health_cell() -> None:
    # A table of 4 cells: every name after the first collides somewhere, and
    # open addressing keeps them apart; a full table reads as unknown.
    health = SharedHealth(cells=4)
    names = ["a", "b", "c", "d"]
    for i, name in enumerate(names):
        health.publish(name, i % 2 == 0)
    assert [health.read(n) for n in names] == [True, False, True, False]
    health.publish("e", True)  # no room: the followers check it themselves
    assert health.read("e") is None


def test_health_published_before_a_fork_is_seen_after_it() -> None:
    health = SharedHealth()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # worker 0
        health.publish("ftp1", True)
        os.write(w, b"x")
        os._exit(0)
    os.read(r, 1)
    os.waitpid(pid, 0)
    os.close(r)
    os.close(w)
    assert health.read("ftp1") is True


def test_counters_add_up_across_columns() -> None:
    counters = SharedCounters(workers=2, buckets=64)
    counters.add("x", 3)
    counters.worker = 1
    counters.add("x", 2)
    counters.add("y", 1)
    assert counters.total("x") == 5 and counters.total("y") == 1
