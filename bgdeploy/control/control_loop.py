"""The control loop's hook: a reconcile pass every ``health.interval``, and one at
once when the active boot exits.

A thread waits on a pidfd of the active boot (Linux 5.3+; it works whoever the
boot's parent is, so also for a boot that ``bgdeploy deploy`` started), and polls
the process every 0.1 s where there is none. On an exit it runs the pass, which
marks the deployment healing (the router holds new requests from then on) and
restarts the boot, or rolls back to the warm old boot while switched. While a
crash loop waits, the thread runs the pass when the wait is over, not on the next
tick. Passes from the tick and from the thread never overlap (one lock).

A quiet tick reads nothing: after a pass that had nothing to do and nothing waiting
(idle, one boot, no drain, no crash loop, no replica set to check), the next ticks
only compare the SQLite registry's change hint and the version file's stat with
what they were before that pass; the same, the pass would decide the same. A full
pass runs all the same every TRUST_HINT_S, and at once on an exit (the thread).
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Callable

from bgdeploy.control import crashes
from bgdeploy.control.app import App
from bgdeploy.control.drain import Inflight
from bgdeploy.processes import open_pidfd, process_matches
from bgdeploy.states import BootState

log = logging.getLogger("bgdeploy.control_loop")

FALLBACK_POLL_S = 0.1
REREAD_S = 0.25  # how often the watcher looks whether the active boot changed
# How often it rereads the row even though the registry's change hint stayed the same
# (a SQLite file's stat: a read every REREAD_S cost an idle router 0.4% of a core).
TRUST_HINT_S = 5.0
RETRY_S = 0.1  # after a pass that could not act (the lifecycle lock was busy)


class ControlLoop:
    """What the router's wiring calls every ``health.interval``: ``tick(inflight)``."""

    def __init__(self, make_reconciler: Callable[[App, Inflight], object], app: App) -> None:
        self.app = app
        self._make = make_reconciler
        self._rec: object | None = None
        self._inflight: Inflight | None = None
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        # the boot (and its processes) whose exit the last pass acted on
        self._acted: tuple[str, tuple[int | None, ...]] | None = None
        self.stopping = threading.Event()
        self._hint: tuple[int, ...] | None = None  # the registry's, at the last read
        self._hint_read = 0.0
        self.passes = 0  # passes run (for /api/status: a user sees the loop is alive)
        self.quiet_passes = 0  # of which quiet ticks (nothing read: nothing changed)
        # (inputs, when) of the last pass that found nothing to do, else None
        self._quiet: tuple[tuple[object, ...], float] | None = None
        self.last_decision: str | None = None

    def reset(self, app: App) -> None:
        """A new config: the next pass builds its reconciler from it."""
        with self._lock:
            self.app = app
            self._rec = None
            self._quiet = None

    def watch(self, inflight: Inflight) -> None:
        """Start watching for exits now (the router calls it before it serves)."""
        self._inflight = inflight
        if self._watcher is None:
            self._watcher = threading.Thread(
                target=self._watch, name="bgdeploy-exit-watch", daemon=True
            )
            self._watcher.start()

    def tick(self, inflight: Inflight) -> None:
        self.watch(inflight)
        with self._lock:
            quiet = self._quiet
            fresh = quiet is not None and time.monotonic() - quiet[1] < TRUST_HINT_S
            if fresh and self._inputs() == quiet[0]:  # type: ignore[index]
                self.passes += 1
                self.quiet_passes += 1
                return
        self.run_pass()

    def _inputs(self) -> tuple[object, ...] | None:
        """What a pass reads that can change without a process exiting, as a token:
        None where there is none (PostgreSQL, a version_command: every tick reads)."""
        cfg = self.app.config.daemon
        hint = self.app.registry.change_hint()
        if hint is None or cfg.version_command:
            return None
        try:
            st = os.stat(cfg.version_file) if cfg.version_file else None
        except OSError:
            return None
        return (hint, st and (st.st_ino, st.st_size, st.st_mtime_ns))

    def run_pass(self) -> object:
        with self._lock:
            if self._rec is None:
                assert self._inflight is not None
                self._rec = self._make(self.app, self._inflight)
            inputs, self._quiet = self._inputs(), None
            report = self._rec.run()  # type: ignore[attr-defined]
            self.passes += 1
            if inputs is not None and getattr(report, "quiet", False):
                self._quiet = (inputs, time.monotonic())
            decision = getattr(report, "decision", None)
            if decision is not None:
                self.last_decision = decision.sentence
            return report

    def as_dict(self) -> dict[str, object]:
        return {
            "passes": self.passes,
            "quiet_passes": self.quiet_passes,
            "last_decision": self.last_decision,
        }

    # -- the watcher thread ----------------------------------------------------------------

    def _watch(self) -> None:
        failing = False  # a full disk or a locked registry fails every round: say so once
        while not self.stopping.is_set():
            try:
                self._watch_once()
            except Exception as e:  # noqa: BLE001 - the watcher must outlive a bad read
                if not failing:
                    log.warning("exit watcher: %s (quiet until it works again)", e)
                failing = True
                self.stopping.wait(REREAD_S)
            else:
                if failing:
                    log.warning("exit watcher works again")
                failing = False

    def _watch_once(self) -> None:
        app = self.app
        reg = app.registry
        row = reg.deployment(app.service)
        boot = reg.boot(row.active_boot_id)
        if boot is None:
            self.stopping.wait(REREAD_S)
            return
        if boot.state in (BootState.FAILED.value, BootState.STOPPED.value):
            # Known dead, waiting for a crash-loop backoff: run the pass when it is over.
            wait = crashes.next_try_in(app)
            if self.stopping.wait(min(wait, REREAD_S) if wait > 0 else REREAD_S):
                return
            if wait > 0 and wait <= REREAD_S:
                self._act()
            return
        # A boot of several: any replica's exit (the pass restarts it, the others serve).
        rows = [r for r in reg.replicas.rows(boot.boot_id) if r.state in ("serving", "starting")]
        watched = [(r.pid, r.pid_create_time) for r in rows] if rows else []
        if not rows:
            watched = [(boot.pid, boot.pid_create_time)]
        key = (boot.boot_id, tuple(pid for pid, _ in watched))
        if not self._wait_exit(boot.boot_id, watched):
            return
        if self._acted == key:
            # A pass acted on this exit and the dead boot is still the active one: the pass
            # could not replace it (the tick retries every health.interval). Acting again
            # at once would only spin.
            self.stopping.wait(REREAD_S)
            return
        log.warning("active boot %s: a process exited: acting now", boot.boot_id)
        self._acted = key
        if not self._act():
            self._acted = None  # the lock was busy: the next round acts on it again

    def _act(self) -> bool:
        """Run a pass now; False when it could not act (someone holds the lock)."""
        report = self.run_pass()
        if getattr(report, "skipped", None):
            self.stopping.wait(RETRY_S)  # someone holds the lock; the next round retries
            return False
        return True

    def _active_changed(self, boot_id: str) -> bool:
        """Whether the active boot is another than ``boot_id`` now: the row is read only
        when the registry says it changed, or TRUST_HINT_S after the last read."""
        reg = self.app.registry
        hint, now = reg.change_hint(), time.monotonic()
        if hint is not None and hint == self._hint and now - self._hint_read < TRUST_HINT_S:
            return False
        self._hint, self._hint_read = hint, now
        return reg.deployment(self.app.service).active_boot_id != boot_id

    def _wait_exit(self, boot_id: str, processes: list[tuple[int | None, float | None]]) -> bool:
        """Block until one of the boot's processes exits (True) or the boot stops being
        the active one (False)."""
        fds = [open_pidfd(pid, ct) for pid, ct in processes]
        try:
            poller = None
            if fds and all(fd is not None for fd in fds):
                poller = select.poll()
                for fd in fds:
                    poller.register(fd, select.POLLIN)  # type: ignore[arg-type]
            while not self.stopping.is_set():
                if poller is not None:
                    if poller.poll(REREAD_S * 1000):
                        return True
                elif not all(process_matches(pid, ct) for pid, ct in processes):
                    return True
                else:
                    time.sleep(FALLBACK_POLL_S)
                if self._active_changed(boot_id):
                    return False
            return False
        finally:
            for fd in fds:
                if fd is not None:
                    os.close(fd)
