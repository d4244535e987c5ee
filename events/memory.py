"""The in-memory feed: one process, per-context history plus fan-out to every subscriber."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable

from events import ABANDONED_SECONDS, ORIGIN, Event, EventFeed, FeedGap, category_set, encode, parse_cursor
from events.log import ContextLog, follow


def _now_ms() -> int:
    return int(time.time() * 1000)


class MemoryFeed(EventFeed):
    def __init__(self, retention_seconds: float = 60.0, max_events: int = 10_000, abandoned_seconds: float = ABANDONED_SECONDS) -> None:
        self.retention_seconds = retention_seconds
        self.max_events = max_events
        self.abandoned_seconds = abandoned_seconds
        self.logs: dict[str, ContextLog] = {}
        self.expiries: dict[str, asyncio.TimerHandle] = {}  # finished contexts
        self.idle_checks: dict[str, asyncio.TimerHandle] = {}  # contexts with events, finished or not
        self.once_keys: dict[str, set[str]] = {}  # context id -> the ``once`` keys of its events

    def _log(self, context_id: str) -> ContextLog:
        # A context seen for the first time: cursors from an earlier life of it are gaps.
        if (log := self.logs.get(context_id)) is None:
            log = self.logs[context_id] = ContextLog(self.max_events, floor=(_now_ms(), 0), holds_origin=True)
        return log

    async def emit(self, context_id: str, event_type: str, data: dict, category: str = "default", *, once: str | None = None) -> str | None:
        if once is not None:
            if once in (sent := self.once_keys.setdefault(context_id, set())):
                return None
            sent.add(once)
        if (expiry := self.expiries.pop(context_id, None)) is not None:
            expiry.cancel()
        log = self._log(context_id)
        # Redis-style ids, so that cursors look and compare the same in both modes.
        ms, seq = log.positions[-1] if log.positions else log.floor
        now = _now_ms()
        cursor = f"{now}-0" if now > ms else f"{ms}-{seq + 1}"
        log.append([Event(cursor, event_type, category, encode(data))])
        if context_id not in self.idle_checks:  # one timer a context, not one per event
            self.idle_checks[context_id] = asyncio.get_running_loop().call_later(self.abandoned_seconds, self._expire_if_idle, context_id)
        return cursor

    async def read(self, context_id: str, after: str = ORIGIN) -> list[Event]:
        if (log := self.logs.get(context_id)) is None:
            if after != ORIGIN:
                raise FeedGap(after)
            return []
        if parse_cursor(after) > (log.positions[-1] if log.positions else log.floor):  # never issued here
            raise FeedGap(after)
        events, batch = [], log.after(after)
        while batch:
            events += batch
            batch = log.after(batch[-1].cursor)
        return events

    async def subscribe(
        self, context_id: str, after: str = ORIGIN, categories: Iterable[str] | None = None, idle_timeout: float | None = None
    ) -> AsyncIterator[list[Event]]:
        log = self._log(context_id)
        log.readers += 1
        try:
            async for batch in follow(log, after, category_set(categories), idle_timeout, _gap):
                yield batch
        finally:
            log.readers -= 1
            if not log.readers and not log.events and self.logs.get(context_id) is log:
                del self.logs[context_id]

    async def finish(self, context_id: str, expire_after: float | None = None) -> None:
        delay = self.retention_seconds if expire_after is None else expire_after
        if (expiry := self.expiries.pop(context_id, None)) is not None:
            expiry.cancel()
        self.expiries[context_id] = asyncio.get_running_loop().call_later(delay, self._expire, context_id)

    def _expire_if_idle(self, context_id: str) -> None:
        del self.idle_checks[context_id]
        log = self.logs.get(context_id)
        idle = (_now_ms() - log.positions[-1][0]) / 1000 if log is not None and log.positions else self.abandoned_seconds
        if idle < self.abandoned_seconds:
            self.idle_checks[context_id] = asyncio.get_running_loop().call_later(self.abandoned_seconds - idle, self._expire_if_idle, context_id)
        else:
            self._expire(context_id)

    def _expire(self, context_id: str) -> None:
        for timers in (self.expiries, self.idle_checks):
            if (timer := timers.pop(context_id, None)) is not None:
                timer.cancel()
        self.once_keys.pop(context_id, None)
        if (log := self.logs.get(context_id)) is not None:
            if log.readers:
                log.clear()
            else:
                del self.logs[context_id]


async def _gap(after: str) -> list[Event]:
    raise FeedGap(after)
