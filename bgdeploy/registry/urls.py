"""Registry URLs, stdlib only: the router's workers read the route without SQLAlchemy."""

from __future__ import annotations

from pathlib import Path


def sqlite_path(url: str) -> Path | None:
    """The file behind a sqlite URL, or None for other databases and :memory:."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url.endswith(":memory:"):
        return None
    return Path(url[len(prefix) :])


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql:", "postgresql+"))
