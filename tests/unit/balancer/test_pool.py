"""`Pool.update` (a reload): which backends stay, which are new, which retire."""

from __future__ import annotations

from typing import Any

from ftplb.balancer.policies import LeastConn, RoundRobin
from ftplb.balancer.pool import Pool
from ftplb.config import BackendConfig, parse_config

A = {"name": "a", "address": "127.0.1.1:21", "passive_ports": "30000-30099"}
B = {"name": "b", "address": "127.0.1.2:21", "passive_ports": "30100-30199"}
C = {"name": "c", "address": "127.0.1.3:21", "passive_ports": "30200-30299"}


def backends(*items: dict[str, Any]) -> tuple[BackendConfig, ...]:
    return parse_config(
        {"balancer": {"listen": "127.0.0.1:2121"}, "backends": list(items)}
    ).backends


def pick(pool: Pool) -> str:
    chosen = pool.choose("192.0.2.1")
    assert chosen is not None
    return chosen.name


def started(*items: dict[str, Any], policy: str = "leastconn") -> Pool:
    """A pool that has run a while: every backend up, with sessions and counters."""
    pool = Pool(backends(*items), policy)
    for i, b in enumerate(pool.backends, 1):
        b.health_changed(True, 1000.0 + i)
        b.sessions, b.sessions_total = i, 10 * i
        b.bytes_in, b.bytes_out = 100 * i, 1000 * i
        b.data_connections_total = 5 * i
    return pool


def test_a_kept_name_keeps_its_state_and_counters_and_takes_the_new_settings() -> None:
    pool = started(A, B)
    a, b = pool.backends
    b.draining = True
    added, retired = pool.update(
        backends({**A, "weight": 5, "send_proxy_data": True}, B), "leastconn"
    )
    assert (added, retired) == ([], [])
    assert pool.backends[0] is a and pool.backends[1] is b
    assert pool.by_name == {"a": a, "b": b}
    assert (a.up, a.checked, a.last_change) == (True, True, 1001.0)
    assert (a.sessions, a.sessions_total, a.bytes_in, a.bytes_out, a.data_connections_total) == (
        1,
        10,
        100,
        1000,
        5,
    )
    assert (a.weight, a.config.weight, a.config.send_proxy_data) == (5, 5, True)
    assert b.draining and not b.retired
    assert pool.retired == []


def test_a_changed_address_makes_a_new_backend_and_retires_the_old() -> None:
    pool = started(A, B)
    old_a, b = pool.backends
    added, retired = pool.update(backends({**A, "address": "127.0.1.9:21"}, B), "leastconn")
    new_a = pool.by_name["a"]
    assert added == [new_a] and retired == [old_a]
    assert new_a is not old_a and pool.backends == [new_a, b]
    assert str(new_a.config.address) == "127.0.1.9:21"
    # The new one starts afresh: unchecked, down, no counters.
    assert (new_a.up, new_a.checked, new_a.sessions, new_a.sessions_total, new_a.bytes_in) == (
        False,
        False,
        0,
        0,
        0,
    )
    # The old one keeps its sessions until they end, but takes no new ones.
    assert (old_a.retired, old_a.state, old_a.sessions, old_a.available) == (
        True,
        "RETIRED",
        1,
        False,
    )
    assert pool.retired == [old_a]


def test_a_changed_passive_range_makes_a_new_backend() -> None:
    pool = started(A, B)
    old_a = pool.backends[0]
    added, retired = pool.update(backends({**A, "passive_ports": "31000-31099"}, B), "leastconn")
    assert [x.name for x in added] == ["a"] and retired == [old_a]
    # Data connections to the old range still find the retired backend.
    assert pool.passive_port_owner(30050) is old_a
    assert pool.passive_port_owner(31050) is added[0]


def test_removed_names_retire_and_new_names_are_added() -> None:
    pool = started(A, B)
    a, b = pool.backends
    added, retired = pool.update(backends(A, C), "leastconn")
    assert [x.name for x in added] == ["c"] and retired == [b]
    assert pool.backends == [a, added[0]] and set(pool.by_name) == {"a", "c"}
    assert b.retired and b.sessions == 2 and pool.retired == [b]
    assert pool.sessions == 1  # retired backends' sessions are not the pool's
    # A new backend waits for its first check; a retired one is never chosen
    # (with no sessions left, leastconn would pick it first otherwise).
    b.sessions = 0
    assert pick(pool) == "a"
    added[0].health_changed(True, 2000.0)
    assert pick(pool) == "c"  # leastconn: c has no session, a has one


def test_retired_backends_accumulate_over_reloads() -> None:
    pool = started(A, B, C)
    a, b, c = pool.backends
    pool.update(backends(A, C), "leastconn")
    pool.update(backends(A), "leastconn")
    assert pool.retired == [b, c] and pool.backends == [a]


def test_a_policy_change_takes_effect_and_the_same_policy_is_kept() -> None:
    pool = started(A, B)
    leastconn = pool.policy
    assert isinstance(leastconn, LeastConn)
    pool.update(backends(A, B), "leastconn")
    assert pool.policy is leastconn  # its tie-break state survives a reload
    pool.update(backends({**A, "weight": 2}, B), "roundrobin")
    assert pool.policy_name == "roundrobin" and isinstance(pool.policy, RoundRobin)
    for x in pool.backends:
        x.sessions = 0
    assert [pick(pool) for _ in range(3)] == ["a", "b", "a"]  # smooth weighted 2:1


def test_a_draining_backend_put_back_comes_back_as_itself() -> None:
    # Removed, then re-added before its sessions drained: a second backend of
    # the same name and passive range would fight the first for its ports.
    pool = started(A, B)
    a, b = pool.backends
    pool.update(backends(A), "leastconn")
    assert b.retired and pool.retired == [b]
    added, retired = pool.update(backends(A, B), "leastconn")
    assert added == [] and retired == []
    assert pool.backends == [a, b] and pool.retired == [] and not b.retired
    assert b.sessions == 2 and b.sessions_total == 20


def test_a_draining_backend_put_back_with_a_new_address_stays_retired() -> None:
    pool = started(A, B)
    _, b = pool.backends
    pool.update(backends(A), "leastconn")
    moved = dict(B, address="127.0.1.3:21")
    added, _ = pool.update(backends(A, moved), "leastconn")
    assert [x.name for x in added] == ["b"] and added[0] is not b
    assert b.retired and pool.retired == [b]
