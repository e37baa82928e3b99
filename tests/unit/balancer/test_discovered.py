"""Discovered backends: a template and the addresses DNS gave it become backends."""

from __future__ import annotations

from ftplb.balancer.discovered import expand
from ftplb.balancer.pool import Pool
from ftplb.config import BackendConfig, HostPort

TEMPLATE = BackendConfig(
    name="pool", address=HostPort("ftp-pool.svc", 2121), weight=3, discover="dns"
)
STATIC = BackendConfig(name="old", address=HostPort("10.0.0.9", 21))


def test_every_address_is_a_backend_named_after_it() -> None:
    got = expand([STATIC, TEMPLATE], {"pool": ["10.0.0.12", "10.0.0.7", "fd00::1", "10.0.0.7"]})
    assert [(b.name, str(b.address), b.weight, b.discover) for b in got] == [
        ("old", "10.0.0.9:21", 1, ""),
        ("pool-10.0.0.7", "10.0.0.7:2121", 3, ""),  # numeric order, duplicates once
        ("pool-10.0.0.12", "10.0.0.12:2121", 3, ""),
        ("pool-fd00::1", "[fd00::1]:2121", 3, ""),
    ]


def test_a_template_with_nothing_found_is_no_backend() -> None:
    assert expand([TEMPLATE, STATIC], {}) == (STATIC,)


def test_the_pool_keeps_what_stays_adds_what_comes_and_drains_what_goes() -> None:
    pool = Pool(expand([TEMPLATE], {"pool": ["10.0.0.1", "10.0.0.2"]}), "leastconn")
    first = pool.by_name["pool-10.0.0.1"]
    first.up = True
    pool.assign(first)
    added, retired = pool.update(
        expand([TEMPLATE], {"pool": ["10.0.0.1", "10.0.0.3"]}), "leastconn"
    )
    assert [b.name for b in added] == ["pool-10.0.0.3"]
    assert [b.name for b in retired] == ["pool-10.0.0.2"]
    assert pool.by_name["pool-10.0.0.1"] is first and first.up  # its state and session stay
    assert not pool.by_name["pool-10.0.0.3"].up  # new: down until its health check
