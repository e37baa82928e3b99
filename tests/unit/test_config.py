"""Configuration: every rule names the file, the field and the reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ftplb.config import HostPort, PortRange, load_config
from ftplb.errors import ConfigError

GOOD = """
[balancer]
listen = "127.0.0.1:2121"
public_address = "127.0.0.1"
send_proxy = "v2"

[[backends]]
name = "ftp-serv00"
address = "127.0.1.1:21"
passive_ports = "30000-30099"

[[backends]]
name = "ftp-serv01"
address = "127.0.1.2:21"
passive_ports = "30100-30199"
send_proxy_data = true
weight = 3
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ftplb.toml"
    path.write_text(text)
    return path


def test_good_config_parses(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.balancer.listen == HostPort("127.0.0.1", 2121)
    assert cfg.balancer.mode == "routed" and cfg.balancer.balance == "leastconn"
    assert cfg.backends[1].passive_ports == PortRange(30100, 30199)
    assert cfg.backends[1].weight == 3 and cfg.backends[1].send_proxy_data
    assert cfg.proxy_version(cfg.backends[0]) == "v2"
    assert cfg.health.check == "ftp" and cfg.health.rise == 2


def test_defaults_match_the_contract(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path, '[[backends]]\nname="a"\naddress="10.0.0.1:21"\npassive_ports="2000-2010"\n'
        )
    )
    b = cfg.balancer
    assert (b.listen, b.mode, b.balance, b.send_proxy) == (
        HostPort("0.0.0.0", 21),
        "routed",
        "leastconn",
        "off",
    )
    assert (b.max_sessions, b.idle_timeout, b.data_ports) == (10000, 600, PortRange(40000, 40999))
    h = cfg.health
    assert (h.check, h.interval, h.timeout, h.rise, h.fall) == ("ftp", 2.0, 1.0, 2, 2)


BAD = [
    # (replace this, with this, field, reason fragment)
    (
        'passive_ports = "30100-30199"',
        'passive_ports = "30050-30149"',
        "backends[1].passive_ports",
        "30050-30149 overlaps backends[0] (30000-30099)",
    ),
    (
        'passive_ports = "30100-30199"',
        'passive_ports = "30199-30100"',
        "backends[1].passive_ports",
        "first port is above the last",
    ),
    (
        'passive_ports = "30100-30199"',
        'passive_ports = "30100-70000"',
        "backends[1].passive_ports",
        "between 1 and 65535",
    ),
    (
        'passive_ports = "30100-30199"',
        'passive_ports = "many"',
        "backends[1].passive_ports",
        "not a port range",
    ),
    (
        'passive_ports = "30100-30199"\n',
        "",
        "backends[1].passive_ports",
        'required in mode = "routed"',
    ),
    (
        'name = "ftp-serv01"',
        'name = "ftp-serv00"',
        "backends[1].name",
        "already the name of backends[0]",
    ),
    (
        'address = "127.0.1.2:21"',
        'address = "127.0.1.1:21"',
        "backends[1].address",
        "already backends[0]",
    ),
    ('address = "127.0.1.2:21"', 'address = "127.0.1.2"', "backends[1].address", "not HOST:PORT"),
    ('address = "127.0.1.2:21"', 'address = "127.0.1.2:0"', "backends[1].address", "port must be"),
    (
        'address = "127.0.1.2:21"',
        'address = "bad host!:21"',
        "backends[1].address",
        "not an IP address or host name",
    ),
    (
        'listen = "127.0.0.1:2121"',
        'listen = "localhost:2121"',
        "balancer.listen",
        "not an IP address",
    ),
    (
        'public_address = "127.0.0.1"',
        'public_address = "2.2.2"',
        "balancer.public_address",
        "does not appear to be",
    ),
    ('send_proxy = "v2"', 'send_proxy = "v3"', "balancer.send_proxy", "not one of off, v1, v2"),
    (
        'send_proxy = "v2"',
        'send_proxy = "v2"\nmode = "nat"',
        "balancer.mode",
        "not one of routed, inspect",
    ),
    (
        'send_proxy = "v2"',
        'send_proxy = "v2"\nbalance = "fastest"',
        "balancer.balance",
        "not one of",
    ),
    (
        'send_proxy = "v2"',
        'send_proxy = "v2"\nbalance = "user"',
        "balancer.balance",
        'needs mode = "inspect"',
    ),
    (
        'send_proxy = "v2"',
        'send_proxy = "v2"\nmax_sessions = "lots"',
        "balancer.max_sessions",
        "expected an integer",
    ),
    (
        'send_proxy = "v2"',
        'send_proxy = "v2"\nidle_timeout = -1',
        "balancer.idle_timeout",
        "out of range",
    ),
    (
        'send_proxy = "v2"',
        'send_proxy = "v2"\nlisten_port = 21',
        "balancer.listen_port",
        "unknown key",
    ),
    ("weight = 3", "weight = 3\ncolour = 1", "backends[1].colour", "unknown key"),
    ("weight = 3", "weight = 1000", "backends[1].weight", "out of range"),
    ("weight = 3", "weight = true", "backends[1].weight", "expected an integer"),
    (
        "send_proxy_data = true",
        'send_proxy_data = "yes"',
        "backends[1].send_proxy_data",
        "expected true or false",
    ),
    ("[balancer]", '[health]\ncheck = "http"\n[balancer]', "health.check", "not one of tcp, ftp"),
    ("[balancer]", "[health]\nrise = 0\n[balancer]", "health.rise", "out of range"),
    ("[balancer]", "[helth]\nrise = 1\n[balancer]", "helth", "unknown key"),
    ("[balancer]", '[admin]\nlisten = "nowhere"\n[balancer]', "admin.listen", "not HOST:PORT"),
    ("[balancer]", '[tls]\nbackend_tls = "yes"\n[balancer]', "tls.backend_tls", "not one of"),
    ('send_proxy = "v2"', 'workers = "many"', "balancer.workers", 'a number or "auto"'),
    ('send_proxy = "v2"', "workers = 0", "balancer.workers", "out of range"),
    (
        "[balancer]",
        '[tls]\nbackend_ca = "/nonexistent/ca.pem"\n[balancer]',
        "tls.backend_ca",
        "cannot read /nonexistent/ca.pem",
    ),
    (
        "[balancer]",
        '[tls]\nbackend_ca = "/etc/passwd"\n[balancer]',
        "tls.backend_ca",
        "not a usable CA file",
    ),
    ('name = "ftp-serv01"\n', "", "backends[1].name", "required"),
]


