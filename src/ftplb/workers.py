"""`ftplb run` with several worker processes.

The supervisor forks the workers before any event loop exists. Each worker is
a whole balancer (`app.serve`): it binds the listeners with SO_REUSEPORT, so
the kernel spreads new connections across workers; it runs its own health
checks; in inspect mode it owns one slice of `data_ports`, so a data
connection reaches the worker that announced the port. Limits that must hold
across workers (max_sessions, max_per_ip, bans, "is this routed session's data
still moving", each backend's sessions for leastconn and roundrobin) use the
counters in ftplb/shared.py.

The supervisor keeps a socketpair to each worker. Over it (one JSON object per
line, one question at a time) it asks for snapshots, which the admin API adds
up, and passes on drain/enable/disable/weight and reload. It forwards SIGTERM,
turns SIGHUP into a reload of every worker, and stops everything if a worker
dies (systemd's Restart= brings the whole balancer back).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from ftplb.admin.server import AdminServer
from ftplb.admin.source import (
    LocalSource,
    Running,
    Snapshot,
    merge,
    merge_events,
    snapshot_of,
)
from ftplb.config import Config, HostPort, load_config
from ftplb.errors import ConfigError
from ftplb.io.sessions import SessionIds
from ftplb.logs import EVENTS, event, tag_worker
from ftplb.shared import Shared

Serve = Callable[..., Coroutine[Any, Any, int]]
"""app.serve: what a worker runs (`serve(config, shared=..., attach=...)`)."""

log = logging.getLogger("ftplb")


# -- in a worker ------------------------------------------------------------------


def supervised(sock: socket.socket) -> Callable[[Running], Awaitable[None]]:
    """What a worker's balancer attaches instead of an admin API: the channel."""

    async def attach(runtime: Running) -> None:
        await answer_supervisor(sock, runtime)

    return attach


async def answer_supervisor(sock: socket.socket, runtime: Running) -> None:
    """Answer the supervisor's questions until it goes away, then stop."""
    reader, writer = await asyncio.open_connection(sock=sock)
    local = LocalSource(runtime)
    try:
        while line := await reader.readline():
            request = json.loads(line)
            writer.write(json.dumps(await _answer(local, runtime, request)).encode() + b"\n")
            await writer.drain()
    except (ConnectionError, ValueError) as exc:
        log.error("worker: supervisor channel failed: %s", exc)
    finally:
        writer.close()
        runtime.stop_soon()  # no supervisor: nobody would stop us


async def _answer(local: LocalSource, runtime: Running, request: dict[str, Any]) -> Any:
    op = request.get("op")
    if op == "state":
        return snapshot_of(runtime)
    if op == "act":
        return await local.act(request["name"], request["action"])
    if op == "weight":
        return await local.weight(request["name"], request["weight"])
    if op == "reload":
        return list(await local.reload())
    if op == "sessions":
        return await local.sessions()
    if op == "close_session":
        return await local.close_session(int(request["id"]))
    if op == "bans":
        return await local.bans()
    if op == "lift_ban":
        return await local.lift_ban(str(request["address"]))
    if op == "events":
        return await local.events()
    return {"error": f"unknown op {op!r}"}


# -- in the supervisor --------------------------------------------------------------


class Worker:
    def __init__(self, index: int, pid: int, sock: socket.socket) -> None:
        self.index = index
        self.pid = pid
        self.sock = sock
        self.exit_code: int | None = None
        self._lock = asyncio.Lock()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def ask(self, request: dict[str, Any]) -> Any:
        async with self._lock:
            if self._reader is None or self._writer is None:
                self._reader, self._writer = await asyncio.open_connection(sock=self.sock)
            self._writer.write(json.dumps(request).encode() + b"\n")
            await self._writer.drain()
            line = await self._reader.readline()
            if not line:
                raise ConnectionError(f"worker {self.index} (pid {self.pid}) is gone")
            return json.loads(line)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        else:
            self.sock.close()

    def reap(self) -> bool:
        """True once the process has exited (its code in `exit_code`)."""
        if self.exit_code is not None:
            return True
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            self.exit_code = 1
            return True
        if pid == 0:
            return False
        self.exit_code = os.waitstatus_to_exitcode(status)
        return True


class GroupSource:
    """The admin API's view of all workers (admin/source.py `Source`)."""

    def __init__(self, config: Config, workers: list[Worker]) -> None:
        self._config = config
        self.workers = workers

    @property
    def config(self) -> Config:
        return self._config

    async def _all(self, request: dict[str, Any]) -> list[Any]:
        return list(await asyncio.gather(*(w.ask(request) for w in self.workers)))

    async def snapshot(self) -> Snapshot:
        return merge(await self._all({"op": "state"}))

    async def _backend(self, name: str) -> dict[str, Any] | None:
        found = [b for b in (await self.snapshot())["backends"] if b["name"] == name]
        return found[0] if found else None

    async def act(self, name: str, action: str) -> dict[str, Any] | None:
        answers = await self._all({"op": "act", "name": name, "action": action})
        return await self._backend(name) if any(answers) else None

    async def weight(self, name: str, weight: int) -> dict[str, Any] | None:
        answers = await self._all({"op": "weight", "name": name, "weight": weight})
        return await self._backend(name) if any(answers) else None

    async def sessions(self) -> list[dict[str, Any]]:
        return [s for answer in await self._all({"op": "sessions"}) for s in answer]

    async def close_session(self, session_id: int) -> bool:
        # The id's last digits name the worker (io/sessions.py SessionIds).
        index = session_id % SessionIds.SPAN
        owners = [w for w in self.workers if w.index == index]
        return any([await w.ask({"op": "close_session", "id": session_id}) for w in owners])

    async def bans(self) -> list[dict[str, Any]]:
        answer: list[dict[str, Any]] = await self.workers[0].ask({"op": "bans"})
        return answer  # one table, shared by every worker

    async def lift_ban(self, ip: str) -> bool:
        # The table is shared: one worker lifts it for all, failures included.
        lifted: bool = await self.workers[0].ask({"op": "lift_ban", "address": ip})
        return lifted

    async def events(self) -> list[dict[str, Any]]:
        return merge_events(EVENTS.recent(), *await self._all({"op": "events"}))

    async def reload(self) -> tuple[bool, str]:
        try:
            # Checked here first: an invalid file reaches no worker.
            new = load_config(self._config.path)
        except ConfigError as exc:
            log.error("reload rejected, configuration unchanged: %s", exc)
            return False, str(exc)
        self._config = new
        answers = await self._all({"op": "reload"})
        ok = all(a[0] for a in answers)
        return ok, str(answers[0][1]) + f" ({len(answers)} workers)"


