"""State shared by worker processes: counters, and worker 0's health results."""

from __future__ import annotations

import os

from ftplb.shared import SharedCounters, SharedHealth, SharedLogins


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


def test_logins_sliding_window_ban_and_lift() -> None:
    logins = SharedLogins()
    assert not logins.failed("10.0.0.1", 0, 3, 60, 100)
    assert not logins.failed("10.0.0.1", 50, 3, 60, 100)
    assert not logins.failed("10.0.0.1", 70, 3, 60, 100)  # the first one left the window
    assert logins.failed("10.0.0.1", 75, 3, 60, 100)  # three within 60 s: banned
    assert logins.banned("10.0.0.1", 100) and not logins.banned("10.0.0.2", 100)
    assert logins.bans(100) == [("10.0.0.1", 175.0)]
    assert not logins.banned("10.0.0.1", 175)  # ban over
    assert not logins.failed("10.0.0.1", 180, 3, 60, 100)  # counting started afresh
    logins.failed("2001:db8::1", 200, 1, 60, 100)
    assert logins.banned("2001:db8::1", 201) and not logins.banned("::ffff:10.0.0.1", 201)
    assert logins.lift("2001:db8::1") and not logins.banned("2001:db8::1", 201)
    assert not logins.failed("10.0.0.3", 0, 0, 60, 100)  # 0: banning off
    assert not logins.banned("10.0.0.3", 0)


def test_logins_are_counted_across_workers() -> None:
    # The table is made before the fork: a failure in a child counts in the parent.
    logins = SharedLogins()
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            logins.failed("192.0.2.9", 10, 3, 60, 100)
            os._exit(0)
        os.waitpid(pid, 0)
    assert logins.failed("192.0.2.9", 11, 3, 60, 100)


def test_addresses_never_share_a_ban() -> None:
    # A table of 4 cells: every address collides with another, none takes its ban.
    logins = SharedLogins(cells=4)
    addresses = [f"198.51.100.{i}" for i in range(4)]
    logins.failed(addresses[0], 0, 1, 60, 100)
    assert [logins.banned(a, 1) for a in addresses] == [True, False, False, False]
    # Full of live cells and the rest banned: the newcomer goes uncounted, no ban moves.
    for a in addresses[1:]:
        logins.failed(a, 0, 1, 60, 100)
    assert not logins.failed("198.51.100.200", 1, 1, 60, 100)
    assert all(logins.banned(a, 1) for a in addresses)
