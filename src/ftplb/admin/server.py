"""The admin HTTP server (aiohttp): JSON API, Prometheus metrics, status page.

Reading is open; every call that changes state needs `Authorization: Bearer
<token>` when `[admin] token` is set (401 otherwise).
"""

from __future__ import annotations

import hmac
import logging
import time
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ftplb import __version__
from ftplb.admin.metrics import registry_for
from ftplb.balancer.pool import Backend

if TYPE_CHECKING:
    from ftplb.app import Runtime

log = logging.getLogger("ftplb.admin")
STATIC = resources.files("ftplb.admin") / "static"


def backend_json(b: Backend) -> dict[str, Any]:
    return {
        "name": b.name,
        "address": str(b.config.address),
        "state": b.state,
        "up": b.up,
        "check": {
            "status": b.last_check,
            "last_change": b.last_change or None,
            "failures": b.check_failures_total,
        },
        "sessions": {"current": b.sessions, "total": b.sessions_total},
        "bytes": {"in": b.bytes_in, "out": b.bytes_out},
        "data_connections": b.data_connections_total,
        "weight": b.weight,
        "draining": b.draining,
        "disabled": b.disabled,
        "passive_ports": str(b.config.passive_ports) if b.config.passive_ports else None,
    }


class AdminServer:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.registry = registry_for(runtime)
        self.runner: web.AppRunner | None = None
        app = web.Application(middlewares=[self._auth])
        app.add_routes(
            [
                web.get("/", self.index),
                web.get("/static/{name}", self.static),
                web.get("/metrics", self.metrics),
                web.get("/api/status", self.status),
                web.get("/api/backends", self.backends),
                web.post("/api/backends/{name}/{action:drain|enable|disable}", self.action),
                web.put("/api/backends/{name}/weight", self.weight),
                web.post("/api/reload", self.reload),
            ]
        )
        self.app = app

    async def start(self) -> None:
        listen = self.runtime.config.admin.listen
        assert listen is not None
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, listen.host, listen.port, reuse_address=True)
        await site.start()
        log.info("admin API on http://%s/", listen)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    # -- auth

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        token = self.runtime.config.admin.token
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
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def status(self, request: web.Request) -> web.Response:
        rt = self.runtime
        b = rt.config.balancer
        return web.json_response(
            {
                "version": __version__,
                "mode": b.mode,
                "balance": rt.pool.policy_name,
                "listen": str(b.listen),
                "sessions": rt.balancer.control_sessions,
                "reloads": rt.reloads,
                "token_required": bool(rt.config.admin.token),
                "time": time.time(),
            }
        )

    async def backends(self, request: web.Request) -> web.Response:
        pool = self.runtime.pool
        return web.json_response([backend_json(b) for b in [*pool.backends, *pool.retired]])

    def _find(self, request: web.Request) -> Backend:
        backend = self.runtime.backend(request.match_info["name"])
        if backend is None:
            raise web.HTTPNotFound(
                text='{"error": "no such backend"}', content_type="application/json"
            )
        return backend

    async def action(self, request: web.Request) -> web.Response:
        backend = self._find(request)
        action = request.match_info["action"]
        if action == "drain":
            self.runtime.set_drain(backend.name, True)
        elif action == "enable":
            self.runtime.set_drain(backend.name, False)
        else:
            self.runtime.set_disabled(backend.name)
        return web.json_response(backend_json(backend))

    async def weight(self, request: web.Request) -> web.Response:
        backend = self._find(request)
        try:
            body = await request.json()
            weight = body["weight"] if isinstance(body, dict) else body
            if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 256:
                raise ValueError
        except (ValueError, KeyError):
            return web.json_response(
                {"error": 'send {"weight": N} with N from 0 to 256'}, status=400
            )
        self.runtime.set_weight(backend.name, weight)
        return web.json_response(backend_json(backend))

    async def reload(self, request: web.Request) -> web.Response:
        ok, message = await self.runtime.reload()
        return web.json_response({"ok": ok, "message": message}, status=200 if ok else 400)
