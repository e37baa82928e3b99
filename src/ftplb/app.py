"""`ftplb run`: the running balancer: config, pool, health checks, listeners,
signals, reload, drain, graceful stop. The admin API calls into `Runtime`."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import resource
import signal
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ftplb.admin.server import AdminServer
from ftplb.admin.source import LocalSource, Running
from ftplb.balancer.discovered import expand
from ftplb.balancer.pool import Backend, Pool
from ftplb.config import BackendConfig, Config, load_config
from ftplb.errors import ConfigError
from ftplb.io import splice
from ftplb.io.cluster import Cluster, ClusterHooks
from ftplb.io.discovery import Discovery
from ftplb.io.health import HealthChecker
from ftplb.io.inspect import InspectBalancer
from ftplb.io.kernel import KernelDataPathError
from ftplb.io.overflow import OverflowWatch
from ftplb.io.routed import RoutedBalancer
from ftplb.logs import event
from ftplb.shared import Shared

log = logging.getLogger("ftplb")

# Settings a reload cannot change in place: listeners are bound to them (or, for
# workers, processes forked with them).
RESTART_ONLY = {
    "balancer": (
        "listen",
        "mode",
        "data_listen",
        "data_ports",
        "workers",
        "backlog",
        "source",
        "source_rules",
    ),
    "tls": ("implicit_listen",),
    "admin": ("listen",),
    "cluster": ("redis", "node", "advertise"),
}


def raise_file_limit() -> int:
    """Every passive port is a listening socket: lift the soft fd limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


def install_uvloop() -> bool:
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


