"""`ftplb check`'s plan (`cli.plan`): what each mode will do, line by line."""

from __future__ import annotations

from typing import Any

import pytest

from ftplb import cli, ephemeral
from ftplb.config import Config, parse_config

ROUTED_BACKENDS = [
    {"name": "a", "address": "127.0.1.1:21", "passive_ports": "30000-30099"},
    {
        "name": "bee",
        "address": "127.0.1.2:2121",
        "passive_ports": "30100-30149",
        "send_proxy_data": True,
        "weight": 3,
    },
]


@pytest.fixture(autouse=True)
def no_kernel_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan adds ephemeral.warnings(), which read this host's /proc: none here."""
    monkeypatch.setattr(ephemeral, "warnings", lambda config: [])


def routed(**balancer: Any) -> Config:
    return parse_config(
        {
            "balancer": {"listen": "127.0.0.1:2121", "workers": 1, **balancer},
            "backends": ROUTED_BACKENDS,
        },
        "lb.toml",
    )


def inspect(**top: Any) -> Config:
    return parse_config(
        {
            "balancer": {
                "listen": "127.0.0.1:2121",
                "public_address": "198.51.100.7",
                "mode": "inspect",
                "data_ports": "40000-40008",
                "workers": 3,
                "balance": "user",
                "max_per_ip": 4,
            },
            "backends": [
                {"name": "a", "address": "127.0.1.1:21"},
                {"name": "b", "address": "127.0.1.2:21", "send_proxy": "v1"},
            ],
            **top,
        },
        "lb.toml",
    )


def test_routed_user_data_path() -> None:
    config = routed(data_listen="127.0.0.5", send_proxy="v2", public_address="203.0.113.9")
    assert cli.plan(config) == [
        "lb.toml: OK",
        "mode routed, balance leastconn, send_proxy v2",
        "control: listen on 127.0.0.1:2121; clients are told 203.0.113.9",
        "limits: max_sessions 10000, idle_timeout 600s",
        "workers: 1 (set; one process)",
        "health: ftp check every 2s, timeout 1s, rise 2, fall 2",
        "backends:",
        "  a    127.0.1.1:21  weight 1  proxy v2"
        "\n       data 127.0.0.5:30000-30099 (100 ports) -> 127.0.1.1, same port",
        "  bee  127.0.1.2:2121  weight 3  proxy v2"
        "\n       data 127.0.0.5:30100-30149 (50 ports) -> 127.0.1.2, same port, PROXY v2 on data",
        "data listeners: 150 ports on 127.0.0.5",
        "backends must advertise 203.0.113.9 and their own range in PASV replies "
        "(ProFTPD MasqueradeAddress+PassivePorts, vsftpd pasv_address+pasv_min_port/"
        "pasv_max_port, pure-ftpd -P/-p, ftplb backend --masquerade/--passive-ports)",
        "tls: passed through untouched (explicit AUTH TLS on the control port)",
    ]


def test_proxy_on_data_defaults_to_v1_when_control_has_none() -> None:
    lines = cli.plan(routed())
    assert lines[8].endswith("-> 127.0.1.2, same port, PROXY v1 on data")
    assert lines[7].splitlines()[0] == "  a    127.0.1.1:21  weight 1  proxy off"


WILDCARD_WARNING = (
    "warning: data listeners on 0.0.0.0 collide with a backend's passive sockets on the "
    "same host; set balancer.data_listen to a specific address"
)


def test_routed_wildcard_data_listen_warns() -> None:
    lines = cli.plan(routed(listen="0.0.0.0:21", public_address="203.0.113.9"))
    assert lines[9:12] == [
        "data listeners: 150 ports on 0.0.0.0",
        lines[10],
        WILDCARD_WARNING,
    ]
    assert lines[10].startswith("backends must advertise 203.0.113.9 ")
    # The same listen with a specific data_listen: no warning.
    specific = cli.plan(
        routed(listen="0.0.0.0:21", public_address="203.0.113.9", data_listen="10.0.0.5")
    )
    assert WILDCARD_WARNING not in specific
    assert "data listeners: 150 ports on 10.0.0.5" in specific
    # A wildcard data_listen given explicitly warns too.
    explicit = cli.plan(routed(data_listen="0.0.0.0"))
    assert WILDCARD_WARNING in explicit


def test_routed_kernel_data_path() -> None:
    lines = cli.plan(routed(listen="0.0.0.0:21", public_address="203.0.113.9", data_path="kernel"))
    assert lines[4] == "workers: 1 (set; one process)"
    assert lines[9:] == [
        "data path: kernel: an nftables table 'inet ftplb' DNATs the passive ranges to "
        "their backends and SNATs their active-mode connections to 203.0.113.9. "
        "Needs CAP_NET_ADMIN and this host as the backends' gateway (net.ipv4.ip_forward=1)",
        "tls: passed through untouched (explicit AUTH TLS on the control port)",
    ]


