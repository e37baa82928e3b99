"""Rise/fall hysteresis for health checks: pure logic, no I/O, no clock."""

from __future__ import annotations


class HealthTracker:
    """Turns a stream of check results into up/down state changes.

    The first result decides the initial state at once (the balancer runs one
    round before it accepts clients); after that a backend needs `rise`
    consecutive successes to come up and `fall` consecutive failures to go down.
    """

    def __init__(self, rise: int, fall: int) -> None:
        self.rise = rise
        self.fall = fall
        self.up: bool | None = None
        self._streak = 0  # consecutive results that disagree with `up`

    def record(self, ok: bool) -> bool:
        """Record one result; True when the state changed."""
        if self.up is None:
            self.up = ok
            return True
        if ok == self.up:
            self._streak = 0
            return False
        self._streak += 1
        if self._streak >= (self.rise if ok else self.fall):
            self.up = ok
            self._streak = 0
            return True
        return False
