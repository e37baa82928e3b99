"""What installed servers do not show on demand, from a scripted backend
(tests/conformance/scripted.py), through inspect mode; and IPv6, and TLS
protection levels, with real servers."""

from __future__ import annotations

import ftplib
import io
import os
import socket
import threading
from collections.abc import Iterator

import pytest

from tests.cluster import BALANCER_HOST, Cluster, free_ports, make_cert, sha256
from tests.conformance.scripted import Connection, ScriptedServer
from tests.integration.test_routed_ftps import ReusingFTP_TLS, tls_context

BIG = os.urandom(4 * 1024 * 1024 + 3)


@pytest.fixture
def scripted(cluster: Cluster) -> Iterator[ScriptedServer]:
    server = ScriptedServer("127.0.1.3")
    cluster.add_fake_backend("scripted", server.host, server.port)
    try:
        yield server
    finally:
        cluster.stop_all()  # the balancer's connections go before the server's threads
        server.close()


def login(cluster: Cluster, source: str = "127.0.0.11") -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=10, source_address=(source, 0))
    ftp.connect(BALANCER_HOST, cluster.balancer_port)
    ftp.login("u", "p")
    return ftp


def start(cluster: Cluster, **options: object) -> None:
    cluster.start_balancer(mode="inspect", send_proxy="off", health_check="tcp", **options)


def test_a_reply_ending_with_another_code_is_passed_whole(
    cluster: Cluster, scripted: ScriptedServer
) -> None:
    glftpd = b"200-glftpd says:\r\n some text\r\n250 Command Successful.\r\n"
    scripted.replies["SITE"] = glftpd
    start(cluster)
    # ftplib waits for "200 " and would hang (curl ends at any code and a
    # space): read the bytes ourselves, they must be the server's, whole.
    with socket.create_connection((BALANCER_HOST, cluster.balancer_port), 10) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220")
        s.sendall(b"USER u\r\nPASS p\r\nSITE WHO\r\nNOOP\r\n")
        assert f.readline().startswith(b"331") and f.readline().startswith(b"230")
        assert b"".join(f.readline() for _ in range(3)) == glftpd
        assert f.readline() == b"200 OK.\r\n"  # still in step


def test_a_thousand_line_reply(cluster: Cluster, scripted: ScriptedServer) -> None:
    body = b"".join(b" line %d\r\n" % i for i in range(998))
    scripted.replies["STAT"] = b"213-Status follows:\r\n" + body + b"213 End of status.\r\n"
    start(cluster)
    with login(cluster) as ftp:
        lines = ftp.sendcmd("STAT .").split("\n")
        assert len(lines) == 1000 and lines[-1] == "213 End of status."
        assert lines[500] == " line 499"


def test_a_backend_closing_in_the_middle_of_a_reply(
    cluster: Cluster, scripted: ScriptedServer
) -> None:
    def half_then_close(conn: Connection, arg: str) -> None:
        conn.send(b"211-Features:\r\n MDTM\r\n")
        conn.sock.shutdown(socket.SHUT_RDWR)

    scripted.replies["FEAT"] = half_then_close
    start(cluster)
    with login(cluster) as ftp, pytest.raises(ftplib.error_temp, match=r"^421"):
        ftp.sendcmd("FEAT")
    assert cluster.balancer is not None and cluster.balancer.popen.poll() is None


def test_150_then_425(cluster: Cluster, scripted: ScriptedServer) -> None:
    def refuse(conn: Connection, arg: str) -> None:
        conn.send(b"150 Opening data connection.\r\n425 Can't open data connection.\r\n")

    scripted.replies["RETR"] = refuse
    start(cluster)
    with login(cluster) as ftp:
        ftp.voidcmd("TYPE I")
        # The client's data connection is reset (a download that never came
        # must not look complete), and the 425 arrives on the control channel.
        with pytest.raises(ConnectionResetError):
            ftp.retrbinary("RETR f", lambda b: None)
        with pytest.raises(ftplib.error_temp, match=r"^425"):
            ftp.getresp()
        assert ftp.voidcmd("NOOP").startswith("200")


def test_226_before_the_data_is_read_active_mode(
    cluster: Cluster, scripted: ScriptedServer
) -> None:
    def early_226(conn: Connection, arg: str) -> None:
        conn.send(b"150 Opening data connection.\r\n")
        data = conn.accept_data()
        data.setblocking(True)
        sender = threading.Thread(target=lambda: (data.sendall(BIG), data.close()))
        sender.start()
        conn.send(b"226 Transfer complete.\r\n")  # while the bytes are still on their way
        sender.join(30)

    scripted.replies["RETR"] = early_226
    start(cluster)
    with login(cluster) as ftp:
        ftp.set_pasv(False)  # active toward ftplb: it connects to us
        got = io.BytesIO()
        ftp.retrbinary("RETR big", got.write)
        assert sha256(got.getvalue()) == sha256(BIG)
        assert ftp.voidcmd("NOOP").startswith("200")


