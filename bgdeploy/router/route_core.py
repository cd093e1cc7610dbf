"""The fields of the route table that every request reads (``RouteCore``).

``routes.RouteTable`` derives from it and is the only writer. Compiled (setup.py,
route_core.pxd), it is an extension type with C fields, and the request path's
modules type their ``table`` as it: the route, the clock and the flags are then read
in C, not looked up on a Python object (a sixth of the compiled path's time before).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bgdeploy.router.route_state import Route
    from bgdeploy.router.upstream import Replica


class RouteCore:
    """The active route, its replicas, the coarse clock and the flags; see RouteTable."""

    active: Route | None
    targets: dict[str, tuple[Replica, ...]]
    kept: frozenset[Replica]
    clock: float
    controlled: bool
    draining: bool
