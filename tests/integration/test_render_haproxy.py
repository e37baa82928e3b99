"""The rendered HAProxy configuration, run for real on loopback: the classic design works."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cluster import (
    BACKEND_HOSTS,
    BALANCER_HOST,
    PASSWORD,
    USER,
    Cluster,
    free_ports,
    greeting,
    listening,
    sha256,
    wait_for,
)
from tests.conftest import need
from tests.servers import unpacked

DATA = os.urandom(1024 * 1024 + 9)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_rendered_haproxy_balances_ftp(cluster: Cluster, version: str, tmp_path: Path) -> None:
    haproxy = need("haproxy")
    for _ in range(3):
        b = cluster.add_backend()
        (b.root / "data.bin").write_bytes(DATA)
    config = cluster.workdir / "ftplb.toml"
    config.write_text(
        cluster.config_text(
            send_proxy=version,
            balance="roundrobin",
            data_listen=BALANCER_HOST,
            backend_options={b.name: {"send_proxy_data": True} for b in cluster.backends},
        )
    )
    rendered = subprocess.run(
        [sys.executable, "-m", "ftplb", "render", "haproxy", "-c", str(config)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cfg = cluster.workdir / "haproxy.cfg"
    cfg.write_text(rendered)
    proc = cluster.spawn("haproxy", [haproxy, "-db", "-f", str(cfg)])
    url = f"ftp://{USER}:{PASSWORD}@{BALANCER_HOST}:{cluster.balancer_port}/"

    def greets() -> bool:
        done = subprocess.run(
            [need("curl"), "-sS", "--max-time", "5", url + "whoami.txt"], capture_output=True
        )
        return done.returncode == 0

    wait_for(greets, timeout=15, what="HAProxy to pass its first checks")

    served = set()
    for n, flags in enumerate(
        [
            ["--disable-epsv", "--no-ftp-skip-pasv-ip"],
            [],
            ["--disable-epsv", "--no-ftp-skip-pasv-ip"],
            [],
        ]
    ):
        ip = f"127.0.0.{21 + n}"
        done = subprocess.run(
            [need("curl"), "-sS", "--max-time", "30", *flags, "--interface", ip, url + "data.bin"],
            capture_output=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr.decode() + proc.log()
        assert sha256(done.stdout) == sha256(DATA)
        who = subprocess.run(
            [need("curl"), "-sS", "--max-time", "30", "--interface", ip, url + "whoami.txt"],
            capture_output=True,
            timeout=60,
        ).stdout.decode()
        served.add(who)
        backend = next(b for b in cluster.backends if b.name == who)
        assert backend.process is not None
        log = backend.process.log()
        # The backend saw the client, on control and on data, through HAProxy's headers.
        assert re.search(rf"{re.escape(ip)}:\d+-\[{USER}\] USER '{USER}' logged in", log)
        assert re.search(rf"data connection from {re.escape(ip)}:\d+ \(PROXY {version}", log)
    assert len(served) >= 2
    # The FTP checks (PROXY header first, then 220) keep every backend up:
    # give them a few more rounds (interval 0.5 s, fall 2) to fail if they would.
    time.sleep(2.0)
    assert "is DOWN" not in proc.log(), proc.log()


def test_rendered_backend_command_lines_run(cluster: Cluster) -> None:
    """pure-ftpd and `ftplb backend` have no config checker: run what render printed."""
    port, first = free_ports(1, BACKEND_HOSTS[0]), free_ports(10)
    config = cluster.workdir / "one.toml"
    config.write_text(
        "[balancer]\n"
        f'listen = "{BALANCER_HOST}:{free_ports(1)}"\n'
        "[[backends]]\n"
        'name = "one"\n'
        f'address = "{BACKEND_HOSTS[0]}:{port}"\n'
        f'passive_ports = "{first}-{first + 9}"\n'
    )

    def rendered(kind: str) -> list[str]:
        text = subprocess.run(
            [
                sys.executable,
                "-m",
                "ftplb",
                "render",
                kind,
                "-c",
                str(config),
                "--root",
                str(cluster.workdir),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        command = " ".join(
            x for x in text.replace("\\\n", " ").splitlines() if not x.startswith("#")
        )
        return shlex.split(command)

    pure = rendered("pure-ftpd")
    assert pure[:3] == ["pure-ftpd", "-S", f"{BACKEND_HOSTS[0]},{port}"]
    proc = cluster.spawn("pure", [unpacked("/usr/sbin/pure-ftpd"), *pure[1:], "-E", "-H"])
    wait_for(lambda: listening(BACKEND_HOSTS[0], port), what="pure-ftpd")
    assert greeting(BACKEND_HOSTS[0], port).startswith("220")
    proc.stop()

    line = rendered("ftplb-backend")
    assert line[:2] == ["ftplb", "backend"]
    line = [x if x != "NAME:PASSWORD" else "u:p" for x in line]
    proc = cluster.spawn("fb", [sys.executable, "-m", "ftplb", *line[1:]])
    wait_for(lambda: "serving " in proc.log(), what="ftplb backend")
    assert greeting(BACKEND_HOSTS[0], port).startswith("220 ")
    proc.stop()
