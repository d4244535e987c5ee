"""Opening and closing the database. Schema changes are aerich migrations, one folder per
dialect under migrations/, applied by the web process when it starts (or by
``python -m models.db``)."""
from __future__ import annotations

import asyncio
import contextlib
import fcntl
from collections.abc import AsyncIterator
from pathlib import Path

from aerich import Command
from tortoise import Tortoise, connections
from tortoise.backends.base.config_generator import expand_db_url
from tortoise.backends.sqlite.client import SqliteClient

from config import Settings, sqlite_path

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
POSTGRES_POOL_SIZE = 20
ADVISORY_LOCKS = {"migrate": 0x63686174, "serve": 0x63686175}  # PostgreSQL advisory lock keys of ours ("chat", "chau")


def dialect(database_url: str) -> str:
    return "postgres" if database_url.startswith(("postgres://", "asyncpg://", "psycopg://")) else "sqlite"


def tortoise_config(database_url: str) -> dict:
    # The connection is named after its dialect: Tortoise caches SQL per connection name,
    # and a process that opens SQLite and then PostgreSQL (the tests) must not share it.
    name = dialect(database_url)
    if name == "sqlite" and "synchronous=" not in database_url:
        # WAL with synchronous=NORMAL survives any process crash (a worker dying mid-reply)
        # and skips an fsync per commit; add ?synchronous=FULL to survive power loss too.
        database_url += ("&" if "?" in database_url else "?") + "synchronous=NORMAL"
    connection: str | dict = database_url
    if name == "postgres":
        connection = expand_db_url(database_url)
        connection["credentials"]["reset"] = _reset_connection
        # A busy web process has hundreds of requests in flight, each holding a pooled
        # connection for a loop turn per query: Tortoise's default of 5 makes them queue.
        # ?maxsize=N in DATABASE_URL sets another size.
        connection["credentials"].setdefault("maxsize", POSTGRES_POOL_SIZE)
    return {
        "connections": {name: connection},
        "apps": {"models": {"models": ["models", "aerich.models"], "default_connection": name}},
    }


async def _reset_connection(connection) -> None:
    """Replaces asyncpg's reset query on a connection's return to the pool, which would
    cost a round trip per query to undo state this app never leaves (advisory locks,
    cursors, LISTEN, settings). asyncpg still rolls back a transaction left open first."""


def migrations_for(database_url: str) -> Path:
    return MIGRATIONS / dialect(database_url)


async def open_db(database_url: str, *, migrate: bool = False) -> None:
    config = tortoise_config(database_url)
    await Tortoise.init(config=config)  # first: aerich reuses an initialised Tortoise as it is
    if migrate:
        if not (location := migrations_for(database_url)).is_dir():  # aerich would apply nothing, and say nothing
            raise RuntimeError(f"No migrations at {location}: run the app from its checkout (see README.md)")
        async with _migrating_alone(database_url):
            command = Command(tortoise_config=config, app="models", location=str(location))
            await command.init()
            await command.upgrade(run_in_transaction=True)


@contextlib.asynccontextmanager
async def _migrating_alone(database_url: str) -> AsyncIterator[None]:
    """One process at a time: web processes that start together (``hypercorn --workers
    N``, several machines) would otherwise all apply the same migration to a new
    database, and all but one would fail on tables the first had just created."""
    async with _database_lock(database_url, "migrate", wait=True):
        yield


class ServedElsewhere(RuntimeError):
    def __init__(self) -> None:
        super().__init__(
            "Another process already serves this database in embedded mode (no REDIS_URL). "
            "That mode keeps its event feed and runs its jobs inside its one process, so a second "
            "process would miss them: run one web process, or set REDIS_URL to run several."
        )


@contextlib.asynccontextmanager
async def serving_alone(database_url: str) -> AsyncIterator[None]:
    """Held by the one process that may serve ``database_url`` in embedded mode
    (ServedElsewhere if another does): ``hypercorn --workers 2`` without REDIS_URL, or a
    second server started on the same database, is refused at start-up instead of
    answering with a feed that misses half the events."""
    async with _database_lock(database_url, "serve", wait=False) as held:
        if not held:
            raise ServedElsewhere()
        yield


@contextlib.asynccontextmanager
async def _database_lock(database_url: str, name: str, *, wait: bool) -> AsyncIterator[bool]:
    """An exclusive lock of ours on the database, held inside the block, and whether we got
    it (without ``wait``, only if no one holds it): a PostgreSQL advisory lock, or a file
    lock next to a SQLite file. The database server or the operating system frees it if
    the process dies. An in-memory SQLite database is its process's own: nothing to lock."""
    if dialect(database_url) == "postgres":
        key = ADVISORY_LOCKS[name]
        async with connections.get("postgres").acquire_connection() as connection:
            if wait:
                await connection.execute("SELECT pg_advisory_lock($1)", key)
            elif not await connection.fetchval("SELECT pg_try_advisory_lock($1)", key):
                yield False
                return
            try:
                yield True
            finally:
                await connection.execute("SELECT pg_advisory_unlock($1)", key)
        return
    if (path := sqlite_path(database_url)) is None:
        yield True
        return
    with open(f"{path}.{name}-lock", "a") as lock:  # closing the file frees the lock
        held = True
        if wait:
            await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
        else:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held = False
        yield held


async def close_db() -> None:
    await connections.close_all()
    # Tortoise adds each init's connections to those it had: a process that then opens a
    # database of the other dialect (the tests do) would hold two, and in_transaction()
    # would refuse to choose.
    connections.db_config.clear()


def stop_sqlite_threads() -> None:
    """Stop the thread of each SQLite connection left open, without a loop: as a process
    exits, Python waits for those threads, for ever. For an arq worker stopped while
    Redis is down: arq's close fails before it calls on_shutdown, and close_db."""
    for client in connections.all():
        if isinstance(client, SqliteClient) and client._connection is not None:
            client._connection.stop()


def __getattr__(name: str):
    # aerich's CLI reads TORTOISE_ORM from here; computed on use, so importing has no effects.
    if name == "TORTOISE_ORM":
        return tortoise_config(Settings.from_env().database_url)
    raise AttributeError(name)


if __name__ == "__main__":
    async def _migrate() -> None:
        await open_db(Settings.from_env().database_url, migrate=True)
        await close_db()

    asyncio.run(_migrate())
