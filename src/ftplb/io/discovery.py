"""DNS discovery: the names of `discover = "dns"` backends, resolved every
`[discovery] interval` with dnspython's asyncio resolver (A and AAAA).

A lookup that fails (timeout, SERVFAIL, no server) or finds nothing keeps the
last good set: a DNS hiccup never drains a pool. It is logged when it starts
failing and when it recovers, not every round. What the answers mean for the
pool is balancer/discovered.py's business; `changed` is told when they differ.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

from ftplb.config import BackendConfig, Config

log = logging.getLogger("ftplb.discovery")

LOOKUP_LIFETIME = 3.0
"""Seconds one name may take, all retries included (at most the interval)."""

Found = dict[str, tuple[str, ...]]
"""Template backend name -> the addresses its name resolved to."""


class Discovery:
    def __init__(self, config: Config, changed: Callable[[], Awaitable[None]]) -> None:
        self.config = config
        self.changed = changed
        self.found: Found = {}
        self.failing: dict[str, str] = {}
        """Template name -> why its last lookup failed (logged once per streak)."""
        self._task: asyncio.Task[None] | None = None

    @staticmethod
    def wanted(config: Config) -> bool:
        return any(b.discover for b in config.backends)

    def _resolver(self) -> dns.asyncresolver.Resolver:
        servers = self.config.discovery.nameservers
        if not servers:
            return dns.asyncresolver.Resolver()  # /etc/resolv.conf, its search list too
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(s.host, s.port) for s in servers]
        return resolver

    async def lookup(
        self, resolver: dns.asyncresolver.Resolver, b: BackendConfig
    ) -> tuple[str, ...]:
        """Every A and AAAA address of `b`'s name. Raises LookupError with the
        reason when the name gives none."""
        name = b.address.host
        lifetime = min(LOOKUP_LIFETIME, self.config.discovery.interval)
        search = not self.config.discovery.nameservers
        addresses: list[str] = []
        reasons: list[str] = []
        for rdtype in ("A", "AAAA"):
            try:
                answer = await resolver.resolve(
                    name, rdtype, lifetime=lifetime, search=search, raise_on_no_answer=False
                )
            except dns.resolver.NXDOMAIN:
                reasons.append("no such name")
            except dns.exception.Timeout:
                reasons.append(f"no answer in {lifetime:g}s")
            except dns.exception.DNSException as exc:
                reasons.append(str(exc) or type(exc).__name__)
            else:
                addresses += [r.to_text() for r in answer]
        if not addresses:
            raise LookupError("; ".join(dict.fromkeys(reasons)) or "no A or AAAA records")
        return tuple(sorted(set(addresses)))

    async def refresh(self) -> bool:
        """One round over every template. True when what was found changed."""
        templates = [b for b in self.config.backends if b.discover]
        resolver = self._resolver()
        results = await asyncio.gather(
            *(self.lookup(resolver, b) for b in templates), return_exceptions=True
        )
        found: Found = {}
        for b, result in zip(templates, results, strict=True):
            if isinstance(result, LookupError):
                found[b.name] = self.found.get(b.name, ())
                reason = str(result)
                if self.failing.get(b.name) != reason:
                    log.warning(
                        "discovery: %s (%s): %s; keeping the last %d address(es)",
                        b.name,
                        b.address.host,
                        reason,
                        len(found[b.name]),
                    )
                self.failing[b.name] = reason
                continue
            if isinstance(result, BaseException):
                raise result
            if self.failing.pop(b.name, None) is not None:
                log.info("discovery: %s (%s) resolves again", b.name, b.address.host)
            found[b.name] = result
        changed = found != self.found
        for name, addresses in found.items():
            before = set(self.found.get(name, ()))
            new, gone = set(addresses) - before, before - set(addresses)
            if new or gone:
                log.info(
                    "discovery: %s: %d address(es)%s%s",
                    name,
                    len(addresses),
                    f", new {', '.join(sorted(new))}" if new else "",
                    f", gone {', '.join(sorted(gone))} (draining)" if gone else "",
                )
        self.found = found
        return changed

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="discovery")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.discovery.interval)
            try:
                if await self.refresh():
                    await self.changed()
            except Exception:  # a bug here must not stop discovery
                log.exception("discovery round failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
