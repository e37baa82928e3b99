"""The operator's view: sessions, bans and events through the admin API (with
two workers), `ftplb status` in a pipe, `ftplb top` under tmux, and the
status page in Debian's Chromium (charts with points, a session closed and a
ban lifted from the page, changes refused without the token)."""

from __future__ import annotations

import ftplib
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import ExitStack, suppress

import pytest

from tests.cluster import BALANCER_HOST, PASSWORD, USER, Cluster, free_ports, wait_for
from tests.conftest import need
from tests.integration.test_admin import TOKEN, call, start
from tests.integration.test_status_page import ARTIFACTS, CHROMIUM_FLAGS


def status_of(url: str, method: str = "GET", token: str | None = TOKEN) -> int:
    try:
        call(url, method, token)
    except urllib.error.HTTPError as exc:
        return exc.code
    return 200


def login(c: Cluster, source: str, password: str = PASSWORD) -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=10, source_address=(source, 0))
    ftp.connect(BALANCER_HOST, c.balancer_port)
    ftp.login(USER, password)
    return ftp


def fail_logins(c: Cluster, source: str, times: int) -> None:
    for _ in range(times):
        with suppress(ftplib.error_perm, ftplib.error_temp, EOFError, ConnectionError):
            login(c, source, "wrong").quit()


def closed(ftp: ftplib.FTP) -> bool:
    try:
        ftp.sendcmd("NOOP")
    except (EOFError, ConnectionError, ftplib.error_temp, OSError):
        return True
    return False


def test_sessions_bans_and_events_across_two_workers(cluster: Cluster) -> None:
    admin = start(cluster, mode="inspect", workers=2, max_login_failures=2, send_proxy="v1")
    sources = [f"127.0.0.{60 + i}" for i in range(12)]
    with ExitStack() as stack:
        sessions = {s: stack.enter_context(login(cluster, s)) for s in sources}
        listed = call(admin + "/api/sessions")
        mine = {s["client"].split(":")[0]: s for s in listed}
        assert set(mine) == set(sources)
        for s in listed:
            assert s["user"] == USER and s["backend"] in {"ftp1", "ftp2", "ftp3"}
            assert time.time() - 60 < s["started"] <= time.time()
            assert s["bytes_in"] > 0 and s["bytes_out"] > 0 and s["transfer"] is None
        ids = [s["id"] for s in listed]
        assert len(set(ids)) == len(ids)
        # Both workers hold sessions (SO_REUSEPORT spread them): ids name their worker.
        processes = call(admin + "/api/status")["processes"]
        assert all(p["sessions"] > 0 for p in processes), processes
        assert {i % 1000 for i in ids} == {0, 1}

        # Closing one session, whichever worker holds it, ends that client's connection.
        for victim in ("127.0.0.60", "127.0.0.61", "127.0.0.62"):
            assert call(admin + f"/api/sessions/{mine[victim]['id']}", "DELETE") == {
                "closed": mine[victim]["id"]
            }
            wait_for(lambda v=victim: closed(sessions[v]), what=f"{victim} cut")  # type: ignore[misc]
        assert not closed(sessions["127.0.0.63"])
        left = {s["client"].split(":")[0] for s in call(admin + "/api/sessions")}
        assert left == set(sources[3:])
        # Unknown, non-numeric, unauthenticated: 404, 404, 401 (and logged).
        assert status_of(admin + "/api/sessions/999999999", "DELETE") == 404
        assert status_of(admin + "/api/sessions/abc", "DELETE") == 404
        assert status_of(admin + f"/api/sessions/{mine['127.0.0.63']['id']}", "DELETE", None) == 401
        assert not closed(sessions["127.0.0.63"])

        # Paging, and a huge limit capped; X-Total-Count says how many in all.
        with urllib.request.urlopen(admin + "/api/sessions?limit=2&offset=1") as r:
            assert len(json.load(r)) == 2 and r.headers["X-Total-Count"] == "9"
        assert len(call(admin + "/api/sessions?limit=99999999")) == 9
        assert status_of(admin + "/api/sessions?limit=lots") == 400

    # Bans: two failures from one address ban it on both workers.
    fail_logins(cluster, "127.0.0.80", 2)
    bans = call(admin + "/api/bans")
    assert [b["address"] for b in bans] == ["127.0.0.80"]
    assert time.time() < bans[0]["until"] <= time.time() + 601
    for _ in range(4):  # whichever worker takes the connection refuses it
        with pytest.raises(ftplib.error_temp, match=r"^421"):
            login(cluster, "127.0.0.80")
    assert status_of(admin + "/api/bans/127.0.0.80", "DELETE", None) == 401
    assert status_of(admin + "/api/bans/not-an-address", "DELETE") == 400
    assert status_of(admin + "/api/bans/127.0.0.81", "DELETE") == 404
    assert call(admin + "/api/bans/127.0.0.80", "DELETE") == {"lifted": "127.0.0.80"}
    assert call(admin + "/api/bans") == []
    for _ in range(4):  # lifted on every worker, and the failure count forgotten:
        login(cluster, "127.0.0.80").quit()
    fail_logins(cluster, "127.0.0.80", 1)  # one more failure does not ban again
    login(cluster, "127.0.0.80").quit()

    # Events: health, the ban, the operator's actions; one drain, not one per worker.
    call(admin + "/api/backends/ftp2/drain", "POST")
    events = call(admin + "/api/events")
    kinds = [e["kind"] for e in events]
    assert {"health", "ban", "operator"} <= set(kinds), events
    texts = [e["text"] for e in events]
    assert texts.count("backend ftp2: drain by operator") == 1
    assert any("ban of 127.0.0.80 lifted" in t for t in texts)
    assert any("closed by operator" in t for t in texts)
    assert [e["time"] for e in events] == sorted(e["time"] for e in events)
    assert len(call(admin + "/api/events?limit=2")) == 2
    assert cluster.balancer is not None
    assert "DELETE /api/sessions" in cluster.balancer.log() and "no valid token" in (
        cluster.balancer.log()
    )


