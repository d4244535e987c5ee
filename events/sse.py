"""Server-Sent Events (https://html.spec.whatwg.org/multipage/server-sent-events.html):
the framing, and a feed context's events as an SSE body for blueprints of your own."""
from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable
from contextlib import aclosing

from events import ORIGIN, Event, EventFeed, FeedGap, category_set, parse_cursor, wanted

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def frame(event_type: str, data: str, cursor: str | None = None) -> str:
    """One event; every line of ``data`` becomes its own ``data:`` line."""
    if _LINE_BREAK.search(event_type) or (cursor and _LINE_BREAK.search(cursor)):
        raise ValueError("event type and id must be single lines")
    head = f"id: {cursor}\n" if cursor is not None else ""
    if "\n" in data or "\r" in data:
        body = "".join(f"data: {line}\n" for line in _LINE_BREAK.split(data))
    else:  # the common case (JSON): no split
        body = f"data: {data}\n"
    return f"{head}event: {event_type}\n{body}\n"


def comment(text: str) -> str:
    """Comment lines. No blank line after them: that would end an empty event, which
    some clients (httpx-sse) hand to the application as a blank ``message``."""
    return "".join(f": {line}\n" for line in _LINE_BREAK.split(text))


KEEPALIVE = comment("keepalive")


async def stream_context(
    feed: EventFeed, context_id: str, last_event_id: str | None = None, categories: Iterable[str] | None = None,
    keepalive: float = 15.0,
) -> AsyncIterator[str]:
    """A context's events as SSE text, each with its cursor as its id: after
    ``last_event_id`` (a reconnecting client's ``Last-Event-ID``), else all that the feed
    retains, then live, with a keepalive comment while idle. A cursor the feed never
    issued or no longer holds starts over from what it retains; a client that falls
    behind what it retains later is let go, to come back with its last id."""
    wanted_ones = category_set(categories)
    try:
        parse_cursor(after := last_event_id or ORIGIN)
        backlog = await feed.read(context_id, after)
    except (ValueError, FeedGap):
        after, backlog = ORIGIN, await feed.read(context_id)
    if backlog:
        after = backlog[-1].cursor
        if chunk := _frames([e for e in backlog if wanted(e, wanted_ones)]):
            yield chunk
    try:
        async with aclosing(feed.subscribe(context_id, after, wanted_ones, idle_timeout=keepalive)) as subscription:
            async for batch in subscription:
                yield _frames(batch) or KEEPALIVE
    except FeedGap:
        return


def _frames(events: list[Event]) -> str:
    return "".join(frame(e.type, e.data_json, e.cursor) for e in events)
