"""Several worker processes (`[balancer] workers`): one balancer to clients,
to the admin API and to the operator's signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from typing import Any

import pytest

from tests.cluster import BALANCER_HOST, Cluster, free_ports, greeting, sha256, wait_for
from tests.conftest import need
from tests.integration.test_admin import call

DATA = os.urandom(256 * 1024 + 5)
WORKERS = 2


def start(cluster: Cluster, mode: str, **options: Any) -> str:
    """Three backends behind a balancer with WORKERS workers; returns the admin URL."""
    for _ in range(3):
        if mode == "inspect":
            b = cluster.add_backend(proxy_protocol=False, passive_size=None, masquerade=None)
        else:
            b = cluster.add_backend()
        (b.root / "data.bin").write_bytes(DATA)
    port = free_ports(1)
    extra: dict[str, Any] = {"send_proxy": "off"} if mode == "inspect" else {}
    if mode == "routed":
        extra["backend_options"] = {b.name: {"send_proxy_data": True} for b in cluster.backends}
    cluster.start_balancer(
        mode=mode,
        workers=WORKERS,
        sections={"admin": {"listen": f"127.0.0.1:{port}"}},
        **extra,
        **options,
    )
    return f"http://127.0.0.1:{port}"


def curl(url: str, *flags: str) -> bytes:
    done = subprocess.run(
        [need("curl"), "-sS", "--max-time", "30", *flags, url], capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


def pids(cluster: Cluster) -> list[int]:
    assert cluster.balancer is not None
    line = next(x for x in cluster.balancer.log().splitlines() if "ready:" in x)
    return [int(p) for p in line.split("(pids ")[1].rstrip(")").split()]


@pytest.mark.parametrize("mode", ["routed", "inspect"])
def test_every_worker_serves_and_every_byte_arrives(cluster: Cluster, mode: str) -> None:
    admin = start(cluster, mode)
    assert len(pids(cluster)) == WORKERS
    # The kernel spreads connections across the workers; in inspect mode a
    # passive data connection must reach the worker that announced its port.
    for i in range(24):
        flags = ["--disable-epsv", "--no-ftp-skip-pasv-ip"] if i % 2 else []
        assert sha256(curl(cluster.url + "data.bin", *flags)) == sha256(DATA)
    status = call(admin + "/api/status")
    assert status["workers"] == WORKERS
    totals = [p["total"] for p in status["processes"]]
    assert sum(totals) == 24 and all(t > 0 for t in totals), totals
    # At rest each worker runs its few long-lived tasks and holds its listeners.
    for p in status["processes"]:
        assert 1 <= p["tasks"] < 16 and 3 < p["open_files"] < 256, p
    backends = call(admin + "/api/backends")
    assert sum(b["sessions"]["total"] for b in backends) == 24
    # Each line says which worker wrote it.
    assert cluster.balancer is not None
    sessions = [x for x in cluster.balancer.log().splitlines() if " INFO ftplb.session" in x]
    by_worker = {w: sum(f"ftplb.session[w{w}]: control " in x for x in sessions) for w in (0, 1)}
    assert sum(by_worker.values()) == 24 and all(by_worker.values()), by_worker


def test_leastconn_across_workers(cluster: Cluster) -> None:
    """leastconn counts every worker's sessions (shared counters), and its ties
    rotate across workers: one balancer, however many processes."""
    admin = start(cluster, "routed")
    # One session at a time: every choice is a tie, broken by who got fewest so far.
    served = []
    for _ in range(6):
        with cluster.ftp() as ftp:
            served.append(cluster.backend_of(ftp))
    assert sorted(served) == ["ftp1", "ftp1", "ftp2", "ftp2", "ftp3", "ftp3"], served
    with ExitStack() as stack:
        for _ in range(30):
            stack.enter_context(cluster.ftp())
        wait_for(lambda: call(admin + "/api/status")["sessions"] == 30, what="30 sessions")
        current = [b["sessions"]["current"] for b in call(admin + "/api/backends")]
        assert sum(current) == 30
        assert max(current) - min(current) <= 1, current


def test_limits_hold_across_workers(cluster: Cluster) -> None:
    start(cluster, "inspect", max_per_ip=3)
    with ExitStack() as stack:
        for _ in range(3):
            stack.enter_context(cluster.ftp(source="127.0.0.31"))
        # Whichever worker takes it, a fourth session from that address is refused.
        for _ in range(6):
            answer = greeting(BALANCER_HOST, cluster.balancer_port, source="127.0.0.31")
            assert answer.startswith("421 Too many sessions from your address"), answer
        with cluster.ftp(source="127.0.0.32") as other:
            assert other.voidcmd("NOOP").startswith("200")


def test_drain_and_reload_reach_every_worker(cluster: Cluster) -> None:
    admin = start(cluster, "routed")
    call(admin + "/api/backends/ftp1/drain", "POST")
    for _ in range(12):
        with cluster.ftp() as ftp:
            assert cluster.backend_of(ftp) != "ftp1"
    assert [b["draining"] for b in call(admin + "/api/backends")] == [True, False, False]
    # SIGHUP to the supervisor: every worker re-reads the file.
    config = cluster.config_path.read_text()
    cluster.config_path.write_text(config.replace("[[backends]]", "[[backends]]\nweight = 7", 1))
    assert cluster.balancer is not None
    os.kill(cluster.balancer.popen.pid, signal.SIGHUP)
    wait_for(lambda: call(admin + "/api/status")["reloads"] == 1, what="the reload")
    log = cluster.balancer.log
    wait_for(
        lambda: all(f"INFO ftplb[w{i}]: reloaded " in log() for i in range(WORKERS)),
        what="every worker to reload",
    )
    assert [b["weight"] for b in call(admin + "/api/backends")] == [7, 1, 1]


def test_a_dead_worker_stops_the_balancer(cluster: Cluster) -> None:
    start(cluster, "routed")
    first, second = pids(cluster)
    os.kill(first, signal.SIGKILL)
    assert cluster.balancer is not None
    assert cluster.balancer.popen.wait(timeout=60) == 1
    assert f"worker 0 (pid {first}) exited with -9; stopping" in cluster.balancer.log()
    # Nothing left behind: the other worker stopped too.
    with pytest.raises(ProcessLookupError):
        os.kill(second, 0)


def test_sigterm_stops_every_worker(cluster: Cluster) -> None:
    start(cluster, "inspect")
    workers = pids(cluster)
    assert cluster.balancer is not None
    assert cluster.balancer.stop() == 0
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_second_balancer_on_the_same_ports_is_refused(cluster: Cluster) -> None:
    """SO_REUSEPORT would let it share the ports and take half the clients."""
    start(cluster, "routed")
    second = cluster.spawn(
        "second", [sys.executable, "-m", "ftplb", "run", "-c", str(cluster.config_path)]
    )
    assert second.popen.wait(timeout=30) == 2
    assert f"cannot listen: 127.0.0.1:{cluster.balancer_port}: Address already in use" in (
        second.log()
    )


def test_worker_zero_checks_and_the_others_follow(cluster: Cluster) -> None:
    start(cluster, "routed")
    assert cluster.balancer is not None
    log = cluster.balancer.log
    victim = cluster.backends[0]
    cluster.stop_backend(victim)
    wait_for(lambda: f"ftplb.health[w0]: backend {victim.name} is DOWN" in log(), what="DOWN")
    time.sleep(0.5)  # the other worker follows within a quarter interval
    seen = len(log())
    for i in range(16):
        with cluster.ftp(source=f"127.0.0.{60 + i}") as ftp:
            assert cluster.backend_of(ftp) != victim.name
    later = log()[seen:]
    # No worker tried the dead backend, and only worker 0 probes.
    assert "redispatching" not in later, later
    assert "ftplb.health[w1]: backend" not in log().split("ready:")[-1]
    cluster.start_backend(victim)
    wait_for(lambda: f"ftplb.health[w0]: backend {victim.name} is UP" in log(), what="UP")

    sources = iter(range(80, 200))

    def followed() -> bool:
        with cluster.ftp(source=f"127.0.0.{next(sources)}") as ftp:
            ftp.voidcmd("NOOP")
        return any(
            "ftplb.session[w1]: control" in x and f"backend={victim.name}" in x
            for x in log()[seen:].splitlines()
        )

    wait_for(followed, timeout=20, interval=0.05, what="worker 1 to use it again")
