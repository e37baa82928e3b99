"""`ftplb run`: wires config, pool, health checks and the mode's listeners together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
from collections.abc import Callable

from ftplb.balancer.pool import Pool
from ftplb.config import Config
from ftplb.io.health import HealthChecker
from ftplb.io.inspect import InspectBalancer
from ftplb.io.routed import RoutedBalancer

log = logging.getLogger("ftplb")

SHUTDOWN_GRACE = 5.0


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


async def serve(config: Config, started: Callable[[], None] | None = None) -> int:
    """Run the balancer until SIGINT/SIGTERM. Returns the exit code."""
    pool = Pool(config.backends, config.balancer.balance)
    health = HealthChecker(config, pool)
    # The first round runs before we accept anyone, so no client meets a dead backend.
    await health.first_round()
    balancer: RoutedBalancer | InspectBalancer
    if config.balancer.mode == "inspect":
        balancer = InspectBalancer(config, pool)
    else:
        balancer = RoutedBalancer(config, pool)
    try:
        await balancer.start()
    except OSError as exc:
        log.error("cannot listen: %s", exc)
        await health.stop()
        return 2
    health.start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(
        signal.SIGHUP, lambda: log.warning("SIGHUP: reload is not available yet; ignored")
    )
    up = sum(b.up for b in pool.backends)
    log.info("ready: %d of %d backends up", up, len(pool.backends))
    if started is not None:
        started()
    try:
        await stop.wait()
    finally:
        log.info("stopping: no new sessions; closing in up to %gs", SHUTDOWN_GRACE)
        await balancer.close()
        await health.stop()
        deadline = loop.time() + SHUTDOWN_GRACE
        while balancer.control_sessions and loop.time() < deadline:
            await asyncio.sleep(0.1)
        balancer.close_sessions()
        await asyncio.sleep(0)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    return 0
