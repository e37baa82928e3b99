"""`make demo` from the checkout: the printed URL works as printed; Ctrl-C stops all."""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from tests.cluster import wait_for
from tests.conftest import need

ROOT = Path(__file__).resolve().parents[2]


def read_until(proc: subprocess.Popen[bytes], pattern: str, timeout: float) -> str:
    assert proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(0.2):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            seen += chunk
            m = re.search(pattern, seen.decode(errors="replace"))
            if m:
                return m.group(0)
    raise AssertionError(f"no {pattern!r} in demo output:\n{seen.decode(errors='replace')}")


def test_make_demo_serves_the_printed_url() -> None:
    need("make")
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "demo"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # our own process group, so Ctrl-C reaches only it
    )
    try:
        text = read_until(
            proc, r"curl ftp://\S+\n[\s\S]*?status page \(live\): http://\S+\n", timeout=60
        )
        url = text.split()[1]
        page = text.split()[-1]
        assert url == "ftp://demo:demo@127.0.0.1:2121/"
        listing = subprocess.run(
            [need("curl"), "-sS", "--max-time", "20", "--list-only", url],
            capture_output=True,
            timeout=30,
        )
        assert listing.returncode == 0, listing.stderr
        assert sorted(listing.stdout.decode().split()) == ["README.txt", "docs", "random-1MiB.bin"]
        readme = subprocess.run(
            [need("curl"), "-sS", "--max-time", "20", url + "README.txt"],
            capture_output=True,
            timeout=30,
        )
        assert re.match(rb"Hello from backend ftp[123]\.", readme.stdout), readme.stdout
        # The live status page, as printed: the demo's three backends, all up.
        assert page == "http://127.0.0.1:8021/"
        with urllib.request.urlopen(page, timeout=10) as r:
            assert r.status == 200 and b"<html" in r.read().lower()
        with urllib.request.urlopen(page + "api/backends", timeout=10) as r:
            backends = json.load(r)
        assert [(b["name"], b["state"]) for b in backends] == [
            ("ftp1", "UP"),
            ("ftp2", "UP"),
            ("ftp3", "UP"),
        ]
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        try:
            code = proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        assert proc.stdout is not None
        proc.stdout.close()
    # make passes Ctrl-C on by dying of it; ftplb itself exits 0.
    assert code in (0, -signal.SIGINT), code

    def listeners() -> str:
        done = subprocess.run(
            [need("ss"), "-Hltn", "( sport = :2121 )"], capture_output=True, text=True
        )
        return done.stdout.strip()

    # Everything the demo started is gone: nothing listens on its ports.
    wait_for(lambda: listeners() == "", timeout=10, what="the demo's listeners to close")
