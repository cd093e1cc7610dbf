"""The web dashboard in a real headless Chromium, during a deploy."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from tests.integration.conftest import deploy, settle

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.mark.slow
def test_dashboard_shows_the_state_and_the_active_boot_change(stack, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed here (make test installs it where apt-get works)")
    sync_api = pytest.importorskip("playwright.sync_api")
    app, router = stack(flags=["--start-delay", "1.5"])
    first = deploy(app, "1.0")
    settle(app)  # idle, 1.0 active
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(router.admin_url + "/")
        page.wait_for_function(
            "document.querySelector('[data-testid=active-boot]')"
            f"?.textContent === '{first.boot_id}'",
            timeout=10_000,
        )
        assert page.text_content("[data-testid=state]") == "idle"
        results = []
        worker = threading.Thread(target=lambda: results.append(deploy(app, "2.0")))
        worker.start()
        # The candidate takes 1.5 s to start: the page shows the deploy in progress ...
        page.wait_for_function(
            "document.querySelector('[data-testid=state]').textContent === 'starting'",
            timeout=15_000,
        )
        page.wait_for_selector("[data-testid=candidate-boot]", timeout=10_000)
        # ... then the switch: a new active boot, the old one kept warm.
        worker.join(timeout=60)
        second = results[0]
        page.wait_for_function(
            "document.querySelector('[data-testid=active-boot]')"
            f"?.textContent === '{second.boot_id}'",
            timeout=10_000,
        )
        page.wait_for_function(
            "document.querySelector('[data-testid=state]').textContent === 'switched'",
            timeout=10_000,
        )
        assert page.text_content("[data-testid=old-boot]") == first.boot_id
        page.wait_for_selector("#events li.switch", timeout=10_000)
        # One service: no services table. A second one in the registry: both listed.
        assert not page.is_visible("[data-testid=services]")
        app.registry.transition("other", "begin", generation=0, state="idle", version="9.0")
        page.wait_for_selector("[data-testid=services]", state="visible", timeout=10_000)
        rows = page.text_content("#service-rows")
        assert app.service in rows and "other" in rows and "starting" in rows
        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 10_000
    print(f"\nscreenshot: {shot}")


# Pixels of the chart's line colours (the first boots' green and blue), counted in the page.
COUNT_LINE_PIXELS = """() => {
  const c = document.getElementById('chart');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) {
    const [r, g, b, a] = [d[i], d[i + 1], d[i + 2], d[i + 3]];
    if (a > 200 && ((r < 70 && g > 140 && b < 90) || (r < 80 && g > 110 && b > 220))) n++;
  }
  return n;
}"""


@pytest.mark.slow
def test_dashboard_shows_held_pause_maintenance_and_draws_the_traffic_chart(stack, cli, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed here (make test installs it where apt-get works)")
    sync_api = pytest.importorskip("playwright.sync_api")
    from loadgen import LoadGen

    app, router = stack()
    cfg = ("--config", app.config.path)
    first = deploy(app, "1.0")
    load = LoadGen(router.url, clients=2, seconds=120).start()
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(router.admin_url + "/")
            second = deploy(app, "2.0")
            # The chart draws both boots' traffic and marks the two switches.
            page.wait_for_function(
                "(() => { const c = document.getElementById('chart');"
                f" return c.dataset.boots?.includes('{first.boot_id}')"
                f" && c.dataset.boots?.includes('{second.boot_id}')"
                " && Number(c.dataset.marks) >= 2 && Number(c.dataset.points) >= 4; })()",
                timeout=20_000,
            )
            # The lines grow with each second's sample: wait for them (a loaded machine
            # may have drawn only the first few points when the condition above held).
            page.wait_for_function(f"() => ({COUNT_LINE_PIXELS})() > 200", timeout=20_000)
            # The latency chart draws both boots' p99 beside each other, and the active
            # boot's card shows its answers and 5xx ratio over the analysis window.
            page.wait_for_function(
                "(() => { const c = document.getElementById('latency');"
                f" return c.dataset.boots?.includes('{second.boot_id}')"
                " && Number(c.dataset.points) >= 4; })()",
                timeout=20_000,
            )
            page.wait_for_function(
                "Number(document.querySelector('[data-testid=active] [data-testid=answers]')"
                "?.textContent) > 0",
                timeout=20_000,
            )
            assert page.text_content("[data-testid=active] [data-testid=error-ratio]") == "0.0%"
            legend = page.text_content("#legend")
            assert first.boot_id in legend and second.boot_id in legend
            # A held candidate, a pause and maintenance each show.
            held = cli(*cfg, "deploy", "--version", "3.0", "--hold", "--json")
            held_boot = json.loads(held.out)["boot_id"]
            page.wait_for_selector("[data-testid=held]", timeout=10_000)
            assert held_boot in page.text_content("[data-testid=held]")
            assert page.text_content("[data-testid=candidate-boot]") == held_boot
            assert cli(*cfg, "pause", "--max", "30").code == 0
            page.wait_for_selector("[data-testid=paused]", timeout=10_000)
            assert cli(*cfg, "resume").code == 0
            page.wait_for_selector("[data-testid=paused]", state="detached", timeout=10_000)
            assert cli(*cfg, "maintenance", "on", "--message", "Upgrading disks").code == 0
            page.wait_for_selector("[data-testid=maintenance]", timeout=10_000)
            assert "Upgrading disks" in page.text_content("[data-testid=maintenance]")
            shot = tmp_path / "dashboard-controls.png"
            page.screenshot(path=str(shot), full_page=True)
            browser.close()
    finally:
        load.stop()
    assert shot.stat().st_size > 10_000
    print(f"\nscreenshot: {shot}")
