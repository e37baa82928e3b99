"""Connection-heavy figures: sessions per second, and memory per idle session.

    .venv/bin/python bench/sessions.py [--seconds 4] [--idle 10000] [--write-docs]

Sessions per second: each of 1, 16 or 64 concurrent clients loops over
connect, USER/PASS, LIST of a small directory, QUIT, for a fixed time; rows
for a backend reached directly, through ftplb routed mode (one process, and
`workers = 2`) and through HAProxy running `ftplb render haproxy`'s config
(HAProxy 2.6 runs one thread per core by default), through ftplb inspect mode
and through its peer, ProFTPD's mod_proxy (a process per session),
interleaved. Backends: three `ftplb backend`s (pyftpdlib); the direct row shows
what they manage alone.

Idle sessions: N control connections held open through ftplb and through
HAProxy to a minimal greeter (so that no FTP server limits N); RSS growth of
the balancer process divided by N.

The load generator runs on uvloop: client, balancer and backends share two
cores, and every millisecond the client spends is one the others lack (with
asyncio's own loop the client took about a third more CPU per session).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.cluster import (  # noqa: E402
    BALANCER_HOST,
    PASSWORD,
    USER,
    Cluster,
    cluster_at,
    free_ports,
    listening,
    wait_for,
)

from bench.transfer import machine, start_haproxy, start_mod_proxy, write_block  # noqa: E402


async def one_session(
    host: str, port: int, source: str | None = None, file: str = "", data_host: str = ""
) -> int:
    """One session; returns the bytes of its transfer (LIST, or RETR `file`).
    `data_host`: where the data connection goes (default `host`; another node
    of a cluster plays ECMP sending it to the wrong one)."""
    local = (source, 0) if source else None
    reader, writer = await asyncio.open_connection(host, port, local_addr=local)
    got = 0
    try:

        async def reply() -> bytes:
            line = await reader.readline()
            while line[3:4] == b"-":
                line = await reader.readline()
            if not line[:1].isdigit():
                raise ConnectionError(f"bad reply {line!r}")
            return line

        await reply()
        writer.write(f"USER {USER}\r\n".encode())
        await reply()
        writer.write(f"PASS {PASSWORD}\r\n".encode())
        if not (await reply()).startswith(b"230"):
            raise ConnectionError("login failed")
        if file:
            writer.write(b"TYPE I\r\n")
            await reply()
        writer.write(b"EPSV\r\n")
        line = await reply()
        if b"|" not in line:
            raise ConnectionError(f"EPSV: {line!r}")
        data_port = int(line.split(b"|")[3])
        data_reader, data_writer = await asyncio.open_connection(
            data_host or host, data_port, local_addr=local
        )
        writer.write(f"RETR {file}\r\n".encode() if file else b"LIST\r\n")
        await reply()  # 150
        while chunk := await data_reader.read(262144):
            got += len(chunk)
        data_writer.close()
        if not (await reply()).startswith(b"226"):
            raise ConnectionError("transfer failed")
        writer.write(b"QUIT\r\n")
        await reply()
    finally:
        writer.close()
    return got


FAILED: dict[str, int] = {}
"""Sessions that ended in an error, by reason (counted, not fatal: the table says so)."""


Target = tuple[str, int, str]
"""(control host, control port, data host) a client uses."""


async def rate(targets: list[Target], clients: int, seconds: float) -> float:
    """Completed sessions per second; client i uses targets[i % len(targets)]."""
    done = 0
    deadline = time.monotonic() + seconds

    async def client(source: str, target: Target) -> None:
        nonlocal done
        host, port, data_host = target
        while time.monotonic() < deadline:
            try:
                await one_session(host, port, source, data_host=data_host)
            except (OSError, ValueError, IndexError) as exc:
                reason = f"{type(exc).__name__}: {exc}"[:80]
                FAILED[reason] = FAILED.get(reason, 0) + 1
                await asyncio.sleep(0.01)
                continue
            done += 1

    started = time.monotonic()
    # Each client from its own address, as real ones are (inspect mode shares
    # its data ports between addresses, not within one).
    await asyncio.gather(
        *(client(f"127.0.0.{100 + i}", targets[i % len(targets)]) for i in range(clients))
    )
    return done / (time.monotonic() - started)


BIG = 8 << 20


async def concurrent(host: str, port: int, clients: int) -> float:
    """MiB/s of `clients` simultaneous downloads of an 8 MiB file, each client
    from its own address, every byte counted."""
    started = time.monotonic()
    sizes = await asyncio.gather(
        *(one_session(host, port, f"127.0.0.{100 + i}", "big.bin") for i in range(clients))
    )
    if any(size != BIG for size in sizes):
        raise ConnectionError(f"short downloads: {[s for s in sizes if s != BIG][:4]}")
    return clients * BIG / (1 << 20) / (time.monotonic() - started)


def spawn_inspect(
    c: Cluster,
    name: str,
    host: str,
    ports: int,
    cluster: dict[str, str] | None = None,
    first: int = 0,
) -> tuple[int, int]:
    """An inspect-mode balancer on `host` with `ports` data ports (from `first`,
    else free ones there), [cluster] if given: (its control port, its pid)."""
    port = free_ports(1, host)
    first = first or free_ports(ports, host)
    proc = c.spawn_balancer(
        name,
        send_proxy="off",
        mode="inspect",
        listen=f"{host}:{port}",
        public_address=host,
        data_ports=f"{first}-{first + ports - 1}",
        sections={"cluster": cluster} if cluster else {},
    )
    return port, proc.popen.pid


MOD_PROXY = "ProFTPD mod_proxy (inspect peer)"
INSPECT = "ftplb inspect, 1,000 data ports"
INSPECT_20 = "ftplb inspect, 20 shared data ports"
INSPECT_CLUSTER = "ftplb inspect, 20 shared data ports, [cluster] with Redis"
INSPECT_ADVERTISE = "the same, with advertise (each data port claimed in Redis)"
TWO_NODES = "two ftplb nodes ([cluster] + advertise), clients split between them"
TWO_NODES_CROSS = "the same two, every data connection sent to the other node (forwarded)"


def cpu_seconds(pid: int) -> float:
    """User + system CPU of `pid`, of its live children (a supervisor's workers)
    and of the children it has reaped (ProFTPD's per-session processes)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(x) for x in children.read_text().split()]
    for p in pids:
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except FileNotFoundError:
            continue  # a session process that just ended: its parent reaps its CPU
        fields = stat.rsplit(")", 1)[1].split()
        total += sum(int(x) for x in fields[11:15]) / tick
    return total


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


GREETER = """
import asyncio, sys
async def main():
    async def greet(reader, writer):
        writer.write(b"220 idle\\r\\n")
        await reader.read()
        writer.close()
    server = await asyncio.start_server(greet, sys.argv[1], int(sys.argv[2]), backlog=4096)
    await server.serve_forever()
asyncio.run(main())
"""


async def hold(host: str, port: int, count: int) -> list[asyncio.StreamWriter]:
    writers = []
    for i in range(0, count, 500):
        batch = await asyncio.gather(
            *(asyncio.open_connection(host, port) for _ in range(min(500, count - i)))
        )
        for reader, writer in batch:
            await reader.readline()
            writers.append(writer)
    return writers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--idle", type=int, default=10000)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # Each idle session costs this process one fd, the balancer two.
    idle = min(args.idle, (hard - 400) // 2)

    with tempfile.TemporaryDirectory(prefix="ftplb-sessions-") as tmp, cluster_at(Path(tmp)) as c:
        for _ in range(3):
            b = c.add_backend(proxy_protocol=False, passive_size=200)
            for n in range(5):
                (b.root / f"f{n}.txt").write_text("x" * 100)
            (b.root / "big.bin").write_bytes(os.urandom(BIG))
        c.start_balancer(send_proxy="off", balance="leastconn")
        # The same balancer with two worker processes, on its own address
        # (routed mode binds the passive ports there too; EPSV clients follow).
        port2 = free_ports(1, "127.0.0.3")
        lb2 = c.spawn_balancer(
            "ftplb-2-workers",
            send_proxy="off",
            balance="leastconn",
            workers=2,
            listen=f"127.0.0.3:{port2}",
        )
        haproxy_url = start_haproxy(c, Path(tmp), "127.0.0.2", "")
        haproxy_port = int(haproxy_url.rsplit(":", 1)[1].split("/")[0])
        # Inspect mode, its data ports below the kernel's ephemeral range: a
        # port per session (1,000 of them), and 20 shared by all clients.
        inspect_port, inspect_pid = spawn_inspect(c, "ftplb-inspect", "127.0.0.5", 1000)
        shared_port, shared_pid = spawn_inspect(c, "ftplb-inspect-20", "127.0.0.6", 20)
        # The same with [cluster]: a real Redis beside it (what the cluster costs).
        redis_port = free_ports(1, "127.0.2.7")
        c.spawn(
            "redis",
            ["redis-server", "--bind", "127.0.2.7", "--port", str(redis_port), "--save", ""],
        )
        wait_for(lambda: listening("127.0.2.7", redis_port), what="redis-server")
        redis_url = f"redis://127.0.2.7:{redis_port}/0"
        cluster_port, cluster_pid = spawn_inspect(
            c, "ftplb-inspect-cluster", "127.0.0.7", 20, {"redis": redis_url, "node": "bench"}
        )
        advertise = {"redis": redis_url, "node": "bench-advertise"}
        advertise["advertise"] = f"127.0.0.10:{free_ports(1, '127.0.0.10')}"
        advertise_port, advertise_pid = spawn_inspect(
            c, "ftplb-inspect-advertise", "127.0.0.10", 20, advertise
        )
        # Two nodes sharing that Redis, each on its own address, the same data
        # ports, forwarding data connections that reach the wrong one.
        first = free_ports(20, "127.0.0.8")
        nodes = []
        for n, host in enumerate(("127.0.0.8", "127.0.0.9")):
            cluster = {
                "redis": redis_url,
                "node": f"bench-node-{n}",
                "advertise": f"{host}:{free_ports(1, host)}",
            }
            nodes.append((host, *spawn_inspect(c, f"ftplb-node-{n}", host, 20, cluster, first)))
        (host_a, port_a, pid_a), (host_b, port_b, pid_b) = nodes
        targets: dict[str, list[Target]] = {
            "direct (one backend)": [(c.backends[0].host, c.backends[0].port, "")],
            "ftplb routed, 1 process": [(BALANCER_HOST, c.balancer_port, "")],
            "ftplb routed, 2 workers": [("127.0.0.3", port2, "")],
            "HAProxy (rendered)": [("127.0.0.2", haproxy_port, "")],
            INSPECT: [("127.0.0.5", inspect_port, "")],
            INSPECT_20: [("127.0.0.6", shared_port, "")],
            INSPECT_CLUSTER: [("127.0.0.7", cluster_port, "")],
            INSPECT_ADVERTISE: [("127.0.0.10", advertise_port, "")],
            TWO_NODES: [(host_a, port_a, ""), (host_b, port_b, "")],
            TWO_NODES_CROSS: [(host_a, port_a, host_b), (host_b, port_b, host_a)],
        }
        assert c.balancer is not None
        haproxy_pid = next(p for p in c.processes if p.name.startswith("haproxy")).popen.pid
        pids = {
            "ftplb routed, 1 process": [c.balancer.popen.pid],
            "ftplb routed, 2 workers": [lb2.popen.pid],
            "HAProxy (rendered)": [haproxy_pid],
            INSPECT: [inspect_pid],
            INSPECT_20: [shared_pid],
            INSPECT_CLUSTER: [cluster_pid],
            INSPECT_ADVERTISE: [advertise_pid],
            TWO_NODES: [pid_a, pid_b],
            TWO_NODES_CROSS: [pid_a, pid_b],
        }
        mod_proxy = start_mod_proxy(c, *c.backends, passive=300)
        if mod_proxy is not None:
            host, rest = mod_proxy.split("@", 1)[1].split(":", 1)
            targets[MOD_PROXY] = [(host, int(rest.split("/")[0]), "")]
            pids[MOD_PROXY] = [next(p for p in c.processes if p.name == "mod-proxy").popen.pid]
        rates: dict[tuple[str, int], list[float]] = {}
        errors: dict[tuple[str, int], int] = {}
        cpu: dict[tuple[str, int], list[float]] = {}
        for _ in range(args.rounds):
            for clients in (1, 16, 64):
                for name, entries in targets.items():
                    before = sum(cpu_seconds(pid) for pid in pids.get(name, []))
                    started = time.monotonic()
                    failed_before = sum(FAILED.values())
                    value = uvloop.run(rate(entries, clients, args.seconds))
                    if sum(FAILED.values()) > failed_before:
                        errors[(name, clients)] = errors.get((name, clients), 0) + (
                            sum(FAILED.values()) - failed_before
                        )
                    sessions = value * (time.monotonic() - started)
                    rates.setdefault((name, clients), []).append(value)
                    if name in pids:
                        used = sum(cpu_seconds(pid) for pid in pids[name]) - before
                        cpu.setdefault((name, clients), []).append(1000 * used / sessions)
        throughput: dict[tuple[str, int], list[float]] = {}
        for _ in range(args.rounds):
            for clients in (16, 64):
                for name in (INSPECT, INSPECT_20):
                    host, port, _ = targets[name][0]
                    value = uvloop.run(concurrent(host, port, clients))
                    throughput.setdefault((name, clients), []).append(value)
        idle_rows = idle_rss(c, Path(tmp), idle)

    lines = [
        f"Sessions per second (connect, login, EPSV + LIST of 5 files, QUIT), {args.seconds:g} s"
        f" per cell, {args.rounds} interleaved rounds, median. Client, balancer and three"
        " pyftpdlib backends share the machine.",
        "",
        "| path | 1 client | 16 clients | 64 clients |",
        "|---|---:|---:|---:|",
    ]
    for name in targets:
        cells = [
            f"{statistics.median(rates[(name, n)]):,.0f}"
            + (f" ({errors[(name, n)]} failed)" if (name, n) in errors else "")
            for n in (1, 16, 64)
        ]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    if FAILED:
        lines += ["", "Failed sessions, by error:", ""]
        lines += [f"- {reason}: {n}" for reason, n in sorted(FAILED.items())]
    lines += [
        "",
        "Balancer CPU per session (user + system, all its processes), milliseconds:",
        "",
        "| balancer | 1 client | 16 clients | 64 clients |",
        "|---|---:|---:|---:|",
    ]
    for name in targets:
        if (name, 1) in cpu:
            cells = [f"{statistics.median(cpu[(name, n)]):.2f}" for n in (1, 16, 64)]
            lines.append(f"| {name} | {' | '.join(cells)} |")
    lines += [
        "",
        "Concurrent downloads through inspect mode (8 MiB each, every client from its own"
        " address, all started at once), MiB/s, median:",
        "",
        "| data ports | 16 at once | 64 at once |",
        "|---|---:|---:|",
    ]
    for name in (INSPECT, INSPECT_20):
        cells = [f"{statistics.median(throughput[(name, n)]):,.0f}" for n in (16, 64)]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    lines += [
        "",
        f"Idle control sessions held open: {idle:,} (file limit {hard:,}; each costs the"
        " balancer two descriptors), to a minimal greeter backend.",
        "",
        "| balancer | RSS growth | per session |",
        "|---|---:|---:|",
        *idle_rows,
        "",
        f"Machine: {machine()}.",
    ]
    table = "\n".join(lines)
    print(table)
    if args.write_docs:
        write_block("bench/sessions.py", table)
    return 0


def idle_rss(c: Cluster, tmp: Path, count: int) -> list[str]:
    host = "127.0.1.3"
    port = free_ports(1, host)
    c.spawn("greeter", [sys.executable, "-c", GREETER, host, str(port)])
    wait_for(lambda: listening(host, port), what="the greeter")
    rows = []
    ftplb_port = free_ports(1)
    config = tmp / "idle.toml"
    config.write_text(
        "[balancer]\n"
        f'listen = "{BALANCER_HOST}:{ftplb_port}"\n'
        "max_sessions = 100000\n"
        "workers = 1\n"  # memory per session is a property of one process
        '[health]\ncheck = "tcp"\n'
        "[[backends]]\n"
        'name = "greeter"\n'
        f'address = "{host}:{port}"\n'
        f'passive_ports = "{free_ports(1)}"\n'
    )
    lb = c.spawn("idle-ftplb", [sys.executable, "-m", "ftplb", "run", "-c", str(config)])
    wait_for(lambda: "ready:" in lb.log(), what="ftplb")
    haproxy_cfg = tmp / "idle-haproxy.cfg"
    haproxy_port = free_ports(1, "127.0.0.2")
    haproxy_cfg.write_text(
        f"global\n    maxconn {count + 100}\ndefaults\n    mode tcp\n    timeout connect 5s\n"
        "    timeout client 600s\n    timeout server 600s\n"
        f"listen idle\n    bind 127.0.0.2:{haproxy_port}\n    maxconn {count + 100}\n"
        f"    server greeter {host}:{port}\n"
    )
    ha = c.spawn("idle-haproxy", ["haproxy", "-db", "-f", str(haproxy_cfg)])
    wait_for(lambda: listening("127.0.0.2", haproxy_port), what="haproxy")
    for name, proc, target in (
        ("ftplb routed (uvloop)", lb, (BALANCER_HOST, ftplb_port)),
        ("HAProxy 2.6", ha, ("127.0.0.2", haproxy_port)),
    ):
        before = rss_kib(proc.popen.pid)

        async def measure(target: tuple[str, int] = target, pid: int = proc.popen.pid) -> int:
            writers = await hold(target[0], target[1], count)
            await asyncio.sleep(1.0)
            after = rss_kib(pid)
            for w in writers:
                w.close()
            await asyncio.sleep(0.5)
            return after

        after = asyncio.run(measure())
        grown = after - before
        rows.append(f"| {name} | {grown / 1024:,.1f} MiB | {grown / count:.2f} KiB |")
    return rows


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
