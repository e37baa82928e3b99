"""`accept_proxy` with a real HAProxy in front (as an AWS NLB would be): its PROXY
v2 headers name the client, on control and data connections, and from then on
ftplb sees the client, not the load balancer. Also `public_address = "auto"`
and `[public_addresses]`."""

from __future__ import annotations

import contextlib
import ftplib
import io
import os
import socket
import ssl
import time
from pathlib import Path

import pytest

from ftplb.proto.proxy_protocol import encode_v1, encode_v2
from tests.cluster import (
    BALANCER_HOST,
    PASSWORD,
    USER,
    Backend,
    Cluster,
    free_ports,
    make_cert,
    sha256,
    wait_for,
)
from tests.conftest import need

FRONT = "127.0.0.5"  # the load balancer's public address
LB_SOURCE = "127.0.0.30"  # where its connections to ftplb come from
DATA = os.urandom(3 * 1024 * 1024 + 7)


def haproxy_in_front(cluster: Cluster, control: int, data: tuple[int, int]) -> int:
    """HAProxy on FRONT: the control port and a data port range, each passed to
    the same port of ftplb with a PROXY v2 header. Returns its control port."""
    haproxy = need("haproxy")
    port = free_ports(1, FRONT)
    cfg = cluster.workdir / "haproxy.cfg"
    cfg.write_text(
        "\n".join(
            [
                "global",
                "  maxconn 200",
                "defaults",
                "  mode tcp",
                "  timeout connect 5s",
                "  timeout client 60s",
                "  timeout server 60s",
                "frontend control",
                f"  bind {FRONT}:{port}",
                "  default_backend control",
                "backend control",
                f"  server lb {BALANCER_HOST}:{control} send-proxy-v2 source {LB_SOURCE}",
                "frontend data",
                f"  bind {FRONT}:{data[0]}-{data[1]}",
                "  default_backend data",
                "backend data",
                # No port: the port the client reached.
                f"  server lb {BALANCER_HOST} send-proxy-v2 source {LB_SOURCE}",
                "",
            ]
        )
    )
    proc = cluster.spawn("haproxy", [haproxy, "-db", "-f", str(cfg)])
    wait_for(lambda: _listening(FRONT, port) or proc.popen.poll() is not None, what="HAProxy")
    assert proc.popen.poll() is None, proc.log()
    return port


def _listening(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def login(host: str, port: int, source: str, password: str = PASSWORD) -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=10, source_address=(source, 0))
    ftp.trust_server_pasv_ipv4_address = True  # connect where PASV says
    ftp.connect(host, port)
    ftp.login(USER, password)
    return ftp


def download(ftp: ftplib.FTP, name: str = "data.bin") -> bytes:
    chunks: list[bytes] = []
    ftp.retrbinary(f"RETR {name}", chunks.append)
    return b"".join(chunks)


def backend_log(b: Backend) -> str:
    assert b.process is not None
    return b.process.log()


def inspect_behind_haproxy(cluster: Cluster, **extra: object) -> int:
    b = cluster.add_backend()  # reads PROXY from ftplb: logs the client it is told
    (b.root / "data.bin").write_bytes(DATA)
    first = free_ports(4, FRONT)
    cluster.start_balancer(
        mode="inspect",
        send_proxy="v2",
        public_address="auto",
        accept_proxy=[f"{LB_SOURCE}/32"],
        data_ports=f"{first}-{first + 3}",
        data_listen=BALANCER_HOST,
        max_login_failures=2,
        backend_options={b.name: {"send_proxy_data": True}},
        **extra,
    )
    return haproxy_in_front(cluster, cluster.balancer_port, (first, first + 3))


def test_inspect_behind_haproxy_sees_and_tells_the_real_client(cluster: Cluster) -> None:
    front = inspect_behind_haproxy(cluster)
    ftp = login(FRONT, front, "127.0.0.21")
    # PASV names the address the client reached (the header's destination)...
    assert ftp.sendcmd("PASV").split("(")[1].startswith("127,0,0,5,")
    ftp.sendcmd("TYPE I")
    # ...and the data connection through HAProxy is matched to the real client.
    assert sha256(download(ftp)) == sha256(DATA)
    ftp.quit()
    b = cluster.backends[0]
    # The backend was told the real client, on control and on data.
    wait_for(lambda: "127.0.0.21:" in backend_log(b) and "RETR" in backend_log(b))
    assert LB_SOURCE not in backend_log(b)
    assert cluster.balancer is not None
    assert "client=127.0.0.21:" in cluster.balancer.log()

    # A client reaching ftplb directly is served as before, told ftplb's own address.
    direct = login(BALANCER_HOST, cluster.balancer_port, "127.0.0.22")
    assert direct.sendcmd("PASV").split("(")[1].startswith("127,0,0,1,")
    direct.sendcmd("TYPE I")
    assert sha256(download(direct)) == sha256(DATA)
    direct.quit()