class Runtime:
    """Everything `ftplb run` holds while it runs."""

    def __init__(self, config: Config, shared: Shared | None = None) -> None:
        self.config = config
        counts = shared.backends if shared is not None and shared.workers > 1 else None
        self.discovery = Discovery(config, self._discovered) if Discovery.wanted(config) else None
        """`discover = "dns"` backends: each address found is a backend."""
        self.pool = Pool(self._backends(config), config.balancer.balance, counts)
        self.health = HealthChecker(config, self.pool, shared)
        self.balancer: RoutedBalancer | InspectBalancer
        # FTPLB_SPLICE is read here, once (io/splice.py).
        if config.balancer.mode == "inspect":
            self.balancer = InspectBalancer(config, self.pool, shared, splice.enabled())
        else:
            self.balancer = RoutedBalancer(config, self.pool, shared, splice.enabled())
        self.cluster: Cluster | None = None
        """[cluster]: state shared with other nodes through Redis (io/cluster.py)."""
        if config.cluster.redis:
            hooks = ClusterHooks(
                self._impose_ban, self._lift_ban, self._remote_backend_change, self._local_bans
            )
            worker = shared.worker if shared is not None else 0
            instance = shared.instance if shared is not None else None
            per_ip = self._sessions_by_ip if isinstance(self.balancer, InspectBalancer) else None
            self.cluster = Cluster(
                config, self.pool, hooks, worker, self.balancer.counts, instance, per_ip
            )
            if isinstance(self.balancer, InspectBalancer):
                self.balancer.cluster = self.cluster
        self.overflows = OverflowWatch(self.balancer.control_sockets)
        # The kernel's counter is the namespace's: one worker reports it.
        self._watch_overflows = shared is None or shared.worker == 0
        self.stopping = asyncio.Event()
        self.reloads = 0
        self._reload_lock = asyncio.Lock()

    def _backends(self, config: Config) -> tuple[BackendConfig, ...]:
        """The configured backends, discovered ones in place of their templates."""
        return expand(config.backends, self.discovery.found if self.discovery else {})

    async def start(self) -> None:
        if self.discovery is not None:
            # The names first, then their health: a discovered backend is
            # checked before it gets a session, like every other.
            await self.discovery.refresh()
            self.pool.update(self._backends(self.config), self.config.balancer.balance)
        if self.cluster is not None:
            # The cluster's bans and drains before the first client, if Redis
            # answers soon; a Redis that does not never holds up the start.
            self.cluster.start()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.cluster.synced.wait(), 2.0)
        # The first round runs before we accept anyone: no client meets a dead backend.
        await self.health.first_round()
        try:
            await self.balancer.start()
        except (OSError, KernelDataPathError):
            await self.health.stop()
            raise
        self.health.start()
        if self.discovery is not None:
            self.discovery.start()
        if self._watch_overflows:
            self.overflows.start()

    def stop_soon(self) -> None:
        self.stopping.set()

    # -- operator actions (signals and the admin API)

    def backend(self, name: str) -> Backend | None:
        return self.pool.by_name.get(name)

    def set_drain(self, name: str, draining: bool) -> bool:
        b = self.backend(name)
        if b is None:
            return False
        b.draining = draining
        if not draining:
            b.disabled = False
        state = "drain" if draining else "enabled"
        event(log, logging.WARNING, "operator", "backend %s: %s by operator", name, state)
        self._tell_cluster(b)
        return True

    def set_disabled(self, name: str) -> bool:
        b = self.backend(name)
        if b is None:
            return False
        b.disabled = True
        event(
            log, logging.WARNING, "operator", "backend %s: maintenance (disabled) by operator", name
        )
        self._tell_cluster(b)
        return True

    def set_weight(self, name: str, weight: int) -> bool:
        b = self.backend(name)
        if b is None:
            return False
        b.weight = weight
        event(log, logging.WARNING, "operator", "backend %s: weight %d by operator", name, weight)
        self._tell_cluster(b)
        return True

    def cluster_status(self) -> dict[str, Any] | None:
        return self.cluster.status() if self.cluster is not None else None

    def _tell_cluster(self, b: Backend) -> None:
        if self.cluster is not None:
            fields = {"draining": b.draining, "disabled": b.disabled, "weight": b.weight}
            self.cluster.backend_changed(b.name, fields)

    # -- what other nodes of the cluster decided

    def _impose_ban(self, ip: str, until: float) -> None:
        if isinstance(self.balancer, InspectBalancer):
            now = self.balancer.loop.time()
            window = self.config.balancer.login_failure_window
            self.balancer.shared.logins.impose(ip, now, now + until - time.time(), window)

    def _sessions_by_ip(self) -> dict[str, int]:
        """This worker's sessions per client address, for the heartbeat: only
        while max_per_ip is set (the heartbeat stays small otherwise)."""
        if not isinstance(self.balancer, InspectBalancer) or not self.config.balancer.max_per_ip:
            return {}
        return dict(self.balancer.per_ip)

    def _local_bans(self) -> list[tuple[str, float]]:
        if not isinstance(self.balancer, InspectBalancer):
            return []
        return [(b["address"], b["until"]) for b in self.balancer.ban_views()]

    def _lift_ban(self, ip: str) -> None:
        if isinstance(self.balancer, InspectBalancer):
            self.balancer.shared.logins.lift(ip)

    def _remote_backend_change(self, name: str, fields: dict[str, Any], node: str) -> None:
        b = self.backend(name)
        if b is None:
            return
        before = (b.draining, b.disabled, b.weight)
        b.draining = bool(fields.get("draining", b.draining))
        b.disabled = bool(fields.get("disabled", b.disabled))
        weight = fields.get("weight", b.weight)
        if isinstance(weight, int) and 0 <= weight <= 256:
            b.weight = weight
        if (b.draining, b.disabled, b.weight) != before:
            event(
                log, logging.WARNING, "operator",
                "backend %s: draining=%s disabled=%s weight=%d, set on another node (%s)",
                name, b.draining, b.disabled, b.weight, node,
            )  # fmt: skip

    async def reload(self) -> tuple[bool, str]:
        """Re-read the file. An invalid file changes nothing (the reason is logged)."""
        async with self._reload_lock:
            try:
                new = load_config(self.config.path)
            except ConfigError as exc:
                log.error("reload rejected, configuration unchanged: %s", exc)
                return False, str(exc)
            new, kept = keep_restart_only(self.config, new, self._login_ring())
            if kept:
                log.warning(
                    "reload: %s changed; these need a restart and keep their old values",
                    ", ".join(kept),
                )
            if Discovery.wanted(new):
                if self.discovery is None:
                    self.discovery = Discovery(new, self._discovered)
                    self.discovery.start()
                self.discovery.config = new
                await self.discovery.refresh()
            elif self.discovery is not None:
                await self.discovery.stop()
                self.discovery = None
            added, retired = self.pool.update(self._backends(new), new.balancer.balance)
            self.config = new
            self.balancer.config = new
            failed = []
            if isinstance(self.balancer, InspectBalancer):
                try:
                    await self.balancer.reloaded()
                except (OSError, ssl.SSLError) as exc:
                    failed.append(f"[tls]: {exc}")
                for b in retired:
                    self.balancer.retire_if_idle(b)
            else:
                try:
                    await self.balancer.reloaded()
                except KernelDataPathError as exc:
                    failed.append(str(exc))
                for b in retired:
                    self.balancer.retire_when_idle(b)
                for b in added:
                    try:
                        await self.balancer.open_data_listeners(b)
                    except OSError as exc:
                        failed.append(f"{b.name}: {exc}")
                        b.disabled = True
            await self.health.sync(new)
            self.reloads += 1
            summary = (
                f"reloaded {new.path}: {len(self.pool.backends)} backends"
                f" ({len(added)} added, {len(retired)} retiring), balance {new.balancer.balance}"
            )
            if kept:
                summary += "; needs a restart, old value kept: " + ", ".join(kept)
            if failed:
                summary += "; failed: " + "; ".join(failed)
                event(log, logging.ERROR, "reload", "%s", summary)
            else:
                event(log, logging.INFO, "reload", "%s", summary)
            return not failed, summary

    async def _discovered(self) -> None:
        """DNS answered differently: new addresses join (checked first), gone
        ones drain. Serialised with reloads."""
        async with self._reload_lock:
            added, retired = self.pool.update(
                self._backends(self.config), self.config.balancer.balance
            )
            if isinstance(self.balancer, InspectBalancer):  # discovery is inspect mode's
                for b in retired:
                    self.balancer.retire_if_idle(b)
            await self.health.sync(self.config)
            event(
                log,
                logging.INFO,
                "discovery",
                "discovery: %d backends (%s added, %s draining)",
                len(self.pool.backends),
                ", ".join(b.name for b in added) or "none",
                ", ".join(b.name for b in retired) or "none",
            )

    def _login_ring(self) -> int:
        """How many failures per address the shared login table can hold."""
        if isinstance(self.balancer, InspectBalancer):
            return self.balancer.shared.logins.ring
        return 1000

    async def stop(self) -> None:
        """Stop accepting, let sessions finish up to shutdown_timeout, close the rest."""
        loop = asyncio.get_running_loop()
        timeout = self.config.balancer.shutdown_timeout
        self.balancer.stop_accepting()
        log.info(
            "stopping: no new sessions; %d open, waiting up to %gs",
            self.balancer.control_sessions,
            timeout,
        )
        deadline = loop.time() + timeout
        while self.balancer.in_flight and loop.time() < deadline:
            await asyncio.sleep(0.1)
        if self.balancer.in_flight:
            log.warning("closing %d sessions and connections still open", self.balancer.in_flight)
        self.balancer.close_sessions()
        self.overflows.stop()
        if self.discovery is not None:
            await self.discovery.stop()
        if self.cluster is not None:
            await self.cluster.stop()
        await self.balancer.close()
        await self.health.stop()
        await asyncio.sleep(0)


