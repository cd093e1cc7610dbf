"""A minimal ASGI app for `make bench`: the fast Python backend a router stands in front of.

python tools/uvicorn_app.py PORT     (one uvicorn worker, uvloop + httptools)
"""

from __future__ import annotations

import sys

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
    await send(HEAD)
    await send({"type": "http.response.body", "body": BODY})


if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )
