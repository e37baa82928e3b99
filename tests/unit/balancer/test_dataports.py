"""DataPorts: inspect mode's own passive ports, handed out round-robin."""

from __future__ import annotations

from ftplb.balancer.dataports import DataPorts
from ftplb.config import PortRange


def test_round_robin_skips_ports_taken_and_wraps() -> None:
    ports = DataPorts(PortRange(5000, 5003))
    assert [ports.take() for _ in range(3)] == [5000, 5001, 5002]
    ports.release(5001)
    # The rotation goes on from where it was; a released port comes back in its turn.
    assert ports.take() == 5003
    assert ports.take() == 5001
    assert ports.take() is None  # all four are ours now
    assert ports.taken == 4


def test_a_port_is_never_handed_out_twice_until_released() -> None:
    ports = DataPorts(PortRange(6000, 6009))
    held = {ports.take() for _ in range(10)}
    assert held == set(range(6000, 6010))
    for port in (6003, 6007):
        ports.release(port)
    assert {ports.take(), ports.take()} == {6003, 6007}
    ports.release(6100)  # not ours: ignored
    assert ports.take() is None
