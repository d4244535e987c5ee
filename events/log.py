"""A bounded, ordered list of one context's events that any number of readers follow.

Readers keep their own cursor and read the shared list, so fan-out costs no copy per
subscriber, and a slow reader holds no buffer: it falls off the end and gets FeedGap.
"""
from __future__ import annotations

import asyncio
from bisect import bisect_right
from collections.abc import AsyncIterator, Awaitable, Callable

from events import Cursor, Event, FeedGap, parse_cursor, wanted
from metrics import FEED_SUBSCRIPTIONS

MAX_BATCH = 500  # events per yield, so one busy context cannot make a huge write


class ContextLog:
    def __init__(self, max_events: int, floor: Cursor, *, holds_origin: bool) -> None:
        self.max_events = max_events
        self.events: list[Event] = []
        self.positions: list[Cursor] = []
        self.floor = floor  # a reader at or after it misses nothing
        # True where this log is the whole feed (memory): a reader from the origin asks
        # for whatever is retained. A Redis-side copy sends such readers to Redis.
        self.holds_origin = holds_origin
        self.readers = 0
        self._waiters: set[asyncio.Future] = set()

    def append(self, events: list[Event]) -> None:
        for event in events:
            position = event.position
            if not self.positions or position > self.positions[-1]:
                self.events.append(event)
                self.positions.append(position)
        if len(self.events) > self.max_events * 5 // 4:  # trim in steps, not on every append
            del self.events[: -self.max_events], self.positions[: -self.max_events]
            self.floor = self.positions[0]
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(True)
        self._waiters.clear()

    def clear(self) -> None:
        """Drop the events; readers at the tail go on, older cursors now get FeedGap."""
        if self.positions:
            self.floor = self.positions[-1]
        self.events, self.positions = [], []

    def after(self, cursor: str) -> list[Event]:
        position = parse_cursor(cursor)
        if position == (0, 0):  # everything retained: only a log that is the whole feed knows it
            gap = not self.holds_origin
        else:
            gap = position < self.floor
        if gap:
            raise FeedGap(cursor)
        start = bisect_right(self.positions, position)
        return self.events[start : start + MAX_BATCH]

    async def wait(self, timeout: float | None) -> bool:
        """Until the next append (True) or the timeout (False). A future and a timer, not
        asyncio.timeout: this runs per event and per keepalive for every reader, and a
        timeout by cancellation costs an exception each time."""
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._waiters.add(waiter)
        timer = None if timeout is None else loop.call_later(timeout, _time_out, waiter)
        try:
            return await waiter
        finally:
            if timer is not None:
                timer.cancel()
            self._waiters.discard(waiter)


def _time_out(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(False)


async def follow(
    log: ContextLog,
    after: str,
    categories: frozenset[str] | None,
    idle_timeout: float | None,
    read_older: Callable[[str], Awaitable[list[Event]]],
) -> AsyncIterator[list[Event]]:
    """Follow a log from a cursor; ``read_older`` serves cursors the log no longer holds.
    An empty batch means nothing was delivered for ``idle_timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = None if idle_timeout is None else loop.time() + idle_timeout
    FEED_SUBSCRIPTIONS.inc()
    try:
        while True:
            try:
                batch = log.after(after)
            except FeedGap:
                batch = await read_older(after)
            if batch:
                after = batch[-1].cursor
                if selected := [e for e in batch if wanted(e, categories)]:
                    yield selected
                    deadline = None if idle_timeout is None else loop.time() + idle_timeout
                continue
            if deadline is not None and loop.time() >= deadline:
                yield []
                deadline = loop.time() + idle_timeout
                continue
            await log.wait(None if deadline is None else deadline - loop.time())
    finally:
        FEED_SUBSCRIPTIONS.dec()
