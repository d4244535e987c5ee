"""API.md rules that need a real outage or a long wait: ``/readyz`` answers 503 while the
database or the event feed is down, and streams are never cut by a response timeout."""
from __future__ import annotations

import asyncio
import contextlib
import time
from urllib.parse import urlparse

import asyncpg
import pytest
import redis

from app import create_app
from tests.servers import postgres_database, redis_server, start_stack
from tests.test_contract import run_round


async def readiness(stack) -> tuple[int, dict]:
    async with stack.client() as client:
        response = await client.get("/readyz")
        return response.status_code, response.json()["checks"]


async def wait_readiness(stack, status: int, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        code, checks = await readiness(stack)
        if code == status or time.monotonic() > deadline:
            assert code == status, checks
            return checks
        await asyncio.sleep(0.2)


@pytest.fixture
def stack_on_own_redis():
    with redis_server() as url, start_stack("redis", redis_url=url, workers=0) as stack:
        yield stack, url


@pytest.fixture
def stack_on_own_postgres(postgres_admin_url):
    with postgres_database(postgres_admin_url) as database_url, start_stack("memory", database_url=database_url) as stack:
        yield stack, database_url


async def test_readyz_is_503_while_the_feed_is_down(stack_on_own_redis):
    stack, url = stack_on_own_redis
    assert await readiness(stack) == (200, {"database": "ok", "feed": "ok"})
    with contextlib.suppress(redis.ConnectionError):  # our own redis-server: shut it down
        redis.Redis.from_url(url).shutdown(nosave=True)
    checks = await wait_readiness(stack, 503)
    assert checks["database"] == "ok" and checks["feed"].startswith("unavailable")
    async with stack.client() as client:
        assert (await client.get("/healthz")).status_code == 200  # alive, just not ready


async def test_rounds_run_again_once_a_restarted_redis_is_back():
    """Web process and workers ride out Redis going away: arq's poll loop, left to itself,
    ends on the first failed command and leaves the worker without a loop. A worker
    stopped while Redis is away still exits."""
    with contextlib.ExitStack() as servers:
        url = servers.enter_context(redis_server())
        restarted = servers.enter_context(contextlib.ExitStack())  # outlives the stack, which stops first
        stack = servers.enter_context(start_stack("redis", redis_url=url))
        async with stack.client() as client:
            await run_round(client, "before")
            with contextlib.suppress(redis.ConnectionError):
                redis.Redis.from_url(url).shutdown(nosave=True)
            await asyncio.sleep(1.5)  # every process has hit the closed port by now
            restarted.enter_context(redis_server(port=urlparse(url).port))
            await wait_readiness(stack, 200)
            _, events = await run_round(client, "after")
            assert events[-1].event == "complete"
            assert all(worker.poll() is None for worker in stack.workers)
            # Stopped while Redis is down, a worker exits (arq's close fails first, after
            # its retries): its SQLite connection's thread would keep it from exiting.
            restarted.close()
            for worker in stack.workers:  # one of them at least ran a round, on SQLite
                worker.terminate()
            assert all([await asyncio.to_thread(worker.wait, 60) for worker in stack.workers])


async def test_readyz_is_503_while_the_database_is_down(stack_on_own_postgres, postgres_admin_url):
    stack, database_url = stack_on_own_postgres
    assert await readiness(stack) == (200, {"database": "ok", "feed": "ok"})
    name = database_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(postgres_admin_url.replace("postgres://", "postgresql://", 1))
    try:  # no new connections, and the web process's pooled ones are gone
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
        checks = await wait_readiness(stack, 503)
        assert checks["feed"] == "ok" and checks["database"].startswith("unavailable")
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await wait_readiness(stack, 200)  # and ready again once it is back
    finally:
        await admin.close()


async def test_a_stream_outlives_the_response_timeout(tmp_path):
    """Quart ends a response after RESPONSE_TIMEOUT (60 s by default): here 0.5 s, and
    the stream of a finished conversation still sends keepalives well after it."""
    app = create_app({"database_url": f"sqlite://{tmp_path / 'chat.sqlite3'}", "secret_key": "test",
                      "keepalive_seconds": 0.2, "demo_reply_tokens": 2, "demo_token_interval_ms": 1})
    app.config["RESPONSE_TIMEOUT"] = 0.5
    async with app.test_app() as test_app:
        client = test_app.test_client()
        started = await (await client.post("/api/chatbot/start", json={"prompt": "hi"})).get_json()
        for _ in range(100):  # until the round has ended: a stream of it would close at its end
            detail = await (await client.get(f"/api/chatbot/{started['workflowId']}")).get_json()
            if detail["workflow"]["status"] != "running":
                break
            await asyncio.sleep(0.05)
        async with client.request(started["streamUrl"], method="GET") as connection:
            await connection.send_complete()
            began, last_keepalive = time.monotonic(), 0.0
            while time.monotonic() - began < 1.5:
                chunk = await asyncio.wait_for(connection.receive(), 1.0)  # cut: nothing comes
                if b": keepalive" in chunk:
                    last_keepalive = time.monotonic() - began
            await connection.disconnect()
        assert last_keepalive > 1.0
