"""The soak's short version (bench/soak.py; `make soak` runs the long one).

One fault cycle per mode: a backend SIGKILLed and restarted, another frozen
past the health timeout, garbage and slowloris at the balancer, a reload that
adds one backend and removes another and then puts them back; meanwhile a
dozen clients download, upload (sha256 checked), list, drop transfers and
fail logins, passive and active, plain and (inspect mode) FTPS.
"""

from __future__ import annotations

import pytest
from bench import soak

SECONDS = 36.0
"""The whole fault cycle (the reload and its undoing start at 24 s and take 10)."""
CLIENTS = 12


@pytest.mark.parametrize("mode", ["routed", "inspect"])
def test_a_fault_cycle_under_load_corrupts_nothing_and_leaks_nothing(mode: str) -> None:
    result = soak.soak(mode, SECONDS, CLIENTS, soak.Payloads())
    table, held = soak.report([result], [], SECONDS, CLIENTS)
    kinds = {f.kind.split(":")[0] for f in result.faults}
    assert {"SIGKILL + restart", "SIGSTOP 3 s", "slowloris x30, 10 s", "SIGHUP"} <= kinds, kinds
    assert result.count("ok") > 50 and result.reloads == 2, table
    assert sum(s.transfers for s in result.sessions) > 50, table
    assert held, table
