"""The web dashboard in a real headless Chromium, during a deploy."""

from __future__ import annotations

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
        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 10_000
    print(f"\nscreenshot: {shot}")
