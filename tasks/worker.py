"""The arq worker: ``arq tasks.WorkerSettings`` runs the chatbot job."""
from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import replace

from arq.connections import RedisSettings
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError

import metrics
from config import LOG_FORMAT, Settings
from models.db import close_db, open_db, stop_sqlite_threads
from tasks.chatbot import run_chatbot
from tasks.control import RedisControl
from tasks.runtime import KEEP_RESULT_SECONDS, MAX_TRIES, Job, Runtime, chat_job_round

_settings = Settings.from_env()
REDIS_RETRIES = 20  # backoff capped at 1 s: ≈ 15 s of outage

try:  # arq makes its loop after loading these settings: make it uvloop's where installed
    import uvloop
except ImportError:  # Windows
    pass
else:
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def startup(ctx: dict) -> None:
    if _settings.redis_url is None:  # arq would have used redis://localhost:6379 all the same
        raise RuntimeError("REDIS_URL is not set: workers serve Redis mode; give them the web process's REDIS_URL")
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    logging.getLogger("arq").propagate = False  # arq logs through a handler of its own
    await open_db(_settings.database_url)
    # Called as the process exits, before Python waits for its threads (as
    # concurrent.futures does): if shutdown never ran, SQLite's would hang the exit.
    threading._register_atexit(stop_sqlite_threads)
    runtime = ctx["runtime"] = await Runtime.open(_settings, runs_jobs=True)
    assert isinstance(runtime.control, RedisControl)
    runtime.control.listen(_settings.redis_url)
    if (address := _settings.worker_metrics_address()) is not None:
        try:
            metrics.serve(address[1], address[0])
        except OSError as exc:  # taken: by another worker on this machine, say (one port each)
            raise RuntimeError(f"WORKER_METRICS_BIND={_settings.worker_metrics_bind}: {exc.strerror or exc}") from None


async def leave_queue(ctx: dict) -> None:
    """arq keeps a running job in its queue and re-examines every such job (three Redis
    round trips each) on every poll, so with hundreds of chats running a poll takes
    longer and longer and a new chat waits behind all of them. A started chat job leaves
    the queue; if its worker dies, the round's lease ends it (see tasks/control.py), so
    the lease becomes a running job's now (a queued one's is longer). Other jobs (yours)
    stay, for arq to run again if their worker dies."""
    runtime: Runtime = ctx["runtime"]
    if (chat_round := chat_job_round(runtime.settings.key_prefix, ctx["job_id"])) is None:
        return
    await asyncio.gather(runtime.redis.execute("ZREM", _settings.queue_name, ctx["job_id"]), runtime.control.taken(*chat_round))


async def shutdown(ctx: dict) -> None:
    if (runtime := ctx.get("runtime")) is not None:
        await runtime.close()
    await close_db()
    metrics.process_ended()


class WorkerSettings:
    """arq settings for an I/O-bound chat job: many at once, picked up fast, stoppable."""

    functions = [run_chatbot]
    on_startup = startup
    on_job_start = leave_queue
    on_shutdown = shutdown
    # arq's own commands (its poll, the job's pickup, its result) wait out a Redis restart
    # instead of ending the worker: its poll loop dies on the first failed command.
    redis_settings = replace(
        RedisSettings.from_dsn(_settings.redis_url or "redis://localhost:6379"),
        retry_on_error=[ConnectionError, TimeoutError, OSError],  # OSError: a refused connect, while Redis is down
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), REDIS_RETRIES),
    )
    queue_name = _settings.queue_name
    max_jobs = _settings.worker_max_jobs
    poll_delay = 0.01  # arq's 0.5 s default would come before every first token
    job_timeout = _settings.job_timeout_seconds
    # On SIGTERM or SIGINT, take no new job and let running replies finish for this long
    # (a deploy restarts workers: at once, every reply in flight would fail as worker_lost).
    # 0: cancel them at once. What is still running then ends as worker_lost.
    job_completion_wait = _settings.worker_drain_seconds
    keep_result = KEEP_RESULT_SECONDS
    max_tries = MAX_TRIES
    allow_abort_jobs = True


def with_jobs(*jobs: Job) -> type:
    """These worker settings, running jobs of yours too, for a module of your own:
    ``WorkerSettings = with_jobs(my_job)`` there, then ``arq mymodule.WorkerSettings``.
    (arq reads only a settings class's own attributes: a subclass would run none of ours.)"""
    ours = {name: value for name, value in vars(WorkerSettings).items() if not name.startswith("__")}
    return type("WorkerSettings", (), ours | {"functions": [*WorkerSettings.functions, *jobs]})
