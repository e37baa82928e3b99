"""Bulk download across the network-namespace topology (root only).

    .venv/bin/python bench/netns.py [--size-mib 512] [--rounds 3] [--write-docs]

Rows, all in the same run with interleaved rounds: direct (client routed to
the backend through the balancer host, no balancer), ftplb routed with its
user-space data path, ftplb routed with the kernel data path, and HAProxy (the
rendered config, control only) with the rendered nftables rules. Then
transparent mode (`source = "client"`) beside the balancer's own source, in
routed and inspect mode, to a backend without PROXY (a transparent connection
comes from the client, whom a PROXY-reading backend would not trust).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.netns.topology import (  # noqa: E402
    BACKENDS,
    GATEWAY,
    PUBLIC,
    Topology,
    namespaces_available,
    topology,
)

from bench.transfer import make_file, report, timed_download  # noqa: E402

MIB = 1024 * 1024
ROUTED_BALANCER = "ftplb routed, no PROXY, source = balancer"
ROUTED_CLIENT = "ftplb routed, no PROXY, source = client (transparent)"
INSPECT_BALANCER = "ftplb inspect, source = balancer"
INSPECT_CLIENT = "ftplb inspect, source = client (transparent)"
FIRST, LAST = 30000, 30049


def config(path: Path, data_path: str) -> str:
    path.write_text(
        "\n".join(
            [
                "[balancer]",
                f'listen = "{PUBLIC}:21"',
                f'public_address = "{PUBLIC}"',
                f'data_listen = "{PUBLIC}"',
                f'data_path = "{data_path}"',
                # The backend sees control from the balancer and (kernel DNAT) data
                # from the client: the PROXY header tells it they are the same client.
                'send_proxy = "v1"',
                "[[backends]]",
                'name = "b1"',
                f'address = "{BACKENDS[0]}:21"',
                f'passive_ports = "{FIRST}-{LAST}"',
                "send_proxy_data = true",
                "",
            ]
        )
    )
    return str(path)


def source_config(path: Path, mode: str, source: str) -> str:
    """To the backend without PROXY (port 2121, the next passive range)."""
    path.write_text(
        "\n".join(
            [
                "[balancer]",
                f'listen = "{PUBLIC}:21"',
                f'public_address = "{PUBLIC}"',
                f'data_listen = "{PUBLIC}"',
                f'mode = "{mode}"',
                f'source = "{source}"',
                "workers = 1",
                'data_ports = "31000-31019"',
                "[[backends]]",
                'name = "b1"',
                f'address = "{BACKENDS[0]}:2121"',
                *([f'passive_ports = "{LAST + 1}-{LAST + 50}"'] if mode == "routed" else []),
                "",
            ]
        )
    )
    return str(path)


def wait_up(t: Topology, host: str, port: int = 21) -> None:
    probe = f"import socket; socket.create_connection(({host!r}, {port}), 1).close()"
    for _ in range(100):
        run = ["ip", "netns", "exec", t.client, sys.executable, "-c", probe]
        if subprocess.run(run, capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    raise SystemExit(f"{host}:{port} not reachable from the client")


def timed(t: Topology, host: str, port: int, size: int) -> float:
    url = f"ftp://bench:bench@{host}:{port}/big.bin"
    return timed_download(url, size, prefix=("ip", "netns", "exec", t.client))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    why = namespaces_available()
    if why:
        print(f"skipped: {why}")
        return 0
    size = args.size_mib * MIB
    with tempfile.TemporaryDirectory(prefix="ftplb-netns-bench-") as tmp, topology(Path(tmp)) as t:
        work = Path(tmp)
        root = work / "root"
        root.mkdir()
        root.chmod(0o755)
        make_file(root / "big.bin", size)
        common = [f"--root={root}", "--user=bench:bench", f"--masquerade={PUBLIC}"]
        backend = [sys.executable, "-m", "ftplb", "backend", *common]
        t.spawn(
            t.backend(0),
            "b1",
            [
                *backend,
                f"--listen={BACKENDS[0]}:21",
                f"--passive-ports={FIRST}-{LAST}",
                "--proxy-protocol",
                f"--trusted-proxy={GATEWAY}/32",
            ],
        )
        # The same files without PROXY, for the direct row (other ports, same host).
        direct = [f"--listen={BACKENDS[0]}:2121", f"--passive-ports={LAST + 1}-{LAST + 50}"]
        t.spawn(t.backend(0), "b1-direct", [*backend, *direct])
        # The direct row: the client routed to the backend through the balancer host.
        t.exec(t.client, "ip", "route", "add", "198.18.1.0/24", "via", PUBLIC)
        try:
            wait_up(t, BACKENDS[0], 2121)
        except SystemExit:
            print(
                "\n".join(
                    f"{p.name} rc={p.popen.poll()} {p.popen.args}: {p.log()}" for p in t.procs
                )
            )
            raise

        def ftplb(data_path: str) -> list[object]:
            cfg = config(work / f"{data_path}.toml", data_path)
            return [
                t.spawn(
                    t.lb, f"ftplb-{data_path}", [sys.executable, "-m", "ftplb", "run", "-c", cfg]
                )
            ]

        def haproxy() -> list[object]:
            cfg = config(work / "haproxy.toml", "user")
            text = subprocess.run(
                [sys.executable, "-m", "ftplb", "render", "haproxy", "-c", cfg, "--control-only"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            (work / "haproxy.cfg").write_text(text)
            rules = subprocess.run(
                [sys.executable, "-m", "ftplb", "render", "nftables", "-c", cfg],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            t.exec(t.lb, "nft", "-f", "-", input=rules)
            return [t.spawn(t.lb, "haproxy", ["haproxy", "-db", "-f", str(work / "haproxy.cfg")])]

        def sourced(mode: str, source: str) -> Callable[[], list[object]]:
            cfg = source_config(work / f"{mode}-{source}.toml", mode, source)
            argv = [sys.executable, "-m", "ftplb", "run", "-c", cfg]
            return lambda: [t.spawn(t.lb, f"ftplb-{mode}-{source}", argv)]

        rows = {
            "direct (routed through the balancer host)": (BACKENDS[0], 2121, lambda: []),
            "ftplb routed, user-space data": (PUBLIC, 21, lambda: ftplb("user")),
            "ftplb routed, kernel data path": (PUBLIC, 21, lambda: ftplb("kernel")),
            "HAProxy control + rendered nftables DNAT": (PUBLIC, 21, haproxy),
            ROUTED_BALANCER: (PUBLIC, 21, sourced("routed", "balancer")),
            ROUTED_CLIENT: (PUBLIC, 21, sourced("routed", "client")),
            INSPECT_BALANCER: (PUBLIC, 21, sourced("inspect", "balancer")),
            INSPECT_CLIENT: (PUBLIC, 21, sourced("inspect", "client")),
        }
        results: dict[str, list[float]] = {name: [] for name in rows}
        for round_ in range(args.rounds + 1):  # the first round warms up
            for name, (host, port, setup) in rows.items():
                procs = setup()
                try:
                    wait_up(t, host, port)
                    time.sleep(0.3)
                    try:
                        speed = timed(t, host, port, size)
                    except SystemExit as exc:
                        logs = "\n".join(p.log()[-1500:] for p in [*procs, *t.procs])  # type: ignore[attr-defined]
                        raise SystemExit(f"{name}: {exc}\n{logs}") from None
                finally:
                    for proc in procs:
                        proc.stop()  # type: ignore[attr-defined]
                        t.procs.remove(proc)  # type: ignore[arg-type]
                    subprocess.run(
                        ["ip", "netns", "exec", t.lb, "nft", "flush", "ruleset"],
                        capture_output=True,
                    )
                if round_:
                    results[name].append(speed)
    title = (
        f"Bulk download of a {args.size_mib} MiB file across network namespaces (client,"
        f" balancer, backend on veth links and a bridge; gateway {GATEWAY}),"
        f" {args.rounds} interleaved rounds, median MiB/s (curl to /dev/null)."
    )
    ratios = [
        f"{mode}: {statistics.median(results[client]) / statistics.median(results[own]):.2f}x"
        for mode, client, own in (
            ("routed", ROUTED_CLIENT, ROUTED_BALANCER),
            ("inspect", INSPECT_CLIENT, INSPECT_BALANCER),
        )
    ]
    notes = (
        "Transparent mode (source = client) against the balancer's own source: "
        + ", ".join(ratios)
        + " (goal: at least 0.95x).",
    )
    report(title, results, "bench/netns.py" if args.write_docs else "", notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
