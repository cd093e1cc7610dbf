"""The router row: which supervisor owns a service's fixed address, and the digest of
the configuration it runs with."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import psutil

from bgdeploy.registry.models import Router, utcnow

if TYPE_CHECKING:
    from bgdeploy.registry.store import Registry


class RouterRecords:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def read(self, service: str) -> Router | None:
        with self.registry.reading() as s:
            return s.get(Router, service)

    def record(self, service: str, url: str, admin_url: str, config_digest: str) -> None:
        """This process serves the service (at start, after a reload, after a hand-over)."""
        with self.registry.writing() as s:
            row = s.get(Router, service)
            if row is None:
                row = Router(service=service)
                s.add(row)
            if row.pid != os.getpid():
                row.started_ts = utcnow()
            row.pid = os.getpid()
            row.pid_create_time = psutil.Process().create_time()
            row.url, row.admin_url, row.config_digest = url, admin_url, config_digest

    def forget(self, service: str) -> None:
        """This process stopped serving (its row only: a successor may own it already)."""
        with self.registry.writing() as s:
            row = s.get(Router, service)
            if row is not None and row.pid == os.getpid():
                s.delete(row)
