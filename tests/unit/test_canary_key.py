"""The canary's sticky key: header, else the router's cookie, else the connection."""

from __future__ import annotations

import zlib

from bgdeploy.router.route_state import route_state
from bgdeploy.router.steering import canary_bucket

PEER = b"127.0.0.1:40001"
BY_PEER = zlib.crc32(PEER) % 100


def head(*lines: str) -> bytes:
    return ("GET / HTTP/1.1\r\n" + "".join(f"{line}\r\n" for line in lines) + "\r\n").encode()


def test_the_header_wins_any_value_case_kept():
    h = head("Host: x", "X-Bgdeploy-Canary-Key:  User-42 ", "Cookie: bgdeploy_canary=3")
    assert canary_bucket(h, PEER) == (zlib.crc32(b"User-42") % 100, False)
    assert canary_bucket(head("x-bgdeploy-canary-key: a"), PEER) == (zlib.crc32(b"a") % 100, False)
    # An empty key is no key.
    assert canary_bucket(head("X-Bgdeploy-Canary-Key: "), PEER) == (BY_PEER, True)


def test_the_cookie_is_our_bucket_or_nothing():
    assert canary_bucket(head("Cookie: a=1; bgdeploy_canary=7; b=2"), PEER) == (7, False)
    assert canary_bucket(head("Cookie: a=1", "Cookie: bgdeploy_canary=99"), PEER) == (99, False)
    for bad in ("100", "-1", "x", "", "1.5", "٣"):
        assert canary_bucket(head(f"Cookie: bgdeploy_canary={bad}"), PEER) == (BY_PEER, True)
    assert canary_bucket(head("Cookie: other_bgdeploy_canary=5"), PEER) == (BY_PEER, True)


def test_without_either_the_connection_decides_and_the_answer_sets_the_cookie():
    assert canary_bucket(head("Host: x"), PEER) == (BY_PEER, True)
    # Another port of the same address: another key (every local client is 127.0.0.1).
    buckets = {canary_bucket(head(), b"127.0.0.1:%d" % p)[0] for p in range(40000, 40200)}
    assert len(buckets) > 50


def test_the_route_carries_the_weight_of_a_held_candidate_only():
    row = ("blue-1", 47800, 3, "green-2", 47801, False, None, False, None, None, False, None)
    assert route_state(row).canary_weight == 0  # a row of an older schema
    assert route_state((*row, None)).canary_weight == 0
    assert route_state((*row, 30)).canary_weight == 30
    assert route_state((*row, 130)).canary_weight == 100
    no_candidate = (*row[:3], None, None, *row[5:], 30)
    assert route_state(no_candidate).canary_weight == 0