def test_bans_hit_the_real_client_not_the_load_balancer(cluster: Cluster) -> None:
    front = inspect_behind_haproxy(cluster)
    for _ in range(2):
        with pytest.raises(ftplib.error_perm, match="530"):
            login(FRONT, front, "127.0.0.23", password="wrong")
    # 127.0.0.23 is banned even though all its connections came from LB_SOURCE...
    with pytest.raises(ftplib.error_temp, match=r"^421"):
        login(FRONT, front, "127.0.0.23")
    # ...and another client behind the same load balancer is not.
    ftp = login(FRONT, front, "127.0.0.24")
    ftp.sendcmd("TYPE I")
    assert sha256(download(ftp)) == sha256(DATA)
    ftp.quit()


def test_a_data_connection_through_the_front_from_another_client_is_refused(
    cluster: Cluster,
) -> None:
    front = inspect_behind_haproxy(cluster)
    ftp = login(FRONT, front, "127.0.0.25")
    ftp.sendcmd("TYPE I")
    port = int(ftp.sendcmd("EPSV").split("|")[3])
    with socket.create_connection((FRONT, port), 5, source_address=("127.0.0.26", 0)) as thief:
        thief.settimeout(5)
        with contextlib.suppress(ConnectionResetError):
            assert thief.recv(100) == b""
    assert cluster.balancer is not None
    wait_for(lambda: "data connection from 127.0.0.26" in cluster.balancer.log())  # type: ignore[union-attr]
    with socket.create_connection((FRONT, port), 5, source_address=("127.0.0.25", 0)) as conn:
        assert ftp.sendcmd("RETR data.bin")[:3] in ("125", "150")
        got = b""
        while chunk := conn.recv(1 << 20):
            got += chunk
    assert ftp.voidresp().startswith("226")
    assert sha256(got) == sha256(DATA)
    ftp.quit()


def raw(port: int, payload: bytes, source: str = LB_SOURCE, wait: float = 8.0) -> bytes:
    """What ftplb answers `payload` sent from `source` before it closes."""
    with socket.create_connection((BALANCER_HOST, port), 5, source_address=(source, 0)) as s:
        s.settimeout(wait)
        if payload:
            s.sendall(payload)
        got = b""
        try:
            while chunk := s.recv(4096):
                got += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        return got


@pytest.mark.parametrize("mode", ["routed", "inspect"])
def test_connections_from_the_front_without_a_valid_header_are_closed(
    cluster: Cluster, mode: str
) -> None:
    b = cluster.add_backend(proxy_protocol=False)
    (b.root / "data.bin").write_bytes(DATA)
    cluster.start_balancer(mode=mode, send_proxy="off", accept_proxy=[f"{LB_SOURCE}/32"])
    port = cluster.balancer_port
    assert cluster.balancer is not None
    log = cluster.balancer.log

    # Plain FTP from the load balancer's network: no greeting, closed, logged.
    assert raw(port, b"USER alice\r\n") == b""
    wait_for(lambda: "malformed PROXY header" in log())
    # Silence (a slowloris) is closed within the header timeout.
    started = time.monotonic()
    assert raw(port, b"", wait=10) == b""
    assert time.monotonic() - started < 9
    wait_for(lambda: "no PROXY header in time" in log())
    # A header for a UDP or UNIX connection is no FTP client.
    udp = bytearray(encode_v2(("192.0.2.1", 1000), ("192.0.2.2", 21)))
    udp[13] = (udp[13] & 0xF0) | 0x2  # transport: DGRAM
    assert raw(port, bytes(udp)) == b""
    wait_for(lambda: "UDP connection" in log())
    # A LOCAL header (the load balancer's own health check) is its own connection.
    greeting = raw(port, encode_v2(None, None) + b"QUIT\r\n")
    assert greeting.startswith(b"220 "), greeting
    # A v1 header and the command in the same segment: both are read.
    reply = raw(port, encode_v1(("192.0.2.9", 4000), ("127.0.0.5", 21)) + b"QUIT\r\n")
    assert reply.startswith(b"220 ") and b"\r\n221" in reply, reply
    # A client from any other network needs no header.
    ftp = login(BALANCER_HOST, port, "127.0.0.27")
    ftp.sendcmd("TYPE I")
    assert sha256(download(ftp)) == sha256(DATA)
    ftp.quit()
    assert "192.0.2.9" in log()


