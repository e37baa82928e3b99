"""`ftplb backend --proxy-protocol` against well-formed, malformed and untrusted peers."""

from __future__ import annotations

import ftplib
import io
import socket
import time

import pytest

from ftplb.proto.proxy_protocol import encode_v1, encode_v2
from tests.cluster import PASSWORD, USER, Backend, Cluster, wait_for


@pytest.fixture
def backend(cluster: Cluster) -> Backend:
    # Trusted: 127.0.0.1 (the default) and 127.0.0.2.
    b = cluster.add_backend(
        extra_args=("--trusted-proxy=127.0.0.1/32", "--trusted-proxy=127.0.0.2")
    )
    (b.root / "f.bin").write_bytes(b"q" * 50_000)
    return b


def connect(b: Backend, source: str = "127.0.0.1") -> socket.socket:
    s = socket.create_connection((b.host, b.port), 5, source_address=(source, 0))
    s.settimeout(5)
    return s


def read_reply(s: socket.socket) -> bytes:
    """One reply line. Byte by byte: a 150 and its 226 can arrive in one segment."""
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = s.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def closed(s: socket.socket) -> bool:
    try:
        return s.recv(100) == b""
    except ConnectionResetError:
        return True


def logged_in(b: Backend, header: bytes, source: str = "127.0.0.1") -> socket.socket:
    s = connect(b, source)
    s.sendall(header)
    assert read_reply(s).startswith(b"220 ")
    s.sendall(b"USER alice\r\n")
    assert read_reply(s).startswith(b"331")
    s.sendall(b"PASS secret\r\n")
    assert read_reply(s).startswith(b"230")
    return s


def log_of(b: Backend) -> str:
    assert b.process is not None
    return b.process.log()


@pytest.mark.parametrize("encode", [encode_v1, encode_v2], ids=["v1", "v2"])
def test_header_sets_the_client_address(backend: Backend, encode) -> None:  # type: ignore[no-untyped-def]
    header = encode(("198.51.100.7", 40001), ("127.0.0.1", 21))
    with logged_in(backend, header, source="127.0.0.2"):
        pass
    wait_for(lambda: "198.51.100.7:40001-[alice] USER 'alice' logged in." in log_of(backend))


BAD_HEADERS = [
    b"USER alice\r\n",  # no header at all
    b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 21\r\n",
    b"PROXY TCP4 1.2.3.4\r\n",
    b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY " + b"A" * 200 + b"\r\n",
    b"\r\n\r\n\x00\r\nQUIT\n\x31\x11\x00\x0c" + b"\x00" * 12,  # v2 with version 3
    b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff",  # v2 claiming 65535 bytes
    b"\x16\x03\x01\x02\x00\x01",  # a TLS ClientHello
]


@pytest.mark.parametrize("bad", BAD_HEADERS)
def test_malformed_header_closes_only_that_connection(backend: Backend, bad: bytes) -> None:
    with logged_in(backend, encode_v1(("192.0.2.1", 1000), ("127.0.0.1", 21))) as good:
        s = connect(backend)
        s.sendall(bad)
        assert closed(s)
        s.close()
        # The established session is undisturbed.
        good.sendall(b"NOOP\r\n")
        assert read_reply(good).startswith(b"200")
    wait_for(lambda: "refused: malformed PROXY header" in log_of(backend))


def test_untrusted_peer_is_refused_even_with_a_header(backend: Backend) -> None:
    s = connect(backend, source="127.0.0.77")
    s.sendall(encode_v1(("192.0.2.9", 1000), ("127.0.0.1", 21)))
    assert closed(s)
    s.close()
    wait_for(lambda: "127.0.0.77" in log_of(backend) and "not a trusted proxy" in log_of(backend))
    assert "192.0.2.9" not in log_of(backend)


