"""Balancing policies: one registry, each a small object with `choose`.

Every policy honours `weight`. `source` (and later `user`) use weighted
rendezvous hashing: the same key lands on the same backend while it is up, and
when a backend leaves only the keys it held move.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar


class Candidate(Protocol):
    """What a policy needs to know of a backend (balancer/pool.py's Backend)."""

    @property
    def name(self) -> str: ...

    weight: int

    @property
    def load(self) -> int:
        """Current sessions, all workers."""

    @property
    def picks(self) -> int:
        """Sessions given to it so far by the other workers too (0 with one worker)."""


B = TypeVar("B", bound=Candidate)


class Policy(Protocol):
    def choose(self, candidates: Sequence[B], key: str) -> B: ...


class LeastConn:
    """Fewest current sessions per unit of weight (all workers' sessions); ties go
    to the backend given fewest sessions by all workers, then round-robin."""

    def __init__(self) -> None:
        self._seq = 0
        self._last_pick: dict[str, int] = {}

    def choose(self, candidates: Sequence[B], key: str) -> B:
        best = min(
            candidates,
            key=lambda b: (b.load / b.weight, b.picks / b.weight, self._last_pick.get(b.name, -1)),
        )
        self._seq += 1
        self._last_pick[best.name] = self._seq
        return best


class RoundRobin:
    """Smooth weighted round-robin (as nginx): weights 5,1,1 give a,a,b,a,c,a,a.
    With several workers: the backend given fewest sessions per unit of weight."""

    def __init__(self, shared: bool = False) -> None:
        self._current: dict[str, int] = {}
        self._shared = shared

    def choose(self, candidates: Sequence[B], key: str) -> B:
        if self._shared:
            # Several workers: one rotation for all of them, from the shared count
            # of sessions each backend was given (fewest per unit of weight next).
            return min(candidates, key=lambda b: (b.picks + 1) / b.weight)
        total = 0
        best: B | None = None
        for b in candidates:
            current = self._current.get(b.name, 0) + b.weight
            self._current[b.name] = current
            total += b.weight
            if best is None or current > self._current[best.name]:
                best = b
        assert best is not None
        self._current[best.name] -= total
        return best


def rendezvous_score(key: str, name: str, weight: int) -> float:
    """Weighted highest-random-weight score (Schindelhauer & Schomaker)."""
    digest = hashlib.blake2b(f"{key}\0{name}".encode(), digest_size=8).digest()
    # A uniform value in (0, 1): never 0, so the log is finite.
    unit = (int.from_bytes(digest, "big") + 1) / (2**64 + 1)
    return -weight / math.log(unit)


def rendezvous_pick(candidates: Sequence[B], key: str) -> B:
    return max(candidates, key=lambda b: (rendezvous_score(key, b.name, b.weight), b.name))


class Source:
    """The client address picks the backend (rendezvous hashing)."""

    def choose(self, candidates: Sequence[B], key: str) -> B:
        return rendezvous_pick(candidates, key)


class Random:
    """Weighted random choice."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def choose(self, candidates: Sequence[B], key: str) -> B:
        return self._rng.choices(candidates, weights=[b.weight for b in candidates])[0]


POLICIES: dict[str, Callable[[bool], Policy]] = {
    "leastconn": lambda shared: LeastConn(),
    "roundrobin": RoundRobin,
    "source": lambda shared: Source(),
    "random": lambda shared: Random(),
    # "user" hashes the login name the same way; the caller passes it as the key.
    "user": lambda shared: Source(),
}


def make_policy(name: str, shared: bool = False) -> Policy:
    """The policy called `name`; `shared`: several workers choose together."""
    try:
        return POLICIES[name](shared)
    except KeyError:
        raise ValueError(f"unknown balance policy {name!r}") from None
