"""The one place where control asks a running router anything: its port.

Control decides; the router forwards. What control needs of a running router is
small: is one running (the registry's row and a live process), what it says of
itself and its workers, where its workers route and what they have in flight, and
each boot's traffic figures. Two implementations answer it:

- ``AdminApi``, over the router's read-only admin listener (HTTP), for the commands
  (the CLI, cron's ``bgdeploy reconcile``) that run beside a router;
- the supervisor's own, in-process (``bgdeploy/routerd.py`` injects it), for the
  control loop that runs inside the router supervisor, which so never calls its own
  admin listener.

``App.router`` is the port a command uses. Starting a router and reloading one are
not here: they start or signal processes, and live in ``router_ctl.py`` and
``bgdeploy/routerd.py``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import httpx

from bgdeploy.processes import process_matches
from bgdeploy.registry.models import Router

if TYPE_CHECKING:
    from bgdeploy.control.app import App

ADMIN_TIMEOUT_S = 2.0
POLL_S = 0.01


def running_router(app: App) -> Router | None:
    """The registry's router row, if its process (pid and start time) is alive."""
    with app.registry.reading() as s:
        row = s.get(Router, app.service)
    if row is not None and process_matches(row.pid, row.pid_create_time):
        return row
    return None


def build_of_workers(info: dict[str, Any] | None) -> str | None:
    """The request path's build that the serving workers run ("compiled", "pure-python",
    both joined by "+" during a change), from what the router says; None if unknown."""
    if info is None:
        return None
    builds = sorted({w.get("build") for w in info["workers"] if not w["draining"]} - {None})
    return "+".join(builds) or None


class RouterApi:
    """What control asks a running router. Each answer is None when no router runs or
    it did not answer: a caller that needs to tell the two apart asks ``running()``."""

    def __init__(self, app: App) -> None:
        self.app = app

    def running(self) -> Router | None:
        return running_router(self.app)

    def info(self) -> dict[str, Any] | None:
        """The supervisor and its workers: pid, version, started, per worker its build."""
        raise NotImplementedError

    def route(self) -> dict[str, Any] | None:
        """Where the workers route: boot, generation, in-flight counts, canary share."""
        raise NotImplementedError

    def traffic(self, window: float, end: float | None = None) -> dict[str, Any] | None:
        """Each boot's answers, classes, 5xx ratio and latency over ``window`` seconds
        ending at ``end`` (unix time; now)."""
        raise NotImplementedError

    def inflight(self) -> dict[str, int] | None:
        """Requests in flight per boot: {} when no router runs, None when one runs and
        did not say (unknown is not zero: a drain waits on)."""
        if self.running() is None:
            return {}
        route = self.route()
        return None if route is None else dict(route["inflight"])

    def wait_route(self, done: Any, timeout: float) -> bool:
        """Until ``done(route)`` holds for the route the workers report, at most
        ``timeout`` seconds; False when no router runs or it never held."""
        if self.running() is None:
            return False
        deadline = time.monotonic() + timeout
        while True:
            route = self.route()
            if route is not None and done(route):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_S)

    def follows(self, boot_id: str, timeout: float) -> bool:
        """Whether the router routes new requests to ``boot_id`` (within ``timeout``)."""
        return self.wait_route(lambda r: r.get("boot_id") == boot_id, timeout)

    def close(self) -> None:
        return None


class AdminApi(RouterApi):
    """The port over the running router's admin listener (``router.admin_port``)."""

    def __init__(self, app: App) -> None:
        super().__init__(app)
        self._client: httpx.Client | None = None

    def _get(self, path: str, **params: str) -> Any:
        router = self.running()
        if router is None:
            return None
        if self._client is None:
            self._client = httpx.Client(timeout=ADMIN_TIMEOUT_S)
        try:
            return self._client.get(f"{router.admin_url}{path}", params=params).json()
        except (httpx.HTTPError, ValueError):
            return None

    def info(self) -> dict[str, Any] | None:
        return self._get("/api/router")

    def route(self) -> dict[str, Any] | None:
        return self._get("/api/route")

    def traffic(self, window: float, end: float | None = None) -> dict[str, Any] | None:
        params = {"window": f"{window:g}"}
        if end is not None:
            params["end"] = f"{end:.3f}"
        return self._get("/api/traffic", **params)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