def test_inspect() -> None:
    config = inspect(users={"zed": "b", "amy": "a"})
    assert cli.plan(config) == [
        "lb.toml: OK",
        "mode inspect, balance user, send_proxy off",
        "control: listen on 127.0.0.1:2121; clients are told 198.51.100.7",
        "limits: max_sessions 10000, idle_timeout 600s",
        "workers: 3 (set), sharing the listeners (SO_REUSEPORT); "
        "data ports per worker 40000-40002, 40003-40005, 40006-40008",
        "health: ftp check every 2s, timeout 1s, rise 2, fall 2",
        "backends:",
        "  a  127.0.1.1:21  weight 1  proxy off",
        "  b  127.0.1.2:21  weight 1  proxy v1",
        "data: the balancer's own passive ports 40000-40008 (on the address each client "
        "reached, or data_listen); active-mode connections leave from there too",
        "logins: 5 failures in 300s ban an address for 600s; login_timeout 60s; max_per_ip 4",
        "user amy -> a",
        "user zed -> b",
        "tls: off (AUTH TLS gets 502; set [tls] cert and key to terminate FTPS here)",
        "tls to backends: off (plain FTP)",
    ]


def test_workers_slices_split_the_data_ports() -> None:
    config = parse_config(
        {
            "balancer": {
                "listen": "127.0.0.1:2121",
                "mode": "inspect",
                "data_ports": "40000-40009",
                "workers": 4,
            },
            "backends": [{"name": "a", "address": "127.0.1.1:21"}],
        }
    )
    assert cli.plan(config)[4] == (
        "workers: 4 (set), sharing the listeners (SO_REUSEPORT); "
        "data ports per worker 40000-40001, 40002-40004, 40005-40006, 40007-40009"
    )


def test_workers_auto_is_one_per_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 6)
    assert cli.plan(routed(workers="auto"))[4] == (
        "workers: 6 (auto: one per core), sharing the listeners (SO_REUSEPORT)"
    )
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert cli.plan(routed(workers="auto"))[4] == "workers: 1 (auto: one per core; one process)"


def test_kernel_warnings_tls_and_admin_close_the_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Config] = []

    def warnings(config: Config) -> list[str]:
        seen.append(config)
        return ["warning: from ephemeral"]

    monkeypatch.setattr(ephemeral, "warnings", warnings)
    config = parse_config(
        {
            "balancer": {"listen": "127.0.0.1:2121", "workers": 1},
            "tls": {"implicit_listen": "127.0.0.1:990", "backend_tls": "on"},
            "admin": {"listen": "127.0.0.1:9021", "token": "t"},
            "backends": ROUTED_BACKENDS,
        },
        "lb.toml",
    )
    assert cli.plan(config)[-4:] == [
        "warning: from ephemeral",
        "tls: passed through; implicit FTPS on 127.0.0.1:990 -> a 127.0.1.1:990, bee 127.0.1.2:990",
        "warning: tls.backend_tls is for inspect mode; routed mode passes TLS through",
        "admin: http://127.0.0.1:9021/ (token required for changes)",
    ]
    assert seen == [config]


def test_inspect_backend_tls_without_verification() -> None:
    config = inspect(
        tls={"backend_tls": "match", "backend_verify": False},
        admin={"listen": "127.0.0.1:9021"},
    )
    assert cli.plan(config)[-3:] == [
        "tls: off (AUTH TLS gets 502; set [tls] cert and key to terminate FTPS here)",
        "tls to backends: when the client uses TLS, AUTH TLS + PROT P, data sessions resumed; "
        "certificates NOT verified (backend_verify = false)",
        "admin: http://127.0.0.1:9021/ (no token: changes open)",
    ]


def test_cluster_with_advertise_names_the_forward_ports() -> None:
    cluster = {"redis": "redis://127.0.0.1:6379/0", "node": "lb1", "advertise": "10.0.0.5:2100"}
    lines = cli.plan(inspect(cluster=cluster))
    assert (
        "cluster: node lb1, shared state in redis://127.0.0.1:6379/0 (bans, failed logins,"
        " operator changes, session counts); every data port open on 127.0.0.1, data"
        " connections for other nodes' sessions forwarded to them, theirs taken on 10.0.0.5"
        " ports 2100-2102"
    ) in lines
    del cluster["advertise"]
    plain = [line for line in cli.plan(inspect(cluster=cluster)) if line.startswith("cluster:")]
    assert plain == [
        "cluster: node lb1, shared state in redis://127.0.0.1:6379/0 (bans, failed logins,"
        " operator changes, session counts)"
    ]
