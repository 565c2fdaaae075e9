"""`dispatcher dashboard` in a real headless Chromium (Debian's ``chromium``, driven by
Playwright's Python package with that executable; no browser download): a runner and a job
appear, then the job's status changes on screen without a reload, pushed over Server-Sent Events.

Skipped, with the reason, when the ``chromium`` binary or the ``playwright`` package is missing.
Prints the page update latency (a job's change in Redis -> on screen; target < 1 s) and asserts
only a generous bound.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from dispatcher.adminserver import start_app
from dispatcher.dashboard import dashboard_app
from tests.dispatcher.support import expect_ack, submit, take_job
from tests.podkit import add_runner, connect

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary (Debian: apt-get install -y chromium)"
)
playwright_api = pytest.importorskip(
    "playwright.async_api", reason="the playwright package is missing (pip install playwright)"
)

WAIT_MS = 15_000  # any one thing to appear on a loaded 2-core machine
BOUND = 5.0  # s: the asserted bound of the update latency (the target is < 1 s)


def status_is(job_id: str, status: str) -> str:
    """A page predicate: the job's row in Recent jobs shows ``status``."""
    return (
        f"() => {{ const row = document.querySelector('#recent tr[data-id=\"{job_id}\"]');"
        f' return row !== null && row.children[2].textContent === "{status}"; }}'
    )


async def test_dashboard_updates_without_reload_in_chromium(
    launch, settings, rclient, keys, tmp_path: Path
) -> None:
    pod = await launch(settings)
    server = await start_app(dashboard_app(settings), "127.0.0.1", 0)
    try:
        async with playwright_api.async_playwright() as driver:
            browser = await driver.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
            )
            try:
                page = await browser.new_page(viewport={"width": 1400, "height": 1000})
                await page.goto(f"http://127.0.0.1:{server.port}/")
                await page.wait_for_selector('body[data-mode="live"]', timeout=WAIT_MS)
                await page.evaluate("() => { window.loadedOnce = true; }")  # gone on a reload

                runner = await connect(pod, "dash-r1", add_runner(settings, "dash-r1", ["linux"]))
                await page.wait_for_selector('#runners tr[data-id="dash-r1"]', timeout=WAIT_MS)
                job_id = submit(rclient, keys, spec="linux", payload={"command": ["make", "test"]})
                await page.wait_for_function(status_is(job_id, "pending"), timeout=WAIT_MS)

                job = await take_job(runner)
                assert job["job"] == job_id
                await page.wait_for_function(status_is(job_id, "claimed"), timeout=WAIT_MS)

                # the change measured: `running` sent -> the new status on screen
                changed = time.monotonic()
                await runner.send("running", job=job_id, attempt=job["attempt"])
                await page.wait_for_function(status_is(job_id, "running"), timeout=WAIT_MS)
                running_latency = time.monotonic() - changed
                await expect_ack(runner, job_id, "running")

                changed = time.monotonic()
                await runner.send("completed", job=job_id, attempt=job["attempt"], exit_code=0)
                await page.wait_for_function(status_is(job_id, "completed"), timeout=WAIT_MS)
                completed_latency = time.monotonic() - changed
                await expect_ack(runner, job_id, "completed")

                assert await page.evaluate("() => window.loadedOnce === true"), "page reloaded"
                assert await page.get_attribute("body", "data-mode") == "live"
                await page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
                print(
                    f"\ndashboard update latency: running {running_latency * 1000:.0f} ms, "
                    f"completed {completed_latency * 1000:.0f} ms (target < 1 s); "
                    f"screenshot {tmp_path / 'dashboard.png'}"
                )
                assert running_latency < BOUND
                assert completed_latency < BOUND
                await runner.close()
            finally:
                await browser.close()
    finally:
        await server.stop()
