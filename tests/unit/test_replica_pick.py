"""Where the router sends a new request among a boot's replicas (balancing.pick), its
pools per replica, and the per-replica counts the supervisor sums (stats.RouterStats)."""

from __future__ import annotations

import asyncio
from collections import Counter

from bgdeploy.router.balancing import pick
from bgdeploy.router.route_state import Route
from bgdeploy.router.routes import RouteTable
from bgdeploy.router.stats import RouterStats
from bgdeploy.router.upstream import Replica


def replicas(*outstanding: int) -> tuple[Replica, ...]:
    reps = tuple(Replica("blue-1", 41001 + i) for i in range(len(outstanding)))
    for rep, n in zip(reps, outstanding, strict=True):
        rep.outstanding = n
    return reps


def picks(reps: tuple[Replica, ...], n: int = 2000, now: float = 10.0, avoid=None) -> Counter:  # noqa: ANN001
    return Counter(pick(reps, now, avoid).port for _ in range(n))


def test_two_replicas_the_less_loaded_wins_ties_are_drawn() -> None:
    a, b = reps = replicas(3, 1)
    assert picks(reps) == {b.port: 2000}
    a.outstanding = 1
    tie = picks(reps)
    assert set(tie) == {a.port, b.port} and 800 < tie[a.port] < 1200


def test_power_of_two_choices_over_more_replicas() -> None:
    reps = replicas(0, 5, 5, 5)
    got = picks(reps, 4000)
    # The idle one wins whenever it is drawn, i.e. in 1/2 of the draws of two of four.
    assert 1700 < got[41001] < 2300 and set(got) == {r.port for r in reps}
    # The most loaded one is never taken while two others are drawn against it.
    reps = replicas(0, 0, 0, 9)
    assert 41004 not in picks(reps, 4000)


def test_a_down_replica_is_skipped_unless_all_are() -> None:
    a, b, c = reps = replicas(0, 0, 9)
    a.down_until = b.down_until = 11.0  # refused a connect: skipped until then
    assert picks(reps, 500) == {c.port: 500}  # the loaded one, the only one up
    assert picks(reps, 500, now=11.5).keys() == {a.port, b.port}  # the second has passed
    c.down_until = 11.0
    assert set(picks(reps, 500)) <= {a.port, b.port, c.port}  # all down: try anyway


def test_the_replica_that_just_failed_is_avoided() -> None:
    a, b = reps = replicas(0, 4)
    assert picks(reps, 500, avoid=a) == {b.port: 500}
    b.down_until = 11.0
    assert picks(reps, 500, avoid=a) == {b.port: 500}  # the only other one: try it anyway
    (only,) = replicas(0)
    assert pick((only, only), 10.0, only) is only


def test_pools_per_replica_and_a_port_out_of_rotation() -> None:
    loop = asyncio.new_event_loop()
    try:
        table = RouteTable(loop, max_connections=10)
        table.set_active(Route("blue-1", 41001, 1, (41001, 41002)))
        one, two = table.targets["blue-1"]
        assert (one.port, two.port) == (41001, 41002)
        assert table.kept == {one, two}
        table.set_active(Route("blue-1", 41001, 1, (41001,)))
        assert table.targets["blue-1"] == (one,) and table.kept == {one}
        assert table.pools.replica("blue-1", 41002) is two  # its counts stay
        table.set_active(Route("green-2", 41005, 2))  # one process: its port
        assert [r.port for r in table.targets["green-2"]] == [41005]
        assert table.kept == {table.pools.replica("green-2", 41005)}
    finally:
        loop.close()


def test_the_supervisor_sums_replicas_over_workers() -> None:
    def worker(pid: int, rows: list) -> dict:  # noqa: ANN001
        return {
            "pid": pid,
            "version": "x",
            "started": float(pid),
            "draining": False,
            "connections": 0,
            "inflight": {},
            "requests": [],
            "upstream_errors": [],
            "switches": 0,
            "route": ["blue-1", 1],
            "route_changed_at": 0.0,
            "replicas": rows,
        }

    retired = RouterStats()
    retired.add(worker(1, [["blue-1", 41001, 10, 1, 2]]))
    snap = RouterStats.of(
        [
            worker(2, [["blue-1", 41001, 5, 0, 1], ["blue-1", 41002, 7, 2, 0]]),
            worker(3, [["blue-1", 41002, 1, 0, 3]]),
        ],
        retired,
    )
    assert snap.replicas_of() == {
        "blue-1": {
            # the retired worker's answers and errors count, not its outstanding
            "41001": {"requests": 15, "upstream_errors": 1, "outstanding": 1},
            "41002": {"requests": 8, "upstream_errors": 2, "outstanding": 3},
        }
    }
