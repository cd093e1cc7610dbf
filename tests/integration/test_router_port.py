"""Control asks a running router through one port (control/router_api.py).

Inside the router supervisor the control loop gets the supervisor's own answers:
a heal, its deploy, the switch, the traffic analysis and the finalize make no
request to the supervisor's own admin listener, which counts every request it
answers (``admin_requests`` in ``/api/router``).
"""

from __future__ import annotations

import os
import signal

import httpx
import pytest

from bgdeploy.states import DeploymentState as St
from tests.conftest import poll_until
from tests.integration.conftest import deploy


def admin_requests(admin_url: str) -> int:
    """Requests the admin listener has answered, this one included."""
    return httpx.get(f"{admin_url}/api/router", timeout=5).json()["admin_requests"]


@pytest.mark.slow
def test_a_heal_in_the_supervisor_makes_no_request_to_its_own_admin_listener(stack, tmp_path):
    (tmp_path / "VERSION").write_text("1.0\n")
    app, router = stack(daemon_extra='version_file = "VERSION"', stable=2)
    first = deploy(app, "1.0").boot_id
    poll_until(lambda: router.route() == first, 10, what="the route")
    poll_until(
        lambda: app.registry.deployment(app.service).state == St.IDLE, 30, what="the finalize"
    )
    before = admin_requests(router.admin_url)

    os.kill(app.registry.boot(first).pid, signal.SIGKILL)
    # The heal: a new boot deployed, switched (the router follows), judged on its
    # traffic and health for stable_checks passes, and finalized; the dead one recorded.
    poll_until(
        lambda: (
            (row := app.registry.deployment(app.service)).active_boot_id not in (None, first)
            and row.state == St.IDLE
        ),
        60,
        what="the heal to finish",
    )
    healed = app.registry.deployment(app.service).active_boot_id
    r = httpx.get(f"{router.url}/", timeout=10)
    assert r.status_code == 200 and r.json()["boot_id"] == healed
    events = [e.event for e in app.registry.events(app.service, 20)]
    assert "switch" in events and "finalize" in events, events

    # Only the test's own two reads of the counter reached the admin listener.
    assert admin_requests(router.admin_url) == before + 1
