"""Debian's vsftpd as a routed-mode backend: pasv_address + its own range, no PROXY."""

from __future__ import annotations

import ftplib
import io
import os
import subprocess

from tests.cluster import Cluster, sha256
from tests.conftest import need


def test_vsftpd_transfers_through_the_balancer(cluster: Cluster) -> None:
    need("vsftpd")
    payload = os.urandom(2 * 1024 * 1024 + 1)
    backends = [cluster.add_vsftpd(), cluster.add_vsftpd()]
    for b in backends:
        (b.root / "data.bin").write_bytes(payload)
        upload = b.root / "incoming"
        upload.mkdir()
        upload.chmod(0o777)
    cluster.start_balancer(send_proxy="off", balance="roundrobin")
    seen = set()
    for n in range(4):
        ftp_url = f"ftp://127.0.0.1:{cluster.balancer_port}/data.bin"
        done = subprocess.run(
            [
                need("curl"),
                "-sS",
                "--max-time",
                "30",
                "--disable-epsv",
                "--no-ftp-skip-pasv-ip",
                "--interface",
                f"127.0.0.{30 + n}",
                ftp_url,
            ],
            capture_output=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr.decode()
        assert sha256(done.stdout) == sha256(payload)
    for n in range(4):
        with ftplib.FTP(timeout=10, source_address=(f"127.0.0.{40 + n}", 0)) as ftp:
            ftp.connect("127.0.0.1", cluster.balancer_port)
            ftp.login()
            seen.add(ftp.getwelcome())
            up = os.urandom(300_000 + n)
            ftp.storbinary(f"STOR incoming/up{n}.bin", io.BytesIO(up))
            got = io.BytesIO()
            ftp.retrbinary(f"RETR incoming/up{n}.bin", got.write)
            assert got.getvalue() == up
            host, _port = ftp.makepasv()
            assert host == "127.0.0.1"  # vsftpd's pasv_address: the balancer
    assert seen == {"220 backend vsftpd1 ready", "220 backend vsftpd2 ready"}
