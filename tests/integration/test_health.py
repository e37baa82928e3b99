"""Health checks: failover, recovery, 421 when nothing is up, hung and refusing backends."""

from __future__ import annotations

import socket
import sys
import time

from tests.cluster import BACKEND_HOSTS, Cluster, free_ports, greeting, listening, wait_for

INTERVAL, FALL, RISE = 0.5, 2, 2


def backend_counts(cluster: Cluster, sessions: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _ in range(sessions):
        with cluster.ftp() as ftp:
            name = cluster.backend_of(ftp)
            counts[name] = counts.get(name, 0) + 1
    return counts


def test_stopped_backend_is_avoided_then_comes_back(cluster: Cluster) -> None:
    for _ in range(3):
        cluster.add_backend()
    cluster.start_balancer(
        balance="roundrobin", health_interval=INTERVAL, health_fall=FALL, health_rise=RISE
    )
    assert set(backend_counts(cluster, 6)) == {"ftp1", "ftp2", "ftp3"}
    victim = cluster.backends[0]
    stopped_at = time.monotonic()
    cluster.stop_backend(victim)
    assert cluster.balancer is not None
    log = cluster.balancer.log
    wait_for(lambda: "backend ftp1 is DOWN" in log(), timeout=INTERVAL * FALL + 1.0, what="DOWN")
    assert time.monotonic() - stopped_at <= INTERVAL * FALL + 1.0
    # Every new session now lands on the others.
    assert backend_counts(cluster, 8) == {"ftp2": 4, "ftp3": 4}

    cluster.start_backend(victim)
    wait_for(
        lambda: log().count("backend ftp1 is UP") == 2, timeout=INTERVAL * RISE + 3.0, what="UP"
    )
    assert "ftp1" in backend_counts(cluster, 6)


def test_all_backends_down_gives_421_at_once(cluster: Cluster) -> None:
    for _ in range(2):
        cluster.add_backend()
    cluster.start_balancer(health_interval=INTERVAL, health_fall=FALL)
    for b in cluster.backends:
        cluster.stop_backend(b)
    assert cluster.balancer is not None
    log = cluster.balancer.log
    wait_for(lambda: log().count(" is DOWN") == 2, timeout=5, what="both DOWN")
    started = time.monotonic()
    assert greeting("127.0.0.1", cluster.balancer_port) == "421 Service not available"
    # "At once": the reply does not wait for a connect timeout or a check.
    assert time.monotonic() - started < 1.0


def test_balancer_starts_with_nothing_up_and_answers_421(cluster: Cluster) -> None:
    b = cluster.add_backend(start=False)
    assert b.process is None
    cluster.start_balancer()
    assert cluster.balancer is not None
    assert "backend ftp1 is DOWN" in cluster.balancer.log()
    assert greeting("127.0.0.1", cluster.balancer_port) == "421 Service not available"


def test_backend_that_never_greets_is_marked_down(cluster: Cluster) -> None:
    cluster.add_backend()
    # A listener that never accepts: the kernel completes the handshake, and
    # then nothing is ever said.
    host = BACKEND_HOSTS[1]
    port = free_ports(1, host)
    with socket.socket() as mute:
        # free_ports checks with SO_REUSEADDR: a TIME_WAIT left on the port by an
        # earlier test must not fail this bind either.
        mute.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        mute.bind((host, port))
        mute.listen(64)
        cluster.add_fake_backend("mute", host, port)
        cluster.start_balancer(health_timeout=0.5)
        assert cluster.balancer is not None
        log = cluster.balancer.log()
        assert "backend mute is DOWN (no greeting within 0.5s)" in log
        assert backend_counts(cluster, 4) == {"ftp1": 4}


def test_backend_greeting_421_is_marked_down(cluster: Cluster) -> None:
    cluster.add_backend()
    host = BACKEND_HOSTS[1]
    port = free_ports(1, host)
    script = (
        "import socket\n"
        f"s = socket.create_server(({host!r}, {port}))\n"
        "while True:\n"
        "    c, _ = s.accept()\n"
        "    c.sendall(b'421 Too busy, go away\\r\\n')\n"
        "    c.close()\n"
    )
    busy = cluster.spawn("busy", [sys.executable, "-c", script])
    wait_for(lambda: listening(host, port), what="the busy server")
    cluster.add_fake_backend("busy", host, port)
    cluster.start_balancer()
    assert cluster.balancer is not None
    assert "backend busy is DOWN (greeted with 421)" in cluster.balancer.log()
    assert backend_counts(cluster, 4) == {"ftp1": 4}
    busy.stop()


def test_connect_failure_redispatches_before_the_check_notices(cluster: Cluster) -> None:
    for _ in range(2):
        cluster.add_backend()
    # Checks so rare that the stopped backend still counts as up.
    cluster.start_balancer(balance="roundrobin", health_interval=120)
    cluster.stop_backend(cluster.backends[0])
    assert backend_counts(cluster, 6) == {"ftp2": 6}
    assert cluster.balancer is not None
    log = cluster.balancer.log()
    assert "backend ftp1: backend connect failed: Connection refused; redispatching" in log
    assert "is DOWN" not in log
    # With nowhere left to go, the client hears 421 rather than a hang.
    cluster.stop_backend(cluster.backends[1])
    assert greeting("127.0.0.1", cluster.balancer_port) == "421 Service not available"
