"""The Redis Streams feed: one stream per context, shared by every web and worker process.

A process holds a fixed number of connections however many streams it serves: one for
every command (a SharedRedis, which the process may share with other users: writes are
batched with whatever else is in flight) and one that blocks in a single XREAD over every
context its subscribers follow, filling local ContextLogs that the subscribers read, so N
subscribers of a context cost one read, not N.
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterable

from redis.asyncio import ConnectionPool
from redis.exceptions import ConnectionError, TimeoutError

from events import ABANDONED_SECONDS, ORIGIN, Event, EventFeed, FeedGap, category_set, encode, parse_cursor
from events.log import ContextLog, follow
from events.shared_redis import SharedRedis, bulk

log = logging.getLogger(__name__)

READ_COUNT = 1000
TTL_REFRESH_SECONDS = 1.0  # how often a busy context's abandoned_seconds expiry is renewed
WAKE_DEBOUNCE = 0.005
READ_EVERY = 0.001

# An event unless one with the same ``once`` key was added: the context's keys in a set
# that lives at least as long as its stream (see emit and finish).
EMIT_ONCE_SCRIPT = """
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return false end
redis.call('EXPIRE', KEYS[2], ARGV[2])
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 't', ARGV[4], 'c', ARGV[5], 'd', ARGV[6])
"""


class RedisFeed(EventFeed):
    def __init__(
        self, url: str, retention_seconds: float = 60.0, max_events: int = 10_000, key_prefix: str = "chat:",
        redis: SharedRedis | None = None, abandoned_seconds: int = ABANDONED_SECONDS,
    ) -> None:
        self.retention_seconds = retention_seconds
        self.abandoned_seconds = abandoned_seconds
        self.max_events = max_events
        self.prefix = f"{key_prefix}feed:"
        self.once_prefix = f"{key_prefix}feed-once:"
        self.redis = redis or SharedRedis(url)
        self._owns_redis = redis is None
        self.reader = ConnectionPool.from_url(url, decode_responses=True).make_connection()
        self.wake_key = f"{key_prefix}wake:{uuid.uuid4().hex}"
        self.logs: dict[str, ContextLog] = {}
        self.read_from: dict[str, str] = {}
        self._fresh: set[str] = set()  # keys whose TTL was renewed in this refresh period
        self._fresh_since = 0.0
        self._reader_task: asyncio.Task | None = None
        self._encoded_wake_key = bulk(self.wake_key)
        self._encoded: dict[str, bytes] = {}  # context id -> its key in RESP, while followed

    # writing

    async def emit(self, context_id: str, event_type: str, data: dict, category: str = "default", *, once: str | None = None) -> str | None:
        key = self.prefix + context_id
        # Sent before the first suspension (see EventFeed.emit), and the TTL after the XADD
        # that may create the key.
        fields = ("t", event_type, "c", category, "d", encode(data))
        if once is None:
            added = self.redis.send("XADD", key, "MAXLEN", "~", self.max_events, "*", *fields)
        else:
            keys = (key, self.once_prefix + context_id)
            added = self.redis.send("EVAL", EMIT_ONCE_SCRIPT, 2, *keys, once, self.abandoned_seconds, self.max_events, *fields[1::2])
        if self._ttl_is_stale(key):
            for ttl_key in (key, self.once_prefix + context_id):
                self.redis.send("EXPIRE", ttl_key, self.abandoned_seconds).add_done_callback(_ignore)
        return await added

    def _ttl_is_stale(self, key: str) -> bool:
        """Whether this process has not renewed the key's abandoned_seconds expiry lately. Renewing
        once a second instead of on every write still undoes, in time, a ``finish`` by
        another process when its context comes back to life: the retention is far longer."""
        now = asyncio.get_running_loop().time()
        if now - self._fresh_since >= TTL_REFRESH_SECONDS:
            self._fresh, self._fresh_since = set(), now
        if key in self._fresh:
            return False
        self._fresh.add(key)
        return True

    async def finish(self, context_id: str, expire_after: float | None = None) -> None:
        delay = self.retention_seconds if expire_after is None else expire_after
        key, ttl_ms = self.prefix + context_id, max(1, int(delay * 1000))
        self._fresh.discard(key)  # an emit after this must undo it
        await asyncio.gather(self.redis.send("PEXPIRE", key, ttl_ms), self.redis.send("PEXPIRE", self.once_prefix + context_id, ttl_ms))

    # reading

    async def read(self, context_id: str, after: str = ORIGIN) -> list[Event]:
        key = self.prefix + context_id
        oldest = self.redis.send("XRANGE", key, "-", "+", "COUNT", 1)
        newest = self.redis.send("XREVRANGE", key, "+", "-", "COUNT", 1)
        entries = await self.redis.send("XRANGE", key, f"({after}", "+", "COUNT", READ_COUNT)
        if _gap(after, await oldest) or _ahead(after, await newest):  # answered already: Redis replies in order
            raise FeedGap(after)
        events = [_event(*entry) for entry in entries]
        while len(entries) == READ_COUNT:
            entries = await self.redis.execute("XRANGE", key, f"({events[-1].cursor}", "+", "COUNT", READ_COUNT)
            events += [_event(*entry) for entry in entries]
        return events

    async def subscribe(
        self, context_id: str, after: str = ORIGIN, categories: Iterable[str] | None = None, idle_timeout: float | None = None
    ) -> AsyncIterator[list[Event]]:
        context_log, woken = self._attach(context_id, after)
        try:
            checked = self.redis.send("XRANGE", self.prefix + context_id, "-", "+", "COUNT", 1)  # the wake's trip
            oldest = (await asyncio.gather(checked, woken))[0] if woken is not None else await checked
            if _gap(after, oldest):
                raise FeedGap(after)
            async for batch in follow(context_log, after, category_set(categories), idle_timeout, lambda c: self.read(context_id, c)):
                yield batch
        finally:
            context_log.readers -= 1
            if not context_log.readers and self.logs.get(context_id) is context_log:
                del self.logs[context_id], self.read_from[context_id]
                self._encoded.pop(context_id, None)

    def _attach(self, context_id: str, after: str) -> tuple[ContextLog, asyncio.Future | None]:
        """The context's local log, and the reader's wake if the log is new: the reader's
        XREAD then starts at this first subscriber's cursor, so nothing is read twice."""
        woken = None
        if (context_log := self.logs.get(context_id)) is None:
            context_log = self.logs[context_id] = ContextLog(self.max_events, floor=parse_cursor(after), holds_origin=False)
            self.read_from[context_id] = after
            woken = self._wake()
        context_log.readers += 1
        return context_log, woken

    def _wake(self) -> asyncio.Future:
        """Have the reader's XREAD, blocked in Redis, return and name every followed context."""
        if self._reader_task is None or self._reader_task.done():
            self._reader_task = asyncio.get_running_loop().create_task(self._read_forever())
        return self.redis.send("XADD", self.wake_key, "MAXLEN", 1, "*", "w", 1)

    async def _read_forever(self) -> None:
        wake_from, backoff = ORIGIN, 0.1  # the wake stream is ours alone and holds one entry
        loop, last_read = asyncio.get_running_loop(), 0.0
        while True:
            # At most one XREAD per READ_EVERY: each names every followed stream, and
            # under load one would otherwise go out for every few events.
            await asyncio.sleep(max(0.0, last_read + READ_EVERY - loop.time()))
            last_read = loop.time()
            # Where each context was read from: a reply is for the log that asked for it.
            # One whose last subscriber left while this read was blocked in Redis, and
            # that a new subscriber then attached from an earlier cursor, now starts
            # there: the reply would skip what lies between (the next read gets it).
            asked = self.read_from.copy()
            try:
                await self.reader.send_packed_command(self._xread_command(wake_from, asked))
                replies = await self.reader.read_response()
                backoff = 0.1
            except (ConnectionError, TimeoutError, OSError) as exc:
                log.warning("event feed reader lost Redis (%s); reconnecting in %.1fs", exc, backoff)
                await self.reader.disconnect()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            for key, entries in replies or []:
                if key == self.wake_key:
                    wake_from = entries[-1][0]
                    await asyncio.sleep(WAKE_DEBOUNCE)  # let a burst of new subscriptions join the next read
                    continue
                context_id = key[len(self.prefix) :]
                if context_id in asked and self.read_from.get(context_id) == asked[context_id]:
                    self.logs[context_id].append([_event(*entry) for entry in entries])
                    self.read_from[context_id] = entries[-1][0]

    def _xread_command(self, wake_from: str, read_from: dict[str, str]) -> bytes:
        """XREAD over the wake stream and the followed contexts from their positions, in
        RESP. Written here, with each key's encoding kept, because redis-py's packing of a
        few hundred arguments costs more than the read itself."""
        keys = [self._encoded_wake_key, *map(self._encoded_key, read_from)]
        head = b"*%d\r\n" % (6 + 2 * len(keys)) + bulk("XREAD", "COUNT", str(READ_COUNT), "BLOCK", "30000", "STREAMS")
        return b"".join([head, *keys, bulk(wake_from, *read_from.values())])

    def _encoded_key(self, context_id: str) -> bytes:
        if (encoded := self._encoded.get(context_id)) is None:
            encoded = self._encoded[context_id] = bulk(self.prefix + context_id)
        return encoded

    async def ping(self) -> None:
        await self.redis.execute("PING")

    async def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            await asyncio.gather(self._reader_task, return_exceptions=True)
        try:
            await self.redis.execute("DEL", self.wake_key)
        except (ConnectionError, TimeoutError, OSError):  # Redis away: shut down all the same
            log.warning("event feed could not delete %s on closing", self.wake_key)
        finally:
            await self.reader.disconnect()
            if self._owns_redis:
                await self.redis.close()


def _event(cursor: str, fields: list[str]) -> Event:
    values = dict(zip(fields[::2], fields[1::2]))
    return Event(cursor, values["t"], values["c"], values["d"])


def _gap(after: str, oldest: list) -> bool:
    """Whether the events right after ``after`` may be gone (``oldest``: the stream's first entry)."""
    return after != ORIGIN and (not oldest or parse_cursor(after) < parse_cursor(oldest[0][0]))


def _ahead(after: str, newest: list) -> bool:
    """Whether ``after`` is past the stream's last entry: a cursor this feed never issued,
    whose reader would skip every event to come until the clock caught up with it."""
    return bool(newest) and parse_cursor(after) > parse_cursor(newest[0][0])


def _ignore(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: a failed renewal is retried by the next write's
