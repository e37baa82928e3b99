"""idle_timeout, max_sessions, and bounded buffers under a slow reader."""

from __future__ import annotations

import ftplib
import hashlib
import socket
import time

from tests.cluster import Cluster, greeting, wait_for


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_idle_control_connection_is_closed(cluster: Cluster) -> None:
    cluster.add_backend()
    cluster.start_balancer(idle_timeout=1)
    with cluster.ftp(source="127.0.0.61") as ftp:
        sock = ftp.sock
        sock.settimeout(10)
        assert sock.recv(100) == b""  # the balancer closed it
    assert cluster.balancer is not None
    wait_for(
        lambda: any(
            "client=127.0.0.61:" in x and 'end="idle timeout"' in x for x in cluster.session_lines()
        ),
        what="the idle-timeout log line",
    )


def test_long_transfer_keeps_its_control_connection(cluster: Cluster) -> None:
    """The control connection is silent during a transfer: not idle."""
    b = cluster.add_backend()
    size = 24 * 1024 * 1024
    with open(b.root / "big.bin", "wb") as f:
        f.truncate(size)
    cluster.start_balancer(idle_timeout=1, backend_options={b.name: {"send_proxy_data": True}})
    with cluster.ftp(source="127.0.0.62", timeout=30) as ftp:
        digest = hashlib.sha256()
        received = 0
        with ftp.transfercmd("RETR big.bin") as conn:
            # Read slowly: about 3 idle timeouts pass while data flows.
            while chunk := conn.recv(256 * 1024):
                digest.update(chunk)
                received += len(chunk)
                time.sleep(0.03)
        assert ftp.voidresp().startswith("226")
    assert received == size
    assert digest.hexdigest() == hashlib.sha256(bytes(size)).hexdigest()


def test_max_sessions_refuses_with_421(cluster: Cluster) -> None:
    cluster.add_backend()
    cluster.start_balancer(max_sessions=2)
    with cluster.ftp(), cluster.ftp():
        assert greeting("127.0.0.1", cluster.balancer_port).startswith("421 Too many sessions")
    # Once they end, there is room again.
    wait_for(
        lambda: greeting("127.0.0.1", cluster.balancer_port).startswith("220 "),
        what="room for a new session",
    )


def test_slow_reader_does_not_grow_balancer_memory(cluster: Cluster) -> None:
    b = cluster.add_backend()
    size = 192 * 1024 * 1024
    with open(b.root / "huge.bin", "wb") as f:
        f.truncate(size)
    balancer = cluster.start_balancer(backend_options={b.name: {"send_proxy_data": True}})
    pid = balancer.popen.pid
    before = rss_kib(pid)
    peak = before
    with cluster.ftp(timeout=60) as ftp:
        ftp.sendcmd("TYPE I")
        with ftp.transfercmd("RETR huge.bin") as conn:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            received = 0
            started = time.monotonic()
            # The backend could send all of it in well under a second; we
            # take about four, so without backpressure the balancer would
            # hold most of the file.
            while chunk := conn.recv(1024 * 1024):
                received += len(chunk)
                if received % (8 * 1024 * 1024) < len(chunk):
                    peak = max(peak, rss_kib(pid))
                    time.sleep(
                        max(0.0, received / (48 * 1024 * 1024) - (time.monotonic() - started))
                    )
        assert ftp.voidresp().startswith("226")
    assert received == size
    growth_mib = (peak - before) / 1024
    assert growth_mib < 24, f"balancer RSS grew by {growth_mib:.1f} MiB during a slow read"


def test_backend_dying_mid_session_closes_the_client(cluster: Cluster) -> None:
    b = cluster.add_backend()
    cluster.add_backend()
    cluster.start_balancer(balance="roundrobin")
    with cluster.ftp() as ftp:
        victim = next(x for x in cluster.backends if x.name == cluster.backend_of(ftp))
        assert victim.process is not None
        victim.process.stop()
        ftp.sock.settimeout(10)
        try:
            ftp.voidcmd("NOOP")
        except (EOFError, ftplib.Error, OSError):
            pass
        else:
            raise AssertionError("the session outlived its backend")
    del b
