"""Which replica of a boot a new request goes to: least outstanding requests, of two drawn.

Its own module so that the request path's modules (client, exchange, upstream) import
only classes from each other: compiled, each cimported class makes its module import
the other one first, before that one has run its own code (see setup.py).
"""

from __future__ import annotations

from random import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bgdeploy.router.upstream import Replica

# How long new requests skip a replica that refused a connect (unless every replica of
# the route is skipped: then they try anyway); a connect to it that succeeds ends it.
DOWN_S = 1.0


def pick(reps: tuple[Replica, ...], now: float, avoid: Replica | None) -> Replica:
    """Of a route's replicas (two or more), where a new request goes: of two drawn at
    random (with two, both), the one with fewer outstanding requests, a tie drawn; one
    that is down (refused a connect less than DOWN_S ago) or ``avoid`` (the replica that
    just failed this request) only when every other one is too."""
    n = len(reps)
    if n == 2:
        a, b = reps[0], reps[1]
    else:
        i = int(random() * n)
        j = int(random() * (n - 1))
        a, b = reps[i], reps[j + 1 if j >= i else j]
    a_ok = a is not avoid and a.down_until <= now
    b_ok = b is not avoid and b.down_until <= now
    if a_ok and b_ok:
        if a.outstanding != b.outstanding:
            return a if a.outstanding < b.outstanding else b
        return b if n == 2 and random() < 0.5 else a
    if a_ok:
        return a
    if b_ok:
        return b
    for r in reps:  # both drawn are out: any other that is not
        if r is not avoid and r.down_until <= now:
            return r
    for r in reps:  # every replica is down: try anyway, elsewhere first
        if r is not avoid:
            return r
    return a
