"""The admin HTTP server (aiohttp): JSON API, Prometheus metrics, status page.

Reading is open; every call that changes state needs `Authorization: Bearer
<token>` when `[admin] token` is set (401 otherwise).

A browser must not be a way in, token or not: every request's Host must be an
IP literal, `localhost` or one of `[admin] allowed_hosts` (421; a DNS-rebinding
page reaches us under its own name), and a changing call (anything but GET and
HEAD) must be JSON (415; an HTML form or a "simple" cross-site fetch cannot
send application/json without a CORS preflight, which we never grant) and
carry no foreign Origin (403).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import re
import time
import urllib.parse
from importlib import resources
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from ftplb import __version__
from ftplb.admin.history import INTERVAL, History
from ftplb.admin.metrics import render
from ftplb.admin.source import Source

log = logging.getLogger("ftplb.admin")
STATIC = resources.files("ftplb.admin") / "static"
MAX_BODY = 64 * 1024
"""Request bodies beyond this get 413: the API's bodies are a few bytes."""
READING = ("GET", "HEAD")
DEFAULT_PORTS = {"http": 80, "https": 443}
# A Host header: [IPv6]:port, or a name or IPv4 with an optional port.
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^\[\]:]+)(?::([0-9]{1,5}))?")


class AdminServer:
    def __init__(self, source: Source) -> None:
        self.source = source
        self.runner: web.AppRunner | None = None
        self.charts = History()
        self._sampler: asyncio.Task[None] | None = None
        app = web.Application(middlewares=[self._guard, self._auth], client_max_size=MAX_BODY)
        app.on_response_prepare.append(_no_framing)
        app.add_routes(
            [
                web.get("/", self.index),
                web.get("/static/{name}", self.static),
                web.get("/metrics", self.metrics),
                web.get("/healthz", self.healthz),
                web.get("/api/status", self.status),
                web.get("/api/backends", self.backends),
                web.post("/api/backends/{name}/{action:drain|enable|disable}", self.action),
                web.put("/api/backends/{name}/weight", self.weight),
                web.post("/api/reload", self.reload),
                web.get("/api/sessions", self.sessions),
                web.delete("/api/sessions/{id}", self.close_session),
                web.get("/api/bans", self.bans),
                web.delete("/api/bans/{address}", self.lift_ban),
                web.get("/api/events", self.events),
                web.get("/api/history", self.history),
            ]
        )
        self.app = app

    async def start(self) -> None:
        listen = self.source.config.admin.listen
        assert listen is not None
        self._sampler = asyncio.create_task(self._sample(), name="admin history")
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, listen.host, listen.port, reuse_address=True)
        await site.start()
        log.info("admin API on http://%s/", listen)

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        if self.runner is not None:
            await self.runner.cleanup()

    async def _sample(self) -> None:
        while True:
            try:
                self.charts.sample(await self.source.snapshot(), time.time())
            except Exception:  # a worker gone mid-question: the next sample will do
                log.debug("history sample failed", exc_info=True)
            await asyncio.sleep(INTERVAL)

    # -- browsers, then auth

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        host = request.headers.get("Host")
        # No Host at all is no browser (every browser sends one), so no rebinding.
        if host is not None and not host_allowed(host, self.source.config.admin.allowed_hosts):
            return _refuse(
                request,
                421,
                f"Host {host!r} is not an address of this server "
                "(name it in [admin] allowed_hosts)",
            )
        if request.method not in READING:
            origin = request.headers.get("Origin")
            if origin is not None and not same_origin(origin, host):
                return _refuse(request, 403, f"Origin {origin!r} is not this server")
            if request.content_type != "application/json":
                return _refuse(request, 415, "a changing call must send application/json")
        response: web.StreamResponse = await handler(request)
        return response

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        token = self.source.config.admin.token
        if request.method not in ("GET", "HEAD") and token:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                log.warning("admin: %s %s refused (no valid token)", request.method, request.path)
                return web.json_response(
                    {"error": "a valid bearer token is required"},
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="ftplb"'},
                )
        response: web.StreamResponse = await handler(request)
        return response

    # -- pages and data

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(text=(STATIC / "index.html").read_text(), content_type="text/html")

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        types = {".css": "text/css", ".js": "application/javascript"}
        suffix = name[name.rfind(".") :] if "." in name else ""
        item = STATIC / name
        if suffix not in types or "/" in name or not item.is_file():
            raise web.HTTPNotFound()
        return web.Response(text=item.read_text(), content_type=types[suffix])

    async def metrics(self, request: web.Request) -> web.Response:
        body = render(await self.source.snapshot())
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def status(self, request: web.Request) -> web.Response:
        snap = await self.source.snapshot()
        status = dict(snap["status"])
        moved = snap["counters"].get("cluster_data")
        if status.get("cluster") and moved is not None:  # summed over the workers
            status["cluster"] = {**status["cluster"], "data_connections": moved}
        return web.json_response(
            {
                "version": __version__,
                **status,
                "token_required": bool(self.source.config.admin.token),
                "time": time.time(),
                "data_ports": snap["counters"].get("data_ports"),
            }
        )

    async def healthz(self, request: web.Request) -> web.Response:
        """Readiness and liveness (Kubernetes probes, keepalived's track script):
        200 while at least one backend can take a new session, else 503."""
        backends = (await self.source.snapshot())["backends"]
        up = sum(1 for b in backends if b["state"] == "UP" and b["weight"] > 0)
        return web.json_response(
            {"status": "ok" if up else "no backend up", "up": up, "backends": len(backends)},
            status=200 if up else 503,
        )

    async def backends(self, request: web.Request) -> web.Response:
        return web.json_response((await self.source.snapshot())["backends"])

    @staticmethod
    def _found(backend: dict[str, Any] | None) -> web.Response:
        if backend is None:
            raise web.HTTPNotFound(
                text='{"error": "no such backend"}', content_type="application/json"
            )
        return web.json_response(backend)

    async def action(self, request: web.Request) -> web.Response:
        name, action = request.match_info["name"], request.match_info["action"]
        return self._found(await self.source.act(name, action))

    async def weight(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            weight = body["weight"] if isinstance(body, dict) else body
            if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 256:
                raise ValueError
        except web.HTTPRequestEntityTooLarge:
            return web.json_response({"error": "the body is over 64 KiB"}, status=413)
        except (ValueError, KeyError, RecursionError):  # json nests recursively
            return web.json_response(
                {"error": 'send {"weight": N} with N from 0 to 256'}, status=400
            )
        return self._found(await self.source.weight(request.match_info["name"], weight))

    async def reload(self, request: web.Request) -> web.Response:
        ok, message = await self.source.reload()
        return web.json_response({"ok": ok, "message": message}, status=200 if ok else 400)

    # -- the operator's view: sessions, bans, events

    async def sessions(self, request: web.Request) -> web.Response:
        """Every worker's sessions, oldest first; `?limit=` (at most MAX_LIMIT) and
        `?offset=` page them, `X-Total-Count` says how many there are."""
        limit = _int_param(request, "limit", MAX_LIMIT)
        offset = _int_param(request, "offset", 0)
        every = sorted(await self.source.sessions(), key=lambda s: (s["started"], s["id"]))
        page = every[offset : offset + min(limit, MAX_LIMIT)]
        return web.json_response(page, headers={"X-Total-Count": str(len(every))})

    async def close_session(self, request: web.Request) -> web.Response:
        text = request.match_info["id"]
        if not text.isascii() or not text.isdigit() or len(text) > 18:
            return _not_found("no such session")
        if not await self.source.close_session(int(text)):
            return _not_found("no such session")
        return web.json_response({"closed": int(text)})

    async def bans(self, request: web.Request) -> web.Response:
        return web.json_response(sorted(await self.source.bans(), key=lambda b: b["until"]))

    async def lift_ban(self, request: web.Request) -> web.Response:
        text = request.match_info["address"]
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            return web.json_response({"error": f"{text!r} is not an IP address"}, status=400)
        if not await self.source.lift_ban(str(address)):
            return _not_found(f"{address} is not banned")
        return web.json_response({"lifted": str(address)})

    async def events(self, request: web.Request) -> web.Response:
        limit = min(_int_param(request, "limit", MAX_LIMIT), MAX_LIMIT)
        return web.json_response((await self.source.events())[-limit:] if limit else [])

    async def history(self, request: web.Request) -> web.Response:
        return web.json_response(self.charts.series())


MAX_LIMIT = 1000
"""The most sessions or events one answer holds (a huge ?limit= is capped)."""


def _int_param(request: web.Request, name: str, default: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or len(text) > 12:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"{name}: a whole number, not {text!r}"}),
            content_type="application/json",
        )
    return int(text)


