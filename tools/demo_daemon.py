#!/usr/bin/env python3
"""A daemon that follows the bgdeploy daemon contract, with fault switches.

    python tools/demo_daemon.py --port P --version V [faults...]

Falls back to BGDEPLOY_PORT / BGDEPLOY_VERSION / BGDEPLOY_BOOT_ID. Endpoints:
  GET  /              {"version", "boot_id", "pid"} (what a person looks at)
  GET  /slow?ms=N     answers after N ms
  GET  /sse           server-sent events, one per 100 ms (?count=N to stop after N,
                      ?every=MS for another pace)
  GET  /ws            WebSocket echo
  POST /echo          returns the request body, streamed
  GET  /bytes?n=N     N bytes, streamed in 64 KiB chunks
  GET  /healthz       {"status": "ok", "version"}; 503 when unhealthy
  POST /workspaces    {"workspace": "<id>"} attaches a workspace
  GET  /workspaces    {"workspaces": [...]}, the attached ones
  ANY  /probe         a health endpoint with expectations (--probe-* switches)
  GET  /hang          never answers (until the daemon stops)
  GET  /stall         sends the head and half of the body, then nothing
A version string with "-bad" answers 3 in 10 requests of / with 500, one with "-slow"
answers / 300 ms later (health checks see neither: bgdeploy.demo.VersionFaults).
On SIGTERM it stops accepting, finishes in-flight requests, then exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time

from aiohttp import WSMsgType, web

from bgdeploy.demo import VersionFaults

CHUNK = 64 * 1024
CHILD_IGNORING_SIGTERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--port", type=int, default=int(env.get("BGDEPLOY_PORT", "0")))
    p.add_argument("--version", default=env.get("BGDEPLOY_VERSION", "dev"))
    p.add_argument("--boot-id", default=env.get("BGDEPLOY_BOOT_ID", "manual"))
    p.add_argument("--start-delay", type=float, default=0.0, help="seconds before listening")
    p.add_argument("--crash-on-start", action="store_true", help="exit 3 right after starting")
    p.add_argument("--never-healthy", action="store_true")
    p.add_argument(
        "--exit-after",
        type=float,
        default=None,
        metavar="S",
        help="exit with code 7 S seconds after it listens (a crash loop)",
    )
    p.add_argument(
        "--fail-health-after",
        type=float,
        default=None,
        metavar="S",
        help="unhealthy from S seconds after start",
    )
    p.add_argument(
        "--fail-health-file", default=None, metavar="PATH", help="unhealthy while PATH exists"
    )
    p.add_argument(
        "--health-version", default=None, help="report this version on /healthz (a wrong binary)"
    )
    p.add_argument("--refuse-attach", action="store_true")
    p.add_argument("--probe-method", default=None, help="/probe answers 405 to other methods")
    p.add_argument(
        "--probe-header", default=None, metavar="NAME:VALUE", help="/probe answers 401 without it"
    )
    p.add_argument("--probe-host", default=None, help="/probe answers 421 to another Host")
    p.add_argument("--probe-status", type=int, default=200, help="/probe's status otherwise")
    p.add_argument("--probe-body", default="probe ok", help="/probe's body otherwise")
    p.add_argument("--ignore-sigterm", action="store_true")
    p.add_argument(
        "--spawn-child", action="store_true", help="start a child process that also ignores SIGTERM"
    )
    p.add_argument("--access-log", action="store_true", help="one log line per request")
    p.add_argument(
        "--argv-echo", action="store_true", help="print sys.argv as JSON at start (for argv tests)"
    )
    p.add_argument(
        "--fault-file",
        default=None,
        metavar="PATH",
        help="JSON object of fault switches read at start, if the file exists "
        '(e.g. {"crash_on_start": true}); with {version} in the path, faults '
        "can target one version",
    )
    p.add_argument("extra", nargs="*", help="ignored; shows up in --argv-echo")
    args = p.parse_args(argv)
    if args.fault_file and os.path.exists(args.fault_file):
        with open(args.fault_file) as f:
            for key, value in json.load(f).items():
                if not hasattr(args, key):
                    p.error(f"unknown fault {key!r} in {args.fault_file}")
                setattr(args, key, value)
    return args


class Daemon:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.faults = VersionFaults(args.version)
        self.started = time.monotonic()
        self.stopping = asyncio.Event()
        self.workspaces: set[str] = set()
        self.websockets: set[web.WebSocketResponse] = set()
        self.child: subprocess.Popen[bytes] | None = None

    def healthy(self) -> bool:
        a = self.args
        if a.never_healthy:
            return False
        if (
            a.fail_health_after is not None
            and time.monotonic() - self.started >= a.fail_health_after
        ):
            return False
        return not (a.fail_health_file and os.path.exists(a.fail_health_file))

    def identity(self) -> dict[str, object]:
        return {
            "version": self.args.version,
            "boot_id": self.args.boot_id,
            "pid": os.getpid(),
            "child_pid": self.child.pid if self.child else None,
        }

    async def index(self, request: web.Request) -> web.Response:
        # The version string's fault (bgdeploy.demo.VersionFaults): "-bad", "-slow".
        if self.faults.delay:
            await asyncio.sleep(self.faults.delay)
        if self.faults.fails():
            return web.json_response(
                {**self.identity(), "error": "this version fails 30% of requests"}, status=500
            )
        return web.json_response(self.identity())

    async def healthz(self, request: web.Request) -> web.Response:
        version = self.args.health_version or self.args.version
        if self.healthy():
            return web.json_response({"status": "ok", "version": version})
        return web.json_response({"status": "failing", "version": version}, status=503)

    async def slow(self, request: web.Request) -> web.Response:
        ms = float(request.query.get("ms", "100"))
        await asyncio.sleep(ms / 1000)
        return web.json_response({**self.identity(), "slept_ms": ms})

    async def echo(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={
                "Content-Type": request.content_type or "application/octet-stream",
                "X-Demo-Boot": self.args.boot_id,
            }
        )
        if request.content_length is not None:
            resp.content_length = request.content_length
        await resp.prepare(request)
        async for chunk in request.content.iter_chunked(CHUNK):
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    async def headers(self, request: web.Request) -> web.Response:
        """The request head as it arrived (to check what a proxy adds and strips).

        Each ``set=Name:value`` query parameter becomes a response header.
        """
        resp = web.json_response(
            {
                "method": request.method,
                "path_qs": request.path_qs,
                "version": f"{request.version.major}.{request.version.minor}",
                "headers": [
                    [name.decode("latin-1"), value.decode("latin-1")]
                    for name, value in request.raw_headers
                ],
            }
        )
        for pair in request.query.getall("set", []):
            name, _, value = pair.partition(":")
            resp.headers.add(name, value)
        return resp

    async def bytes_(self, request: web.Request) -> web.StreamResponse:
        n = int(request.query.get("n", "1024"))
        resp = web.StreamResponse()
        resp.content_length = n
        await resp.prepare(request)
        block = b"x" * CHUNK
        while n > 0:
            await resp.write(block[: min(n, CHUNK)])
            n -= CHUNK
        await resp.write_eof()
        return resp

    async def sse(self, request: web.Request) -> web.StreamResponse:
        count = int(request.query.get("count", "0"))
        every = float(request.query.get("every", "100")) / 1000
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        n = 0
        while not self.stopping.is_set() and (count == 0 or n < count):
            payload = json.dumps(
                {"n": n, "boot_id": self.args.boot_id, "version": self.args.version}
            )
            await resp.write(f"id: {n}\ndata: {payload}\n\n".encode())
            n += 1
            await asyncio.sleep(every)
        await resp.write_eof()
        return resp

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        self.websockets.add(sock)
        try:
            async for msg in sock:
                if msg.type == WSMsgType.TEXT:
                    await sock.send_str(f"{self.args.boot_id}:{msg.data}")
                elif msg.type == WSMsgType.BINARY:
                    await sock.send_bytes(msg.data)
        finally:
            self.websockets.discard(sock)
        return sock

    async def probe(self, request: web.Request) -> web.Response:
        a = self.args
        if a.probe_method and request.method != a.probe_method:
            return web.Response(status=405, text=f"method {request.method}")
        if a.probe_header:
            name, _, value = a.probe_header.partition(":")
            if request.headers.get(name) != value:
                return web.Response(status=401, text=f"missing {name}")
        if a.probe_host and request.host != a.probe_host:
            return web.Response(status=421, text=f"host {request.host}")
        return web.Response(status=a.probe_status, text=a.probe_body)

    async def hang(self, request: web.Request) -> web.Response:
        await self.stopping.wait()
        return web.Response(status=503, text="stopping")

    async def stall(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = 1000
        await resp.prepare(request)
        await resp.write(b"x" * 500)
        await self.stopping.wait()
        return resp

    async def attach(self, request: web.Request) -> web.Response:
        try:
            workspace = (await request.json())["workspace"]
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": 'body must be {"workspace": ...}'}, status=400)
        if self.args.refuse_attach:
            return web.json_response({"error": f"refusing to attach {workspace}"}, status=409)
        self.workspaces.add(workspace)
        return web.json_response({"attached": workspace, "boot_id": self.args.boot_id})

    async def attached(self, request: web.Request) -> web.Response:
        return web.json_response({"workspaces": sorted(self.workspaces)})

    async def on_shutdown(self, app: web.Application) -> None:
        self.stopping.set()
        for sock in list(self.websockets):
            await sock.close(code=1001, message=b"server shutting down")


@web.middleware
async def access_log(request: web.Request, handler):  # noqa: ANN001, ANN201
    t0 = time.monotonic()
    resp = await handler(request)
    ms = (time.monotonic() - t0) * 1000
    print(f"{request.method} {request.path_qs} {resp.status} {ms:.1f}ms", flush=True)
    return resp


def build_app(d: Daemon) -> web.Application:
    app = web.Application(
        middlewares=[access_log] if d.args.access_log else [], client_max_size=1024**3
    )
    app.router.add_get("/", d.index)
    app.router.add_get("/healthz", d.healthz)
    app.router.add_get("/slow", d.slow)
    app.router.add_post("/echo", d.echo)
    app.router.add_get("/bytes", d.bytes_)
    app.router.add_get("/headers", d.headers)
    app.router.add_get("/sse", d.sse)
    app.router.add_get("/ws", d.ws)
    app.router.add_post("/workspaces", d.attach)
    app.router.add_get("/workspaces", d.attached)
    app.router.add_route("*", "/probe", d.probe)
    app.router.add_get("/hang", d.hang)
    app.router.add_get("/stall", d.stall)
    app.on_shutdown.append(d.on_shutdown)
    return app


async def _exit_later(seconds: float) -> None:
    def die() -> None:
        print(f"fatal: --exit-after {seconds:g} given; exiting with code 7", flush=True)
        os._exit(7)

    asyncio.get_running_loop().call_later(seconds, die)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.argv_echo:
        print("ARGV " + json.dumps(sys.argv[1:]), flush=True)
    print(f"demo daemon {args.version} ({args.boot_id}) pid {os.getpid()} starting", flush=True)
    if args.crash_on_start:
        print("fatal: --crash-on-start given; exiting with code 3", file=sys.stderr, flush=True)
        return 3
    if args.start_delay:
        time.sleep(args.start_delay)
    d = Daemon(args)
    if args.spawn_child:
        d.child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                CHILD_IGNORING_SIGTERM,
            ]
        )
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(f"listening on 127.0.0.1:{args.port}", flush=True)
    app = build_app(d)
    if args.exit_after is not None:
        app.on_startup.append(lambda _app: _exit_later(args.exit_after))
    web.run_app(
        app,
        host="127.0.0.1",
        port=args.port,
        print=None,
        access_log=None,
        handle_signals=not args.ignore_sigterm,
        shutdown_timeout=30,
    )
    print("stopped: in-flight requests finished", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