def test_routed_sessions_show_their_transfer(cluster: Cluster) -> None:
    admin = start(cluster, backends=1)
    ftp = login(cluster, "127.0.0.70")
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("RETR big.bin")
    conn.recv(65536)
    try:
        (s,) = wait_for(lambda: [x for x in call(admin + "/api/sessions") if x["transfer"]])
        assert s["client"].startswith("127.0.0.70:") and s["user"] is None
        assert s["backend"] == "ftp1" and s["transfer"]["direction"] == "download"
        assert s["transfer"]["bytes"] > 0
        assert call(admin + f"/api/sessions/{s['id']}", "DELETE") == {"closed": s["id"]}
        conn.settimeout(10)
        with suppress(ConnectionResetError):
            while conn.recv(1 << 20):
                pass
        wait_for(lambda: closed(ftp), what="the control connection cut")
    finally:
        conn.close()
        ftp.close()


def test_status_in_a_pipe_is_plain_columns(cluster: Cluster) -> None:
    admin = start(cluster, backends=2)
    long_check = subprocess.run(
        [sys.executable, "-m", "ftplb", "status", "--admin", admin],
        capture_output=True,
        text=True,
        env={"COLUMNS": "40", "PATH": "/usr/bin:/bin"},
        check=True,
    ).stdout
    lines = long_check.splitlines()
    assert lines[0].startswith("ftplb ") and "routed mode" in lines[0]
    assert lines[1].split() == [
        "backend", "address", "state", "last", "check", "sessions", "total", "in", "out", "weight",
    ]  # fmt: skip
    assert "…" not in long_check  # a narrow terminal cuts nothing in a pipe
    rows = [line.split() for line in lines[2:]]
    assert [r[0] for r in rows] == ["ftp1", "ftp2"]
    assert all(r[2] == "UP" and r[3:6] == ["greeted", "with", "220"] for r in rows)
    # Columns line up: each backend's address starts where the header's does.
    assert {line.index(r[1]) for line, r in zip(lines[2:], rows, strict=True)} == {
        lines[1].index("address")
    }


