"""Prometheus metrics, read from the running balancer at scrape time.

Names follow HAProxy's exporter where one exists (per-backend `up`, sessions,
bytes, check failures, weight).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from ftplb.io.inspect import InspectBalancer

if TYPE_CHECKING:
    from ftplb.app import Runtime


class BalancerCollector(Collector):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        rt = self.runtime
        backends = [*rt.pool.backends, *rt.pool.retired]
        label = ["backend"]
        up = GaugeMetricFamily("ftplb_backend_up", "1 when the health checks pass.", labels=label)
        current = GaugeMetricFamily(
            "ftplb_backend_current_sessions", "Control sessions open now.", labels=label
        )
        total = CounterMetricFamily(
            "ftplb_backend_sessions", "Control sessions since start.", labels=label
        )
        bytes_in = CounterMetricFamily(
            "ftplb_backend_bytes_in",
            "Bytes from clients to the backend (ended connections).",
            labels=label,
        )
        bytes_out = CounterMetricFamily(
            "ftplb_backend_bytes_out",
            "Bytes from the backend to clients (ended connections).",
            labels=label,
        )
        failures = CounterMetricFamily(
            "ftplb_backend_check_failures", "Failed health checks.", labels=label
        )
        weight = GaugeMetricFamily("ftplb_backend_weight", "Current weight.", labels=label)
        draining = GaugeMetricFamily(
            "ftplb_backend_draining", "1 when drained or disabled by the operator.", labels=label
        )
        for b in backends:
            name = [b.name]
            up.add_metric(name, 1 if b.up else 0)
            current.add_metric(name, b.sessions)
            total.add_metric(name, b.sessions_total)
            bytes_in.add_metric(name, b.bytes_in)
            bytes_out.add_metric(name, b.bytes_out)
            failures.add_metric(name, b.check_failures_total)
            weight.add_metric(name, b.weight)
            draining.add_metric(name, 1 if (b.draining or b.disabled) else 0)
        yield from (up, current, total, bytes_in, bytes_out, failures, weight, draining)

        lb = rt.balancer
        yield GaugeMetricFamily(
            "ftplb_sessions_current", "Control sessions open now.", value=lb.control_sessions
        )
        rejected = CounterMetricFamily(
            "ftplb_sessions_rejected", "Sessions refused, by reason.", labels=["reason"]
        )
        for reason in ("no_backend", "max_sessions", "max_per_ip", "banned"):
            rejected.add_metric([reason], lb.rejected.get(reason, 0))
        yield rejected
        data = CounterMetricFamily(
            "ftplb_data_connections",
            "Data connections relayed: inbound (client to us), outbound (us to client).",
            labels=["direction", "mode"],
        )
        mode = rt.config.balancer.mode
        for direction in ("inbound", "outbound"):
            data.add_metric([direction, mode], lb.data_connections.get(direction, 0))
        yield data
        if isinstance(lb, InspectBalancer):
            logins = CounterMetricFamily("ftplb_logins", "Logins, by result.", labels=["result"])
            for result in ("success", "failure"):
                logins.add_metric([result], lb.logins.get(result, 0))
            yield logins
            transfers = CounterMetricFamily(
                "ftplb_transfers", "Transfers, by direction.", labels=["direction"]
            )
            for direction in ("download", "upload"):
                transfers.add_metric([direction], lb.transfers.get(direction, 0))
            yield transfers
            now = asyncio.get_running_loop().time()
            yield GaugeMetricFamily(
                "ftplb_banned_addresses", "Addresses banned now.", value=lb.guard.banned_count(now)
            )


def registry_for(runtime: Runtime) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BalancerCollector(runtime))
    return registry
