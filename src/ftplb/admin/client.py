"""`ftplb status` / `drain` / `enable` / `disable`: a small client of the admin API."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import urllib.error
import urllib.request
from typing import Any

from ftplb.config import load_config
from ftplb.errors import ConfigError

DEFAULT_ADMIN = "http://127.0.0.1:9021"


class AdminError(Exception):
    pass


class AdminClient:
    def __init__(self, base: str, token: str = "") -> None:
        self.base = base.rstrip("/")
        self.token = token

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AdminClient:
        base, token = args.admin, args.token
        if args.config:
            try:
                config = load_config(args.config)
            except ConfigError as exc:
                raise AdminError(str(exc)) from None
            if base is None and config.admin.listen is not None:
                base = f"http://{config.admin.listen}"
            token = token or config.admin.token
        base = base or DEFAULT_ADMIN
        if "://" not in base:
            base = f"http://{base}"
        return cls(base, token or os.environ.get("FTPLB_TOKEN", ""))

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        if method not in ("GET", "HEAD") and body is None:
            body = {}  # the server takes changing calls only as JSON
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            with contextlib.suppress(ValueError, AttributeError):
                detail = json.loads(detail).get("error", detail)
            raise AdminError(f"{method} {path}: HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AdminError(f"cannot reach the admin API at {self.base}: {reason}") from None

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/api/status")
        return result

    def backends(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/api/backends")
        return result

    def action(self, name: str, action: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"/api/backends/{name}/{action}")
        return result


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def print_status(status: dict[str, Any], backends: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    colours = {"UP": "green", "DOWN": "red", "DRAIN": "yellow", "MAINT": "bright_black"}
    table = Table(
        title=f"ftplb {status['version']}: {status['mode']} mode, {status['balance']}, "
        f"{status['sessions']} sessions"
    )
    for column in ("backend", "address", "state", "last check"):
        table.add_column(column)
    for column in ("sessions", "total", "in", "out", "weight"):
        table.add_column(column, justify="right")
    for b in backends:
        state = b["state"]
        table.add_row(
            b["name"],
            b["address"],
            f"[{colours.get(state, 'white')}]{state}[/]",
            b["check"]["status"],
            str(b["sessions"]["current"]),
            str(b["sessions"]["total"]),
            _size(b["bytes"]["in"]),
            _size(b["bytes"]["out"]),
            str(b["weight"]),
        )
    Console().print(table)
