"""ISO 8601 UTC timestamps as every --json output prints them."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(ts: datetime | None) -> str | None:
    if ts is None:
        return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