def _ports_free(config: Config) -> str:
    """'' if every address the workers will share is free now, else why not.

    SO_REUSEPORT lets sockets of the same user share a port: a second ftplb
    started by mistake would quietly take half the connections. A plain bind
    first, for a moment, refuses that (the workers bind after it is closed)."""
    b = config.balancer
    addresses = [b.listen]
    if config.tls.implicit_listen is not None:
        addresses.append(config.tls.implicit_listen)
    if b.mode == "routed" and b.data_path == "user":
        addresses += [
            HostPort(b.data_host, port)
            for backend in config.backends
            if backend.passive_ports is not None
            for port in backend.passive_ports
        ]
    for at in addresses:
        family = socket.AF_INET6 if ":" in at.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((at.host, at.port))
            except OSError as exc:
                return f"{at}: {exc.strerror}"
    return ""


def run(config: Config, serve: Serve) -> int:
    """Fork the workers, each running `serve` (app.serve), then supervise them.
    Returns the exit code."""
    busy = _ports_free(config)
    if busy:
        log.error("cannot listen: %s", busy)
        return 2
    count = config.balancer.worker_count()
    shared = Shared(count, login_ring=config.balancer.max_login_failures)
    workers: list[Worker] = []
    for index in range(count):
        ours, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                ours.close()
                for w in workers:
                    w.sock.close()
                shared.set_worker(index)
                tag_worker(index)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reloads come from the supervisor
                code = asyncio.run(serve(config, shared=shared, attach=supervised(theirs)))
            except BaseException:
                log.exception("worker %d failed", index)
            finally:
                logging.shutdown()
                os._exit(code)
        theirs.close()
        workers.append(Worker(index, pid, ours))
    return asyncio.run(supervise(config, workers))


async def supervise(config: Config, workers: list[Worker]) -> int:
    loop = asyncio.get_running_loop()
    source = GroupSource(config, workers)
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    try:
        # A worker answers once its listeners are open and its first health round is done.
        first = await source.snapshot()
    except (ConnectionError, OSError, ValueError):
        log.error("a worker could not start; stopping")
        await _stop(workers, config.balancer.shutdown_timeout)
        codes = [w.exit_code for w in workers if w.exit_code]
        return max(codes) if codes else 1
    admin = None
    if config.admin.listen is not None:
        admin = AdminServer(source)
        try:
            await admin.start()
        except OSError as exc:
            log.error("admin.listen %s: %s", config.admin.listen, exc)
            await _stop(workers, config.balancer.shutdown_timeout)
            return 2
    reloads: set[asyncio.Task[tuple[bool, str]]] = set()

    def reloaded(task: asyncio.Task[tuple[bool, str]]) -> None:
        reloads.discard(task)
        if not task.cancelled():
            log.info("SIGHUP: %s", task.result()[1])

    def on_hup() -> None:
        task = asyncio.ensure_future(source.reload())
        reloads.add(task)
        task.add_done_callback(reloaded)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    up = sum(b["up"] for b in first["backends"])
    log.info(
        "ready: %d of %d backends up, %d workers (pids %s)",
        up,
        len(first["backends"]),
        len(workers),
        " ".join(str(w.pid) for w in workers),
    )
    died = False
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), 0.5)
        for w in workers:
            if not stopping.is_set() and w.reap():
                event(
                    log, logging.ERROR, "worker", "worker %d (pid %d) exited with %s; stopping",
                    w.index, w.pid, w.exit_code,
                )  # fmt: skip
                died = True
                stopping.set()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.remove_signal_handler(sig)
    if admin is not None:
        await admin.stop()
    await _stop(workers, source.config.balancer.shutdown_timeout)
    return 1 if died else 0


async def _stop(workers: list[Worker], timeout: float) -> None:
    """SIGTERM (each worker then stops gracefully), SIGKILL after `timeout` + 5 s."""
    for w in workers:
        if not w.reap():
            with contextlib.suppress(ProcessLookupError):
                os.kill(w.pid, signal.SIGTERM)
    deadline = asyncio.get_running_loop().time() + timeout + 5
    while not all(w.reap() for w in workers):
        if asyncio.get_running_loop().time() > deadline:
            for w in workers:
                if not w.reap():
                    log.warning("worker %d (pid %d) did not stop: killed", w.index, w.pid)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(w.pid, signal.SIGKILL)
            deadline += 5
        await asyncio.sleep(0.1)
    for w in workers:
        w.close()
