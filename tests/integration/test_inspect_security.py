"""Inspect mode at the edge: FTP bounce, PASV hijacking, long lines, garbage, login bans."""

from __future__ import annotations

import ftplib
import io
import os
import select
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.cluster import BALANCER_HOST, PASSWORD, USER, Cluster, greeting, wait_for

DATA = os.urandom(200_000)


@pytest.fixture
def inspect(cluster: Cluster) -> Cluster:
    for _ in range(2):
        b = cluster.add_backend(proxy_protocol=False, passive_size=None, masquerade=None)
        (b.root / "data.bin").write_bytes(DATA)
    cluster.start_balancer(mode="inspect", send_proxy="off", max_login_failures=6)
    return cluster


def login(c: Cluster, source: str = "127.0.0.11") -> ftplib.FTP:
    return c.ftp(source=source)


def untouched(listener: socket.socket, wait: float = 0.5) -> bool:
    ready, _, _ = select.select([listener], [], [], wait)
    return not ready


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        ("PORT 127,0,0,98,{p1},{p2}", "504"),  # a third party
        ("EPRT |1|127.0.0.98|{port}|", "504"),
        ("PORT 127,0,0,11,0,21", "504"),  # the client, but a privileged port
        ("EPRT |1|127.0.0.11|80|", "504"),
        ("PORT 127,0,0,11,300,1", "501"),
        ("EPRT |3|127.0.0.11|5000|", "522"),
        ("EPRT |1|::1|5000|", "501"),
        ("PORT x", "501"),
    ],
)
def test_port_to_a_third_party_is_refused_and_nothing_connects(
    inspect: Cluster, command: str, reply: str
) -> None:
    with socket.create_server(("127.0.0.98", 0)) as victim:
        port = victim.getsockname()[1]
        line = command.format(p1=port >> 8, p2=port & 0xFF, port=port)
        with login(inspect) as ftp:
            with pytest.raises(ftplib.Error) as info:
                ftp.sendcmd(line)
            assert str(info.value).startswith(reply), info.value
            assert ftp.voidcmd("NOOP").startswith("200")
        assert untouched(victim)


def test_pasv_hijack_is_refused_and_the_client_still_transfers(inspect: Cluster) -> None:
    with login(inspect, source="127.0.0.11") as ftp:
        ftp.sendcmd("TYPE I")
        host, port = ftp.makepasv()
        assert host == BALANCER_HOST
        thief = socket.create_connection((host, port), 5, source_address=("127.0.0.99", 0))
        thief.settimeout(5)
        try:
            assert thief.recv(100) == b""
        except ConnectionResetError:
            pass
        finally:
            thief.close()
        # The same listener still takes the real client.
        with socket.create_connection((host, port), 5, source_address=("127.0.0.11", 0)) as conn:
            ftp.sendcmd("RETR data.bin")
            got = b""
            while chunk := conn.recv(65536):
                got += chunk
        assert ftp.voidresp().startswith("226")
        assert got == DATA
    assert inspect.balancer is not None
    assert "data connection from 127.0.0.99" in inspect.balancer.log()
    assert f"to port {port} refused: no session of that client waits on it" in (
        inspect.balancer.log()
    )


def test_over_long_command_gets_500_and_the_session_goes_on(inspect: Cluster) -> None:
    with login(inspect) as ftp:
        ftp.sock.sendall(b"NOOP " + b"x" * 2044 + b"\r\n")  # 2049 bytes before CRLF
        assert ftp.getline().startswith("500")
        assert ftp.voidcmd("NOOP").startswith("200")
        buf = io.BytesIO()
        ftp.retrbinary("RETR data.bin", buf.write)
        assert buf.getvalue() == DATA


def test_2048_byte_command_is_not_too_long(inspect: Cluster) -> None:
    with login(inspect) as ftp:
        ftp.sock.sendall(b"NOOP " + b"x" * 2043 + b"\r\n")  # exactly 2048
        assert not ftp.getline().startswith("500 Line too long")


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(garbage=st.binary(min_size=1, max_size=3000))
def test_garbage_never_hurts_the_balancer_or_other_sessions(
    inspect: Cluster, garbage: bytes
) -> None:
    with login(inspect, source="127.0.0.20") as bystander:
        with socket.create_connection((BALANCER_HOST, inspect.balancer_port), 5) as s:
            s.settimeout(5)
            s.recv(1024)  # greeting
            s.sendall(garbage)
            s.sendall(b"\r\nQUIT\r\n")
            try:
                while s.recv(65536):
                    pass
            except (ConnectionResetError, TimeoutError):
                pass
        assert bystander.voidcmd("NOOP").startswith("200")
    assert inspect.balancer is not None and inspect.balancer.popen.poll() is None


def test_failed_logins_ban_the_address_only(cluster: Cluster) -> None:
    cluster.add_backend(
        proxy_protocol=False, passive_size=None, masquerade=None, extra_args=("--login-delay=0.1",)
    )
    cluster.start_balancer(mode="inspect", send_proxy="off", max_login_failures=6, ban_time=60)
    failures = 0
    while failures < 6:
        with ftplib.FTP(timeout=10, source_address=("127.0.0.31", 0)) as ftp:
            ftp.connect(BALANCER_HOST, cluster.balancer_port)
            for _ in range(2):  # pyftpdlib allows several attempts per session
                if failures == 6:
                    break
                with pytest.raises(ftplib.error_perm, match="530"):
                    ftp.login(USER, "wrong")
                failures += 1
    assert cluster.balancer is not None
    log = cluster.balancer.log
    wait_for(lambda: "client 127.0.0.31 banned" in log(), what="the ban")
    assert greeting(BALANCER_HOST, cluster.balancer_port, source="127.0.0.31").startswith("421")
    # Another address is unaffected.
    with cluster.ftp(source="127.0.0.32") as ftp:
        assert ftp.voidcmd("NOOP").startswith("200")
    assert PASSWORD != "wrong"


def test_max_per_ip(cluster: Cluster) -> None:
    cluster.add_backend(proxy_protocol=False, passive_size=None, masquerade=None)
    cluster.start_balancer(mode="inspect", send_proxy="off", max_per_ip=2)
    with cluster.ftp(source="127.0.0.41"), cluster.ftp(source="127.0.0.41"):
        third = greeting(BALANCER_HOST, cluster.balancer_port, source="127.0.0.41")
        assert third.startswith("421 Too many sessions from your address")
        with cluster.ftp(source="127.0.0.42") as other:
            assert other.voidcmd("NOOP").startswith("200")


def test_login_timeout(cluster: Cluster) -> None:
    cluster.add_backend(proxy_protocol=False, passive_size=None, masquerade=None)
    cluster.start_balancer(mode="inspect", send_proxy="off", login_timeout=1)
    with socket.create_connection((BALANCER_HOST, cluster.balancer_port), 5) as s:
        s.settimeout(10)
        data = b""
        while chunk := s.recv(1024):
            data += chunk
    assert b"421 Login timeout" in data
