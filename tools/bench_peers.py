"""The other proxies `make bench` measures the router against, each with one worker/thread.

nginx (worker_processes 1), HAProxy (nbthread 1) and Caddy (GOMAXPROCS=1), each a
reverse proxy with upstream keep-alive to the backends named by port. Loopback only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def nginx_bin() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def start_nginx(
    workdir: Path, name: str, servers: str, workers: int = 1
) -> subprocess.Popen[bytes]:
    d = workdir / name
    d.mkdir()
    write_nginx_conf(d, servers, workers)
    return subprocess.Popen(
        [nginx_bin(), "-p", str(d), "-c", str(d / "nginx.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def write_nginx_conf(d: Path, servers: str, workers: int = 1) -> None:
    """d/nginx.conf: nginx in the foreground, its files in d, with these server blocks."""
    (d / "nginx.conf").write_text(f"""
worker_processes {workers};
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  {servers}
}}
""")


def nginx_proxies(pairs: list[tuple[int, int]]) -> str:
    """nginx server blocks: listen on each first port, proxy to each second (keepalive)."""
    return "\n".join(
        f"""
  upstream be{i} {{ server 127.0.0.1:{backend}; keepalive 64; }}
  server {{ listen 127.0.0.1:{listen};
    location / {{ proxy_pass http://be{i}; proxy_http_version 1.1;
                 proxy_set_header Connection ""; }} }}"""
        for i, (listen, backend) in enumerate(pairs)
    )


def start_haproxy(workdir: Path, pairs: list[tuple[int, int]]) -> subprocess.Popen[bytes]:
    d = workdir / "haproxy"
    d.mkdir()
    sections = "".join(
        f"""
frontend f{i}
  bind 127.0.0.1:{listen}
  default_backend b{i}
backend b{i}
  http-reuse always
  server s{i} 127.0.0.1:{backend} maxconn 1000
"""
        for i, (listen, backend) in enumerate(pairs)
    )
    (d / "haproxy.cfg").write_text(f"""
global
  nbthread 1
  maxconn 8192
defaults
  mode http
  option http-keep-alive
  timeout connect 5s
  timeout client 60s
  timeout server 60s
{sections}""")
    return subprocess.Popen(
        ["haproxy", "-db", "-f", str(d / "haproxy.cfg")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def start_caddy(workdir: Path, pairs: list[tuple[int, int]]) -> subprocess.Popen[bytes]:
    d = workdir / "caddy"
    d.mkdir()
    sites = "".join(
        f"http://127.0.0.1:{listen} {{\n  reverse_proxy 127.0.0.1:{backend}\n}}\n"
        for listen, backend in pairs
    )
    (d / "Caddyfile").write_text("{\n  admin off\n  auto_https off\n}\n" + sites)
    env = {
        **os.environ,
        "GOMAXPROCS": "1",
        "HOME": str(d),
        "XDG_DATA_HOME": str(d),
        "XDG_CONFIG_HOME": str(d),
    }
    return subprocess.Popen(
        ["caddy", "run", "--config", str(d / "Caddyfile"), "--adapter", "caddyfile"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
