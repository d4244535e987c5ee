"""Embedded mode's job runner: what an arq worker does with a job, in this process.

A job runs as a task with arq's ``ctx`` keys (``runtime``, ``job_id``, ``job_try``), the
same timeout, and arq's rules for a job that raises ``arq.Retry`` (it runs again, up to
``max_tries`` in all) and for job ids (one that is queued, running or ended less than
``keep_result`` seconds ago is not enqueued again). Jobs end with the process: there is
no queue to outlive it.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from arq.worker import Retry

log = logging.getLogger(__name__)


class InProcessJobs:
    def __init__(self, timeout: float, max_tries: int, keep_result: float) -> None:
        self.timeout, self.max_tries, self.keep_result = timeout, max_tries, keep_result
        self.tasks: set[asyncio.Task] = set()
        self._taken: dict[str, float] = {}  # job id -> until when it may not be enqueued again
        self._ended: deque[tuple[float, str]] = deque()  # (that time, id), oldest first: to forget ids

    def start(
        self, name: str, job: Callable[..., Awaitable[Any]], args: tuple, job_id: str, ctx: dict, *,
        defer: float = 0.0, timeout: float | None = None, max_tries: int | None = None,
    ) -> bool:
        """Run ``job(ctx | {"job_id", "job_try"}, *args)`` ``defer`` seconds from now,
        unless the id is taken."""
        self._forget_ended()
        if job_id in self._taken:
            return False
        self._taken[job_id] = math.inf
        run = self._run(name, job, args, ctx | {"job_id": job_id}, defer, timeout or self.timeout, max_tries or self.max_tries)
        task = asyncio.get_running_loop().create_task(run)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return True

    async def _run(
        self, name: str, job: Callable[..., Awaitable[Any]], args: tuple, ctx: dict, defer: float, timeout: float, max_tries: int
    ) -> None:
        try:
            await asyncio.sleep(defer)
            for job_try in range(1, max_tries + 1):
                try:
                    async with asyncio.timeout(timeout):
                        await job(ctx | {"job_try": job_try}, *args)
                    return
                except Retry as retry:
                    if job_try == max_tries:
                        log.warning("job %s %s: retried %d times, giving up", name, ctx["job_id"], max_tries - 1)
                        return
                    log.info("job %s %s: retrying (%s)", name, ctx["job_id"], retry)
                    await asyncio.sleep((retry.defer_score or 0) / 1000)
                except TimeoutError:
                    log.error("job %s %s timed out after %.0f s", name, ctx["job_id"], timeout)
                    return
                except Exception:
                    log.exception("job %s %s failed", name, ctx["job_id"])
                    return
        finally:
            until = time.monotonic() + self.keep_result
            self._taken[ctx["job_id"]] = until
            self._ended.append((until, ctx["job_id"]))

    def _forget_ended(self) -> None:
        now = time.monotonic()
        while self._ended and self._ended[0][0] <= now:
            del self._taken[self._ended.popleft()[1]]  # an id is taken until it ends: no newer entry

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
