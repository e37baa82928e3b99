"""FTPS terminated by the balancer in inspect mode: TLS to the client, plain to the backend."""

from __future__ import annotations

import ftplib
import io
import os
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster import (
    BALANCER_HOST,
    PASSWORD,
    USER,
    Cluster,
    free_ports,
    make_cert,
    sha256,
    wait_for,
)
from tests.conftest import need
from tests.integration.test_routed_ftps import (
    CURL_UPLOAD_TLS,
    ReusingFTP_TLS,
    lftp_tls_get,
    tls_context,
)

DATA = os.urandom(1024 * 1024 + 77)


@pytest.fixture
def tls_inspect(cluster: Cluster, tmp_path: Path) -> tuple[Cluster, int]:
    cert, key = make_cert(tmp_path)
    for _ in range(2):
        b = cluster.add_backend(proxy_protocol=False, passive_size=None, masquerade=None)
        (b.root / "data.bin").write_bytes(DATA)
    implicit = free_ports(1)
    cluster.start_balancer(
        mode="inspect",
        send_proxy="off",
        balance="roundrobin",
        sections={
            "tls": {
                "cert": str(cert),
                "key": str(key),
                "implicit_listen": f"{BALANCER_HOST}:{implicit}",
                "required": True,
                "handshake_timeout": 1.0,
            }
        },
    )
    return cluster, implicit


