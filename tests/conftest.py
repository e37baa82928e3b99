"""Shared fixtures: a cluster of real processes, and a guard against leaks."""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import Cluster, cluster_at


def _open_fds() -> set[int]:
    return set(map(int, os.listdir("/proc/self/fd")))


@pytest.fixture(scope="session", autouse=True)
def _warm_uvloop() -> None:
    """uvloop opens a process-wide pipe with its first loop, once: not a leak."""
    try:
        import uvloop
    except ImportError:
        return
    uvloop.new_event_loop().close()


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail a test that leaves file descriptors, threads or asyncio tasks behind."""
    gc.collect()
    fds = _open_fds()
    threads = set(threading.enumerate())
    yield
    gc.collect()
    leaked_fds = _open_fds() - fds
    targets = {fd: _describe(fd) for fd in leaked_fds}
    leaked_fds = {fd for fd, what in targets.items() if what is not None}
    leaked_threads = [t for t in threading.enumerate() if t not in threads and t.is_alive()]
    assert not leaked_fds, f"leaked file descriptors: {[targets[fd] for fd in leaked_fds]}"
    assert not leaked_threads, f"leaked threads: {leaked_threads}"
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    assert len(pending) <= 1, f"leaked tasks: {pending}"


def _describe(fd: int) -> str | None:
    try:
        return f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}"
    except OSError:
        return None  # closed between listing and reading: the listing's own fd


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with cluster_at(tmp_path) as c:
        yield c


def need(tool: str) -> str:
    path = shutil.which(tool) or (
        f"/usr/sbin/{tool}" if os.path.exists(f"/usr/sbin/{tool}") else None
    )
    if path is None:
        pytest.fail(f"{tool} is not installed; `make test` installs it (Makefile DEB_PACKAGES)")
    return path
