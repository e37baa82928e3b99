"""Balancing policies and rise/fall, without sockets."""

from __future__ import annotations

from collections import Counter

from ftplb.balancer.health import HealthTracker
from ftplb.balancer.policies import rendezvous_pick
from ftplb.balancer.pool import Backend, Pool
from ftplb.config import BackendConfig, HostPort


def pool(policy: str, weights: tuple[int, ...] = (1, 1, 1)) -> Pool:
    configs = [
        BackendConfig(f"b{i}", HostPort(f"10.0.0.{i}", 21), weight=w)
        for i, w in enumerate(weights, 1)
    ]
    p = Pool(configs, policy)
    for b in p.backends:
        b.up = True
    return p


def pick(p: Pool, n: int, key: str = "1.2.3.4", hold: bool = False) -> list[str]:
    names = []
    for _ in range(n):
        b = p.choose(key)
        assert b is not None
        if hold:
            b.sessions += 1
        names.append(b.name)
    return names


def test_leastconn_balances_held_sessions_and_honours_weight() -> None:
    assert Counter(pick(pool("leastconn"), 12, hold=True)) == {"b1": 4, "b2": 4, "b3": 4}
    assert Counter(pick(pool("leastconn", (2, 1, 1)), 12, hold=True)) == {"b1": 6, "b2": 3, "b3": 3}


def test_leastconn_ties_rotate() -> None:
    assert pick(pool("leastconn"), 6) == ["b1", "b2", "b3", "b1", "b2", "b3"]


def test_smooth_weighted_roundrobin() -> None:
    assert pick(pool("roundrobin", (5, 1, 1)), 7) == ["b1", "b1", "b2", "b1", "b3", "b1", "b1"]


def test_unavailable_backends_are_skipped() -> None:
    p = pool("roundrobin")
    p.backends[1].up = False
    p.backends[2].draining = True
    assert set(pick(p, 5)) == {"b1"}
    p.backends[0].weight = 0
    assert p.choose("x") is None


def test_source_is_stable_and_moves_only_the_lost_share() -> None:
    p = pool("source")
    keys = [f"192.0.2.{i}" for i in range(200)]
    before = {k: pick(p, 1, key=k)[0] for k in keys}
    assert before == {k: pick(p, 1, key=k)[0] for k in keys}
    assert set(Counter(before.values())) and min(Counter(before.values()).values()) > 40
    p.backends[2].up = False
    after = {k: pick(p, 1, key=k)[0] for k in keys}
    for k in keys:
        if before[k] != "b3":
            assert after[k] == before[k]
        else:
            assert after[k] in ("b1", "b2")


def test_rendezvous_weight_shifts_share() -> None:
    heavy = [Backend(BackendConfig("h", HostPort("10.0.0.1", 21), weight=3))]
    light = [Backend(BackendConfig("l", HostPort("10.0.0.2", 21), weight=1))]
    share = Counter(rendezvous_pick(heavy + light, str(i)).name for i in range(4000))
    assert 0.70 < share["h"] / 4000 < 0.80  # 3/4 expected


def test_random_honours_weight() -> None:
    share = Counter(pick(pool("random", (1, 0, 3)), 4000))
    assert "b2" not in share
    assert 0.70 < share["b3"] / 4000 < 0.80


def test_health_tracker_first_result_then_hysteresis() -> None:
    t = HealthTracker(rise=2, fall=3)
    assert t.record(False) and t.up is False
    assert not t.record(True)
    assert t.record(True) and t.up is True
    assert not t.record(False) and not t.record(False)
    assert not t.record(True)  # a success resets the streak
    assert not t.record(False) and not t.record(False)
    assert t.record(False) and t.up is False
