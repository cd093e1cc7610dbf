"""The kinds of value a bgdeploy.toml key may take: how each is checked, described in an
error ("must be a port number (1-65535)") and converted (paths resolved against the
config file's folder). ``config_schema.SCHEMA`` gives each key one of them."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _same(value: Any, base: Path) -> Any:
    return value


@dataclass(frozen=True)
class Kind:
    """What a key accepts (``what`` finishes "must be ...") and how its value is stored."""

    what: str
    accepts: Callable[[Any], bool]
    convert: Callable[[Any, Path], Any] = _same


def one_of(*kinds: Kind) -> Kind:
    """Any of kinds, converted by the first that accepts the value (e.g. "auto" or a count)."""

    def convert(value: Any, base: Path) -> Any:
        kind = next(k for k in kinds if k.accepts(value))
        return kind.convert(value, base)

    return Kind(
        " or ".join(k.what for k in kinds), lambda v: any(k.accepts(v) for k in kinds), convert
    )


def literal(word: str) -> Kind:
    return Kind(json.dumps(word), lambda v: v == word)


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)


STR = Kind("a string", lambda v: isinstance(v, str) and v != "")
_SERVICE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")
SERVICE = Kind(
    "a name of at most 40 letters, digits, '.', '_' or '-' (starting with a letter or digit)",
    lambda v: isinstance(v, str) and _SERVICE_RE.fullmatch(v) is not None,
)
FILE = Kind("a string (a file path)", STR.accepts, lambda v, base: _resolve(base, v))
URL_PATH = Kind("a string starting with '/'", lambda v: isinstance(v, str) and v.startswith("/"))
PORT = Kind("a port number (1-65535)", lambda v: _is_int(v) and 1 <= v <= 65535)
NUMBER = Kind(
    "a positive number",
    lambda v: (_is_int(v) or isinstance(v, float)) and v > 0,
    lambda v, base: float(v),
)
SECONDS_OR_0 = Kind(
    "a number of seconds (0 or more)",
    lambda v: (_is_int(v) or isinstance(v, float)) and v >= 0,
    lambda v, base: float(v),
)
COUNT = Kind("a whole number of at least 1", lambda v: _is_int(v) and v >= 1)
ARGV = Kind(
    "a non-empty list of strings",
    lambda v: isinstance(v, list) and v != [] and all(isinstance(s, str) for s in v),
)
STR_LIST = Kind(
    "a list of strings", lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v)
)
STR_TABLE = Kind(
    "a table of strings",
    lambda v: isinstance(v, dict) and all(isinstance(s, str) for s in v.values()),
)
ENV_TABLE = Kind(
    "a table of environment variable names to string values",
    lambda v: (
        isinstance(v, dict)
        and all(
            isinstance(k, str)
            and k
            and "=" not in k
            and "\0" not in k
            and isinstance(s, str)
            and "\0" not in s
            for k, s in v.items()
        )
    ),
)
PORT_RANGE = Kind(
    "a list of two port numbers [low, high] with low <= high",
    lambda v: (
        isinstance(v, list)
        and len(v) == 2
        and all(_is_int(p) for p in v)
        and 1 <= v[0] <= v[1] <= 65535
    ),
    lambda v, base: tuple(v),
)


BOOL = Kind("true or false", lambda v: isinstance(v, bool))
RATIO = Kind(
    "a number above 0 and at most 1 (0.05 is 5%)",
    lambda v: (_is_int(v) or isinstance(v, float)) and 0 < v <= 1,
    lambda v, base: float(v),
)
RATIO_ABOVE_1 = Kind(
    "a number above 1 (2 means twice the old boot's)",
    lambda v: (_is_int(v) or isinstance(v, float)) and v > 1,
    lambda v, base: float(v),
)


MAX_CANARY_STEPS = 10  # the registry keeps them in 64 characters


def canary_steps_ok(v: Any) -> bool:
    return (
        isinstance(v, list)
        and len(v) <= MAX_CANARY_STEPS
        and all(_is_int(w) and 1 <= w <= 99 for w in v)
        and all(a < b for a, b in zip(v, v[1:], strict=False))
    )


CANARY_STEPS = Kind(
    "a list of at most 10 rising percentages between 1 and 99, such as [10, 50]",
    canary_steps_ok,
    lambda v, base: tuple(v),
)
METHOD = Kind(
    "an HTTP method such as GET, HEAD or POST",
    lambda v: isinstance(v, str) and v.isalpha() and v.isupper(),
)
HEADERS = Kind(
    "a table of header names to string values",
    lambda v: (
        isinstance(v, dict)
        and all(
            isinstance(k, str)
            and k != ""
            and all(c.isalnum() or c in "-_" for c in k)
            and isinstance(s, str)
            and "\r" not in s
            and "\n" not in s
            for k, s in v.items()
        )
    ),
)


def _status_ranges(value: Any) -> tuple[tuple[int, int], ...] | None:
    """200, "200-299", or a list of either -> inclusive ranges; None if malformed."""
    items = value if isinstance(value, list) and value else [value]
    ranges = []
    for item in items:
        if _is_int(item):
            low = high = item
        elif isinstance(item, str) and item.count("-") == 1:
            a, b = (part.strip() for part in item.split("-"))
            if not (a.isdigit() and b.isdigit()):
                return None
            low, high = int(a), int(b)
        else:
            return None
        if not 100 <= low <= high <= 599:
            return None
        ranges.append((low, high))
    return tuple(ranges)


STATUS_SET = Kind(
    'a status code, a range such as "200-299", or a list of them',
    lambda v: _status_ranges(v) is not None,
    lambda v, base: _status_ranges(v),
)
BODY_REGEX_PREFIX = "re:"


def _body_match_ok(value: Any) -> bool:
    if not isinstance(value, str) or value == "":
        return False
    if not value.startswith(BODY_REGEX_PREFIX):
        return True
    try:
        re.compile(value[len(BODY_REGEX_PREFIX) :])
    except re.error:
        return False
    return True


BODY_MATCH = Kind('a substring, or "re:" and a valid regular expression', _body_match_ok)
