"""Inspect mode sessions: balancing by user, IPv6 clients, long transfers, ABOR, failures."""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
import signal
import socket
import time

import pytest

from tests.cluster import BALANCER_HOST, Cluster, free_ports, wait_for

USERS = [(f"user{i}", f"pw{i}") for i in range(10)]


def whoami(c: Cluster, user: str, password: str, source: str = "127.0.0.11") -> str:
    with ftplib.FTP(timeout=10, source_address=(source, 0)) as ftp:
        ftp.connect(BALANCER_HOST, c.balancer_port)
        ftp.login(user, password)
        buf = io.BytesIO()
        ftp.retrbinary("RETR whoami.txt", buf.write)
        return buf.getvalue().decode()


def test_balance_by_user_is_sticky_and_moves_only_the_lost_users(cluster: Cluster) -> None:
    for _ in range(3):
        cluster.add_backend(
            proxy_protocol=False, passive_size=None, masquerade=None, users=tuple(USERS)
        )
    cluster.start_balancer(mode="inspect", send_proxy="off", balance="user")
    placement: dict[str, str] = {}
    for round_ in range(3):
        for n, (user, password) in enumerate(USERS):
            where = whoami(cluster, user, password, source=f"127.0.0.{11 + (n + round_) % 7}")
            assert placement.setdefault(user, where) == where, user
    assert len(set(placement.values())) >= 2  # ten users do not all hash to one backend

    lost = placement["user0"]
    victim = next(b for b in cluster.backends if b.name == lost)
    cluster.stop_backend(victim)
    assert cluster.balancer is not None
    log = cluster.balancer.log
    wait_for(lambda: f"backend {lost} is DOWN" in log(), what="DOWN")
    for user, password in USERS:
        where = whoami(cluster, user, password)
        if placement[user] == lost:
            assert where != lost
        else:
            assert where == placement[user], user


def test_users_table_pins_a_user(cluster: Cluster) -> None:
    for _ in range(3):
        cluster.add_backend(
            proxy_protocol=False, passive_size=None, masquerade=None, users=tuple(USERS)
        )
    cluster.start_balancer(
        mode="inspect", send_proxy="off", balance="leastconn", users={"user3": "ftp2"}
    )
    assert {whoami(cluster, "user3", "pw3") for _ in range(4)} == {"ftp2"}


def test_balance_by_user_greets_before_choosing(cluster: Cluster) -> None:
    cluster.add_backend(proxy_protocol=False, passive_size=None, masquerade=None)
    cluster.start_balancer(mode="inspect", send_proxy="off", balance="user")
    with ftplib.FTP(timeout=10) as ftp:
        welcome = ftp.connect(BALANCER_HOST, cluster.balancer_port)
        assert welcome == "220 ftplb ready."
        with pytest.raises(ftplib.error_perm, match="530"):
            ftp.sendcmd("PASV")
        assert ftp.voidcmd("NOOP").startswith("200")
        ftp.login("alice", "secret")
        assert ftp.voidcmd("NOOP").startswith("200")


def test_ipv6_client_to_ipv4_backend(cluster: Cluster) -> None:
    # With PROXY v1: the IPv4 backend learns of its IPv6 client.
    b = cluster.add_backend(proxy_protocol=True, passive_size=None, masquerade=None)
    payload = os.urandom(1_500_000)
    (b.root / "data.bin").write_bytes(payload)
    port = free_ports(1, "::1")
    cluster.balancer_port = port
    cluster.start_balancer(
        mode="inspect",
        send_proxy="v1",
        listen=f"[::1]:{port}",
        public_address="::1",
        backend_options={b.name: {"send_proxy_data": True}},
    )
    for passive in (True, False):  # EPSV, then EPRT
        with ftplib.FTP(timeout=10) as ftp:
            ftp.connect("::1", port)
            ftp.login("alice", "secret")
            ftp.set_pasv(passive)
            buf = io.BytesIO()
            ftp.retrbinary("RETR data.bin", buf.write)
            assert buf.getvalue() == payload
            with pytest.raises(ftplib.error_temp, match="425"):
                ftp.sendcmd("PASV")  # PASV carries no IPv6 address
    assert cluster.balancer is not None
    assert "client=[::1]:" in cluster.balancer.log()
    assert b.process is not None
    assert "::1:" in b.process.log() and "client address from PROXY v1" in b.process.log()


def test_long_transfer_is_not_an_idle_control_connection(cluster: Cluster) -> None:
    b = cluster.add_backend(proxy_protocol=False, passive_size=None, masquerade=None)
    size = 16 * 1024 * 1024
    with open(b.root / "big.bin", "wb") as f:
        f.truncate(size)
    cluster.start_balancer(mode="inspect", send_proxy="off", idle_timeout=1)
    with cluster.ftp(timeout=30) as ftp:
        ftp.sendcmd("TYPE I")
        digest = hashlib.sha256()
        received = 0
        with ftp.transfercmd("RETR big.bin") as conn:
            while chunk := conn.recv(256 * 1024):
                digest.update(chunk)
                received += len(chunk)
                time.sleep(0.04)  # about 2.5 s: more than two idle timeouts
        assert ftp.voidresp().startswith("226")
        assert ftp.voidcmd("NOOP").startswith("200")
    assert received == size
    assert digest.hexdigest() == hashlib.sha256(bytes(size)).hexdigest()


