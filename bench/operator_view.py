"""The status page's calls with many sessions open: does the page stay fast?

    .venv/bin/python bench/operator_view.py [--sessions 9800] [--calls 20] [--write-docs]

Holds N idle control sessions through ftplb (routed mode, one process, to a
minimal greeter), then times what the status page asks every 2 s: one page of
sessions (`/api/sessions?limit=50`), the backends, the status, the bans, the
events and the charts; median and worst of `--calls` rounds, in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.cluster import BALANCER_HOST, cluster_at, free_ports, listening, wait_for  # noqa: E402

from bench.sessions import GREETER, hold  # noqa: E402
from bench.transfer import machine, write_block  # noqa: E402

CALLS = [
    "/api/sessions?limit=50",
    "/api/backends",
    "/api/status",
    "/api/bans",
    "/api/events?limit=50",
    "/api/history",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=9800)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ftplb-view-bench-") as tmp, cluster_at(Path(tmp)) as c:
        host = "127.0.1.3"
        port = free_ports(1, host)
        c.spawn("greeter", [sys.executable, "-c", GREETER, host, str(port)])
        wait_for(lambda: listening(host, port), what="the greeter")
        lb_port, admin = free_ports(1), free_ports(1)
        config = Path(tmp) / "view.toml"
        config.write_text(
            "[balancer]\n"
            f'listen = "{BALANCER_HOST}:{lb_port}"\n'
            "max_sessions = 100000\nworkers = 1\n"
            f'[admin]\nlisten = "{BALANCER_HOST}:{admin}"\n'
            '[health]\ncheck = "tcp"\n'
            f'[[backends]]\nname = "greeter"\naddress = "{host}:{port}"\n'
            f'passive_ports = "{free_ports(1)}"\n'
        )
        lb = c.spawn("ftplb", [sys.executable, "-m", "ftplb", "run", "-c", str(config)])
        wait_for(lambda: "ready:" in lb.log(), what="ftplb")
        base = f"http://{BALANCER_HOST}:{admin}"

        async def measure() -> dict[str, list[float]]:
            writers = await hold(BALANCER_HOST, lb_port, args.sessions)
            await asyncio.sleep(1.0)
            loop = asyncio.get_running_loop()
            times: dict[str, list[float]] = {call: [] for call in CALLS}
            for _ in range(args.calls):
                for call in CALLS:
                    started = time.perf_counter()
                    await loop.run_in_executor(None, fetch, base + call)
                    times[call].append(1000 * (time.perf_counter() - started))
            total = await loop.run_in_executor(None, count, base)
            for w in writers:
                w.close()
            assert total >= args.sessions * 0.99, f"only {total} sessions listed"
            return times

        times = asyncio.run(measure())
    lines = [
        f"The status page's calls with {args.sessions:,} idle sessions open (ftplb routed, one"
        f" process), {args.calls} rounds, milliseconds:",
        "",
        "| call | median | worst |",
        "|---|---:|---:|",
        *(f"| `{call}` | {statistics.median(v):.1f} | {max(v):.1f} |" for call, v in times.items()),
        "",
        f"Machine: {machine()}.",
    ]
    table = "\n".join(lines)
    print(table)
    if args.write_docs:
        write_block("bench/operator_view.py", table)
    return 0


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as r:
        body: bytes = r.read()
        return body


def count(base: str) -> int:
    with urllib.request.urlopen(base + "/api/sessions?limit=1", timeout=30) as r:
        return int(r.headers["X-Total-Count"])


if __name__ == "__main__":
    raise SystemExit(main())
