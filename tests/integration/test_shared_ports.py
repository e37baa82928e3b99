"""Inspect mode's data ports, shared between clients (matched by port and client
address): a handful of ports carries many concurrent transfers."""

from __future__ import annotations

import ftplib
import hashlib
import os
import socket
from contextlib import ExitStack, suppress

import pytest

from tests.cluster import BALANCER_HOST, PASSWORD, USER, Cluster, free_ports

SIZE = 16 * 1024 * 1024
FIRST = 64 * 1024


def start(cluster: Cluster, ports: int, workers: int = 1) -> tuple[int, bytes]:
    data = os.urandom(SIZE)
    for _ in range(2):
        b = cluster.add_backend(proxy_protocol=False, passive_size=None, masquerade=None)
        (b.root / "big.bin").write_bytes(data)
    first = free_ports(ports)
    cluster.start_balancer(
        mode="inspect",
        send_proxy="off",
        workers=workers,
        data_ports=f"{first}-{first + ports - 1}",
    )
    return first, data


@pytest.mark.parametrize("workers", [1, 2])
def test_four_ports_carry_fourteen_transfers_at_once(cluster: Cluster, workers: int) -> None:
    first, data = start(cluster, 4, workers)
    sources = [f"127.0.0.{20 + i}" for i in range(12)] + ["127.0.0.40", "127.0.0.40"]
    with ExitStack() as stack:
        announced = []
        # Every session asks first: fourteen requests pending on four ports...
        for source in sources:
            ftp = stack.enter_context(ftplib.FTP(timeout=20, source_address=(source, 0)))
            ftp.connect(BALANCER_HOST, cluster.balancer_port)
            ftp.login(USER, PASSWORD)
            ftp.sendcmd("TYPE I")
            reply = ftp.sendcmd("EPSV")
            port = int(reply.split("|")[3])
            assert first <= port < first + 4, reply
            announced.append((source, port, ftp))
        # ...then every one connects and starts, and is held after its first bytes.
        running = []
        for source, port, ftp in announced:
            conn = stack.enter_context(
                socket.create_connection((BALANCER_HOST, port), 20, source_address=(source, 0))
            )
            assert ftp.sendcmd("RETR big.bin")[:3] in ("125", "150")
            head = b""
            while len(head) < FIRST:
                head += conn.recv(FIRST - len(head))
            running.append((source, port, ftp, conn, head))
        # Fourteen transfers in progress at once over four ports.
        assert len({port for _, port, *_ in running}) <= 4
        same = [port for source, port, *_ in running if source == "127.0.0.40"]
        assert same[0] != same[1]  # one address: a port each
        for _source, _port, ftp, conn, head in running:
            digest = hashlib.sha256(head)
            while chunk := conn.recv(1 << 20):
                digest.update(chunk)
            conn.close()
            assert ftp.voidresp().startswith("226")
            assert digest.hexdigest() == hashlib.sha256(data).hexdigest()


def test_a_port_taken_by_another_client_is_refused_to_a_thief(cluster: Cluster) -> None:
    # Two clients wait on the same port; a third address connecting to it is
    # refused, and both real clients still get their files.
    first, data = start(cluster, 1)
    with ExitStack() as stack:
        waiting = []
        for source in ("127.0.0.21", "127.0.0.22"):
            ftp = stack.enter_context(ftplib.FTP(timeout=10, source_address=(source, 0)))
            ftp.connect(BALANCER_HOST, cluster.balancer_port)
            ftp.login(USER, PASSWORD)
            ftp.sendcmd("TYPE I")
            assert ftp.sendcmd("EPSV") == f"229 Entering Extended Passive Mode (|||{first}|)"
            waiting.append((source, ftp))
        with socket.create_connection(
            (BALANCER_HOST, first), 5, source_address=("127.0.0.99", 0)
        ) as thief:
            thief.settimeout(5)
            with suppress(ConnectionResetError):
                assert thief.recv(100) == b""
        for source, ftp in waiting:
            with socket.create_connection(
                (BALANCER_HOST, first), 10, source_address=(source, 0)
            ) as conn:
                assert ftp.sendcmd("RETR big.bin")[:3] in ("125", "150")
                digest = hashlib.sha256()
                while chunk := conn.recv(1 << 20):
                    digest.update(chunk)
            assert ftp.voidresp().startswith("226")
            assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    assert cluster.balancer is not None
    assert "data connection from 127.0.0.99" in cluster.balancer.log()
