"""`discover = "dns"` against a real DNS server: Debian's dnsmasq, answering from
a hosts file it re-reads on SIGHUP (the way a headless Service's records come
and go with pods). Never the machine's own resolver."""

from __future__ import annotations

import ftplib
import io
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.cluster import (
    BALANCER_HOST,
    Cluster,
    Process,
    _port_free,
    free_ports,
    sha256,
    wait_for,
)
from tests.conftest import need

DNS_HOST = "127.0.2.53"
DATA = os.urandom(2 * 1024 * 1024 + 3)


class Dns:
    """dnsmasq serving `*.test` from one hosts file, nothing else."""

    def __init__(self, cluster: Cluster) -> None:
        self.hosts = cluster.workdir / "dns.hosts"
        self.hosts.write_text("")
        self.port = free_ports(1, DNS_HOST)
        self.process: Process = cluster.spawn(
            "dnsmasq",
            [
                need("dnsmasq"),
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                f"--addn-hosts={self.hosts}",
                "--local=/test/",  # names under .test: answered here or NXDOMAIN
                f"--listen-address={DNS_HOST}",
                "--bind-interfaces",
                f"--port={self.port}",
                "--user=root",  # reads the hosts file again after SIGHUP
                "--pid-file=",
                "--log-queries",
                "--log-facility=-",
            ],
        )
        wait_for(lambda: "started" in self.process.log(), what="dnsmasq to start")

    def serve(self, *addresses: str, name: str = "pool.test") -> None:
        self.hosts.write_text("".join(f"{a} {name}\n" for a in addresses))
        os.kill(self.process.popen.pid, signal.SIGHUP)


def same_port_on(*hosts: str) -> int:
    """A port free on every one of `hosts` (one port for all records of a name)."""
    for _ in range(200):
        port = free_ports(1, hosts[0])
        if all(_port_free(h, port) for h in hosts[1:]):
            return port
    raise AssertionError("no common free port")


def start(cluster: Cluster, dns: Dns, port: int, **extra: object) -> Process:
    text = cluster.config_text(
        mode="inspect",
        send_proxy="off",
        sections={
            "discovery": {"nameservers": [f"{DNS_HOST}:{dns.port}"], "interval": 0.5},
            **extra.pop("sections", {}),  # type: ignore[dict-item]
        },
        **extra,
    )
    # The configured backends are found by DNS, not listed.
    text = text.split("[[backends]]")[0]
    text += f'[[backends]]\nname = "pool"\naddress = "pool.test:{port}"\ndiscover = "dns"\n'
    cluster.config_path.write_text(text)
    proc = cluster.spawn(
        "balancer", [sys.executable, "-m", "ftplb", "run", "-c", str(cluster.config_path)]
    )
    cluster.balancer = proc
    wait_for(lambda: "ready:" in proc.log() or proc.popen.poll() is not None, what="ready")
    assert proc.popen.poll() is None, proc.log()
    return proc


def test_records_that_come_are_checked_first_and_records_that_go_drain(cluster: Cluster) -> None:
    dns = Dns(cluster)
    port = same_port_on("127.0.1.1", "127.0.1.2")
    for _ in range(2):
        b = cluster.add_backend(proxy_protocol=False, masquerade=None, port=port)
        (b.root / "data.bin").write_bytes(DATA)
    dns.serve("127.0.1.1")
    lb = start(cluster, dns, port)
    assert "ready: 1 of 1 backends up" in lb.log()
    assert "backend pool-127.0.1.1 is UP" in lb.log()

    held = cluster.ftp()
    assert cluster.backend_of(held) == "ftp1"

    # A pod comes (127.0.1.2) and a record with nothing behind it (127.0.1.3).
    dns.serve("127.0.1.1", "127.0.1.2", "127.0.1.3")
    wait_for(lambda: "backend pool-127.0.1.2 is UP" in lb.log(), what="the new record UP")
    wait_for(lambda: "backend pool-127.0.1.3 is DOWN" in lb.log(), what="the dead record DOWN")
    log = lb.log()
    assert log.index("new 127.0.1.2, 127.0.1.3") < log.index("pool-127.0.1.2 is UP")
    # Never a session on a record before its check, nor on the dead one.
    sessions = [cluster.ftp() for _ in range(4)]
    assert {cluster.backend_of(s) for s in sessions} == {"ftp1", "ftp2"}
    for s in sessions:
        s.quit()
    mentions = [line for line in lb.log().splitlines() if "pool-127.0.1.3" in line]
    assert all("ftplb.health" in line or "discovery" in line for line in mentions), mentions

    # The first pod's record goes: its session finishes its work, new ones go elsewhere.
    dns.serve("127.0.1.2")
    wait_for(lambda: "gone 127.0.1.1, 127.0.1.3 (draining)" in lb.log(), what="the drain")
    chunks: list[bytes] = []
    held.retrbinary("RETR data.bin", chunks.append)
    assert sha256(b"".join(chunks)) == sha256(DATA)
    held.storbinary("STOR up.bin", io.BytesIO(DATA))
    assert sha256((cluster.backends[0].root / "up.bin").read_bytes()) == sha256(DATA)
    for _ in range(3):
        s = cluster.ftp()
        assert cluster.backend_of(s) == "ftp2"
        s.quit()
    held.quit()

    # An empty answer and then a dead DNS server keep the last good set.
    dns.serve()
    wait_for(lambda: "no such name; keeping the last 1 address(es)" in lb.log(), what="NXDOMAIN")
    dns.process.stop()
    wait_for(lambda: "no answer in" in lb.log(), what="the timeout", timeout=15)
    s = cluster.ftp()
    assert cluster.backend_of(s) == "ftp2"
    s.quit()
    # Logged once per failure, not every round.
    time.sleep(2)
    assert lb.log().count("no answer in") == 1


def test_a_name_that_does_not_resolve_at_start_is_retried(cluster: Cluster) -> None:
    dns = Dns(cluster)
    port = same_port_on("127.0.1.1")
    cluster.add_backend(proxy_protocol=False, masquerade=None, port=port)
    lb = start(cluster, dns, port)
    assert "ready: 0 of 0 backends up" in lb.log()
    assert "pool (pool.test): no such name" in lb.log()
    with ftplib.FTP(timeout=10) as ftp, pytest.raises(ftplib.error_temp, match=r"^421"):
        ftp.connect(BALANCER_HOST, cluster.balancer_port)
    dns.serve("127.0.1.1")
    wait_for(lambda: "backend pool-127.0.1.1 is UP" in lb.log(), what="the record UP")
    assert "pool (pool.test) resolves again" in lb.log()
    s = cluster.ftp()
    assert cluster.backend_of(s) == "ftp1"
    s.quit()


def test_healthz_follows_the_backends(cluster: Cluster, tmp_path: Path) -> None:
    import json
    import urllib.error
    import urllib.request

    b = cluster.add_backend(proxy_protocol=False)
    admin = free_ports(1)
    cluster.start_balancer(sections={"admin": {"listen": f"{BALANCER_HOST}:{admin}"}})

    def healthz() -> tuple[int, dict[str, object]]:
        try:
            with urllib.request.urlopen(f"http://{BALANCER_HOST}:{admin}/healthz", timeout=5) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)

    assert healthz() == (200, {"status": "ok", "up": 1, "backends": 1})
    cluster.stop_backend(b)
    wait_for(lambda: healthz()[0] == 503, what="503")
    assert healthz() == (503, {"status": "no backend up", "up": 0, "backends": 1})