def test_header_split_over_segments(backend: Backend) -> None:
    header = encode_v1(("203.0.113.5", 5555), ("127.0.0.1", 21))
    s = connect(backend)
    s.sendall(header[:9])
    time.sleep(0.2)
    s.sendall(header[9:] + b"USER alice\r\n")  # an early command is kept
    replies = b""
    while replies.count(b"\r\n") < 2:
        chunk = s.recv(1024)
        assert chunk, replies
        replies += chunk
    first, second = replies.split(b"\r\n")[:2]
    assert first.startswith(b"220 ") and second.startswith(b"331")
    s.close()
    wait_for(lambda: "203.0.113.5:5555" in log_of(backend))


def test_local_header_is_a_quiet_health_check(backend: Backend) -> None:
    for encode in (encode_v1, encode_v2):
        s = connect(backend)
        s.sendall(encode(None, None))
        assert read_reply(s).startswith(b"220 ")
        s.sendall(b"QUIT\r\n")
        assert read_reply(s).startswith(b"221")
        s.close()
    assert "FTP session opened" not in log_of(backend)


def test_data_connection_header_is_checked(backend: Backend) -> None:
    """Data connections through a trusted proxy carry the client in their header."""
    with logged_in(backend, encode_v1(("127.0.0.50", 1000), ("127.0.0.1", 21))) as ctl:
        _transfer_twice(backend, ctl)


def _transfer_twice(backend: Backend, ctl: socket.socket) -> None:
    ctl.sendall(b"TYPE I\r\n")
    read_reply(ctl)
    for claimed, accepted in (("127.0.0.51", False), ("127.0.0.50", True)):
        ctl.sendall(b"PASV\r\n")
        reply = read_reply(ctl).decode()
        nums = reply[reply.index("(") + 1 : reply.index(")")].split(",")
        port = int(nums[4]) * 256 + int(nums[5])
        with socket.create_connection((backend.host, port), 5) as data:
            data.sendall(encode_v1((claimed, 2000), ("127.0.0.1", port)))
            if not accepted:
                assert read_reply(ctl).startswith(
                    b"425 Rejected data connection from foreign address 127.0.0.51"
                )
                continue
            ctl.sendall(b"RETR f.bin\r\n")
            assert read_reply(ctl)[:3] in (b"125", b"150")
            got = io.BytesIO()
            while chunk := data.recv(65536):
                got.write(chunk)
        assert got.getvalue() == b"q" * 50_000
        assert read_reply(ctl).startswith(b"226")


def test_an_active_transfer_then_passive_leaves_other_sessions_alone(cluster: Cluster) -> None:
    # pyftpdlib 2.2 keeps a connected ActiveDTP as the session's connector; the
    # session's next PASV closed it, unregistering its old descriptor number,
    # by then another session's passive listener: that transfer hung until the
    # listener's 30 s timeout. (Found by bench/soak.py.)
    b = cluster.add_backend(proxy_protocol=False, masquerade=None)
    (b.root / "f.bin").write_bytes(b"z" * 10_000)
    with (
        ftplib.FTP(timeout=5, source_address=("127.0.0.11", 0)) as a,
        ftplib.FTP(timeout=5, source_address=("127.0.0.11", 0)) as other,
    ):
        for ftp in (a, other):
            ftp.connect(b.host, b.port)
            ftp.login(USER, PASSWORD)
            ftp.sendcmd("TYPE I")
        for _ in range(3):
            a.set_pasv(False)
            got = io.BytesIO()
            a.retrbinary("RETR f.bin", got.write)  # active: the backend connects out
            assert got.getvalue() == b"z" * 10_000
            # The transfer's descriptor is free: the other session's passive
            # listener takes it (the lowest free number)...
            host, port = ftplib.parse227(other.sendcmd("PASV"))
            # ...and this PASV must not unregister it.
            a.sendcmd("PASV")
            with socket.create_connection((host, port), 5, ("127.0.0.11", 0)) as conn:
                other.sendcmd("RETR f.bin")  # 150 once the listener has accepted
                conn.settimeout(5)
                received = b""
                while chunk := conn.recv(65536):
                    received += chunk
            assert received == b"z" * 10_000
            assert other.voidresp().startswith("226")
