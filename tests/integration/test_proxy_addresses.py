"""Backends see the real client address (PROXY v1/v2), on control and data."""

from __future__ import annotations

import contextlib
import io
import re
import socket

import pytest

from tests.cluster import Cluster, wait_for


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_backends_log_client_addresses_not_the_balancer(cluster: Cluster, version: str) -> None:
    for _ in range(3):
        b = cluster.add_backend()
        (b.root / "f.bin").write_bytes(b"x" * 100_000)
    cluster.start_balancer(
        send_proxy=version,
        balance="roundrobin",
        backend_options={b.name: {"send_proxy_data": True} for b in cluster.backends},
    )
    clients = [f"127.0.0.{n}" for n in range(11, 17)]
    served = {}
    for ip in clients:
        with cluster.ftp(source=ip) as ftp:
            served[ip] = cluster.backend_of(ftp)
            buf = io.BytesIO()
            ftp.retrbinary("RETR f.bin", buf.write)
            assert buf.getvalue() == b"x" * 100_000
    for ip, name in served.items():
        backend = next(b for b in cluster.backends if b.name == name)
        assert backend.process is not None
        log = backend.process.log()
        assert re.search(rf"{re.escape(ip)}:\d+-\[alice\] USER 'alice' logged in", log), log
        assert re.search(rf"data connection from {re.escape(ip)}:\d+ \(PROXY {version}", log), log
        assert re.search(rf"{re.escape(ip)}:\d+-\[alice\] RETR .*f.bin completed=1", log), log
    for b in cluster.backends:
        assert b.process is not None
        # Every session line names a client, never the balancer's own address.
        assert not re.search(r"127\.0\.0\.1:\d+-\[", b.process.log()), b.process.log()


def test_data_connection_without_header_is_refused(cluster: Cluster) -> None:
    """The foreign-address check is on: without send_proxy_data the data
    connection comes from the balancer, and the backend refuses it."""
    b = cluster.add_backend()
    (b.root / "f.bin").write_bytes(b"y" * 1000)
    cluster.start_balancer(send_proxy="v2")
    with cluster.ftp(source="127.0.0.21") as ftp:
        ftp.sendcmd("TYPE I")
        host, port = ftp.makepasv()
        with socket.create_connection((host, port), 5) as data:
            data.settimeout(5)
            data.sendall(b"upload bytes, no PROXY header\r\n")
            # Closed: no header, so not accepted (the backend's reset is passed on).
            with contextlib.suppress(ConnectionResetError):
                assert data.recv(10) == b""
        log = b.process.log if b.process else None
        assert log is not None
        wait_for(lambda: "refused: malformed PROXY header" in log(), what="the refusal in the log")


def test_data_connection_from_another_client_is_refused(cluster: Cluster) -> None:
    b = cluster.add_backend()
    (b.root / "f.bin").write_bytes(b"z" * 1000)
    cluster.start_balancer(send_proxy="v1", backend_options={b.name: {"send_proxy_data": True}})
    with cluster.ftp(source="127.0.0.11") as ftp:
        ftp.sendcmd("TYPE I")
        host, port = ftp.makepasv()
        # Someone else races the client to its passive port.
        with socket.create_connection((host, port), 5, source_address=("127.0.0.99", 0)) as thief:
            thief.settimeout(5)
            assert thief.recv(10) == b""
        reply = ftp.getline()
        assert reply.startswith("425 Rejected data connection from foreign address 127.0.0.99")
        # The client's own session goes on.
        buf = io.BytesIO()
        ftp.retrbinary("RETR f.bin", buf.write)
        assert buf.getvalue() == b"z" * 1000
    assert b.process is not None
    assert "data connection from 127.0.0.99" in b.process.log()
