"""Start N boots from this process, at the same moment as other workers; print their ports."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from bgdeploy.boots import BootProcesses
from bgdeploy.config import load_config
from bgdeploy.control.app import App


def main() -> None:
    config_path, count, go = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    app = App(load_config(config_path))
    sup = BootProcesses(app.config, app.registry)
    while not go.exists():
        time.sleep(0.002)
    out = []
    for _ in range(count):
        boot_id = app.registry.create_boot("default", 1, "1.0")
        boot = sup.spawn(boot_id)
        out.append({"boot_id": boot.boot_id, "port": boot.port, "pid": boot.pid})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