def test_abor_mid_transfer_then_go_on(cluster: Cluster) -> None:
    b = cluster.add_backend(proxy_protocol=False, passive_size=None, masquerade=None)
    with open(b.root / "big.bin", "wb") as f:
        f.truncate(256 * 1024 * 1024)
    (b.root / "small.bin").write_bytes(b"s" * 1000)
    cluster.start_balancer(mode="inspect", send_proxy="off")
    with cluster.ftp(timeout=20) as ftp:
        ftp.sendcmd("TYPE I")
        conn = ftp.transfercmd("RETR big.bin")
        assert len(conn.recv(65536)) > 0
        resp = ftp.abort()  # ABOR with Telnet IP/Synch as urgent data
        conn.close()
        # Mid-transfer, the transfer's own reply comes first, then ABOR's.
        assert resp.startswith("426"), resp
        assert ftp.getline().startswith("226")
        assert ftp.voidcmd("NOOP").startswith("200")
        buf = io.BytesIO()
        ftp.retrbinary("RETR small.bin", buf.write)
        assert buf.getvalue() == b"s" * 1000


def test_backend_killed_mid_transfer(cluster: Cluster) -> None:
    for _ in range(2):
        b = cluster.add_backend(proxy_protocol=False, passive_size=None, masquerade=None)
        with open(b.root / "big.bin", "wb") as f:
            f.truncate(512 * 1024 * 1024)
    cluster.start_balancer(mode="inspect", send_proxy="off", balance="roundrobin")
    ftp = cluster.ftp(timeout=10)
    with ftp:
        ftp.sendcmd("TYPE I")
        buf = io.BytesIO()
        ftp.retrbinary("RETR whoami.txt", buf.write)
        victim = next(x for x in cluster.backends if x.name == buf.getvalue().decode())
        conn = ftp.transfercmd("RETR big.bin")
        conn.settimeout(10)
        assert conn.recv(65536)
        assert victim.process is not None
        victim.process.stop(signal.SIGKILL)
        ended = False
        try:
            while conn.recv(1024 * 1024):
                pass
            ended = True
        except ConnectionResetError:
            ended = True
        conn.close()
        assert ended
        with pytest.raises((EOFError, ftplib.Error, OSError)):
            ftp.voidresp()
    other = next(x for x in cluster.backends if x is not victim)
    assert whoami(cluster, "alice", "secret") == other.name


def test_a_burst_of_passive_requests_gets_the_whole_data_port_range(cluster: Cluster) -> None:
    # 70 sessions from one address ask EPSV at the same moment, with exactly 70
    # data ports: each gets its own port (concurrent sessions once raced for the
    # same candidates and, past 64 tries, answered 425 with free ports left).
    # The 71st from that address gets 425 until a session ends and gives its
    # port back (other addresses would share the ports: test_shared_ports.py).
    count = 70
    cluster.add_backend(proxy_protocol=False, passive_size=None, masquerade=None)
    first = free_ports(count)
    cluster.start_balancer(
        mode="inspect", send_proxy="off", data_ports=f"{first}-{first + count - 1}"
    )
    sessions = []
    try:
        for i in range(count + 1):
            sock = socket.create_connection((BALANCER_HOST, cluster.balancer_port), timeout=10)
            reader = sock.makefile("rb")
            sessions.append((sock, reader))
            assert reader.readline().startswith(b"220")
            sock.sendall(b"USER alice\r\nPASS secret\r\n")
            assert reader.readline().startswith(b"331")
            assert reader.readline().startswith(b"230"), i
        burst, last = sessions[:count], sessions[count]
        for sock, _ in burst:
            sock.sendall(b"EPSV\r\n")
        replies = [reader.readline() for _, reader in burst]
        assert all(r.startswith(b"229 ") for r in replies), [r for r in replies if r[:3] != b"229"]
        given = {int(r.split(b"|")[3]) for r in replies}
        assert given == set(range(first, first + count))
        last[0].sendall(b"EPSV\r\n")
        assert last[1].readline().startswith(b"425 ")
        burst[0][0].sendall(b"QUIT\r\n")
        assert burst[0][1].readline().startswith(b"221")
        port = int(replies[0].split(b"|")[3])

        def epsv() -> bytes | None:
            # The port comes back once the ended session's listener has closed.
            last[0].sendall(b"EPSV\r\n")
            line = last[1].readline()
            return line if line.startswith(b"229 ") else None

        assert wait_for(epsv, what="a port given back") == (
            f"229 Entering Extended Passive Mode (|||{port}|)\r\n".encode()
        )
    finally:
        for sock, reader in sessions:
            reader.close()
            sock.close()
    assert cluster.balancer is not None
    assert "every data port is in use for 127.0.0.1" in cluster.balancer.log()
