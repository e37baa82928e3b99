"""The status page in Debian's headless Chromium (Playwright): rows, and a drain clicked."""

from __future__ import annotations

from pathlib import Path

from tests.cluster import Cluster
from tests.conftest import need
from tests.integration.test_admin import TOKEN, call, start

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def test_status_page_shows_backends_and_drains_on_click(cluster: Cluster) -> None:
    from playwright.sync_api import expect, sync_playwright

    chromium = need("chromium")
    admin = start(cluster, backends=3)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.goto(admin + "/")
            for b in cluster.backends:
                row = page.locator(f'tr[data-backend="{b.name}"]')
                expect(row).to_contain_text(b.address)
                expect(row.locator(".state")).to_have_text("UP")
            expect(page.locator("#summary")).to_contain_text("3 of 3 backends healthy")
            # The server wants a token: the page asks for it.
            expect(page.locator("#token-box")).to_be_visible()
            page.fill("#token", TOKEN)
            page.locator("#token").dispatch_event("change")
            page.locator('tr[data-backend="ftp2"] button').click()
            expect(page.locator('tr[data-backend="ftp2"] .state')).to_have_text("DRAIN")
            expect(page.locator('tr[data-backend="ftp2"] button')).to_have_text("Enable")
            expect(page.locator('tr[data-backend="ftp1"] .state')).to_have_text("UP")
            expect(page.locator("#summary")).to_contain_text("3 backends healthy, 1 drained")
            page.screenshot(path=str(ARTIFACTS / "status-page.png"), full_page=True)
        finally:
            browser.close()
    # The click reached the balancer, not just the page.
    states = {b["name"]: b["state"] for b in call(admin + "/api/backends", token=None)}
    assert states == {"ftp1": "UP", "ftp2": "DRAIN", "ftp3": "UP"}
