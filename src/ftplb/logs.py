"""Log lines: text or JSON, to stderr or a file, tagged with the worker.

A session's log line is a fair share of its CPU: the formatters skip what no
format here uses, and the time's text is made once a second.
"""

from __future__ import annotations

import json
import logging
import sys
import time

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s{worker}: %(message)s"


class TextFormatter(logging.Formatter):
    """`time level logger: message`; the time's text is made once a second, not per line.
    In a worker process the logger's name says which: `ftplb.session[w1]`."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__(TEXT_FORMAT.format(worker="" if worker is None else f"[w{worker}]"))
        self._second = -1
        self._stamp = ""
        self.worker = worker

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._second, self._stamp = second, time.strftime(TIME_FORMAT, time.localtime(second))
        return f"{self._stamp},{int(record.msecs):03d}"


class JsonFormatter(TextFormatter):
    """One JSON object per line: ts, level, logger, msg (and worker, in a worker)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, str | int] = {
            "ts": self.formatTime(record).replace(" ", "T").replace(",", "."),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self.worker is not None:
            entry["worker"] = self.worker
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(
    verbose: bool = False, fmt: str = "text", file: str = "", level: str = "info"
) -> None:
    handler: logging.Handler = (
        logging.FileHandler(file, encoding="utf-8") if file else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    # A session's log line is a fair share of its CPU: skip what no format here
    # uses (the caller's file and line, thread and process ids; the latter is a
    # getpid() system call per line). The logging HOWTO's "Optimization" section.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else getattr(logging, level.upper()))


def tag_worker(index: int) -> None:
    """In worker `index`: every log line says so (text `name[wN]`, JSON "worker")."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, TextFormatter):
            handler.setFormatter(type(handler.formatter)(worker=index))


class EventRing:
    """The last `capacity` events (health changes, operator actions, bans,
    reloads, discovery) for `GET /api/events`: bounded, in memory, per process."""

    def __init__(self, capacity: int = 500) -> None:
        self.capacity = capacity
        self.items: list[dict[str, object]] = []

    def add(self, kind: str, text: str, when: float | None = None) -> None:
        self.items.append(
            {"time": time.time() if when is None else when, "kind": kind, "text": text}
        )
        if len(self.items) > self.capacity:
            del self.items[: len(self.items) - self.capacity]

    def recent(self, limit: int | None = None) -> list[dict[str, object]]:
        """Oldest first, newest last (the last `limit`)."""
        return list(self.items if limit is None else self.items[-limit:])


EVENTS = EventRing()
"""This process's events (a worker's own; the supervisor merges them)."""


def event(logger: logging.Logger, level: int, kind: str, msg: str, *args: object) -> None:
    """Log a line and keep it as an event of `kind` (whatever the log level lets through)."""
    text = msg % args if args else msg
    EVENTS.add(kind, text)
    logger.log(level, "%s", text)
