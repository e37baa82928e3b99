"""`ftplb demo`: three backends and a routed-mode balancer on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ftplb.app import install_uvloop, raise_file_limit, serve
from ftplb.config import load_config
from ftplb.logs import setup_logging

LISTEN = ("127.0.0.1", 2121)
USER, PASSWORD = "demo", "demo"
BACKENDS = [
    ("ftp1", "127.0.1.1", "30000-30049"),
    ("ftp2", "127.0.1.2", "30100-30149"),
    ("ftp3", "127.0.1.3", "30200-30249"),
]
BACKEND_PORT = 2121
ADMIN = ("127.0.0.1", 8021)
"""The admin API: the live status page while you try the demo."""


def demo_config() -> str:
    lines = [
        "# Written by `ftplb demo`: routed mode, PROXY v1 on control and data.",
        "[balancer]",
        f'listen = "{LISTEN[0]}:{LISTEN[1]}"',
        f'public_address = "{LISTEN[0]}"',
        'mode = "routed"',
        'balance = "leastconn"',
        'send_proxy = "v1"',
        "",
        "[admin]",
        f'listen = "{ADMIN[0]}:{ADMIN[1]}"',
        "",
        "[health]",
        'check = "ftp"',
        "interval = 1.0",
        "timeout = 1.0",
        "",
    ]
    for name, host, ports in BACKENDS:
        lines += [
            "[[backends]]",
            f'name = "{name}"',
            f'address = "{host}:{BACKEND_PORT}"',
            f'passive_ports = "{ports}"',
            "send_proxy_data = true",
            "",
        ]
    return "\n".join(lines)


def write_samples(root: Path, name: str) -> None:
    root.mkdir(parents=True)
    (root / "README.txt").write_text(
        f"Hello from backend {name}.\nEvery session lands on one backend; "
        "upload here and list again.\n"
    )
    (root / "random-1MiB.bin").write_bytes(os.urandom(1024 * 1024))
    sub = root / "docs"
    sub.mkdir()
    (sub / "about.txt").write_text(f"{name}: a sub-directory, for mirror tests.\n")


def wait_listening(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.2):
            return True
        time.sleep(0.05)
    return False


def run_demo(verbose: bool = False) -> int:
    setup_logging(verbose)
    log = logging.getLogger("ftplb.demo")
    workdir = Path(tempfile.mkdtemp(prefix="ftplb-demo-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, host, ports in BACKENDS:
            root = workdir / name
            write_samples(root, name)
            cmd = [
                sys.executable,
                "-m",
                "ftplb",
                "backend",
                f"--listen={host}:{BACKEND_PORT}",
                f"--root={root}",
                f"--user={USER}:{PASSWORD}",
                f"--passive-ports={ports}",
                f"--masquerade={LISTEN[0]}",
                "--proxy-protocol",
                f"--banner=ftplb demo backend {name} ready.",
            ]
            log_file = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 (lives with the process)
            procs.append(subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT))
            log_file.close()
        for (name, host, _), proc in zip(BACKENDS, procs, strict=True):
            if not wait_listening(host, BACKEND_PORT, 10) or proc.poll() is not None:
                log.error("backend %s did not start; see %s", name, workdir / f"{name}.log")
                return 1
        config_path = workdir / "ftplb.toml"
        config_path.write_text(demo_config())
        config = load_config(config_path)
        raise_file_limit()
        install_uvloop()

        def started() -> None:
            url = f"ftp://{USER}:{PASSWORD}@{LISTEN[0]}:{LISTEN[1]}/"
            print(
                f"\nftplb demo is up: 3 backends (logs in {workdir}), config {config_path}\n"
                f"  curl {url}\n"
                f"  lftp -e 'ls; bye' {url}\n"
                f"status page (live): http://{ADMIN[0]}:{ADMIN[1]}/\n"
                "Ctrl-C stops everything.",
                flush=True,
            )

        return asyncio.run(serve(config, started))
    except KeyboardInterrupt:
        return 0
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