@pytest.mark.parametrize(("old", "new", "field", "reason"), BAD)
def test_bad_config_names_field_and_reason(
    tmp_path: Path, old: str, new: str, field: str, reason: str
) -> None:
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert err.file == str(path)
    assert err.field == field
    assert reason in err.reason
    assert str(err).startswith(f"{path}: {field}: ")


def test_no_backends(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="backends: at least one"):
        load_config(write(tmp_path, "[balancer]\n"))


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[balancer\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")


def test_inspect_needs_a_public_address_with_a_wildcard_listen(tmp_path: Path) -> None:
    text = '[balancer]\nmode = "inspect"\n[[backends]]\nname="a"\naddress="10.0.0.1:21"\n'
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert info.value.field == "balancer.public_address"


def ftplb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ftplb", *args], capture_output=True, text=True, timeout=60
    )


def test_check_prints_the_plan(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    done = ftplb("check", "-c", str(path))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"{path}: OK" in out
    assert "control: listen on 127.0.0.1:2121; clients are told 127.0.0.1" in out
    assert "data 127.0.0.1:30000-30099 (100 ports) -> 127.0.1.1, same port" in out
    assert "data 127.0.0.1:30100-30199 (100 ports) -> 127.0.1.2, same port, PROXY v2 on data" in out
    assert "data listeners: 200 ports on 127.0.0.1" in out
    assert "workers: " in out


def test_workers(tmp_path: Path) -> None:
    text = GOOD.replace('send_proxy = "v2"', 'send_proxy = "v2"\nworkers = 3', 1)
    assert load_config(write(tmp_path, text)).balancer.worker_count() == 3
    auto = load_config(write(tmp_path, GOOD)).balancer
    assert auto.workers == 0 and auto.worker_count() == (os.cpu_count() or 1)
    inspect = (
        '[balancer]\nmode = "inspect"\nlisten = "127.0.0.1:21"\nworkers = 4\n'
        'data_ports = "40000-40002"\n[[backends]]\nname = "a"\naddress = "10.0.0.1:21"\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, inspect))
    assert info.value.field == "balancer.data_ports"
    assert "fewer ports than workers (4)" in info.value.reason
    kernel = GOOD.replace('send_proxy = "v2"', 'data_path = "kernel"\nworkers = 2', 1)
    with pytest.raises(ConfigError, match=r"balancer\.workers: the kernel data path runs one"):
        load_config(write(tmp_path, kernel))
    assert (
        load_config(
            write(tmp_path, GOOD.replace('send_proxy = "v2"', 'data_path = "kernel"', 1))
        ).balancer.worker_count()
        == 1
    )


def test_check_and_run_exit_2_with_field(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('"30100-30199"', '"30050-30149"'))
    expected = f"{path}: backends[1].passive_ports: 30050-30149 overlaps backends[0] (30000-30099)"
    for command in ("check", "run"):
        done = ftplb(command, "-c", str(path))
        assert done.returncode == 2
        assert done.stderr.strip() == expected
        assert done.stdout == ""
