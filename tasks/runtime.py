"""What a process needs to run chat rounds: the feed, round control, the job queue and
the model provider, opened together for the web process or for a worker."""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from arq.constants import expires_extra_ms, job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from arq.utils import timestamp_ms
from arq.worker import Function
from tortoise.transactions import in_transaction

from config import Settings
from events import EventFeed, make_feed
from events.shared_redis import SharedRedis
from metrics import ROUNDS_ENDED
from models import COMPLETED, FAILED, ROUND_END_EVENT, RUNNING, STOPPED, Log, Workflow, end_running_round, is_workflow_id, round_item_id
from tasks.control import LocalControl, RedisControl
from tasks.in_process import InProcessJobs
from tasks.providers import ChatProvider, make_provider

log = logging.getLogger(__name__)

KEEP_RESULT_SECONDS = 60  # arq's result key, which also keeps a job's id from being enqueued again
MAX_TRIES = 3  # runs of a job in all: arq.Retry, or (Redis mode) a worker that died under it

Job = Callable[..., Awaitable[Any]] | Function  # async def job(ctx, *args), or arq.worker.func(job, …)


def chat_job_id(key_prefix: str, workflow_id: str, round_number: int) -> str:
    """A round's job id in arq: one job per round, whoever enqueues it. It starts with the
    deployment's KEY_PREFIX, so arq's keys for it (``arq:job:<id>``, …) name the deployment."""
    return f"{key_prefix}{workflow_id}:{round_number}"


def chat_job_round(key_prefix: str, job_id: str) -> tuple[str, int] | None:
    """The round a chat job's id names; None for any other job."""
    workflow_id, _, round_number = job_id.removeprefix(key_prefix).partition(":")
    is_ours = job_id.startswith(key_prefix) and is_workflow_id(workflow_id) and round_number.isdigit()
    return (workflow_id, int(round_number)) if is_ours else None


