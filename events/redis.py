"""The Redis Streams feed: one stream per context, shared by every web and worker process.

A process holds a fixed number of connections however many streams it serves: a few for
commands (writes are coalesced into one pipeline per event-loop turn) and one that blocks in a
single XREAD over every context its subscribers follow, filling local ContextLogs that
the subscribers read, so N subscribers of a context cost one read, not N.
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterable

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import ConnectionError, TimeoutError

from events import ORIGIN, Event, EventFeed, FeedGap, category_set, encode, parse_cursor, wanted
from events.log import ContextLog, follow

log = logging.getLogger(__name__)

READ_COUNT = 1000
ABANDONED_TTL = 24 * 3600  # a context never finished (its writer died) still goes away
WAKE_DEBOUNCE = 0.005


class RedisFeed(EventFeed):
    def __init__(
        self, url: str, retention_seconds: float = 60.0, max_events: int = 10_000, key_prefix: str = "chat:", connections: int = 2
    ) -> None:
        self.retention_seconds = retention_seconds
        self.max_events = max_events
        self.prefix = f"{key_prefix}feed:"
        self.redis = Redis(connection_pool=BlockingConnectionPool.from_url(url, max_connections=connections, decode_responses=True))
        self.reader = Redis.from_url(url, decode_responses=True, single_connection_client=True)
        self.wake_key = f"{key_prefix}wake:{uuid.uuid4().hex}"
        self.logs: dict[str, ContextLog] = {}
        self.read_from: dict[str, str] = {}
        self._pending: list[tuple[str, dict, asyncio.Future]] = []
        self._tasks: set[asyncio.Task] = set()
        self._reader_task: asyncio.Task | None = None

    # writing

    async def emit(self, context_id: str, event_type: str, data: dict, category: str = "default") -> str:
        future = asyncio.get_running_loop().create_future()
        fields = {"t": event_type, "c": category, "d": encode(data)}
        self._pending.append((self.prefix + context_id, fields, future))
        if len(self._pending) == 1:
            self._spawn(self._flush())
        return await future

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let the other emits of this loop turn join the pipeline
        pending, self._pending = self._pending, []
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key, fields, _ in pending:
                    pipe.xadd(key, fields, maxlen=self.max_events, approximate=True)
                for key in {key for key, _, _ in pending}:
                    pipe.expire(key, ABANDONED_TTL)
                results = await pipe.execute()
        except Exception as exc:
            for *_, future in pending:
                if not future.done():
                    future.set_exception(exc)
            return
        for (*_, future), cursor in zip(pending, results):
            if not future.done():
                future.set_result(cursor)

    async def finish(self, context_id: str, expire_after: float | None = None) -> None:
        delay = self.retention_seconds if expire_after is None else expire_after
        await self.redis.pexpire(self.prefix + context_id, max(1, int(delay * 1000)))

    # reading

    async def read(self, context_id: str, after: str = ORIGIN) -> list[Event]:
        key, events = self.prefix + context_id, []
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xrange(key, count=1)
            pipe.xrange(key, min=f"({after}", count=READ_COUNT)
            first, entries = await pipe.execute()
        if after != ORIGIN and (not first or parse_cursor(after) < parse_cursor(first[0][0])):
            raise FeedGap(after)  # the events right after this cursor may be gone
        while entries:
            events += [_event(cursor, fields) for cursor, fields in entries]
            if len(entries) < READ_COUNT:
                break
            entries = await self.redis.xrange(key, min=f"({events[-1].cursor}", count=READ_COUNT)
        return events

    async def subscribe(
        self, context_id: str, after: str = ORIGIN, categories: Iterable[str] | None = None, idle_timeout: float | None = None
    ) -> AsyncIterator[list[Event]]:
        categories = category_set(categories)
        # Shielded: a subscriber cancelled mid-pipeline must not leave a pooled connection
        # with replies still unread.
        if caught_up := await asyncio.shield(self.read(context_id, after)):  # checks the cursor
            after = caught_up[-1].cursor
            if selected := [e for e in caught_up if wanted(e, categories)]:
                yield selected
        context_log = await self._attach(context_id)
        try:
            async for batch in follow(context_log, after, categories, idle_timeout, lambda c: self.read(context_id, c)):
                yield batch
        finally:
            context_log.readers -= 1
            if not context_log.readers and self.logs.get(context_id) is context_log:
                del self.logs[context_id], self.read_from[context_id]

    async def _attach(self, context_id: str) -> ContextLog:
        if (context_log := self.logs.get(context_id)) is None:
            tail = await self.redis.xrevrange(self.prefix + context_id, count=1)
            start = tail[0][0] if tail else ORIGIN
            if (context_log := self.logs.get(context_id)) is None:  # another subscriber may have won
                context_log = self.logs[context_id] = ContextLog(self.max_events, floor=parse_cursor(start), holds_origin=False)
                self.read_from[context_id] = start
                await self._wake()
        context_log.readers += 1
        return context_log

    async def _wake(self) -> None:
        if self._reader_task is None or self._reader_task.done():
            self._reader_task = self._spawn(self._read_forever())
        await self.redis.xadd(self.wake_key, {"w": "1"}, maxlen=1)

    async def _read_forever(self) -> None:
        wake_from, backoff = ORIGIN, 0.1  # the wake stream is ours alone and holds one entry
        while True:
            streams = {self.wake_key: wake_from} | {self.prefix + c: cursor for c, cursor in self.read_from.items()}
            try:
                replies = await self.reader.xread(streams, count=READ_COUNT, block=30_000)
                backoff = 0.1
            except (ConnectionError, TimeoutError, OSError) as exc:
                log.warning("event feed reader lost Redis (%s); reconnecting in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            for key, entries in replies or []:
                if key == self.wake_key:
                    wake_from = entries[-1][0]
                    await asyncio.sleep(WAKE_DEBOUNCE)  # let a burst of new subscriptions join the next read
                    continue
                context_id = key[len(self.prefix) :]
                if (context_log := self.logs.get(context_id)) is not None:
                    context_log.append([_event(cursor, fields) for cursor, fields in entries])
                    self.read_from[context_id] = entries[-1][0]

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def ping(self) -> None:
        await self.redis.ping()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await self.redis.delete(self.wake_key)
        finally:
            await self.reader.aclose()
            await self.redis.aclose()


def _event(cursor: str, fields: dict[str, str]) -> Event:
    return Event(cursor, fields["t"], fields["c"], fields["d"])