def curl(*args: str) -> bytes:
    done = subprocess.run(
        [need("curl"), "-sS", "--max-time", "30", "--insecure", *args],
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


# curl 7.88 cannot do active mode over TLS at all ("sa_addr inet_ntop() failed",
# against any server): active FTPS is tested with ftplib below.
MODES = {"pasv": ["--disable-epsv", "--no-ftp-skip-pasv-ip"], "epsv": []}


@pytest.mark.parametrize("mode", list(MODES))
def test_explicit_ftps_every_data_mode(
    tls_inspect: tuple[Cluster, int], mode: str, tmp_path: Path
) -> None:
    c, _ = tls_inspect
    url = f"ftp://{USER}:{PASSWORD}@{BALANCER_HOST}:{c.balancer_port}/"
    flags = ["--ssl-reqd", "--interface", "127.0.0.11", *MODES[mode]]
    assert sha256(curl(*flags, url + "data.bin")) == sha256(DATA)
    payload = os.urandom(250_000)
    (tmp_path / "up.bin").write_bytes(payload)
    curl(*flags, *CURL_UPLOAD_TLS, "-T", str(tmp_path / "up.bin"), url + f"up-{mode}.bin")
    found = [b.root / f"up-{mode}.bin" for b in c.backends if (b.root / f"up-{mode}.bin").exists()]
    assert len(found) == 1 and found[0].read_bytes() == payload


def test_active_ftps_with_ftplib(tls_inspect: tuple[Cluster, int]) -> None:
    c, _ = tls_inspect
    with ReusingFTP_TLS(context=tls_context(), timeout=10, source_address=("127.0.0.12", 0)) as ftp:
        ftp.connect(BALANCER_HOST, c.balancer_port)
        ftp.login(USER, PASSWORD)
        ftp.prot_p()
        ftp.set_pasv(False)  # PORT: we connect to the client and are its TLS server
        buf = io.BytesIO()
        ftp.retrbinary("RETR data.bin", buf.write)
        assert buf.getvalue() == DATA
        payload = os.urandom(123_456)
        ftp.storbinary("STOR active-up.bin", io.BytesIO(payload))
    found = [b.root / "active-up.bin" for b in c.backends if (b.root / "active-up.bin").exists()]
    assert len(found) == 1 and found[0].read_bytes() == payload


def test_implicit_ftps(tls_inspect: tuple[Cluster, int]) -> None:
    _, port = tls_inspect
    assert sha256(curl(f"ftps://{USER}:{PASSWORD}@{BALANCER_HOST}:{port}/data.bin")) == sha256(DATA)


def test_lftp_ssl_force(tls_inspect: tuple[Cluster, int], tmp_path: Path) -> None:
    c, _ = tls_inspect
    got = lftp_tls_get(c.balancer_port, f"{USER},{PASSWORD}", tmp_path)
    assert sha256(got) == sha256(DATA)


def test_session_reuse_is_required(tls_inspect: tuple[Cluster, int]) -> None:
    c, _ = tls_inspect
    # ftplib's own FTP_TLS opens each data connection with a fresh TLS session.
    fresh = ftplib.FTP_TLS(context=tls_context(), timeout=10)
    try:
        fresh.connect(BALANCER_HOST, c.balancer_port)
        fresh.login(USER, PASSWORD)
        fresh.prot_p()
        buf = io.BytesIO()
        with pytest.raises((ftplib.error_perm, ssl.SSLError, OSError)):
            fresh.retrbinary("RETR data.bin", buf.write)
        assert buf.getvalue() == b""
    finally:
        fresh.close()
    assert c.balancer is not None
    log = c.balancer.log
    wait_for(lambda: "TLS data connection refused: control session not resumed" in log())
    # One that resumes the control session gets its file.
    with ReusingFTP_TLS(context=tls_context(), timeout=10) as ftp:
        ftp.connect(BALANCER_HOST, c.balancer_port)
        ftp.login(USER, PASSWORD)
        ftp.prot_p()
        buf = io.BytesIO()
        ftp.retrbinary("RETR data.bin", buf.write)
        assert buf.getvalue() == DATA


def test_user_before_auth_tls_is_refused(tls_inspect: tuple[Cluster, int]) -> None:
    c, _ = tls_inspect
    with ftplib.FTP(timeout=10) as ftp:
        ftp.connect(BALANCER_HOST, c.balancer_port)
        with pytest.raises(ftplib.error_perm, match="530 TLS required"):
            ftp.login(USER, PASSWORD)
        with pytest.raises(ftplib.error_perm, match=r"^503 CCC needs AUTH TLS first"):
            ftp.sendcmd("CCC")


def test_bad_handshakes_are_dropped_and_others_go_on(tls_inspect: tuple[Cluster, int]) -> None:
    c, port = tls_inspect
    with ReusingFTP_TLS(context=tls_context(), timeout=20) as ftp:
        ftp.connect(BALANCER_HOST, c.balancer_port)
        ftp.login(USER, PASSWORD)
        ftp.prot_p()
        ftp.voidcmd("TYPE I")
        with ftp.transfercmd("RETR data.bin") as conn:
            first = conn.recv(65536)
            # Garbage instead of a ClientHello, and a stall mid-handshake.
            garbage = socket.create_connection((BALANCER_HOST, port), 5)
            garbage.sendall(b"GET / HTTP/1.0\r\n\r\n" * 10)
            stall = socket.create_connection((BALANCER_HOST, port), 5)
            stall.sendall(b"\x16\x03\x01\x00\x80")  # the start of a ClientHello, then nothing
            rest = b""
            while chunk := conn.recv(65536):
                rest += chunk
        assert ftp.voidresp().startswith("226")
        assert first + rest == DATA
        # Both are dropped (the handshake timeout is 1 s), the transfer above was not.
        for s in (garbage, stall):
            try:
                wait_for(lambda s=s: _closed(s), timeout=5, what="the bad handshake to be dropped")
            finally:
                s.close()
    assert c.balancer is not None and c.balancer.popen.poll() is None


def _closed(s: socket.socket) -> bool:
    try:
        s.settimeout(0.2)
        return s.recv(4096) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_unreadable_certificate_fails_check(tmp_path: Path, cluster: Cluster) -> None:
    cluster.add_backend(proxy_protocol=False, passive_size=None, masquerade=None)
    path = tmp_path / "ftplb.toml"
    path.write_text(
        cluster.config_text(
            mode="inspect", sections={"tls": {"cert": str(tmp_path / "missing.pem")}}
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "ftplb", "run", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert f"{path}: tls.cert: cannot read {tmp_path / 'missing.pem'}" in done.stderr