# arq's ArqRedis.enqueue_job as one atomic script: the job, in arq's own format, unless a
# job or result with its id exists. arq's version holds a pooled connection for three
# round trips (WATCH, EXISTS, MULTI/EXEC); on a busy web process every start then waits
# for the few connections there are. A script goes through the shared connection.
ENQUEUE_SCRIPT = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('PSETEX', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
return 1
"""


@dataclass
class Runtime:
    settings: Settings
    feed: EventFeed
    control: LocalControl
    provider: ChatProvider | None = None
    redis: SharedRedis | None = None  # Redis mode: shared by the feed, round control and the queue
    in_process: InProcessJobs | None = None  # embedded mode: runs the jobs

    @classmethod
    async def open(cls, settings: Settings, *, runs_jobs: bool) -> "Runtime":
        options = {"retention_seconds": settings.feed_retention_seconds, "max_events": settings.feed_max_events}
        if settings.redis_url is None:
            feed = make_feed("memory://", **options)
            jobs = InProcessJobs(settings.job_timeout_seconds, MAX_TRIES, KEEP_RESULT_SECONDS)
            return cls(settings, feed, LocalControl(), make_provider(settings), in_process=jobs)
        # A web process holds 2 Redis connections, however many requests and streams it
        # serves: one for every command (see events/shared_redis.py) and the feed's reader.
        redis = SharedRedis(settings.redis_url)
        feed = make_feed(settings.redis_url, key_prefix=settings.key_prefix, redis=redis, **options)
        control = RedisControl(redis, settings.key_prefix, settings.lease_seconds)
        return cls(settings, feed, control, make_provider(settings) if runs_jobs else None, redis)

    async def enqueue(self, job: Job, *args: Any, job_id: str | None = None, defer: float = 0.0) -> str | None:
        """Run ``job(ctx, *args)`` in the background, ``defer`` seconds from now, from a web
        handler or from a job: in Redis mode on a worker (it must be in
        ``WorkerSettings.functions``), in embedded mode in this process. ``ctx`` holds
        ``runtime``, ``job_id`` and ``job_try`` in both. Resolves to the job's id, or None
        if a job with this id (``job_id``: yours, to make a job unique) is queued, running
        or ended within KEEP_RESULT_SECONDS, as arq has it. Gathered with other Redis
        commands, it goes out in their order and in their write."""
        name, function = (job.name, job.coroutine) if isinstance(job, Function) else (job.__name__, job)
        job_id = job_id or uuid.uuid4().hex
        if self.in_process is not None:
            options = {"timeout": job.timeout_s, "max_tries": job.max_tries} if isinstance(job, Function) else {}
            started = self.in_process.start(name, function, args, job_id, {"runtime": self}, defer=defer, **options)
            return job_id if started else None
        now, delay = timestamp_ms(), round(defer * 1000)
        keys = (job_key_prefix + job_id, result_key_prefix + job_id, self.settings.queue_name)
        data = serialize_job(name, args, {}, None, now)
        added = await self.redis.execute("EVAL", ENQUEUE_SCRIPT, len(keys), *keys, delay + expires_extra_ms, data, now + delay, job_id)
        return job_id if added else None

    async def enqueue_round(self, workflow_id: str, round_number: int) -> None:
        from tasks.chatbot import run_chatbot  # the job sits above the runtime it runs in

        # The lease before the job, in one write: Redis runs a connection's commands in
        # the order gather's tasks send them.
        await asyncio.gather(
            self.control.expect(workflow_id, round_number),
            self.enqueue(run_chatbot, workflow_id, round_number, job_id=chat_job_id(self.settings.key_prefix, workflow_id, round_number)),
        )

    async def close(self) -> None:
        if self.in_process is not None:
            await self.in_process.close()
        await self.control.close()
        if self.provider is not None:
            await self.provider.aclose()
        await self.feed.close()
        if self.redis is not None:
            await self.redis.close()


def chatdata(kind: str, item: dict, created_at: float) -> dict:
    """The data of a chatdata event (API.md): a message, a log or a delta of a reply."""
    return {"type": kind, "createdAt": created_at, "item": item}


def chatdata_category(kind: str) -> str:
    return "workflow" if kind == "log" else "chat"


async def publish_item(runtime: Runtime, kind: str, item: dict, workflow_id: str, *, once: str | None = None) -> str | None:
    """Emit a chatdata event now."""
    data = chatdata(kind, item, time.time())
    return await runtime.feed.emit(workflow_id, "chatdata", data, chatdata_category(kind), once=once)


async def end_round(
    runtime: Runtime, workflow_id: str, round_number: int, status: str, code: str = "", message: str = "", *,
    before_end: Callable[[], Awaitable[None]] | None = None,
) -> bool:
    """Move a running round to its final status and emit its end event, exactly once:
    whoever wins the conditional update (job, stop, liveness check) sends the event, and
    ``before_end`` (what only that one may send, before the end) runs in its transaction.

    The end goes out after the commit: a client that got it reads the round ended. A
    stream that reads the round ended before its end is in the feed follows it to that
    end (see _Stream._snapshot); if the winner dies in between, resent_round_end sends it."""
    # The update alone (a completed round, nothing before its end) needs no transaction,
    # whose BEGIN and COMMIT are two more round trips before the end goes out.
    alone = before_end is None and status == COMPLETED
    async with contextlib.nullcontext() if alone else in_transaction():
        if not await end_running_round(workflow_id, round_number, status, time.time(), code, message):
            return False
        if before_end is not None:
            await before_end()
        outcome = await _store_outcome(workflow_id, round_number, status, message)
    ROUNDS_ENDED.labels(status, code).inc()
    await asyncio.gather(*_round_end_sends(runtime, workflow_id, round_number, status, code, message, outcome))
    return True


async def resent_round_end(runtime: Runtime, workflow: Workflow) -> Callable[[], list[Awaitable]]:
    """What puts the end of the workflow's latest round in the feed, if that round ended
    lately (within the feed's retention): whoever ends a round commits, then sends, and
    may die in between. Each event goes in once, whoever sends it first.

    A function that makes the sends (none while the round runs), for the caller to gather
    ahead of what must come after the end."""
    if workflow.status == RUNNING or time.time() - workflow.updated_at >= runtime.settings.feed_retention_seconds:
        return list  # an old round's context may be gone: a fresh one must not get its end
    outcome = None
    if workflow.status in (FAILED, STOPPED):
        outcome = await Log.get_or_none(id=round_item_id(workflow.id, workflow.round_number, "outcome"))
    message = outcome.message if outcome and workflow.error_message else workflow.error_message  # the row keeps 500 chars
    return functools.partial(
        _round_end_sends, runtime, workflow.id, workflow.round_number, workflow.status, workflow.error_code, message, outcome
    )


async def send_owed_round_end(runtime: Runtime, workflow: Workflow) -> None:
    """Now, the end resent_round_end would send (nothing if the feed has it already)."""
    await asyncio.gather(*(await resent_round_end(runtime, workflow))())


def _round_end_sends(
    runtime: Runtime, workflow_id: str, round_number: int, status: str, code: str, message: str, outcome: Log | None
) -> list[Awaitable]:
    """A round's outcome log, its end event and its expiry, as awaitables that gather sends
    in this order in one trip. Each event at most once in the feed (see EventFeed.emit)."""
    data: dict = {"workflowId": workflow_id, "roundNumber": round_number}
    if status == FAILED:
        data |= {"code": code, "message": message}
    return [
        *([publish_item(runtime, "log", outcome.to_item(), workflow_id, once=outcome.id)] if outcome else []),
        runtime.feed.emit(workflow_id, ROUND_END_EVENT[status], data, "workflow", once=f"end:{round_number}"),
        runtime.feed.finish(workflow_id),
    ]


async def _store_outcome(workflow_id: str, round_number: int, status: str, message: str) -> Log | None:
    """A failed or stopped round says so in its stored steps: the workflow keeps only its
    latest round's status and error, and a reloaded conversation shows every round's."""
    if status not in (FAILED, STOPPED):
        return None
    return await Log.create(
        id=round_item_id(workflow_id, round_number, "outcome"), workflow_id=workflow_id,
        message=message or "Stopped before the reply was finished.", type="error" if status == FAILED else "stopped",
        status=status, round_number=round_number,
    )
