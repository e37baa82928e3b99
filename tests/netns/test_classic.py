"""The classic design on a real multi-host topology (network namespaces, root only).

Variants of the balancer host, each with backends that advertise the public
address and their own passive ranges (two `ftplb backend`s with PROXY, one
Debian vsftpd without):

- haproxy+iptables: the rendered HAProxy config for control, rendered iptables DNAT/SNAT for data
- haproxy+nftables: the same with the rendered nftables table
- ftplb-user: ftplb routed mode relaying passive data itself (+ rendered SNAT for active mode)
- ftplb-kernel: ftplb routed mode with data_path = "kernel" (its own nftables table)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import LFTP_SETTINGS
from tests.conftest import need
from tests.netns.topology import (
    BACKENDS,
    CLIENT,
    GATEWAY,
    PUBLIC,
    Topology,
    namespaces_available,
    topology,
)

WHY = namespaces_available()
pytestmark = pytest.mark.skipif(bool(WHY), reason=f"netns topology unavailable: {WHY}")

ROOT = Path(__file__).resolve().parents[2]
DATA = os.urandom(3 * 1024 * 1024 + 5)
RANGES = [(30000, 30049), (30100, 30149), (30200, 30249)]
USER, PASSWORD = "anonymous", "guest"


def config_text(path: Path, data_path: str = "user") -> str:
    lines = [
        "[balancer]",
        f'listen = "{PUBLIC}:21"',
        f'public_address = "{PUBLIC}"',
        f'data_listen = "{PUBLIC}"',
        'balance = "roundrobin"',
        f'data_path = "{data_path}"',
        "[health]",
        "interval = 0.5",
        "timeout = 0.5",
    ]
    proxies = ["v1", "v2", "off"]
    for i, (host, (first, last)) in enumerate(zip(BACKENDS, RANGES, strict=True)):
        lines += [
            "[[backends]]",
            f'name = "b{i + 1}"',
            f'address = "{host}:21"',
            f'passive_ports = "{first}-{last}"',
            f'send_proxy = "{proxies[i]}"',
            f"send_proxy_data = {'true' if proxies[i] != 'off' else 'false'}",
        ]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    work = tmp_path_factory.mktemp("netns")
    with topology(work) as t:
        for i, host in enumerate(BACKENDS):
            root = work / f"root{i + 1}"
            root.mkdir()
            root.chmod(0o755)
            (root / "data.bin").write_bytes(DATA)
            (root / "whoami.txt").write_text(f"b{i + 1}")
            first, last = RANGES[i]
            if i < 2:
                t.spawn(
                    t.backend(i),
                    f"b{i + 1}",
                    [
                        sys.executable,
                        "-m",
                        "ftplb",
                        "backend",
                        f"--listen={host}:21",
                        f"--root={root}",
                        f"--user={USER}:{PASSWORD}",
                        f"--passive-ports={first}-{last}",
                        f"--masquerade={PUBLIC}",
                        "--proxy-protocol",
                        f"--trusted-proxy={GATEWAY}/32",
                        f"--banner=backend b{i + 1} ready",
                    ],
                )
            else:
                empty = work / "empty"
                empty.mkdir()
                conf = work / "vsftpd.conf"
                # The rendered configuration (kernel DNAT design: the promiscuous
                # switches on), plus what this test needs: anonymous reads, foreground.
                rendered = render(
                    "vsftpd", config_text(work / "kernel.toml", "kernel"), "--backend", "b3"
                )
                assert "pasv_promiscuous=YES" in rendered and f"pasv_address={PUBLIC}" in rendered
                extra = [
                    "listen_ipv6=NO",
                    "background=NO",
                    "anonymous_enable=YES",
                    "no_anon_password=YES",
                    f"anon_root={root}",
                    "local_enable=NO",
                    "write_enable=NO",
                    "seccomp_sandbox=NO",
                    f"secure_chroot_dir={empty}",
                    "ftp_username=ftp",
                    "idle_session_timeout=60",
                    "data_connection_timeout=60",
                    f"ftpd_banner=backend b{i + 1} ready",
                ]
                conf.write_text(rendered + "\n".join(extra) + "\n")
                t.spawn(t.backend(i), "b3", [need("vsftpd"), str(conf)])
        for host in BACKENDS:
            t.wait_port(t.lb, host, 21)
        yield t


def render(kind: str, config: str, *flags: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "ftplb", "render", kind, "-c", config, *flags],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout


VARIANTS = ["haproxy+iptables", "haproxy+nftables", "ftplb-user", "ftplb-kernel"]


@pytest.fixture(params=VARIANTS)
def variant(request: pytest.FixtureRequest, net: Topology, tmp_path: Path) -> Iterator[str]:
    kind = request.param
    config = config_text(tmp_path / "ftplb.toml", "kernel" if kind == "ftplb-kernel" else "user")
    procs = []
    try:
        if kind.startswith("haproxy"):
            cfg = tmp_path / "haproxy.cfg"
            cfg.write_text(render("haproxy", config, "--control-only"))
            rules = render(kind.split("+")[1], config, "--public-if", "eth0", "--private-if", "br1")
            if kind.endswith("iptables"):
                net.exec(net.lb, need("iptables-restore"), "--noflush", input=rules)
            else:
                net.exec(net.lb, need("nft"), "-f", "-", input=rules)
            procs.append(net.spawn(net.lb, "haproxy", [need("haproxy"), "-db", "-f", str(cfg)]))
        else:
            if kind == "ftplb-user":  # active mode still needs the kernel's SNAT
                rules = render(
                    "nftables", config, "--public-if", "eth0", "--private-if", "br1", "--no-dnat"
                )
                net.exec(net.lb, need("nft"), "-f", "-", input=rules)
            procs.append(
                net.spawn(net.lb, "ftplb", [sys.executable, "-m", "ftplb", "run", "-c", config])
            )
        net.wait_port(net.client, PUBLIC, 21)
        time.sleep(1.5)  # HAProxy's first checks (rise 2 x 0.5 s)
        yield kind
    finally:
        for proc in procs:
            proc.stop()
            net.procs.remove(proc)
        subprocess.run(
            ["ip", "netns", "exec", net.lb, "nft", "flush", "ruleset"], capture_output=True
        )


def download(t: Topology, mode: str, path: str = "data.bin") -> dict:
    done = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            t.client,
            sys.executable,
            str(ROOT / "tests" / "netns" / "client.py"),
            PUBLIC,
            "21",
            USER,
            PASSWORD,
            path,
            mode,
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("mode", ["pasv", "epsv", "port", "eprt"])
def test_every_data_mode_to_every_backend(net: Topology, variant: str, mode: str) -> None:
    seen = set()
    for _ in range(3):
        result = download(net, mode)
        assert result["size"] == len(DATA)
        assert result["sha256"] == hashlib.sha256(DATA).hexdigest()
        seen.add(re.search(r"backend (b\d)", result["welcome"]).group(1))  # type: ignore[union-attr]
        if mode == "pasv":
            assert result["pasv_host"] == PUBLIC
        if mode in ("port", "eprt"):
            # Active mode: the backend's connection arrives from the public address (SNAT).
            assert result["peer"] == PUBLIC
    assert seen == {"b1", "b2", "b3"}
    for i in range(2):
        log = next(p for p in net.procs if p.name == f"b{i + 1}").log()
        assert re.search(rf"{re.escape(CLIENT)}:\d+-\[{USER}\] USER '{USER}' logged in", log)


def test_curl_and_lftp_from_the_client(net: Topology, variant: str) -> None:
    url = f"ftp://{USER}:{PASSWORD}@{PUBLIC}/data.bin"
    for flags in (
        ["--disable-epsv", "--no-ftp-skip-pasv-ip"],
        [],
        ["-P", CLIENT, "--disable-eprt"],
        ["-P", CLIENT],
    ):
        done = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                net.client,
                need("curl"),
                "-sS",
                "--max-time",
                "30",
                *flags,
                url,
            ],
            capture_output=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr.decode()
        assert hashlib.sha256(done.stdout).hexdigest() == hashlib.sha256(DATA).hexdigest()
    script = "; ".join([*LFTP_SETTINGS, "cat data.bin", "bye"])
    done = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            net.client,
            need("lftp"),
            "-u",
            f"{USER},{PASSWORD}",
            "-e",
            script,
            PUBLIC,
        ],
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert hashlib.sha256(done.stdout).hexdigest() == hashlib.sha256(DATA).hexdigest()


def test_kernel_table_survives_sigkill_once(net: Topology, tmp_path: Path) -> None:
    config = config_text(tmp_path / "ftplb.toml", "kernel")
    try:
        first = net.spawn(net.lb, "ftplb-k1", [sys.executable, "-m", "ftplb", "run", "-c", config])
        net.wait_port(net.client, PUBLIC, 21)
        first.stop(signal.SIGKILL)
        assert net.exec(net.lb, "nft", "list", "ruleset").count("table inet ftplb") == 1
        second = net.spawn(net.lb, "ftplb-k2", [sys.executable, "-m", "ftplb", "run", "-c", config])
        net.wait_port(net.client, PUBLIC, 21)
        assert net.exec(net.lb, "nft", "list", "ruleset").count("table inet ftplb") == 1
        assert download(net, "pasv")["sha256"] == hashlib.sha256(DATA).hexdigest()
        second.stop()
        # A clean stop removes the table.
        assert "table inet ftplb" not in net.exec(net.lb, "nft", "list", "ruleset")
    finally:
        for proc in [p for p in net.procs if p.name.startswith("ftplb-k")]:
            proc.stop()
            net.procs.remove(proc)
        subprocess.run(
            ["ip", "netns", "exec", net.lb, "nft", "flush", "ruleset"], capture_output=True
        )
