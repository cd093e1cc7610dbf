"""`bgdeploy init`: a starter config and a registry at migration head."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bgdeploy.config import STARTER_CONFIG, find_config_path, load_config
from bgdeploy.errors import ConfigError
from bgdeploy.registry import migrate
from bgdeploy.registry.store import Registry


@dataclass(frozen=True)
class InitResult:
    config_path: Path
    wrote_config: bool
    registry_url: str
    revision: str | None


def init(config_path: str | Path | None = None) -> InitResult:
    path = find_config_path(config_path)
    wrote = False
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(STARTER_CONFIG)
        except OSError as e:
            raise ConfigError(
                f"Cannot write {path}: {e.strerror}.",
                hint="Choose a writable folder, or pass --config PATH.",
            ) from None
        wrote = True
    config = load_config(path)
    registry = Registry(config.registry_url)
    try:
        revision = migrate.current_revision(registry.engine)
    finally:
        registry.close()
    return InitResult(path, wrote, config.registry_url, revision)
