"""The admin HTTP server (aiohttp): JSON API, Prometheus metrics, status page.

Reading is open; every call that changes state needs `Authorization: Bearer
<token>` when `[admin] token` is set (401 otherwise).
"""

from __future__ import annotations

import hmac
import logging
import time
from importlib import resources
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from ftplb import __version__
from ftplb.admin.metrics import render
from ftplb.admin.source import Source

log = logging.getLogger("ftplb.admin")
STATIC = resources.files("ftplb.admin") / "static"


class AdminServer:
    def __init__(self, source: Source) -> None:
        self.source = source
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
        listen = self.source.config.admin.listen
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
        return web.json_response(
            {
                "version": __version__,
                **snap["status"],
                "token_required": bool(self.source.config.admin.token),
                "time": time.time(),
            }
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
        except (ValueError, KeyError):
            return web.json_response(
                {"error": 'send {"weight": N} with N from 0 to 256'}, status=400
            )
        return self._found(await self.source.weight(request.match_info["name"], weight))

    async def reload(self, request: web.Request) -> web.Response:
        ok, message = await self.source.reload()
        return web.json_response({"ok": ok, "message": message}, status=200 if ok else 400)
