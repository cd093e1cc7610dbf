"""The demo daemon: a small HTTP server that follows the daemon contract, stdlib only.

    python -m bgdeploy.demo --port P --version V      (or: bgdeploy demo-daemon ...)

It stands in for your daemon in the quick start (``bgdeploy init --demo``), so that a
``pip install`` alone is enough to try bgdeploy. The port, version and boot id fall back
to ``BGDEPLOY_PORT``, ``BGDEPLOY_VERSION`` and ``BGDEPLOY_BOOT_ID``. Endpoints:

  GET /            {"version", "boot_id", "pid"}
  GET /healthz     {"status": "ok", "version"}; 503 once --fail-health-after S has passed
  GET /slow?ms=N   answers after N ms (to watch a drain)

A version string chooses a fault of ``/`` that health checks do not see, to show the
traffic analysis: one containing ``-bad`` (e.g. ``3.0-bad``) answers 3 of every 10
requests with 500; one containing ``-slow`` answers each 300 ms later.

On SIGTERM it stops accepting, finishes the requests in flight, closes idle keep-alive
connections, and exits 0. ``tools/demo_daemon.py`` in a checkout is the test suite's
daemon, with many more fault switches (it needs aiohttp).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

BAD_SHARE = 0.3  # of `/` answers that are 500 in a "-bad" version
SLOW_S = 0.3  # added to each `/` answer in a "-slow" version


class VersionFaults:
    """The fault a version string chooses (see the module's doc); thread-safe."""

    def __init__(self, version: str) -> None:
        self.bad = "-bad" in version
        self.delay = SLOW_S if "-slow" in version else 0.0
        self._n = 0
        self._lock = threading.Lock()

    def fails(self) -> bool:
        """Whether this answer of `/` is a 500: exactly 3 in every 10 for a bad version."""
        if not self.bad:
            return False
        with self._lock:
            self._n += 1
            return self._n % 10 < BAD_SHARE * 10


class DemoServer(ThreadingHTTPServer):
    """Tracks its connections, so that a stop can close the idle ones and wait for the rest."""

    daemon_threads = False  # server_close() joins the threads: in-flight requests finish
    block_on_close = True

    def __init__(self, port: int, args: argparse.Namespace) -> None:
        self.args = args
        self.faults = VersionFaults(args.version)
        self.started = time.monotonic()
        self.stopping = threading.Event()
        self.idle: set[socket.socket] = set()
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", port), DemoHandler)

    def mark(self, sock: socket.socket, idle: bool) -> bool:
        """Record whether a connection waits for its next request; False once stopping."""
        with self.lock:
            if idle:
                self.idle.add(sock)
            else:
                self.idle.discard(sock)
            return not self.stopping.is_set()

    def stop(self) -> None:
        """Stop accepting, then end the keep-alive connections that wait for a request."""
        self.shutdown()
        with self.lock:
            self.stopping.set()
            idle = list(self.idle)
        for sock in idle:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def healthy(self) -> bool:
        after = self.args.fail_health_after
        return after is None or time.monotonic() - self.started < after


class DemoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the router's upstream pool expects
    server: DemoServer

    def handle(self) -> None:
        self.close_connection = True
        try:
            self.handle_one_request()
            while not self.close_connection and self.server.mark(self.connection, idle=True):
                self.handle_one_request()
        finally:
            self.server.mark(self.connection, idle=False)

    def parse_request(self) -> bool:
        # A request line arrived: this connection is busy until its answer is sent.
        self.server.mark(self.connection, idle=False)
        return super().parse_request()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        args = self.server.args
        url = urlsplit(self.path)
        identity = {"version": args.version, "boot_id": args.boot_id, "pid": os.getpid()}
        if url.path == "/":
            faults = self.server.faults
            if faults.delay:
                time.sleep(faults.delay)
            if faults.fails():
                self.answer(500, {**identity, "error": "this version fails 30% of requests"})
            else:
                self.answer(200, identity)
        elif url.path == "/healthz":
            healthy = self.server.healthy()
            body = {"status": "ok" if healthy else "failing", "version": args.version}
            self.answer(200 if healthy else 503, body)
        elif url.path == "/slow":
            ms = float(parse_qs(url.query).get("ms", ["100"])[0])
            time.sleep(min(ms, 600_000) / 1000)
            self.answer(200, {**identity, "slept_ms": ms})
        else:
            self.answer(404, {"error": f"no such path: {url.path}"})

    def answer(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.server.stopping.is_set():
            self.close_connection = True
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        if self.server.args.access_log:
            sys.stdout.write(f"{self.address_string()} {format % args}\n")
            sys.stdout.flush()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ
    p = argparse.ArgumentParser(
        prog="bgdeploy demo-daemon",
        description="A demo daemon that follows bgdeploy's daemon contract (stdlib only).",
    )
    p.add_argument("--port", type=int, default=int(env.get("BGDEPLOY_PORT", "0")))
    p.add_argument("--version", default=env.get("BGDEPLOY_VERSION", "dev"))
    p.add_argument("--boot-id", default=env.get("BGDEPLOY_BOOT_ID", "manual"))
    p.add_argument(
        "--fail-health-after",
        type=float,
        default=None,
        metavar="S",
        help="answer /healthz with 503 from S seconds after start (to watch a rollback)",
    )
    p.add_argument("--access-log", action="store_true", help="one log line per request")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    server = DemoServer(args.port, args)
    port = server.server_address[1]
    print(f"demo daemon {args.version} ({args.boot_id}) pid {os.getpid()}", flush=True)
    print(f"listening on 127.0.0.1:{port}", flush=True)

    def on_sigterm(signum: int, frame: object) -> None:
        # shutdown() waits for serve_forever() to return: it cannot run on its thread.
        threading.Thread(target=server.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, on_sigterm)
    server.serve_forever(poll_interval=0.2)
    server.server_close()  # joins the request threads
    print("stopped: in-flight requests finished", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
