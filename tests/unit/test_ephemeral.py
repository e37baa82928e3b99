"""Warnings for data port ranges the kernel may hand to outgoing connections."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftplb import ephemeral
from ftplb.config import PortRange, parse_config


def proc(tmp_path: Path, port_range: str = "32768\t60999\n", reserved: str = "\n") -> Path:
    (tmp_path / "ip_local_port_range").write_text(port_range)
    (tmp_path / "ip_local_reserved_ports").write_text(reserved)
    return tmp_path


def routed(**balancer: Any) -> Any:
    return parse_config(
        {
            "balancer": {"listen": "127.0.0.1:2121", **balancer},
            "backends": [
                {"name": "a", "address": "127.0.1.1:21", "passive_ports": "30000-30099"},
                {"name": "b", "address": "127.0.1.2:21", "passive_ports": "40000-40099"},
            ],
        }
    )


def inspect(data_ports: str) -> Any:
    return parse_config(
        {
            "balancer": {"listen": "127.0.0.1:2121", "mode": "inspect", "data_ports": data_ports},
            "backends": [{"name": "a", "address": "127.0.1.1:21"}],
        }
    )


def test_reads_the_kernel_settings(tmp_path: Path) -> None:
    where = proc(tmp_path, reserved="8080,40000-40002\n")
    assert ephemeral.ephemeral_range(where) == PortRange(32768, 60999)
    assert ephemeral.reserved_ports(where) == {8080, 40000, 40001, 40002}
    assert ephemeral.ephemeral_range(tmp_path / "missing") is None
    assert ephemeral.reserved_ports(tmp_path / "missing") == set()


def test_routed_warns_for_the_ranges_inside_only(tmp_path: Path) -> None:
    lines = ephemeral.warnings(routed(), proc(tmp_path))
    assert lines == [
        "warning: backend b passive_ports 40000-40099: 100 of its ports are in the kernel's "
        "ephemeral range 32768-60999 (net.ipv4.ip_local_port_range); outgoing connections "
        "may hold them when a transfer needs them",
        "warning: reserve them (add any ports already reserved): sysctl -w "
        "net.ipv4.ip_local_reserved_ports=40000-40099, and the same in /etc/sysctl.d/ to keep it",
    ]


def test_reserved_ports_and_the_kernel_data_path_need_no_warning(tmp_path: Path) -> None:
    assert ephemeral.warnings(routed(), proc(tmp_path, reserved="40000-40099")) == []
    assert ephemeral.warnings(routed(data_path="kernel"), proc(tmp_path)) == []


def test_inspect_counts_the_ports_still_exposed(tmp_path: Path) -> None:
    lines = ephemeral.warnings(inspect("32000-32867"), proc(tmp_path, reserved="32768-32799"))
    assert lines[0].startswith("warning: balancer.data_ports 32000-32867: 68 of its ports")
    assert ephemeral.warnings(inspect("20000-20999"), proc(tmp_path)) == []
    assert ephemeral.warnings(inspect("40000-40999"), tmp_path / "missing") == []
