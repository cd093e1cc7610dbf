"""Boots: spawn, identify, stop; internal ports; liveness.

A process is ours only if its pid **and** its start time match what we
recorded (psutil), so a recycled pid is never mistaken for our daemon.
"""

from __future__ import annotations

import psutil


def process_matches(pid: int | None, create_time: float | None) -> bool:
    """True when ``pid`` is alive and is the very process we recorded (not a reused pid)."""
    if not pid or create_time is None:
        return False
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - create_time) < 0.05 and proc.status() != "zombie"
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
