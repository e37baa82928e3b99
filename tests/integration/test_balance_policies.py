"""Sessions spread over the backends as each policy says."""

from __future__ import annotations

from collections import Counter
from contextlib import ExitStack

import pytest

from tests.cluster import Cluster, wait_for


@pytest.fixture
def three(cluster: Cluster) -> Cluster:
    for _ in range(3):
        cluster.add_backend()
    return cluster


def hold_sessions(
    cluster: Cluster, count: int, stack: ExitStack, source: str | None = None
) -> list[str]:
    """Open `count` concurrent sessions and keep them open; their backends in order."""
    names = []
    for _ in range(count):
        ftp = stack.enter_context(cluster.ftp(source=source))
        names.append(cluster.backend_of(ftp))
    return names


def test_leastconn_spreads_concurrent_sessions_evenly(three: Cluster) -> None:
    three.start_balancer(balance="leastconn")
    with ExitStack() as stack:
        names = hold_sessions(three, 12, stack)
    assert Counter(names) == {"ftp1": 4, "ftp2": 4, "ftp3": 4}


def test_leastconn_fills_the_emptiest_backend(three: Cluster) -> None:
    three.start_balancer(balance="leastconn")
    with ExitStack() as stack:
        sessions = []
        for _ in range(6):
            ftp = stack.enter_context(three.ftp())
            sessions.append((three.backend_of(ftp), ftp))
        assert Counter(name for name, _ in sessions) == {"ftp1": 2, "ftp2": 2, "ftp3": 2}
        for name, ftp in sessions:
            if name == "ftp2":
                ftp.quit()
        wait_for(
            lambda: sum("control" in x and "backend=ftp2" in x for x in three.session_lines()) == 2,
            what="both ftp2 sessions to end",
        )
        # ftp2 now has none, the others two each: the next two go to ftp2.
        assert hold_sessions(three, 2, stack) == ["ftp2", "ftp2"]


def test_roundrobin_rotates(three: Cluster) -> None:
    three.start_balancer(balance="roundrobin")
    names = []
    for _ in range(12):
        with three.ftp() as ftp:
            names.append(three.backend_of(ftp))
    assert Counter(names) == {"ftp1": 4, "ftp2": 4, "ftp3": 4}
    # A strict rotation: every window of three holds each backend once.
    for i in range(0, 12, 3):
        assert sorted(names[i : i + 3]) == ["ftp1", "ftp2", "ftp3"]


def test_roundrobin_honours_weight(three: Cluster) -> None:
    three.start_balancer(balance="roundrobin", backend_options={"ftp1": {"weight": 2}})
    names = []
    for _ in range(12):
        with three.ftp() as ftp:
            names.append(three.backend_of(ftp))
    assert Counter(names) == {"ftp1": 6, "ftp2": 3, "ftp3": 3}


def test_weight_zero_takes_no_sessions(three: Cluster) -> None:
    three.start_balancer(balance="leastconn", backend_options={"ftp2": {"weight": 0}})
    with ExitStack() as stack:
        names = hold_sessions(three, 6, stack)
    assert Counter(names) == {"ftp1": 3, "ftp3": 3}


def test_source_is_sticky_per_client_address(three: Cluster) -> None:
    three.start_balancer(balance="source")
    clients = [f"127.0.0.{n}" for n in range(11, 23)]
    first = {}
    for ip in clients:
        with three.ftp(source=ip) as ftp:
            first[ip] = three.backend_of(ftp)
    for ip in clients:
        with three.ftp(source=ip) as ftp:
            assert three.backend_of(ftp) == first[ip], ip
    # Twelve addresses do not all hash to one backend.
    assert len(set(first.values())) >= 2


def test_random_uses_every_backend(three: Cluster) -> None:
    three.start_balancer(balance="random")
    names = set()
    for _ in range(30):
        with three.ftp() as ftp:
            names.add(three.backend_of(ftp))
    # 30 draws missing a backend: (2/3)^30 * 3 < 1e-5.
    assert names == {"ftp1", "ftp2", "ftp3"}
