"""The event feed: per-context, ordered, resumable events with fan-out to every subscriber.

One interface, two backends chosen by URL: ``memory://`` (one process) and ``redis://``
(Redis Streams, shared by every web and worker process). A context is anything that has
events: a workflow, a document, a task.
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

Cursor = tuple[int, int]
ORIGIN = "0-0"  # before every event
ABANDONED_SECONDS = 24 * 3600  # a context never finished (its writer died) still goes, after this long without events


# json.dumps with separators builds an encoder per call: a third of its time per event.
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def encode(data: dict) -> str:
    """Event data as it travels: compact JSON on one line."""
    return _ENCODER.encode(data)


def parse_cursor(cursor: str) -> Cursor:
    """``<ms>-<seq>`` as a tuple that compares part by part; ValueError if malformed or
    out of the 64-bit range of Redis stream ids."""
    ms, _, seq = cursor.partition("-")
    seq = seq or "0"
    # Plain ASCII digits only: int() would also take "+5", " 5", "5_000" or "٥", none of
    # which Redis reads as an id.
    if not (ms.isascii() and ms.isdigit() and seq.isascii() and seq.isdigit()):
        raise ValueError(cursor)
    parsed = (int(ms), int(seq))
    if parsed[0] >= 2**64 or parsed[1] >= 2**64:
        raise ValueError(cursor)
    return parsed


@dataclass(frozen=True)
class Event:
    cursor: str
    type: str
    category: str
    data_json: str  # kept as text: the SSE path forwards it without decoding

    @cached_property
    def data(self) -> dict[str, Any]:
        return json.loads(self.data_json)

    @property
    def position(self) -> Cursor:
        return parse_cursor(self.cursor)


class FeedGap(Exception):
    """The cursor is older than what the feed retains: the reader must start over."""


class EventFeed(ABC):
    @abstractmethod
    async def emit(self, context_id: str, event_type: str, data: dict, category: str = "default", *, once: str | None = None) -> str | None:
        """Append an event and return its cursor. The event is taken before the first
        suspension: a caller cancelled while awaiting the cursor does not withdraw it.

        With ``once``, a key of the caller's: the event is appended only if no event with
        that key was appended to the context while it has been retained (None if not),
        so that several processes that may each send it (a job, and whoever takes over
        from a job that died) put it in the feed once."""

    @abstractmethod
    async def read(self, context_id: str, after: str = ORIGIN) -> list[Event]:
        """The retained events after ``after``; FeedGap if some of them are no longer
        retained, or if ``after`` is past the last event (a cursor the feed never issued)."""

    @abstractmethod
    def subscribe(
        self, context_id: str, after: str = ORIGIN, categories: Iterable[str] | None = None, idle_timeout: float | None = None
    ) -> AsyncIterator[list[Event]]:
        """Batches of events after ``after``, live, forever. Yields an empty batch after
        ``idle_timeout`` seconds without events (for keepalives); raises FeedGap when the
        subscriber has fallen behind what is retained."""

    @abstractmethod
    async def finish(self, context_id: str, expire_after: float | None = None) -> None:
        """The context is done for now: drop its events after ``expire_after`` seconds
        (the feed's retention by default) unless new events arrive first. A context never
        finished is dropped after ``abandoned_seconds`` without events."""

    async def ping(self) -> None:
        """Raise if the feed cannot be reached."""

    async def close(self) -> None:
        pass


def make_feed(url: str, **options: Any) -> EventFeed:
    if url.startswith("memory://"):
        from events.memory import MemoryFeed

        return MemoryFeed(**options)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from events.redis import RedisFeed

        return RedisFeed(url, **options)
    raise ValueError(f"unsupported event feed URL {url!r} (memory:// or redis://)")


def category_set(categories: Iterable[str] | None) -> frozenset[str] | None:
    return frozenset(categories) if categories is not None else None


def wanted(event: Event, categories: frozenset[str] | None) -> bool:
    return categories is None or event.category in categories
