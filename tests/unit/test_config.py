"""Configuration: every rule names the file, the field and the reason."""

from __future__ import annotations

import os
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
    # A trailing newline slipped past `$` (it matches before a final "\n").
    ('name = "ftp-serv01"', 'name = "ftp-serv01\\n"', "backends[1].name", "use letters"),
    (
        'address = "127.0.1.2:21"',
        'address = "ftp.example.com\\n:21"',
        "backends[1].address",
        "not an IP address or host name",
    ),
    (
        "weight = 3",
        'weight = 3\nimplicit_address = "ftp.example.com\\n:990"',
        "backends[1].implicit_address",
        "not an IP address or host name",
    ),
    (
        'listen = "127.0.0.1:2121"',
        'listen = "[fe80::1%\\n]:2121"',
        "balancer.listen",
        "not an IP address",
    ),
    # Only ASCII digits make a port: a full-width "21" (TOML: "\uff12\uff11")
    # passes str.isdigit() and int().
    (
        'passive_ports = "30100-30199"',
        'passive_ports = "\\uff13\\uff10\\uff11\\uff10\\uff10-\\uff13\\uff10\\uff11\\uff19\\uff19"',
        "backends[1].passive_ports",
        "not a port range",
    ),
    (
        'address = "127.0.1.2:21"',
        'address = "127.0.1.2:\\uff12\\uff11"',
        "backends[1].address",
        "port must",
    ),
    (
        'listen = "127.0.0.1:2121"',
        'listen = "127.0.0.1:\\uff12\\uff11\\uff12\\uff11"',
        "balancer.listen",
        "port must",
    ),
    (
        'send_proxy = "v2"',
        'data_ports = "\\uff14\\uff10\\uff10\\uff10\\uff10-\\uff14\\uff10\\uff19\\uff19\\uff19"',
        "balancer.data_ports",
        "not a port range",
    ),
    # A listener inside a range of data listeners on a host where both bind.
    (
        "[balancer]",
        '[admin]\nlisten = "127.0.0.1:30150"\n[balancer]',
        "admin.listen",
        "port 30150 is inside backends[1].passive_ports (30100-30199) on 127.0.0.1",
    ),
    (
        "[balancer]",
        '[admin]\nlisten = "0.0.0.0:30000"\ntoken = "t"\n[balancer]',
        "admin.listen",
        "port 30000 is inside backends[0].passive_ports (30000-30099) on 127.0.0.1",
    ),
    (
        "[balancer]",
        '[tls]\nimplicit_listen = "127.0.0.1:30099"\n[balancer]',
        "tls.implicit_listen",
        "port 30099 is inside backends[0].passive_ports (30000-30099) on 127.0.0.1",
    ),
    (
        'send_proxy = "v2"',
        'send_proxy = "v2"\ndata_listen = "::1"',
        "balancer.data_listen",
        "::1 is IPv6 but listen (127.0.0.1:2121) is IPv4",
    ),
    # The admin API off loopback needs a token, unless openly intended.
    (
        "[balancer]",
        '[admin]\nlisten = "0.0.0.0:9021"\n[balancer]',
        "admin.token",
        "required when listen (0.0.0.0:9021) is not a loopback address",
    ),
    ("[balancer]", '[admin]\nlisten = "[::]:9021"\n[balancer]', "admin.token", "required"),
    ("[balancer]", '[admin]\nlisten = "10.1.2.3:9021"\n[balancer]', "admin.token", "required"),
    (
        "[balancer]",
        '[admin]\nlisten = "127.0.0.1:9021"\nallowed_hosts = ["ok.example", "bad.example\\n"]'
        "\n[balancer]",
        "admin.allowed_hosts",
        "'bad.example\\n' is not a host name",
    ),
    (
        "[balancer]",
        '[admin]\nlisten = "127.0.0.1:9021"\nallowed_hosts = "ok.example"\n[balancer]',
        "admin.allowed_hosts",
        "expected a list",
    ),
    ("[balancer]", "[admin]\ninsecure = 1\n[balancer]", "admin.insecure", "expected true or false"),
    # A NUL in a path: os.access() and open() raise ValueError, not OSError.
    ("[balancer]", '[tls]\ncert = "/etc/a\\u0000b"\n[balancer]', "tls.cert", "a NUL character"),
    ("[balancer]", '[tls]\nkey = "/etc/a\\u0000b"\n[balancer]', "tls.key", "a NUL character"),
    (
        "[balancer]",
        '[tls]\nbackend_ca = "/etc/a\\u0000b"\n[balancer]',
        "tls.backend_ca",
        "a NUL character",
    ),
    ("[balancer]", '[log]\nfile = "/tmp/a\\u0000b"\n[balancer]', "log.file", "a NUL character"),
    ('send_proxy = "v2"', "backlog = -1", "balancer.backlog", "out of range (0 to 1e+06)"),
    ('send_proxy = "v2"', "backlog = 1000001", "balancer.backlog", "out of range"),
    ('send_proxy = "v2"', 'backlog = "max"', "balancer.backlog", "expected an integer"),
]

