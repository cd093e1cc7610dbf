"""What one command works with: the config, its registry, its lifecycle lock and the
port to a running router (``router``; see router_api.py)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from bgdeploy.config import Config, find_config_path, load_config
from bgdeploy.control.lock import LifecycleLock
from bgdeploy.control.router_api import AdminApi, RouterApi
from bgdeploy.registry.store import Registry
from bgdeploy.registry.urls import is_postgres

if TYPE_CHECKING:
    from bgdeploy.control.pg_lock import PgLifecycleLock


class App:
    def __init__(self, config: Config, service: str | None = None) -> None:
        self.config = config
        self.service = service or config.service
        # Over the admin listener; the control loop in the router supervisor swaps in
        # the supervisor's own answers (bgdeploy/routerd.py).
        self.router: RouterApi = AdminApi(self)

    @classmethod
    def load(cls, config_path: str | Path | None = None) -> App:
        return cls(load_config(find_config_path(config_path)))

    @cached_property
    def registry(self) -> Registry:
        return Registry(self.config.registry_url)

    def lock(self) -> LifecycleLock | PgLifecycleLock:
        """An flock beside a SQLite registry; an advisory lock in a PostgreSQL one, which
        every host sharing the registry sees."""
        if is_postgres(self.config.registry_url):
            from bgdeploy.control.pg_lock import PgLifecycleLock

            return PgLifecycleLock(self.config.registry_url, self.service)
        return LifecycleLock(self.config.state_dir, self.service)

    def close(self) -> None:
        self.router.close()
        if "registry" in self.__dict__:
            self.registry.close()
