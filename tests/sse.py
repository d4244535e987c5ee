"""A small SSE test client over httpx: events with their ids, and raw lines when needed."""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import httpx
from httpx_sse import aconnect_sse


@dataclass
class Received:
    id: str
    event: str
    data: dict

    @property
    def item(self) -> dict:
        return self.data.get("item", {})

    @property
    def kind(self) -> str:
        return self.data.get("type", "") if self.event == "chatdata" else self.event


async def read_stream(
    client: httpx.AsyncClient, url: str, *, last_event_id: str | None = None, limit: int | None = None, timeout: float = 20.0, method: str = "GET", json_body=None
) -> list[Received]:
    """Every event until the server closes the stream (or ``limit`` events)."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events: list[Received] = []

    async def collect() -> None:
        async with aconnect_sse(client, method, url, headers=headers, json=json_body) as source:
            assert source.response.status_code == 200, await source.response.aread()
            async for sse in source.aiter_sse():
                events.append(Received(sse.id, sse.event, json.loads(sse.data)))
                if limit is not None and len(events) >= limit:
                    return

    await asyncio.wait_for(collect(), timeout)
    return events


def reply_text(events: list[Received], message_id: str) -> str:
    deltas = [e.item for e in events if e.kind == "delta" and e.item["messageId"] == message_id]
    assert [d["index"] for d in deltas] == list(range(len(deltas))), "deltas out of order or repeated"
    return "".join(d["text"] for d in deltas)


def assistant_message(events: list[Received]) -> dict:
    [message] = [e.item for e in events if e.kind == "message" and e.item["role"] == "assistant"]
    return message


def round_outcome(events_or_items: list, round_number: int = 1) -> dict:
    """The log that says how a failed or stopped round ended (events, or ``items`` of a
    workflow's detail), as (type, status, message)."""
    items = [e.item if isinstance(e, Received) else e["item"] for e in events_or_items
             if (e.kind if isinstance(e, Received) else e["type"]) == "log"]
    [outcome] = [i for i in items if i["type"] in ("error", "stopped") and i["roundNumber"] == round_number]
    return outcome
