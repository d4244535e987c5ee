"""SharedRedis (events/shared_redis.py): one connection, many concurrent callers, replies in order.

Runs on the session's real Redis under keys of its own; nothing else there is touched.
"""
from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.exceptions import ResponseError

from events.shared_redis import SharedRedis


@pytest.fixture
async def redis(redis_url):
    shared = SharedRedis(redis_url)
    key = f"test-shared-{uuid.uuid4().hex[:12]}"
    yield shared, key
    await shared.execute("DEL", key)
    await shared.close()


async def test_concurrent_callers_each_get_their_own_reply_over_one_connection(redis):
    shared, key = redis
    pushes = [shared.execute("RPUSH", key, i) for i in range(500)]
    asked = [shared.execute("CLIENT", "ID") for _ in range(20)]  # in flight with the pushes
    replies = await asyncio.gather(*pushes, *asked)
    assert sorted(replies[:500]) == list(range(1, 501))  # each RPUSH answered with its own length
    assert len(set(replies[500:])) == 1  # every caller's commands went over the same connection
    assert await shared.execute("LRANGE", key, 0, 2) == ["0", "1", "2"]  # sent in call order


async def test_an_error_reply_fails_only_its_own_command(redis):
    shared, key = redis
    before = shared.send("SET", key, "x")
    wrong = shared.send("LPUSH", key, "y")  # a list command on a string: an error reply
    after = shared.send("GET", key)
    assert await before == "OK"
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await wrong
    assert await after == "x"


async def test_a_cancelled_caller_leaves_the_others_in_step(redis):
    shared, key = redis
    await shared.execute("SET", key, "1")
    slow = asyncio.ensure_future(shared.execute("INCR", key))
    await asyncio.sleep(0)
    slow.cancel()
    assert await shared.execute("GET", key) == "2"  # the command still ran; its reply was skipped
    assert await shared.execute("INCR", key) == 3


async def test_the_database_in_the_url_is_selected(redis_url):
    base = redis_url.rsplit("/", 1)[0]
    shared = SharedRedis(f"{base}/3")
    try:
        assert " db=3 " in await shared.execute("CLIENT", "INFO")
    finally:
        await shared.close()

