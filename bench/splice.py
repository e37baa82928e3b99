"""Should routed mode's data path use os.splice? Figures, not guesses.

    .venv/bin/python bench/splice.py [--mib 1024] [--streams 1,8] [--rounds 3] [--write-docs]

Two relays, same event loop (uvloop), same machine, interleaved rounds:

- protocol: ftplb's own `io.relay.Relay` (asyncio Protocols, bounded buffers):
  every byte is copied into Python and out again;
- splice: socket -> pipe -> socket with `os.splice`, driven by the loop's
  add_reader/add_writer: the bytes stay in the kernel.

A sender process serves STREAMS connections at once, each MIB MiB of zeros; a
receiver process reads them through the relay. Printed: aggregate MiB/s and
the relay process's CPU seconds per GiB (what a busy balancer runs out of).
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import resource
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.transfer import machine, write_block  # noqa: E402
from ftplb.io.relay import Relay  # noqa: E402

MIB = 1024 * 1024
PIPE_SIZE = 1024 * 1024
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def sender(port_out: int, streams: int, size: int, ready: threading.Event) -> None:
    chunk = bytes(MIB)
    server = socket.create_server(("127.0.0.5", port_out), backlog=64)
    ready.set()

    def serve(conn: socket.socket) -> None:
        with conn:
            left = size
            while left:
                left -= conn.send(memoryview(chunk)[: min(left, MIB)])

    threads = []
    for _ in range(streams):
        conn, _ = server.accept()
        t = threading.Thread(target=serve, args=(conn,))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    server.close()


def receive(port: int, streams: int) -> int:
    total = [0] * streams

    def one(i: int) -> None:
        with socket.create_connection(("127.0.0.6", port)) as s:
            buf = bytearray(MIB)
            while n := s.recv_into(buf):
                total[i] += n

    threads = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(total)


class SpliceDirection:
    """src -> pipe -> dst, in the kernel; reading pauses while dst is full."""

    def __init__(self, loop: asyncio.AbstractEventLoop, src: socket.socket, dst: socket.socket):
        self.loop, self.src, self.dst = loop, src, dst
        self.r, self.w = os.pipe2(os.O_NONBLOCK)
        fcntl.fcntl(self.w, F_SETPIPE_SZ, PIPE_SIZE)
        self.pending = 0
        self.done = loop.create_future()
        loop.add_reader(src.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            n = os.splice(self.src.fileno(), self.w, PIPE_SIZE, flags=os.SPLICE_F_MOVE)
        except BlockingIOError:
            return
        if n == 0:
            self.loop.remove_reader(self.src.fileno())
            self.dst.shutdown(socket.SHUT_WR)
            self._finish()
            return
        self.pending += n
        self._flush()

    def _flush(self) -> None:
        while self.pending:
            try:
                self.pending -= os.splice(self.r, self.dst.fileno(), self.pending)
            except BlockingIOError:
                self.loop.remove_reader(self.src.fileno())
                self.loop.add_writer(self.dst.fileno(), self._writable)
                return

    def _writable(self) -> None:
        self._flush()
        if not self.pending:
            self.loop.remove_writer(self.dst.fileno())
            self.loop.add_reader(self.src.fileno(), self._readable)

    def _finish(self) -> None:
        os.close(self.r)
        os.close(self.w)
        if not self.done.done():
            self.done.set_result(None)


async def relay_server(kind: str, port_in: int, port_out: int, streams: int) -> None:
    loop = asyncio.get_running_loop()
    finished: list[asyncio.Future[None]] = []

    if kind == "protocol":

        def factory() -> asyncio.Protocol:
            fut: asyncio.Future[None] = loop.create_future()
            finished.append(fut)
            relay = Relay(lambda r: fut.done() or fut.set_result(None))

            async def connect() -> None:
                await loop.create_connection(lambda: relay.backend, "127.0.0.5", port_out)
                relay.start()

            relay.on_client = lambda: asyncio.ensure_future(connect())
            return relay.client

        server = await loop.create_server(factory, "127.0.0.6", port_in, backlog=64)
        while len(finished) < streams:
            await asyncio.sleep(0.01)
        await asyncio.gather(*finished)
    else:
        listener = socket.create_server(("127.0.0.6", port_in), backlog=64)
        listener.setblocking(False)
        directions = []
        for _ in range(streams):
            client, _ = await loop.sock_accept(listener)
            client.setblocking(False)
            backend = socket.socket()
            backend.setblocking(False)
            await loop.sock_connect(backend, ("127.0.0.5", port_out))
            directions.append((SpliceDirection(loop, backend, client), client, backend))
        await asyncio.gather(*(d.done for d, _, _ in directions))
        for _, client, backend in directions:
            client.close()
            backend.close()
        listener.close()
        return
    server.close()


def relay_process(kind: str, port_in: int, port_out: int, streams: int, ready_w: int) -> None:
    import uvloop

    async def main() -> None:
        task = asyncio.ensure_future(relay_server(kind, port_in, port_out, streams))
        await asyncio.sleep(0.2)  # listening
        os.write(ready_w, b"x")
        await task

    uvloop.run(main())


def one_run(kind: str, streams: int, size: int) -> tuple[float, float]:
    """(aggregate MiB/s, relay CPU seconds per GiB)."""
    port_out = _free("127.0.0.5")
    port_in = _free("127.0.0.6")
    ready = threading.Event()
    send = threading.Thread(target=sender, args=(port_out, streams, size, ready))
    send.start()
    ready.wait()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            relay_process(kind, port_in, port_out, streams, w)
        finally:
            os._exit(0)
    os.close(w)
    os.read(r, 1)
    os.close(r)
    start = time.perf_counter()
    got = receive(port_in, streams)
    elapsed = time.perf_counter() - start
    _, _, usage = os.wait4(pid, 0)
    send.join()
    assert got == streams * size, (kind, got)
    cpu = usage.ru_utime + usage.ru_stime
    return got / MIB / elapsed, cpu / (got / (1024 * MIB))


def _free(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=1024, help="MiB per run, split over streams")
    parser.add_argument("--streams", default="1,8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    resource.setrlimit(resource.RLIMIT_NOFILE, resource.getrlimit(resource.RLIMIT_NOFILE))
    counts = [int(x) for x in args.streams.split(",")]
    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for _ in range(args.rounds):
        for streams in counts:
            for kind in ("protocol", "splice"):
                size = args.mib * MIB // streams
                results.setdefault((kind, streams), []).append(one_run(kind, streams, size))
    lines = [
        f"os.splice vs ftplb's Protocol relay: {args.mib} MiB per run split over the streams,"
        f" {args.rounds} interleaved rounds, median.",
        "",
        "| relay | streams | MiB/s | relay CPU s per GiB |",
        "|---|---:|---:|---:|",
    ]
    for streams in counts:
        for kind in ("protocol", "splice"):
            runs = results[(kind, streams)]
            rate = statistics.median(r[0] for r in runs)
            cpu = statistics.median(r[1] for r in runs)
            lines.append(f"| {kind} | {streams} | {rate:,.0f} | {cpu:.2f} |")
    lines += ["", f"Machine: {machine()}."]
    table = "\n".join(lines)
    print(table)
    if args.write_docs:
        write_block("bench/splice.py", table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
