"""The dashboard in a real browser: Debian's chromium, headless, driven by playwright.

It loads the page of a running deployment, sees both regions and a completed run, and then
sees a failover (active region, epoch, the fenced region, the plan execution) without the page
being reloaded. Every request the page makes must go to the gateway itself."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from mrbatch import __version__
from mrbatch.config.initialize import sample_bytes
from mrbatch.model.records import RunStatus
from mrbatch.recovery import runbook
from tests.conftest import Deployment, make_workspace
from tests.helpers import finished, put

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 30_000  # an upper bound for each expectation; they pass as soon as the page shows it


@pytest.fixture
def dep(tmp_path: Path) -> Iterator[Deployment]:
    ws = make_workspace(tmp_path / "ws", failover={"min_switch_interval": "1s", "max_wait": "5s"})
    with Deployment(ws) as deployment:
        yield deployment


def test_the_dashboard_shows_regions_runs_and_a_failover_live(dep: Deployment) -> None:
    assert Path(CHROMIUM).exists() or shutil.which("chromium"), (
        "Debian's chromium is missing: run `python -m tests.setup_deps` (make test does)"
    )
    from playwright.sync_api import expect, sync_playwright

    ws = dep.ws
    old, new = ws.regions
    orders = b"".join(sample_bytes("orders.csv").splitlines(keepends=True)[:51])
    run = finished(ws, put(ws, "input/browser <b>test</b>.csv", orders))
    assert run.status is RunStatus.COMPLETED, run.reason
    gateway = urlsplit(ws.gateway_url).netloc

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            requested: list[str] = []
            problems: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on(
                "console",
                lambda msg: msg.type == "error" and problems.append(f"console: {msg.text}"),
            )
            page.goto(ws.gateway_url + "/")

            # Both regions, each with its state and charts; the completed run.
            old_panel = page.locator(f'.region[data-region="{old}"]')
            new_panel = page.locator(f'.region[data-region="{new}"]')
            expect(old_panel.locator(".region-state")).to_have_text("ACTIVE", timeout=WAIT_MS)
            expect(new_panel.locator(".region-state")).to_have_text("STANDBY", timeout=WAIT_MS)
            expect(page.locator("#active-region")).to_have_text(old)
            expect(page.locator("#epoch")).to_have_text("1")
            expect(page.locator("#app-state")).to_have_text("healthy", timeout=WAIT_MS)
            run_row = page.locator(f'#runs tr[data-run-id="{run.run_id}"]')
            expect(run_row).to_have_attribute("data-status", "COMPLETED", timeout=WAIT_MS)
            # The key is shown as text, never interpreted as markup.
            expect(run_row.locator("td.input")).to_have_text("input/browser <b>test</b>.csv")
            assert run_row.locator("b").count() == 0
            expect(old_panel.locator('[data-legend="files"]')).to_contain_text(
                "processed 1", timeout=WAIT_MS
            )
            assert old_panel.locator('svg[data-chart="files"] polyline').count() == 3
            expect(page.locator("#plans-empty")).to_be_visible()
            # Every process's version of mrbatch: one version, so not marked as mixed.
            expect(page.locator("#versions")).to_have_text(__version__, timeout=WAIT_MS)
            expect(page.locator("#versions")).to_have_attribute("data-mixed", "false")
            expect(old_panel.locator(".stat-version")).to_contain_text(__version__)

            # A failover, while the page stays open: it must show without a reload.
            page.evaluate("window.__sameDocument = true")
            execution = runbook.Runbook(ws, "failover", new, yes=True).execute()
            assert execution.outcome == "succeeded", execution.reason
            expect(page.locator("#active-region")).to_have_text(new, timeout=WAIT_MS)
            expect(page.locator("#epoch")).to_have_text("2", timeout=WAIT_MS)
            expect(old_panel.locator(".region-state")).to_have_text("FENCED", timeout=WAIT_MS)
            expect(new_panel.locator(".region-state")).to_have_text("ACTIVE", timeout=WAIT_MS)
            plan_row = page.locator(f'#plans tr[data-plan-id="{execution.id}"]')
            expect(plan_row).to_have_attribute("data-outcome", "succeeded", timeout=WAIT_MS)
            expect(plan_row.locator("td.plan")).to_have_text("failover")
            assert page.evaluate("window.__sameDocument") is True, "the page was reloaded"
            # Replication lag is charted over time, one line per region.
            assert page.locator("#lag-chart polyline").count() == 2
        finally:
            browser.close()

    assert not problems, problems
    foreign = [url for url in requested if urlsplit(url).netloc != gateway]
    assert not foreign, f"the page fetched from elsewhere: {foreign}"
    assert any(urlsplit(url).path == "/api/dashboard" for url in requested)
