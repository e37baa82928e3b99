"""`ftplb check` and `ftplb run` as processes: the plan on stdout, a wrong file
named on stderr with exit code 2 and no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_config import GOOD, write


def ftplb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ftplb", *args], capture_output=True, text=True, timeout=60
    )


def test_check_prints_the_plan(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    done = ftplb("check", "-c", str(path))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"{path}: OK" in out
    assert "control: listen on 127.0.0.1:2121; clients are told 127.0.0.1" in out
    assert "data 127.0.0.1:30000-30099 (100 ports) -> 127.0.1.1, same port" in out
    assert "data 127.0.0.1:30100-30199 (100 ports) -> 127.0.1.2, same port, PROXY v2 on data" in out
    assert "data listeners: 200 ports on 127.0.0.1" in out
    assert "workers: " in out


def test_check_and_run_exit_2_with_field(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('"30100-30199"', '"30050-30149"'))
    expected = f"{path}: backends[1].passive_ports: 30050-30149 overlaps backends[0] (30000-30099)"
    for command in ("check", "run"):
        done = ftplb(command, "-c", str(path))
        assert done.returncode == 2
        assert done.stderr.strip() == expected
        assert done.stdout == ""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a = " + "[" * 100000, ": not valid TOML: nested too deeply"),
        (
            # Not an address of this host: before the fix `run` never binds it.
            GOOD.replace("[balancer]", '[admin]\nlisten = "192.0.2.1:9021"\n[balancer]', 1),
            ": admin.token: required when listen (192.0.2.1:9021) is not a loopback address",
        ),
    ],
)
def test_check_and_run_refuse_without_a_traceback(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    for command in ("check", "run"):
        done = subprocess.run(
            [sys.executable, "-m", "ftplb", command, "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(f"{path}{expected}"), done.stderr
        assert len(done.stderr.splitlines()) == 1 and done.stdout == ""