INSPECT = """
[balancer]
listen = "127.0.0.1:2121"
public_address = "127.0.0.1"
mode = "inspect"
data_ports = "40000-40099"
workers = 1

[[backends]]
name = "a"
address = "127.0.1.1:21"
"""

CLUSTER = '[cluster]\nredis = "redis://127.0.0.1:6379/0"\nadvertise = '

BAD_INSPECT = [
    (
        "workers = 1",
        "workers = 1\n" + CLUSTER + '"0.0.0.0:2100"',
        "cluster.advertise",
        "other nodes connect here",
    ),
    (
        "workers = 1",
        "workers = 1\n" + CLUSTER + '"127.0.0.1:40010"',
        "cluster.advertise",
        "port 40010 is inside balancer.data_ports",
    ),
    (
        "workers = 1",
        "workers = 2\n" + CLUSTER + '"127.0.0.1:2120"',
        "cluster.advertise",
        "port 2121 is the control port",
    ),
    (
        "workers = 1",
        "workers = 2\n" + CLUSTER + '"127.0.0.1:65535"',
        "cluster.advertise",
        "worker w listens on port + w, and 65536 is past 65535",
    ),
    (
        "workers = 1",
        'workers = 1\n[cluster]\nadvertise = "127.0.0.1:2100"',
        "cluster.advertise",
        "needs redis",
    ),
    (
        "workers = 1",
        'workers = 1\n[admin]\nlisten = "127.0.0.1:2100"\n' + CLUSTER + '"127.0.0.1:2100"',
        "cluster.advertise",
        "port 2100 is admin.listen (127.0.0.1:2100)",
    ),
    (
        'data_ports = "40000-40099"',
        'data_ports = "2100-2199"',
        "balancer.data_ports",
        "2100-2199 contains the control port 2121 (listen 127.0.0.1:2121)",
    ),
    (
        'listen = "127.0.0.1:2121"',
        'listen = "127.0.0.1:40050"\ndata_listen = "0.0.0.0"',
        "balancer.data_ports",
        "contains the control port 40050",
    ),
    (
        "workers = 1",
        'workers = 1\n[admin]\nlisten = "127.0.0.1:40099"',
        "admin.listen",
        "port 40099 is inside balancer.data_ports (40000-40099) on 127.0.0.1",
    ),
    (
        "workers = 1",
        'workers = 1\n[tls]\nimplicit_listen = "0.0.0.0:40000"',
        "tls.implicit_listen",
        "port 40000 is inside balancer.data_ports (40000-40099) on 127.0.0.1",
    ),
    (
        'listen = "127.0.0.1:2121"',
        'listen = "[::1]:2121"\ndata_listen = "127.0.0.1"',
        "balancer.data_listen",
        "127.0.0.1 is IPv4 but listen ([::1]:2121) is IPv6",
    ),
    # Clouds: accept_proxy, [public_addresses], discovery.
    (
        "workers = 1",
        'workers = 1\naccept_proxy = ["10.0.0.0/8", "10.0.0.0/33"]',
        "balancer.accept_proxy[1]",
        "'10.0.0.0/33' is not a network (CIDR",
    ),
    ("workers = 1", "workers = 1\naccept_proxy = [8]", "balancer.accept_proxy[0]", "got 8"),
    # Transparent mode.
    ("workers = 1", 'workers = 1\nsource = "backend"', "balancer.source", "balancer"),
    ("workers = 1", 'workers = 1\nsource_rules = "none"', "balancer.source_rules", "manual"),
    ("workers = 1", 'workers = 1\naccept_proxy = "10.0.0.0/8"', "balancer.accept_proxy", "list"),
    (
        "workers = 1",
        'workers = 1\n[public_addresses]\n"192.168.0.0/16" = "192.168.1.10"\n"lan" = "10.0.0.1"',
        "public_addresses.lan",
        "'lan' is not a network",
    ),
    (
        "workers = 1",
        'workers = 1\n[public_addresses]\n"192.168.0.0/16" = "gateway"',
        "public_addresses.192.168.0.0/16",
        "'gateway' is not an IP address",
    ),
    (
        'address = "127.0.1.1:21"',
        'address = "127.0.1.1:21"\ndiscover = "dns"',
        "backends[0].discover",
        "127.0.1.1 is an IP address: discovery needs a host name",
    ),
    (
        'address = "127.0.1.1:21"',
        'address = "ftp.internal:21"\ndiscover = "consul"',
        "backends[0].discover",
        "not one of",
    ),
    (
        "workers = 1",
        'workers = 1\n[discovery]\nnameservers = ["127.0.0.1:53", "dns.example"]',
        "discovery.nameservers[1]",
        "an IP address, optionally with :port",
    ),
    ("workers = 1", "workers = 1\n[discovery]\ninterval = 0", "discovery.interval", "range"),
    ("workers = 1", "workers = 1\n[discovery]\nttl = 5", "discovery.ttl", "unknown"),
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


@pytest.mark.parametrize(("old", "new", "field", "reason"), BAD_INSPECT)
def test_bad_inspect_config_names_field_and_reason(
    tmp_path: Path, old: str, new: str, field: str, reason: str
) -> None:
    assert old in INSPECT
    path = write(tmp_path, INSPECT.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.file, info.value.field) == (str(path), field)
    assert reason in info.value.reason


def test_cloud_keys(tmp_path: Path) -> None:
    text = INSPECT.replace(
        'public_address = "127.0.0.1"',
        'public_address = "auto"\naccept_proxy = ["10.0.0.0/8", "2001:db8::1"]',
    ).replace('address = "127.0.1.1:21"', 'address = "ftp-pool.internal:21"\ndiscover = "dns"')
    text += (
        '\n[public_addresses]\n"192.168.0.0/16" = "192.168.1.10"\n"192.168.5.0/24" = "auto"\n'
        '\n[discovery]\nnameservers = ["127.0.0.53", "[::1]:5353"]\ninterval = 2.5\n'
    )
    cfg = load_config(write(tmp_path, text))
    assert cfg.balancer.public_address == "auto"
    assert cfg.balancer.accept_proxy == ("10.0.0.0/8", "2001:db8::1/128")
    # Most specific first.
    assert cfg.public_addresses == (("192.168.5.0/24", "auto"), ("192.168.0.0/16", "192.168.1.10"))
    assert cfg.backends[0].discover == "dns"
    assert [str(n) for n in cfg.discovery.nameservers] == ["127.0.0.53:53", "[::1]:5353"]
    assert cfg.discovery.interval == 2.5
    assert cfg.public_address_for("192.168.5.9", "127.0.0.1") == "127.0.0.1"  # auto: reached
    assert cfg.public_address_for("192.168.7.9", "127.0.0.1") == "192.168.1.10"
    assert cfg.public_address_for("::ffff:192.168.7.9", "127.0.0.1") == "192.168.1.10"
    assert cfg.public_address_for("203.0.113.5", "10.1.1.1") == "10.1.1.1"  # auto


def test_cloud_keys_need_inspect_mode(tmp_path: Path) -> None:
    routed = [
        (GOOD.replace('public_address = "127.0.0.1"', 'public_address = "auto"'), "balancer"),
        (GOOD + '\n[public_addresses]\n"10.0.0.0/8" = "10.0.0.1"\n', "public_addresses"),
        (
            GOOD.replace(
                'address = "127.0.1.1:21"', 'address = "pool.internal:21"\ndiscover = "dns"'
            ),
            "backends[0]",
        ),
    ]
    for text, where in routed:
        with pytest.raises(ConfigError) as info:
            load_config(write(tmp_path, text))
        assert info.value.field.startswith(where), info.value
        assert 'mode = "inspect"' in info.value.reason


def test_listeners_that_cannot_collide_are_accepted(tmp_path: Path) -> None:
    """Same port, but another address, or another family (asyncio binds IPv6
    sockets IPV6_V6ONLY, so [::] and 0.0.0.0 are two sockets)."""
    for admin in ("127.0.0.2:30050", "[::1]:30050"):
        text = GOOD.replace("[balancer]", f'[admin]\nlisten = "{admin}"\n[balancer]', 1)
        assert load_config(write(tmp_path, text)).admin.listen is not None
    text = INSPECT.replace(
        "workers = 1", 'workers = 1\n[admin]\nlisten = "[::]:40010"\ntoken = "t"', 1
    )
    assert load_config(write(tmp_path, text)).admin.listen == HostPort("::", 40010)
    text = INSPECT.replace("workers = 1", 'workers = 1\ndata_listen = "127.0.0.9"', 1)
    assert load_config(write(tmp_path, text)).balancer.data_host == "127.0.0.9"


def test_admin_keys(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD)).admin
    assert (cfg.listen, cfg.token, cfg.allowed_hosts, cfg.insecure) == (None, "", (), False)
    for listen in ("127.0.0.1:9021", "127.1.2.3:9021", "[::1]:9021"):
        text = GOOD.replace("[balancer]", f'[admin]\nlisten = "{listen}"\n[balancer]', 1)
        assert load_config(write(tmp_path, text)).admin.token == ""  # loopback: no token needed
    for extra in ('token = "s3cret"', "insecure = true"):
        text = GOOD.replace("[balancer]", f'[admin]\nlisten = "0.0.0.0:9021"\n{extra}\n[balancer]')
        assert load_config(write(tmp_path, text)).admin.listen == HostPort("0.0.0.0", 9021)
    text = GOOD.replace(
        "[balancer]",
        '[admin]\nlisten = "127.0.0.1:9021"\nallowed_hosts = ["FTPLB.example.com", "lb1"]'
        "\n[balancer]",
    )
    assert load_config(write(tmp_path, text)).admin.allowed_hosts == ("ftplb.example.com", "lb1")


