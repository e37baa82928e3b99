"""Failed-login bans per client address: pure state, `now` passed in."""

from __future__ import annotations

from collections import deque


class LoginGuard:
    """After `max_failures` failed logins within `window` seconds an address is
    banned for `ban_time` seconds. `max_failures = 0` turns banning off."""

    def __init__(self, max_failures: int, window: float, ban_time: float) -> None:
        self.max_failures = max_failures
        self.window = window
        self.ban_time = ban_time
        self._failures: dict[str, deque[float]] = {}
        self._banned_until: dict[str, float] = {}

    def failed(self, ip: str, now: float) -> bool:
        """Record a failed login; True when this one bans the address."""
        if self.max_failures <= 0:
            return False
        times = self._failures.setdefault(ip, deque())
        times.append(now)
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) >= self.max_failures:
            del self._failures[ip]
            self._banned_until[ip] = now + self.ban_time
            return True
        return False

    def banned(self, ip: str, now: float) -> bool:
        until = self._banned_until.get(ip)
        if until is None:
            return False
        if now >= until:
            del self._banned_until[ip]
            return False
        return True

    def banned_count(self, now: float) -> int:
        return sum(1 for until in self._banned_until.values() if until > now)

    def prune(self, now: float) -> None:
        """Forget stale records (call now and then: memory stays bounded by activity)."""
        for ip in [ip for ip, t in self._failures.items() if not t or t[-1] <= now - self.window]:
            del self._failures[ip]
        for ip in [ip for ip, until in self._banned_until.items() if until <= now]:
            del self._banned_until[ip]