def test_pret_is_passed_on_before_the_passive_request(
    cluster: Cluster, scripted: ScriptedServer
) -> None:
    scripted.replies["PRET"] = b"200 Ready for RETR.\r\n"
    scripted.files["f"] = b"pret data"
    start(cluster)
    with login(cluster) as ftp:
        assert ftp.sendcmd("PRET RETR f").startswith("200")
        got = io.BytesIO()
        ftp.retrbinary("RETR f", got.write)
        assert got.getvalue() == b"pret data"
    commands = [c.split(" ")[0] for c in scripted.commands]
    assert commands.index("PRET") < len(commands) - 1 - commands[::-1].index("EPSV")


def test_an_ipv6_backend_is_never_asked_for_pasv(cluster: Cluster) -> None:
    server = ScriptedServer("::1", {"EPSV": b"500 EPSV not understood.\r\n"})
    try:
        cluster.add_fake_backend("v6", "::1", server.port)
        start(cluster)
        with login(cluster) as ftp, pytest.raises(ftplib.error_temp, match=r"^425"):
            ftp.makepasv()
    finally:
        cluster.stop_all()
        server.close()
    assert "EPSV" in server.commands and "PASV" not in server.commands


def test_an_ipv6_backend_serves(cluster: Cluster) -> None:
    b = cluster.add_backend(proxy_protocol=False, passive_size=None, masquerade=None, start=False)
    b.host, b.port = "::1", free_ports(1, "::1")
    b.args[0] = f"--listen=[::1]:{b.port}"
    (b.root / "v6.bin").write_bytes(BIG[:300_000])
    cluster.start_backend(b)
    cluster.start_balancer(mode="inspect", send_proxy="off")
    with cluster.ftp() as ftp:
        got = io.BytesIO()
        ftp.retrbinary("RETR v6.bin", got.write)  # PASV from the client, EPSV toward ::1
        assert got.getvalue() == BIG[:300_000]


def test_ipv6_clients_in_front_of_ipv4_backends(cluster: Cluster) -> None:
    b = cluster.add_backend(proxy_protocol=False, passive_size=None, masquerade=None)
    (b.root / "six.bin").write_bytes(BIG)
    port = free_ports(1, "::1")
    cluster.balancer_port = port
    cluster.start_balancer(
        mode="inspect", send_proxy="off", listen=f"[::1]:{port}", public_address="::1"
    )
    for passive in (True, False):  # EPSV, then EPRT |2|
        with ftplib.FTP(timeout=10) as ftp:
            ftp.af = socket.AF_INET6
            ftp.connect("::1", port)
            ftp.login("alice", "secret")
            ftp.set_pasv(passive)
            got = io.BytesIO()
            ftp.retrbinary("RETR six.bin", got.write)
            assert sha256(got.getvalue()) == sha256(BIG)
            with pytest.raises(ftplib.error_temp, match=r"^425"):
                ftp.sendcmd("PASV")  # IPv4 only: an IPv6 client is told to use EPSV


def test_prot_c_after_prot_p_and_ccc(cluster: Cluster) -> None:
    b = cluster.add_backend(proxy_protocol=False, passive_size=None, masquerade=None)
    (b.root / "p.bin").write_bytes(BIG[:200_000])
    cert, key = make_cert(cluster.workdir)
    cluster.start_balancer(
        mode="inspect", send_proxy="off", sections={"tls": {"cert": str(cert), "key": str(key)}}
    )
    with ReusingFTP_TLS(context=tls_context(), timeout=10) as ftp:
        ftp.connect(BALANCER_HOST, cluster.balancer_port)
        ftp.login("alice", "secret")
        ftp.prot_p()
        got = io.BytesIO()
        ftp.retrbinary("RETR p.bin", got.write)
        ftp.prot_c()  # back to clear data on the same session
        clear = io.BytesIO()
        ftp.retrbinary("RETR p.bin", clear.write)
        assert got.getvalue() == clear.getvalue() == BIG[:200_000]
        # CCC would drop TLS from the control connection: ftplb refuses it.
        with pytest.raises(ftplib.error_perm, match=r"^534"):
            ftp.sendcmd("CCC")
        assert ftp.voidcmd("NOOP").startswith("200")
