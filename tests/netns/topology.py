"""A multi-host FTP topology in network namespaces, made and removed by the tests.

    client 198.18.0.10 --veth-- 198.18.0.2 [lb] 198.18.1.1 --bridge br1-- backends 198.18.1.11-13

Both ends of every veth are created inside their namespaces and the bridge
lives in the balancer's namespace: nothing touches the host's namespace.
Addresses come from 198.18.0.0/15 only. The backends route through the
balancer (their gateway), as the classic design needs for DNAT and SNAT.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.cluster import Process

PUBLIC = "198.18.0.2"
CLIENT = "198.18.0.10"
GATEWAY = "198.18.1.1"
BACKENDS = ["198.18.1.11", "198.18.1.12", "198.18.1.13"]


def namespaces_available() -> str:
    """'' when this machine can run the topology, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    probe = f"ftplbprobe{os.getpid()}"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if done.returncode != 0:
        return f"ip netns add failed: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return ""


def sh(*argv: str, input: str | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


@dataclass
class Topology:
    workdir: Path
    prefix: str = field(default_factory=lambda: f"ftplb{os.getpid() % 10000}")
    procs: list[Process] = field(default_factory=list)

    @property
    def client(self) -> str:
        return f"{self.prefix}-client"

    @property
    def lb(self) -> str:
        return f"{self.prefix}-lb"

    def backend(self, i: int) -> str:
        return f"{self.prefix}-b{i + 1}"

    @property
    def all(self) -> list[str]:
        return [self.client, self.lb, *(self.backend(i) for i in range(len(BACKENDS)))]

    def create(self) -> None:
        for ns in self.all:
            sh("ip", "netns", "add", ns)
            self.exec(ns, "ip", "link", "set", "lo", "up")
        # The public side: client <-> balancer.
        sh(
            "ip",
            "link",
            "add",
            "eth0",
            "netns",
            self.client,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            self.lb,
        )
        self.exec(self.client, "ip", "addr", "add", f"{CLIENT}/24", "dev", "eth0")
        self.exec(self.client, "ip", "link", "set", "eth0", "up")
        self.exec(self.lb, "ip", "addr", "add", f"{PUBLIC}/24", "dev", "eth0")
        self.exec(self.lb, "ip", "link", "set", "eth0", "up")
        # The private side: a bridge in the balancer's namespace.
        self.exec(self.lb, "ip", "link", "add", "br1", "type", "bridge")
        self.exec(self.lb, "ip", "addr", "add", f"{GATEWAY}/24", "dev", "br1")
        self.exec(self.lb, "ip", "link", "set", "br1", "up")
        for i, address in enumerate(BACKENDS):
            ns = self.backend(i)
            sh(
                "ip",
                "link",
                "add",
                "eth0",
                "netns",
                ns,
                "type",
                "veth",
                "peer",
                "name",
                f"vb{i + 1}",
                "netns",
                self.lb,
            )
            self.exec(self.lb, "ip", "link", "set", f"vb{i + 1}", "master", "br1")
            self.exec(self.lb, "ip", "link", "set", f"vb{i + 1}", "up")
            self.exec(ns, "ip", "addr", "add", f"{address}/24", "dev", "eth0")
            self.exec(ns, "ip", "link", "set", "eth0", "up")
            self.exec(ns, "ip", "route", "add", "default", "via", GATEWAY)
        self.exec(self.lb, "sysctl", "-qw", "net.ipv4.ip_forward=1")

    def destroy(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()
        for ns in self.all:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def exec(self, ns: str, *argv: str, input: str | None = None) -> str:
        return sh("ip", "netns", "exec", ns, *argv, input=input)

    def wait_port(self, ns: str, host: str, port: int, timeout: float = 15) -> None:
        """Until host:port accepts a connection made from namespace `ns`."""
        deadline = time.monotonic() + timeout
        probe = f"import socket; socket.create_connection(({host!r}, {port}), 1).close()"
        while time.monotonic() < deadline:
            run = ["ip", "netns", "exec", ns, sys.executable, "-c", probe]
            if subprocess.run(run, capture_output=True).returncode == 0:
                return
            time.sleep(0.2)
        raise AssertionError(f"{host}:{port} not reachable from {ns}")

    def spawn(self, ns: str, name: str, argv: list[str]) -> Process:
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        proc = Process(name, popen, log_path)
        self.procs.append(proc)
        return proc


@contextlib.contextmanager
def topology(workdir: Path) -> Iterator[Topology]:
    t = Topology(workdir)
    try:
        t.create()
        yield t
    finally:
        t.destroy()
