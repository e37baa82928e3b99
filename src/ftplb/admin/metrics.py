"""Prometheus metrics, made from a snapshot (admin/source.py) at scrape time.

Names follow HAProxy's exporter where one exists (per-backend `up`, sessions,
bytes, check failures, weight).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from ftplb.admin.source import Snapshot


class SnapshotCollector(Collector):
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
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
        for b in snap["backends"]:
            name = [b["name"]]
            up.add_metric(name, 1 if b["up"] else 0)
            current.add_metric(name, b["sessions"]["current"])
            total.add_metric(name, b["sessions"]["total"])
            bytes_in.add_metric(name, b["bytes"]["in"])
            bytes_out.add_metric(name, b["bytes"]["out"])
            failures.add_metric(name, b["check"]["failures"])
            weight.add_metric(name, b["weight"])
            draining.add_metric(name, 1 if (b["draining"] or b["disabled"]) else 0)
        yield from (up, current, total, bytes_in, bytes_out, failures, weight, draining)

        counters = snap["counters"]
        yield GaugeMetricFamily(
            "ftplb_sessions_current", "Control sessions open now.", value=snap["status"]["sessions"]
        )
        yield GaugeMetricFamily(
            "ftplb_workers", "Worker processes.", value=snap["status"]["workers"]
        )
        cluster = snap["status"].get("cluster")
        if cluster:
            yield GaugeMetricFamily(
                "ftplb_cluster_connected",
                "1 while this node shares its state through Redis, 0 during an outage.",
                value=int(bool(cluster["connected"])),
            )
            yield GaugeMetricFamily(
                "ftplb_cluster_nodes", "ftplb nodes seen alive in Redis.", value=cluster["nodes"]
            )
            moved = counters.get("cluster_data") or {}
            forwarded = CounterMetricFamily(
                "ftplb_cluster_forwarded_data_connections",
                "Data connections that reached a node other than their session's: sent on to"
                " that node (out), or taken from another node (in). [cluster] advertise.",
                labels=["direction"],
            )
            forwarded.add_metric(["out"], moved.get("forwarded", 0))
            forwarded.add_metric(["in"], moved.get("joined", 0))
            yield forwarded
        rejected = CounterMetricFamily(
            "ftplb_sessions_rejected", "Sessions refused, by reason.", labels=["reason"]
        )
        for reason in ("no_backend", "max_sessions", "max_per_ip", "banned"):
            rejected.add_metric([reason], counters["rejected"].get(reason, 0))
        yield rejected
        data = CounterMetricFamily(
            "ftplb_data_connections",
            "Data connections relayed: inbound (client to us), outbound (us to client).",
            labels=["direction", "mode"],
        )
        mode = snap["status"]["mode"]
        for direction in ("inbound", "outbound"):
            data.add_metric([direction, mode], counters["data_connections"].get(direction, 0))
        yield data
        yield CounterMetricFamily(
            "ftplb_data_connections_spliced",
            "Data connections moved by the kernel (os.splice) once past 1 MiB.",
            value=counters["data_connections"].get("spliced", 0),
        )
        if mode == "inspect":
            logins = CounterMetricFamily("ftplb_logins", "Logins, by result.", labels=["result"])
            for result in ("success", "failure"):
                logins.add_metric([result], counters["logins"].get(result, 0))
            yield logins
            transfers = CounterMetricFamily(
                "ftplb_transfers", "Transfers, by direction.", labels=["direction"]
            )
            for direction in ("download", "upload"):
                transfers.add_metric([direction], counters["transfers"].get(direction, 0))
            yield transfers
            yield GaugeMetricFamily(
                "ftplb_banned_addresses", "Addresses banned now.", value=counters["banned"]
            )
            ports = counters.get("data_ports") or {}
            yield GaugeMetricFamily(
                "ftplb_data_ports",
                "Data ports (data_ports), all workers.",
                value=ports.get("total", 0),
            )
            yield GaugeMetricFamily(
                "ftplb_data_ports_in_use",
                "Data ports with at least one passive request waiting or connected.",
                value=ports.get("in_use", 0),
            )


def render(snapshot: Snapshot) -> bytes:
    """The Prometheus text exposition of `snapshot`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    return generate_latest(registry)
