"""DataPorts: inspect mode's own passive ports, shared between client addresses."""

from __future__ import annotations

from ftplb.balancer.dataports import DataPorts, client_key
from ftplb.config import PortRange


def test_one_client_gets_every_port_once_round_robin() -> None:
    ports = DataPorts(PortRange(5000, 5003))
    assert [ports.take("198.51.100.1") for _ in range(3)] == [5000, 5001, 5002]
    assert ports.release(5001, "198.51.100.1") is True  # nobody else waits there
    # The rotation goes on from where it was; a released port comes back in its turn.
    assert ports.take("198.51.100.1") == 5003
    assert ports.take("198.51.100.1") == 5001
    assert ports.take("198.51.100.1") is None  # it waits on all four now
    assert ports.taken == 4


def test_other_clients_share_the_ports() -> None:
    ports = DataPorts(PortRange(5000, 5001))
    clients = [f"198.51.100.{i}" for i in range(1, 13)]
    got = [ports.take(c) for c in clients]
    assert set(got) == {5000, 5001}  # two ports, twelve clients
    assert ports.taken == 12 and ports.ports_in_use == 2
    assert ports.waiting_on(5000) + ports.waiting_on(5001) == 12
    # A second request of the same address goes to the other port...
    first = got[0]
    second = ports.take(clients[0])
    assert second is not None and second != first
    # ...and a third has none left.
    assert ports.take(clients[0]) is None


def test_release_says_when_a_port_is_free_of_waiters() -> None:
    ports = DataPorts(PortRange(7000, 7000))
    assert ports.take("192.0.2.1") == 7000 and ports.take("192.0.2.2") == 7000
    assert ports.release(7000, "192.0.2.1") is False  # 192.0.2.2 still waits
    assert ports.waits(7000, "192.0.2.2") and not ports.waits(7000, "192.0.2.1")
    assert ports.release(7000, "192.0.2.2") is True
    assert ports.release(7000, "192.0.2.2") is True  # twice: no harm, still free
    assert ports.taken == 0


def test_skipped_ports_are_passed_over() -> None:
    ports = DataPorts(PortRange(6000, 6002))
    assert ports.take("192.0.2.1", frozenset({6000, 6001})) == 6002
    assert ports.take("192.0.2.1", frozenset({6000, 6001})) is None


def test_an_ipv4_mapped_address_is_the_same_client() -> None:
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_key("2001:db8::1") == "2001:db8::1"
    ports = DataPorts(PortRange(6000, 6000))
    assert ports.take("::ffff:192.0.2.7") == 6000
    assert ports.take("192.0.2.7") is None