def keep_restart_only(old: Config, new: Config, login_ring: int) -> tuple[Config, list[str]]:
    """`new` with the settings a reload cannot apply put back to `old`'s values,
    and their names ("balancer.listen", ...)."""
    kept: list[str] = []
    sections = {}
    for section, keys in RESTART_ONLY.items():
        before, after = getattr(old, section), getattr(new, section)
        changed = {k: getattr(before, k) for k in keys if getattr(before, k) != getattr(after, k)}
        kept += [f"{section}.{k}" for k in changed]
        if changed:
            sections[section] = dataclasses.replace(after, **changed)
    b = sections.get("balancer", new.balancer)
    if b.max_login_failures > login_ring:
        # The shared table was sized for the old limit.
        kept.append("balancer.max_login_failures")
        b = dataclasses.replace(b, max_login_failures=old.balancer.max_login_failures)
        sections["balancer"] = b
    return dataclasses.replace(new, **sections), kept


async def serve(
    config: Config,
    started: Callable[[], None] | None = None,
    shared: Shared | None = None,
    attach: Callable[[Running], Awaitable[None]] | None = None,
) -> int:
    """Run the balancer until SIGINT/SIGTERM. Returns the exit code. As one of
    several workers (ftplb/workers.py): `shared` state, and `attach` (the
    supervisor's channel) instead of an admin server and SIGHUP."""
    runtime = Runtime(config, shared)
    try:
        await runtime.start()
    except OSError as exc:
        log.error("cannot listen: %s", exc)
        return 2
    except KernelDataPathError as exc:
        log.error("balancer.data_path = kernel: %s", exc)
        return 2
    admin = None
    tasks: set[asyncio.Task[None]] = set()
    if attach is not None:
        tasks.add(asyncio.ensure_future(attach(runtime)))
    elif config.admin.listen is not None:
        admin = AdminServer(LocalSource(runtime))
        try:
            await admin.start()
        except OSError as exc:
            log.error("admin.listen %s: %s", config.admin.listen, exc)
            await runtime.stop()
            return 2
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, runtime.stopping.set)
    reloads: set[asyncio.Task[tuple[bool, str]]] = set()

    def on_hup() -> None:
        task = asyncio.ensure_future(runtime.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    up = sum(b.up for b in runtime.pool.backends)
    if attach is None:
        loop.add_signal_handler(signal.SIGHUP, on_hup)
        log.info("ready: %d of %d backends up", up, len(runtime.pool.backends))
    # What exists now (modules, config, listeners) lives as long as the process:
    # keep the collector from scanning it again and again under load.
    gc.collect()
    gc.freeze()
    if started is not None:
        started()
    try:
        await runtime.stopping.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await runtime.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if admin is not None:
            await admin.stop()
    return 0
