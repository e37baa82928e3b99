"""accept_proxy's networks: which peers owe a PROXY header."""

from __future__ import annotations

from ftplb.io.proxied import Networks


def test_membership_by_network_including_mapped_and_scoped_addresses() -> None:
    nets = Networks(["10.0.0.0/8", "fd00::/8"])
    assert "10.1.2.3" in nets
    assert "::ffff:10.1.2.3" in nets  # a dual-stack listener's view of an IPv4 peer
    assert "fd00::7%eth0" in nets
    assert "192.168.1.1" not in nets
    assert "not an address" not in nets
    assert None not in nets
    assert nets


def test_a_reload_replaces_the_list_and_an_empty_list_is_no_door() -> None:
    nets = Networks(["10.0.0.0/8"])
    nets.update([])
    assert not nets and "10.1.2.3" not in nets
    nets.update(["192.168.0.0/16"])
    assert "192.168.4.4" in nets
