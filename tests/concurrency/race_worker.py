"""One racing actor: ROUNDS rounds of read-the-row-then-fire on a shared registry.

Prints one JSON line: transitions applied per event, no-ops, and any error that
reached it (there must be none).
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

from bgdeploy.registry.store import Registry

CHOICES = {
    "idle": ["begin"],
    "starting": ["candidate_ready", "abort"],
    "ready": ["switch", "switch", "abort"],
    # Rollback weighs three to one against finalize: on PostgreSQL a race applies only
    # ~70 transitions (~7 switches), and at even odds one run in ~60 saw no rollback.
    "switched": ["rollback", "rollback", "rollback", "finalize", "health"],
    "rolling_back": ["rollback_done"],
}


def main() -> None:
    url, rounds, seed, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    rng = random.Random(seed)
    reg = Registry(url)
    while not go.exists():  # start together
        time.sleep(0.005)
    applied: dict[str, int] = {}
    noops = 0
    errors: list[str] = []
    started = time.monotonic()
    for i in range(rounds):
        try:
            row = reg.deployment("default")
            event = rng.choice(CHOICES[row.state])
            if event == "rollback" and row.old_boot_id is None:
                event = "finalize"
            generation = row.generation
            if rng.random() < 0.1:
                generation -= 1  # a deliberately stale actor
            if event == "health":
                res = reg.record_health("default", generation, ok=rng.random() < 0.5)
                if res.applied:
                    continue
            else:
                res = reg.transition(
                    "default",
                    event,
                    generation=generation,
                    state=row.state,
                    reason=f"worker {seed} round {i}",
                    version=f"v{seed}.{i}",
                )
            if res.applied:
                applied[event] = applied.get(event, 0) + 1
            else:
                noops += 1
                # A no-op answers with the current row, which therefore differs from the
                # view it was refused for (else the transition would have applied).
                if (res.row.generation, res.row.state) == (generation, row.state):
                    errors.append(f"{event} refused with the row it was asked about: {res.message}")
        except Exception as e:  # noqa: BLE001 - every error is reported to the test
            errors.append(f"{type(e).__name__}: {e}")
    seconds = time.monotonic() - started
    print(json.dumps({"applied": applied, "noops": noops, "errors": errors, "seconds": seconds}))


if __name__ == "__main__":
    main()
