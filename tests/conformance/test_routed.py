"""The same odd-but-legal FTP through routed mode, where it applies: ftplb relays
the control channel untouched, so what matters is the data connections (each
to the backend that owns its port) and that nothing is lost or reordered.
The backend is `ftplb backend` behind PROXY (routed mode's usual backend)."""

from __future__ import annotations

import ftplib
import hashlib
import io
import socket
from collections.abc import Iterator

import pytest

from tests.cluster import BALANCER_HOST, Cluster, cluster_at
from tests.conformance.test_commands import DATA, abort_transfer

CLIENT = "127.0.0.11"


@pytest.fixture(scope="module")
def routed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster_at(tmp_path_factory.mktemp("routed")) as c:
        b = c.add_backend()
        (b.root / "big.bin").write_bytes(DATA * 24)
        c.start_balancer(backend_options={b.name: {"send_proxy_data": True}})
        yield c


def session(c: Cluster, encoding: str = "utf-8") -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=15, source_address=(CLIENT, 0), encoding=encoding)
    ftp.connect(BALANCER_HOST, c.balancer_port)
    ftp.login("alice", "secret")
    return ftp


def test_resume_append_unique_rename_delete(routed: Cluster) -> None:
    with session(routed) as ftp:
        ftp.storbinary("STOR r.bin", io.BytesIO(DATA[:500_000]))
        ftp.storbinary("STOR r.bin", io.BytesIO(DATA[500_000:]), rest=500_000)
        got = io.BytesIO()
        ftp.retrbinary("RETR r.bin", got.write, rest=1_000_000)
        assert hashlib.sha256(got.getvalue()).digest() == hashlib.sha256(DATA[1_000_000:]).digest()
        ftp.storbinary("APPE r.bin", io.BytesIO(b"tail"))
        assert ftp.size("r.bin") == len(DATA) + 4
        assert ftp.storbinary("STOU", io.BytesIO(b"u")).startswith("226")
        assert ftp.rename("r.bin", "s.bin").startswith("250")
        assert ftp.delete("s.bin").startswith("250")
        assert "big.bin" in [name for name, _ in ftp.mlsd()]


def test_pipelining(routed: Cluster) -> None:
    with socket.create_connection((BALANCER_HOST, routed.balancer_port), 10, (CLIENT, 0)) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220")
        s.sendall(b"USER alice\r\nPASS secret\r\nTYPE I\r\nPWD\r\nNOOP\r\nSYST\r\n")
        codes = []
        while len(codes) < 5:
            line = f.readline()
            if line[3:4] == b" ":
                codes.append(line[:3])
        assert codes == [b"331", b"230", b"200", b"257", b"200"]


def test_abor_during_retr_and_stor(routed: Cluster) -> None:
    # ftplib sends ABOR as urgent data: its line end must be relayed (it was
    # not: the kernel kept the urgent byte out of the stream). Urgent data is
    # passed on as plain bytes; pyftpdlib reads its control channel anyway.
    with session(routed) as ftp:
        assert abort_transfer(ftp, "RETR big.bin") == ["426", "226", "200"]
    with session(routed) as ftp:
        assert abort_transfer(ftp, "STOR aborted.bin") == ["426", "226", "200"]
