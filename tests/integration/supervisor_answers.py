"""A router supervisor whose control loop compares its in-process answers with its admin's.

Run by test_admin.py as ``python -m tests.integration.supervisor_answers CONFIG RESULT``:
serves (the supervisor needs the main thread for its signal handlers), and on its
first control-loop pass, from the control-loop thread as routerd.py's would,
sends a few requests through the router, waits for the dashboard's sample that
counts them, then writes ``{"info": [in-process, admin], "route": [...],
"traffic": [...]}`` to RESULT as JSON and stops itself with SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bgdeploy.config import load_config
from bgdeploy.control.app import App
from bgdeploy.router.supervisor import RouterSupervisor, SupervisorWiring

WAIT_S = 30.0


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - loopback only
        return json.loads(r.read())


def samples(admin: str) -> int:
    return len(get(f"{admin}/api/series")["t"])


def until(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {WAIT_S:g}s")
        time.sleep(0.05)


def main() -> None:
    config_path, result = Path(sys.argv[1]), Path(sys.argv[2])
    app = App(load_config(config_path))
    cfg = app.config.router
    admin = f"http://127.0.0.1:{cfg.admin_port}"
    done: list[bool] = []
    supervisor: RouterSupervisor

    def compare(_inflight: object) -> None:
        if done:
            return
        done.append(True)
        try:
            until(lambda: samples(admin) >= 2, "two samples of the series")
            for _ in range(3):  # no boot is routed: the router's own answers, counted
                with contextlib.suppress(urllib.error.HTTPError):
                    urllib.request.urlopen(f"http://127.0.0.1:{cfg.port}/", timeout=5)  # noqa: S310
            seen = samples(admin)
            until(lambda: samples(admin) > seen, "a sample after the requests")
            end = time.time()
            out = {
                "info": [supervisor.info(), get(f"{admin}/api/router")],
                "route": [supervisor.route(), get(f"{admin}/api/route")],
                "traffic": [
                    supervisor.traffic(60.0, end),
                    get(f"{admin}/api/traffic?window=60&end={end!r}"),
                ],
            }
        except Exception as e:  # noqa: BLE001 - the test reads what went wrong
            out = {"error": repr(e)}
        result.write_text(json.dumps(out))
        os.kill(os.getpid(), signal.SIGTERM)

    wiring = SupervisorWiring(
        status=lambda inflight, router: {"router": router},
        history=lambda: [],
        load_config=lambda: load_config(config_path),
        control_tick=compare,
    )
    supervisor = RouterSupervisor(app.config, app.registry, app.service, wiring)
    supervisor.serve()


if __name__ == "__main__":
    main()