def test_log_file_must_be_a_file_in_a_directory(tmp_path: Path) -> None:
    for value, reason in (
        (str(tmp_path), f"{tmp_path} is a directory"),
        (str(tmp_path / "no" / "ftplb.log"), f"directory {tmp_path / 'no'} does not exist"),
    ):
        path = write(tmp_path, GOOD + f'\n[log]\nfile = "{value}"\n')
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert (info.value.field, info.value.reason) == ("log.file", reason)
    path = write(tmp_path, GOOD + f'\n[log]\nfile = "{tmp_path / "ftplb.log"}"\n')
    assert load_config(path).log.file == str(tmp_path / "ftplb.log")


def test_deeply_nested_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "a = " + "[" * 100000)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.file == str(path) and info.value.field == ""
    assert "nested too deeply" in info.value.reason


def test_backlog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ftplb.config

    b = load_config(write(tmp_path, GOOD)).balancer
    assert b.backlog == 0
    somaxconn = tmp_path / "somaxconn"
    monkeypatch.setattr(ftplb.config.model, "SOMAXCONN", str(somaxconn))
    somaxconn.write_text("8192\n")
    assert b.listen_backlog() == 8192
    somaxconn.write_text("garbage")
    assert b.listen_backlog() == 4096
    somaxconn.unlink()
    assert b.listen_backlog() == 4096
    text = GOOD.replace('send_proxy = "v2"', "backlog = 1024", 1)
    assert load_config(write(tmp_path, text)).balancer.listen_backlog() == 1024


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


def test_transparent_keys(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, INSPECT.replace("workers = 1", 'workers = 1\nsource = "client"'))
    )
    assert (cfg.balancer.source, cfg.balancer.source_rules) == ("client", "ftplb")
    cfg = load_config(
        write(tmp_path, INSPECT.replace("workers = 1", 'workers = 1\nsource_rules = "manual"'))
    )
    assert (cfg.balancer.source, cfg.balancer.source_rules) == ("balancer", "manual")
