"""A minimal ASGI app for `make bench`: the fast Python backend a router stands in front of.

python tools/uvicorn_app.py PORT [WORKERS]     (uvloop + httptools; 1 worker by default)

GET /cpu spends about 0.5 ms of CPU before the same answer (a daemon that works).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import uvicorn

BODY = b"x" * 99 + b"\n"
HEAD = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"100")],
}


async def app(scope: dict, receive, send) -> None:  # noqa: ANN001 - the ASGI signature
    if scope["type"] != "http":
        return
    if scope["path"] == "/cpu":  # a daemon that works for its answer: ~0.5 ms of CPU
        end = time.process_time() + 0.0005
        while time.process_time() < end:
            pass
    await send(HEAD)
    await send({"type": "http.response.body", "body": BODY})


if __name__ == "__main__":
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    uvicorn.run(
        "uvicorn_app:app" if workers > 1 else app,  # several workers import it by name
        app_dir=str(Path(__file__).resolve().parent),
        host="127.0.0.1",
        port=int(sys.argv[1]),
        workers=workers,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )
