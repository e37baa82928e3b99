"""Failover with Debian's keepalived (contrib/keepalived/) between two ftplb
nodes in network namespaces, sharing a VIP on a bridge and their state in one
Redis. Kill ftplb on the master: the address moves, new sessions succeed
through it, and a ban made before the failover still holds after it.

    client 198.18.2.10/.11 --+
    lbA 198.18.2.2 ----------+-- br0 (198.18.2.1: Redis) -- VIP 198.18.2.100
    lbB 198.18.2.3 ----------+
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import Process
from tests.conftest import need
from tests.netns.topology import namespaces_available, sh

WHY = namespaces_available()
pytestmark = pytest.mark.skipif(bool(WHY), reason=f"netns topology unavailable: {WHY}")

ROOT = Path(__file__).resolve().parents[2]
SWITCH, VIP = "198.18.2.1", "198.18.2.100"
NODES = {"lbA": ("198.18.2.2", 150), "lbB": ("198.18.2.3", 100)}
BANNED, FRIEND = "198.18.2.10", "198.18.2.11"
ADVERT_INT = 1


class Net:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.prefix = f"ka{os.getpid() % 10000}"
        self.procs: list[Process] = []

    def ns(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def exec(self, name: str, *argv: str) -> str:
        return sh("ip", "netns", "exec", self.ns(name), *argv)

    def spawn(self, name: str, label: str, argv: list[str]) -> Process:
        log_path = self.work / f"{label}.log"
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                ["ip", "netns", "exec", self.ns(name), *argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        proc = Process(label, popen, log_path)
        self.procs.append(proc)
        return proc

    def create(self) -> None:
        for name in ("sw", "client", *NODES):
            sh("ip", "netns", "add", self.ns(name))
            self.exec(name, "ip", "link", "set", "lo", "up")
        self.exec("sw", "ip", "link", "add", "br0", "type", "bridge")
        self.exec("sw", "ip", "addr", "add", f"{SWITCH}/24", "dev", "br0")
        self.exec("sw", "ip", "link", "set", "br0", "up")
        for i, name in enumerate(("client", *NODES)):
            sh("ip", "link", "add", "eth0", "netns", self.ns(name), "type", "veth",
               "peer", "name", f"p{i}", "netns", self.ns("sw"))  # fmt: skip
            self.exec("sw", "ip", "link", "set", f"p{i}", "master", "br0")
            self.exec("sw", "ip", "link", "set", f"p{i}", "up")
            self.exec(name, "ip", "link", "set", "eth0", "up")
        self.exec("client", "ip", "addr", "add", f"{BANNED}/24", "dev", "eth0")
        self.exec("client", "ip", "addr", "add", f"{FRIEND}/24", "dev", "eth0")
        for name, (address, _) in NODES.items():
            self.exec(name, "ip", "addr", "add", f"{address}/24", "dev", "eth0")
            self.exec(name, "sysctl", "-qw", "net.ipv4.ip_forward=1")

    def destroy(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        for name in ("sw", "client", *NODES):
            subprocess.run(["ip", "netns", "del", self.ns(name)], capture_output=True)


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    n = Net(tmp_path)
    try:
        n.create()
        yield n
    finally:
        n.destroy()


def has_vip(net: Net, name: str) -> bool:
    return VIP in net.exec(name, "ip", "-4", "addr", "show", "dev", "eth0")


def client(net: Net, source: str, password: str = "secret") -> str:
    """One session from the client namespace: its greeting, or the error."""
    script = (
        "import ftplib, sys\n"
        f"f = ftplib.FTP(timeout=5, source_address=({source!r}, 0))\n"
        "try:\n"
        f"    f.connect({VIP!r}, 21); f.login('alice', {password!r}); print(f.getwelcome())\n"
        "    f.nlst(); f.quit()\n"
        "except Exception as e:\n"
        "    print('error', e)\n"
    )
    done = subprocess.run(
        ["ip", "netns", "exec", net.ns("client"), sys.executable, "-c", script],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    return done.stdout.strip()


def wait(what: str, check, timeout: float = 20.0) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_vip_moves_and_the_ban_holds(net: Net) -> None:
    keepalived, curl = need("keepalived"), need("curl")
    redis_port = 6390
    net.spawn("sw", "redis", [
        need("redis-server"), "--bind", SWITCH, "--port", str(redis_port),
        "--protected-mode", "no",  # reached from the balancers' namespaces, on a test bridge
        "--save", "", "--appendonly", "no", "--dir", str(net.work),
    ])  # fmt: skip
    template = (ROOT / "contrib" / "keepalived" / "keepalived.conf").read_text()
    lbs: dict[str, Process] = {}
    for name, (_, priority) in NODES.items():
        root = net.work / f"root-{name}"
        root.mkdir()
        (root / "whoami.txt").write_text(name)
        net.spawn(name, f"backend-{name}", [
            sys.executable, "-m", "ftplb", "backend", "--listen=127.0.1.1:2100",
            f"--root={root}", "--user=alice:secret", f"--banner=backend behind {name} ready",
        ])  # fmt: skip
        config = net.work / f"{name}.toml"
        config.write_text(
            "\n".join([
                "[balancer]", 'listen = "0.0.0.0:21"', f'public_address = "{VIP}"',
                'mode = "inspect"', 'data_ports = "31000-31019"', 'data_listen = "0.0.0.0"',
                "workers = 1", "max_login_failures = 2",
                "[health]", "interval = 0.5", "timeout = 0.5",
                "[admin]", 'listen = "127.0.0.1:9100"',
                "[cluster]", f'redis = "redis://{SWITCH}:{redis_port}/0"', f'node = "{name}"',
                "[[backends]]", 'name = "local"', 'address = "127.0.1.1:2100"', "",
            ])
        )  # fmt: skip
        lbs[name] = net.spawn(
            name, f"ftplb-{name}", [sys.executable, "-m", "ftplb", "run", "-c", str(config)]
        )
        conf = net.work / f"keepalived-{name}.conf"
        conf.write_text(
            template.replace("router_id ftplb1", f"router_id {name}")
            .replace("priority 150", f"priority {priority}")
            .replace("203.0.113.21/24", f"{VIP}/24")
            .replace("/usr/bin/curl", curl)
        )
        net.spawn(name, f"keepalived-{name}", [
            keepalived, "--dont-fork", "--log-console", "--vrrp", "-f", str(conf),
            "-p", str(net.work / f"ka-{name}.pid"), "-r", str(net.work / f"vrrp-{name}.pid"),
        ])  # fmt: skip
    wait("lbA to own the VIP", lambda: has_vip(net, "lbA"), timeout=30)
    for name in NODES:
        wait(f"{name} in the cluster", lambda n=name: '"connected": true' in net.exec(  # type: ignore[misc]
            n, curl, "-s", "http://127.0.0.1:9100/api/status"
        ))  # fmt: skip
    assert not has_vip(net, "lbB")
    assert "behind lbA" in client(net, FRIEND)

    # A ban made on the master, before the failover.
    for _ in range(2):
        client(net, BANNED, "wrong")
    assert client(net, BANNED).startswith("error 421")

    lbs["lbA"].stop(signal.SIGKILL)
    took = wait("a session through the VIP on lbB", lambda: "behind lbB" in client(net, FRIEND))
    print(f"failover: a new session succeeded {took:.1f} s after ftplb died on the master")
    assert has_vip(net, "lbB") and not has_vip(net, "lbA")
    # The ban holds on the new master (it read it from Redis).
    assert client(net, BANNED).startswith("error 421")
