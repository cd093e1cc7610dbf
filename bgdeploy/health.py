"""Health checks and workspace attach calls against a boot (httpx).

Healthy means an answer on ``health_path`` (sent with ``health.method``,
``health.headers`` and ``health.host``) whose status is in ``health.expect_status``
and whose body has ``health.expect_body`` if set, and, when the body is JSON with
a ``version``, that version equals the boot's: a daemon that reports another
version is the wrong binary.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from bgdeploy.config import BODY_REGEX_PREFIX, Config
from bgdeploy.errors import BootError
from bgdeploy.registry.models import Boot


@dataclass(frozen=True)
class HealthResult:
    ok: bool
    detail: str
    wrong_version: str | None = None


def check(
    client: httpx.Client,
    config: Config,
    boot: Boot,
    timeout: float | None = None,
    port: int | None = None,
) -> HealthResult:
    """One health request as ``[health]`` describes it; a failure names the expectation.
    ``port``: one replica of the boot's (default: the boot's port)."""
    hc = config.health
    url = f"http://127.0.0.1:{port or boot.port}{config.daemon.health_path}"
    what = f"{hc.method} {config.daemon.health_path}"
    headers = dict(hc.headers)
    if hc.host:
        headers["Host"] = hc.host
    wait = timeout or hc.timeout
    try:
        resp = client.request(hc.method, url, headers=headers, timeout=wait)
    except httpx.TimeoutException:
        return HealthResult(False, f"{what}: no answer within {wait:g}s")
    except httpx.HTTPError as e:
        return HealthResult(False, f"{what}: {type(e).__name__}")
    if not any(low <= resp.status_code <= high for low, high in hc.expect_status):
        return HealthResult(
            False,
            f"{what} answered {resp.status_code}, expected status {_ranges(hc.expect_status)}",
        )
    if hc.expect_body is not None and not _body_matches(hc.expect_body, resp.text):
        return HealthResult(
            False,
            f"{what} answered {resp.status_code}, but the body {_describe_match(hc.expect_body)}",
        )
    reported = _reported_version(resp)
    if reported is not None and reported != boot.version:
        return HealthResult(
            False,
            f"{url} reports version {reported}, expected {boot.version}",
            wrong_version=reported,
        )
    return HealthResult(True, f"{what} answered {resp.status_code}")


def _ranges(ranges: tuple[tuple[int, int], ...]) -> str:
    return ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)


def _body_matches(expect: str, body: str) -> bool:
    if expect.startswith(BODY_REGEX_PREFIX):
        return re.search(expect[len(BODY_REGEX_PREFIX) :], body) is not None
    return expect in body


def _describe_match(expect: str) -> str:
    if expect.startswith(BODY_REGEX_PREFIX):
        return f"does not match the regular expression {expect[len(BODY_REGEX_PREFIX) :]!r}"
    return f"does not contain {expect!r}"


def _reported_version(resp: httpx.Response) -> str | None:
    if "json" not in resp.headers.get("content-type", ""):
        return None
    try:
        body = resp.json()
    except ValueError:
        return None
    if isinstance(body, dict) and body.get("version") is not None:
        return str(body["version"])
    return None


def wait_healthy(
    config: Config,
    boot: Boot,
    *,
    is_running: Callable[[], bool],
    describe_exit: Callable[[], str],
    log_tail: Callable[[], str],
    port: int | None = None,
    what: str | None = None,
) -> HealthResult:
    """Poll until healthy. Fails as soon as the process exits (with its log tail), at once
    on a wrong version, and at ``startup_timeout`` otherwise."""
    timeout = config.daemon.startup_timeout
    deadline = time.monotonic() + timeout
    name = what or f"Boot {boot.boot_id}"
    with httpx.Client() as client:
        while True:
            if not is_running():
                tail = log_tail()
                raise BootError(
                    f"{name} ({boot.version}) {describe_exit()} before it became healthy.",
                    hint=f"Its log ends with:\n{tail}" if tail else "Its log is empty.",
                    log_tail=tail,
                )
            remaining = deadline - time.monotonic()
            result = check(
                client,
                config,
                boot,
                timeout=max(0.05, min(config.health.timeout, remaining)),
                port=port,
            )
            if result.ok:
                return result
            if result.wrong_version is not None:
                raise BootError(
                    f"{name} is the wrong binary: {result.detail}.",
                    hint="Check that daemon.command starts the version being deployed.",
                )
            if time.monotonic() >= deadline:
                raise BootError(
                    f"{name} ({boot.version}) did not become healthy within "
                    f"{timeout:g}s (last check: {result.detail}).",
                    hint=f"Raise daemon.startup_timeout, or see `bgdeploy logs {boot.boot_id}`.",
                    log_tail=log_tail(),
                )
            time.sleep(config.health.startup_interval)


def attach(config: Config, boot: Boot, workspace: str, port: int | None = None) -> None:
    """POST the workspace to the boot's attach path (on one replica's ``port``); raise
    unless it answers 2xx."""
    if not config.daemon.attach_path:
        return
    url = f"http://127.0.0.1:{port or boot.port}{config.daemon.attach_path}"
    try:
        resp = httpx.post(url, json={"workspace": workspace}, timeout=config.health.timeout)
    except httpx.HTTPError as e:
        raise BootError(
            f"Boot {boot.boot_id} could not attach workspace {workspace!r}: "
            f"{type(e).__name__} on {url}."
        ) from None
    if not 200 <= resp.status_code < 300:
        raise BootError(
            f"Boot {boot.boot_id} refused to attach workspace {workspace!r}: {url} answered "
            f"{resp.status_code} {resp.text[:200].strip()}.",
            hint="See the daemon's log: bgdeploy logs " + boot.boot_id,
        )
