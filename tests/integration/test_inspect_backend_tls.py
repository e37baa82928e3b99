"""Inspect mode with `backend_tls`: the balancer is a TLS client of its backends.

The backends are Debian's vsftpd as installed plus TLS: logins and data must be
TLS (force_anon_*_ssl) and every data connection must resume the control
connection's session (require_ssl_reuse=YES). A plain session could not log in
there, and a data connection that did not resume would be refused: a transfer
that arrives byte-exact proves both.
"""

from __future__ import annotations

import ftplib
import io
import os
from pathlib import Path

import pytest

from tests.cluster import (
    BACKEND_HOSTS,
    BALANCER_HOST,
    Cluster,
    make_cert,
    sha256,
    wait_for,
)
from tests.integration.test_inspect_ftps import MODES, curl
from tests.integration.test_routed_ftps import (
    ReusingFTP_TLS,
    lftp_tls_get,
    tls_context,
    tls_vsftpd,
)

DATA = os.urandom(1024 * 1024 + 11)
LOGIN = "anonymous:x"


def start(
    cluster: Cluster, tmp_path: Path, backend_tls: str, forced: bool, trust: str = "backend"
) -> Cluster:
    backend_cert, backend_key = make_cert(tmp_path, "backend", ips=tuple(BACKEND_HOSTS))
    cert, key = make_cert(tmp_path, "balancer")
    for _ in range(2):
        # Commands logged (log_ftp_protocol): `match` is read from them.
        tls_vsftpd(
            cluster,
            backend_cert,
            backend_key,
            unmodified=True,
            forced=forced,
            data=DATA,
            extra=("log_ftp_protocol=YES",),
        )
    ca = backend_cert if trust == "backend" else cert
    cluster.start_balancer(
        mode="inspect",
        send_proxy="off",
        balance="roundrobin",
        sections={
            "tls": {
                "cert": str(cert),
                "key": str(key),
                "backend_tls": backend_tls,
                "backend_ca": str(ca),
                "handshake_timeout": 5.0,
            }
        },
    )
    return cluster


@pytest.fixture
def tls_both(cluster: Cluster, tmp_path: Path) -> Cluster:
    return start(cluster, tmp_path, "on", forced=True)


def uploaded(c: Cluster, name: str) -> list[bytes]:
    found = [b.root / "incoming" / name for b in c.backends]
    return [p.read_bytes() for p in found if p.exists()]


@pytest.mark.parametrize("mode", list(MODES))
def test_tls_on_both_sides_passive(tls_both: Cluster, mode: str) -> None:
    url = f"ftp://{LOGIN}@{BALANCER_HOST}:{tls_both.balancer_port}/"
    flags = ["--ssl-reqd", "--interface", "127.0.0.11", *MODES[mode]]
    for _ in range(2):  # round robin: both backends
        assert sha256(curl(*flags, url + "data.bin")) == sha256(DATA)
    # The upload with ftplib (PASV), which reads to the end before closing. One
    # CI run saw curl's upload here end in vsftpd's 426 with the tail missing:
    # most likely curl closing with our TLS 1.3 session tickets unread, so its
    # kernel resets the connection, the reset overtakes the close_notify, and
    # the balancer passes a reset on. Not reproduced in some 60 tries since.
    payload = os.urandom(300_001)
    with ReusingFTP_TLS(context=tls_context(), timeout=10) as ftp:
        ftp.connect(BALANCER_HOST, tls_both.balancer_port)
        ftp.login("anonymous", "x")
        ftp.prot_p()
        ftp.storbinary(f"STOR incoming/up-{mode}.bin", io.BytesIO(payload))
    assert uploaded(tls_both, f"up-{mode}.bin") == [payload]


def test_tls_on_both_sides_active(tls_both: Cluster) -> None:
    with ReusingFTP_TLS(context=tls_context(), timeout=10, source_address=("127.0.0.12", 0)) as ftp:
        ftp.connect(BALANCER_HOST, tls_both.balancer_port)
        ftp.login("anonymous", "x")
        ftp.prot_p()
        ftp.set_pasv(False)  # PORT to us; toward the backend it is passive, over TLS
        buf = io.BytesIO()
        ftp.retrbinary("RETR data.bin", buf.write)
        assert buf.getvalue() == DATA
        payload = os.urandom(123_457)
        ftp.storbinary("STOR incoming/active.bin", io.BytesIO(payload))
    assert uploaded(tls_both, "active.bin") == [payload]


def test_lftp_tls_on_both_sides(tls_both: Cluster, tmp_path: Path) -> None:
    got = lftp_tls_get(tls_both.balancer_port, "anonymous,x", tmp_path)
    assert sha256(got) == sha256(DATA)


def test_plain_client_tls_backend(tls_both: Cluster) -> None:
    """backend_tls = "on" with a plain client: the backends, which refuse anything
    in the clear, still serve it. The client never sees AUTH, PBSZ or PROT."""
    ftp = ftplib.FTP(timeout=10)
    ftp.connect(BALANCER_HOST, tls_both.balancer_port)
    try:
        assert ftp.getwelcome().startswith("220 backend vsftpd")
        ftp.login("anonymous", "x")
        buf = io.BytesIO()
        ftp.retrbinary("RETR data.bin", buf.write)
        assert buf.getvalue() == DATA
    finally:
        ftp.quit()


def test_match_follows_the_client(cluster: Cluster, tmp_path: Path) -> None:
    c = start(cluster, tmp_path, "match", forced=False)
    logs = [c.workdir / f"{b.name}.xfer.log" for b in c.backends]

    def auth_count() -> int:
        return sum(p.read_text().count('"AUTH TLS"') for p in logs if p.exists())

    url = f"ftp://{LOGIN}@{BALANCER_HOST}:{c.balancer_port}/data.bin"
    assert sha256(curl(url)) == sha256(DATA)
    assert auth_count() == 0  # a plain client: plain to the backend
    assert sha256(curl("--ssl-reqd", url)) == sha256(DATA)
    wait_for(lambda: auth_count() == 1, what="the backend to log AUTH TLS")
    prot = sum(p.read_text().count('"PROT P"') for p in logs if p.exists())
    assert prot == 1


def test_untrusted_backend_certificate(cluster: Cluster, tmp_path: Path) -> None:
    """backend_ca that did not sign the backends' certificate: 421 to the client,
    the reason in the log, no login reaches the backend in the clear."""
    c = start(cluster, tmp_path, "on", forced=True, trust="other")
    ftp = ftplib.FTP(timeout=10)
    with pytest.raises(ftplib.error_temp, match="421"):
        ftp.connect(BALANCER_HOST, c.balancer_port)
        ftp.login("anonymous", "x")
    ftp.close()
    assert c.balancer is not None
    log = c.balancer.log
    wait_for(lambda: "certificate verify failed" in log(), what="the verify failure in the log")
    wait_for(lambda: 'end="backend TLS: handshake failed' in log(), what="the session's end")