def _not_found(reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=404)


def _refuse(request: web.Request, status: int, reason: str) -> web.Response:
    log.warning("admin: %s %s refused: %s", request.method, request.raw_path, reason)
    return web.json_response({"error": reason}, status=status)


async def _no_framing(request: web.Request, response: web.StreamResponse) -> None:
    """No page of another site may frame ours and have the operator click Drain."""
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = "frame-ancestors 'none'"
    response.headers["X-Content-Type-Options"] = "nosniff"


def _split_host(value: str) -> tuple[str, int | None] | None:
    """A Host header's (host, port): lower case, IPv6 without brackets; None if malformed."""
    m = _HOST.fullmatch(value)
    if m is None:
        return None
    return m.group(1).strip("[]").lower(), int(m.group(2)) if m.group(2) else None


def _is_ip(host: str, version: int) -> bool:
    try:
        return ipaddress.ip_address(host).version == version
    except ValueError:
        return False


def host_allowed(value: str, allowed_hosts: tuple[str, ...]) -> bool:
    """An IP literal (DNS rebinding needs a name), localhost, or a configured name."""
    split = _split_host(value)
    if split is None:
        return False
    host = split[0]
    if value.startswith("["):
        return _is_ip(host, 6)
    return _is_ip(host, 4) or host == "localhost" or host in allowed_hosts


def same_origin(origin: str, host: str | None) -> bool:
    """Whether `origin` (scheme://host[:port]) is what the Host header names."""
    try:
        parts = urllib.parse.urlsplit(origin)
        origin_port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return False
    split = _split_host(host) if host is not None else None
    if split is None or parts.hostname is None or origin_port is None or parts.username:
        return False
    name, port = split
    return _canonical(parts.hostname) == _canonical(name) and origin_port == (
        port or DEFAULT_PORTS[parts.scheme]
    )


def _canonical(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host.lower()
