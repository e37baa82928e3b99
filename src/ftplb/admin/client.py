"""`ftplb status` / `drain` / `enable` / `disable`: a small client of the admin API."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
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

    def sessions(self, limit: int = 1000) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", f"/api/sessions?limit={limit}")
        return result

    def bans(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/api/bans")
        return result

    def events(self, limit: int = 50) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", f"/api/events?limit={limit}")
        return result


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


COLUMNS = ("backend", "address", "state", "last check", "sessions", "total", "in", "out", "weight")
RIGHT = {"sessions", "total", "in", "out", "weight"}


def status_rows(backends: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    return [
        (
            b["name"],
            b["address"],
            b["state"],
            b["check"]["status"],
            str(b["sessions"]["current"]),
            str(b["sessions"]["total"]),
            _size(b["bytes"]["in"]),
            _size(b["bytes"]["out"]),
            str(b["weight"]),
        )
        for b in backends
    ]


def plain_table(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """Aligned columns, nothing cut: for pipes, scripts and `watch`."""
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]

    def line(values: tuple[str, ...]) -> str:
        cells = [
            v.rjust(w) if columns[i] in RIGHT else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return "\n".join([line(columns), *(line(r) for r in rows)])


def _title(status: dict[str, Any]) -> str:
    return (
        f"ftplb {status['version']}: {status['mode']} mode, {status['balance']}, "
        f"{status['sessions']} sessions"
    )


def print_status(
    status: dict[str, Any], backends: list[dict[str, Any]], plain: bool | None = None
) -> None:
    """A rich table on a terminal; plain aligned columns when piped (or `plain`)."""
    if plain is None:
        plain = not sys.stdout.isatty()
    if plain:
        print(_title(status))
        print(plain_table(COLUMNS, status_rows(backends)))
        return
    from rich.console import Console

    Console().print(backend_table(status, backends))


COLOURS = {"UP": "green", "DOWN": "red", "DRAIN": "yellow", "MAINT": "bright_black"}


def backend_table(status: dict[str, Any], backends: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title=_title(status))
    for column in COLUMNS:
        table.add_column(column, justify="right" if column in RIGHT else "left", no_wrap=True)
    for row in status_rows(backends):
        state = row[2]
        table.add_row(*row[:2], f"[{COLOURS.get(state, 'white')}]{state}[/]", *row[3:])
    return table


def top_view(client: AdminClient, now: float) -> Any:
    """`ftplb top`'s screen: backends, who is connected, who is banned, what changed."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    status, backends = client.status(), client.backends()
    sessions, bans, events = client.sessions(), client.bans(), client.events(10)
    who = Table(title=f"who is connected ({len(sessions)})", title_justify="left")
    for column in ("client", "user", "backend", "age", "in", "out", "transfer"):
        who.add_column(
            column, no_wrap=True, justify="right" if column in ("age", "in", "out") else "left"
        )
    busiest = sorted(sessions, key=lambda s: -(s["bytes_in"] + s["bytes_out"]))[:15]
    for s in busiest:
        t = s["transfer"]
        moving = f"{t['direction']} {t['file'] or ''} {_size(t['bytes'])}" if t else "idle"
        who.add_row(
            s["client"], s["user"] or "-", s["backend"] or "-", f"{now - s['started']:.0f}s",
            _size(s["bytes_in"]), _size(s["bytes_out"]), moving,
        )  # fmt: skip
    banned = Table(title=f"banned ({len(bans)})", title_justify="left")
    banned.add_column("address", no_wrap=True)
    banned.add_column("for", justify="right")
    for b in bans:
        banned.add_row(b["address"], f"{max(0, b['until'] - now):.0f}s")
    changed = Table(title="what changed", title_justify="left", show_header=False)
    changed.add_column("time", no_wrap=True)
    changed.add_column("kind", no_wrap=True)
    changed.add_column("text")
    for e in reversed(events):
        changed.add_row(time.strftime("%H:%M:%S", time.localtime(e["time"])), e["kind"], e["text"])
    parts: list[Any] = [backend_table(status, backends)]
    cluster = status.get("cluster")
    if cluster:
        nodes = Table(
            title=f"cluster: Redis {'connected' if cluster['connected'] else 'UNREACHABLE'}",
            title_justify="left",
        )
        for column in ("node", "sessions", "seen"):
            nodes.add_column(column, no_wrap=True, justify="left" if column == "node" else "right")
        for m in cluster.get("members", []):
            this = " (this)" if m["node"] == cluster["node"] else ""
            nodes.add_row(m["node"] + this, str(m["sessions"]), f"{now - m['last_seen']:.0f}s ago")
        parts.append(nodes)
        moved = cluster.get("data_connections")
        if cluster.get("advertise") and moved:
            parts.append(
                Text(
                    f"data connections forwarded to other nodes: {moved['forwarded']},"
                    f" taken from them: {moved['joined']}"
                )
            )
    return Group(*parts, who, banned, changed)


def run_top(client: AdminClient, interval: float, rounds: int | None = None) -> None:
    """Refresh the view every `interval` seconds until Ctrl-C (or `rounds` times)."""
    from rich.live import Live
    from rich.text import Text

    with Live(Text("connecting…"), refresh_per_second=4, screen=False) as live:
        done = 0
        while rounds is None or done < rounds:
            try:
                live.update(top_view(client, time.time()))
            except AdminError as exc:
                live.update(Text(f"ftplb top: {exc}", style="red"))
            done += 1
            if rounds is None or done < rounds:
                time.sleep(interval)