def test_top_under_tmux(cluster: Cluster) -> None:
    tmux = need("tmux")
    admin = start(cluster, mode="inspect", backends=2, max_login_failures=1, workers=1)
    ftp = login(cluster, "127.0.0.71")
    fail_logins(cluster, "127.0.0.72", 1)
    name = f"ftplb-top-{free_ports(1)}"
    command = f"{sys.executable} -m ftplb top --admin {admin} --interval 0.5"
    subprocess.run(
        [tmux, "new-session", "-d", "-s", name, "-x", "180", "-y", "60", command], check=True
    )
    try:

        def screen() -> str:
            return subprocess.run(
                [tmux, "capture-pane", "-p", "-t", name], capture_output=True, text=True
            ).stdout

        text = wait_for(lambda: (s := screen()) and "what changed" in s and s, what="top's screen")
        assert "ftp1" in text and "ftp2" in text and "UP" in text
        assert "who is connected (1)" in text and "127.0.0.71" in text and USER in text
        assert "banned (1)" in text and "127.0.0.72" in text
        assert "client 127.0.0.72 banned" in text  # the event
        ftp.quit()
        wait_for(lambda: "who is connected (0)" in screen(), what="top to refresh")
    finally:
        subprocess.run([tmux, "kill-session", "-t", name], capture_output=True)
        ftp.close()


def test_status_page_answers_the_three_questions(cluster: Cluster) -> None:
    from playwright.sync_api import expect, sync_playwright

    chromium = need("chromium")
    admin = start(cluster, mode="inspect", backends=2, max_login_failures=1, workers=1)
    ftp = login(cluster, "127.0.0.73")
    ftp.voidcmd("TYPE I")
    data = ftp.transfercmd("RETR big.bin")
    data.recv(65536)  # a download in progress, held
    fail_logins(cluster, "127.0.0.74", 1)
    waiting = login(cluster, "127.0.0.75")
    waiting.sendcmd("EPSV")  # a passive request, never connected
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(admin + "/")
            row = page.locator("#sessions tbody tr", has_text="127.0.0.73")
            expect(row).to_contain_text(USER)
            expect(row).to_contain_text("download big.bin")
            expect(page.locator('#bans tr[data-ban="127.0.0.74"]')).to_be_visible()
            expect(page.locator("#events")).to_contain_text("client 127.0.0.74 banned")
            ports = page.locator("#ports")
            expect(ports).to_contain_text("Data ports: 1 of 40 with passive requests waiting")
            expect(ports).to_contain_text("1 data connections open")
            # Charts fill in: a sample every 5 s, so two points within about 10 s.
            chart = page.locator('tr[data-backend="ftp1"] svg.chart.sessions')
            expect(chart).to_have_attribute(
                "data-points", re.compile(r"^([2-9]|\d\d+)$"), timeout=20_000
            )
            page.screenshot(path=str(ARTIFACTS / "status-page-sessions.png"), full_page=True)

            # No token given: the page's changes are refused, nothing happens.
            row.locator("button").click()
            expect(page.locator("#error")).to_contain_text("HTTP 401")
            assert not closed(ftp)
            page.fill("#token", TOKEN)
            page.locator("#token").dispatch_event("change")

            # Lift the ban from the page: the address logs in again.
            page.locator('#bans tr[data-ban="127.0.0.74"] button').click()
            expect(page.locator("#bans")).to_contain_text("nobody is banned")
            login(cluster, "127.0.0.74").quit()

            # Close the session from the page: the client's connections end.
            row.locator("button").click()
            wait_for(lambda: closed(ftp), what="the session closed from the page")
            expect(page.locator("#sessions")).not_to_contain_text("127.0.0.73")
        finally:
            browser.close()
            data.close()
            ftp.close()
            waiting.close()