def test_routed_behind_haproxy_tells_backends_the_real_client(cluster: Cluster) -> None:
    # Routed mode: the backend's passive range is published by HAProxy too, and
    # its PASV names the front address.
    b = cluster.add_backend(masquerade=FRONT)
    (b.root / "data.bin").write_bytes(DATA)
    cluster.start_balancer(
        mode="routed",
        send_proxy="v1",
        accept_proxy=[f"{LB_SOURCE}/32"],
        data_listen=BALANCER_HOST,
        backend_options={b.name: {"send_proxy_data": True}},
    )
    front = haproxy_in_front(cluster, cluster.balancer_port, b.passive)
    ftp = login(FRONT, front, "127.0.0.28")
    ftp.sendcmd("TYPE I")
    assert sha256(download(ftp)) == sha256(DATA)
    ftp.storbinary("STOR up.bin", io.BytesIO(DATA))
    ftp.quit()
    assert sha256((b.root / "up.bin").read_bytes()) == sha256(DATA)
    # The backend checks that data and control come from the same client: it
    # saw 127.0.0.28 on both, never the load balancer.
    wait_for(lambda: "127.0.0.28:" in backend_log(b) and "STOR" in backend_log(b))
    assert LB_SOURCE not in backend_log(b)
    assert cluster.balancer is not None
    assert "client=127.0.0.28:" in cluster.balancer.log()


def test_public_addresses_by_client_network(cluster: Cluster, tmp_path: Path) -> None:
    b = cluster.add_backend(proxy_protocol=False)
    (b.root / "data.bin").write_bytes(DATA)
    cluster.start_balancer(
        mode="inspect",
        send_proxy="off",
        public_address="auto",
        data_listen="0.0.0.0",
        sections={
            "public_addresses": {
                "127.0.0.16/28": "127.0.0.8",
                "127.0.0.21/32": "127.0.0.7",
                "127.0.0.64/26": "auto",
            }
        },
    )
    told = {}
    for source in ("127.0.0.21", "127.0.0.22", "127.0.0.70", "127.0.0.200"):
        ftp = login(BALANCER_HOST, cluster.balancer_port, source)
        told[source] = ftp.sendcmd("PASV").split("(")[1].split(",")[:4]
        ftp.sendcmd("TYPE I")
        # Each address told is one the data port listens on: the transfer works.
        assert sha256(download(ftp)) == sha256(DATA)
        ftp.quit()
    assert told == {
        "127.0.0.21": ["127", "0", "0", "7"],  # the most specific network wins
        "127.0.0.22": ["127", "0", "0", "8"],
        "127.0.0.70": ["127", "0", "0", "1"],  # auto: the address it reached
        "127.0.0.200": ["127", "0", "0", "1"],  # no network: public_address (auto)
    }


def test_implicit_ftps_from_the_front_reads_the_header_before_tls(cluster: Cluster) -> None:
    # The header comes in the clear, then the TLS handshake: inspect mode's
    # implicit listener hands the connection to TLS after the door.
    cert, key = make_cert(cluster.workdir)
    b = cluster.add_backend(proxy_protocol=False)
    (b.root / "data.bin").write_bytes(DATA)
    implicit = free_ports(1)
    cluster.start_balancer(
        mode="inspect",
        send_proxy="off",
        accept_proxy=[f"{LB_SOURCE}/32"],
        sections={
            "tls": {
                "cert": str(cert),
                "key": str(key),
                "implicit_listen": f"{BALANCER_HOST}:{implicit}",
            }
        },
    )
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(
        (BALANCER_HOST, implicit), 10, source_address=(LB_SOURCE, 0)
    ) as raw_socket:
        raw_socket.sendall(encode_v1(("127.0.0.41", 5000), ("127.0.0.5", 990)))
        with context.wrap_socket(raw_socket) as tls:
            reply = b""
            while b"\r\n" not in reply:
                reply += tls.recv(1024)
            assert reply.startswith(b"220 "), reply
            tls.sendall(b"QUIT\r\n")
            while b"221" not in reply:
                reply += tls.recv(1024)
    assert cluster.balancer is not None
    wait_for(lambda: "client=127.0.0.41:5000" in cluster.balancer.log())  # type: ignore[union-attr]
    # Without a header, the implicit listener closes the load balancer's connection too.
    with socket.create_connection(
        (BALANCER_HOST, implicit), 10, source_address=(LB_SOURCE, 0)
    ) as raw_socket:
        raw_socket.settimeout(10)
        raw_socket.sendall(b"\x16\x03\x01\x00\x05hello")  # a ClientHello's first bytes
        with contextlib.suppress(ConnectionResetError):
            assert raw_socket.recv(100) == b""
    wait_for(lambda: "malformed PROXY header" in cluster.balancer.log())  # type: ignore[union-attr]
