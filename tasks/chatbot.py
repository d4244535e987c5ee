"""The chatbot job: one round of a conversation, from the stored prompt to the stored reply.

It runs in an arq worker (Redis mode) or in the web process (embedded mode) and speaks
only through the event feed and the database, so both modes behave the same.
"""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import aclosing
from dataclasses import dataclass, field

from events import Event, FeedGap
from metrics import FIRST_DELTA_SECONDS, JOB_SECONDS, REPLY_DELTAS, ROUNDS_RUNNING
from models import COMPLETED, FAILED, RUNNING, STOPPED, Log, Message, create_once, recent_messages, round_item_id, round_items
from tasks.providers import ChatTurn, ProviderError
from tasks.runtime import Runtime, end_round, publish_item

log = logging.getLogger(__name__)

WORKER_LOST = ("worker_lost", "The process generating this reply stopped before it finished. Please retry.")


@dataclass(frozen=True)
class ChatRound:
    workflow_id: str
    number: int
    started_at: float = 0.0  # when its user message was stored


@dataclass
class Reply:
    message_id: str
    parts: list[str] = field(default_factory=list)
    usage: dict | None = None  # token counts, if the model reported them

    @property
    def text(self) -> str:
        return "".join(self.parts)


async def run_chatbot(ctx: dict, workflow_id: str, round_number: int) -> str:
    """Generate the assistant's reply for one round and end the round."""
    runtime: Runtime = ctx["runtime"]
    history = await recent_messages(workflow_id, round_number, runtime.settings.history_max_chars)
    if not history or history[0]["round"] != round_number or history[0]["status"] != RUNNING:
        return "skipped: round is not running"
    chat = ChatRound(workflow_id, round_number, history[0]["created_at"])  # the newest: the round's user message
    reply = Reply(round_item_id(workflow_id, round_number, "assistant"))
    if any(row["id"] == reply.message_id for row in history):  # a retry after the reply was stored
        await end_round(runtime, workflow_id, round_number, COMPLETED)
        return "completed earlier"
    if ctx.get("job_try", 1) > 1:  # a retry after a worker died mid-reply: its deltas are out
        await end_abandoned_round(runtime, workflow_id, round_number)
        return "failed: worker lost"
    stop, lost = asyncio.Event(), asyncio.Event()
    async with runtime.control.running(workflow_id, round_number, stop.set, lost.set):
        with ROUNDS_RUNNING.track_inprogress(), JOB_SECONDS.time():
            turns = [ChatTurn(row["role"], row["content"]) for row in reversed(history)]
            outcome = await _generate(runtime, chat, reply, turns, stop, lost)
            await _finish(runtime, chat, reply, *outcome)
    return outcome[0]


async def end_abandoned_round(runtime: Runtime, workflow_id: str, round_number: int, status: str = FAILED) -> bool:
    """End a round whose job is gone (failed as worker_lost, or stopped), keeping its
    reply as far as it was sent: the deltas the feed holds become the stored message, so
    what the user saw survives a reload. What its job stored but died before sending is
    sent. Whether this call ended it (see end_round: several processes may find the round
    lost at once, one sends)."""
    chat = ChatRound(workflow_id, round_number)
    error = WORKER_LOST if status == FAILED else ()
    return await end_round(runtime, workflow_id, round_number, status, *error, before_end=lambda: _salvage(runtime, chat))


async def _retained(runtime: Runtime, workflow_id: str) -> list[Event]:
    try:
        return await runtime.feed.read(workflow_id)
    except FeedGap:
        return []


async def _salvage(runtime: Runtime, chat: ChatRound) -> None:
    """Done by whoever ends the round (see end_round): the deltas the feed holds become
    the stored reply unless its job stored one, and what is stored of the round but not
    in the feed is sent. Nothing, if the feed does not hold the round from its start
    (what was sent cannot be told)."""
    events = await _retained(runtime, chat.workflow_id)
    sent = {e.data["item"].get("id") for e in events if e.type == "chatdata"}
    if round_item_id(chat.workflow_id, chat.number, "user") not in sent:
        return
    rows = await round_items(chat.workflow_id, chat.number)
    reply = Reply(round_item_id(chat.workflow_id, chat.number, "assistant"))
    reply.parts = _sent_pieces(events, reply.message_id)
    if reply.parts and all(item["id"] != reply.message_id for _, item, _ in rows):
        message = await Message.create(
            id=reply.message_id, workflow_id=chat.workflow_id, role="assistant", content=reply.text, round_number=chat.number
        )
        rows.append(("message", message.to_item(), message))
    for kind, item, _ in rows:
        if item["id"] not in sent:
            await publish_item(runtime, kind, item, chat.workflow_id)


def _sent_pieces(events: list[Event], message_id: str) -> list[str]:
    """The texts of a reply's deltas in ``events``, if they hold every one from the first."""
    mentioned = f'"messageId":"{message_id}"'
    deltas = [e.data["item"] for e in events if e.type == "chatdata" and mentioned in e.data_json]
    if [delta["index"] for delta in deltas] != list(range(len(deltas))):
        return []
    return [delta["text"] for delta in deltas]


async def _generate(
    runtime: Runtime, chat: ChatRound, reply: Reply, turns: list[ChatTurn], stop: asyncio.Event, lost: asyncio.Event
) -> tuple[str, ...]:
    """Stream the reply until it ends, fails, is stopped or lost; the outcome for end_round."""
    await _log_steps(
        runtime, chat, ("history", f"Loaded the conversation ({len(turns)} messages)"),
        ("generate", f"Generating the reply with the {runtime.provider.name} model"),
    )
    generation = asyncio.create_task(_stream(runtime, chat, reply, turns))
    stopped, given_up = asyncio.create_task(stop.wait()), asyncio.create_task(lost.wait())
    try:
        await asyncio.wait({generation, stopped, given_up}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # job timeout or worker shutdown: end the round, then go
        generation.cancel()
        await asyncio.gather(generation, return_exceptions=True)
        await _finish(runtime, chat, reply, FAILED, *WORKER_LOST)
        raise
    finally:
        stopped.cancel()
        given_up.cancel()
    if not generation.done():
        generation.cancel()
        await asyncio.gather(generation, return_exceptions=True)
        return (FAILED, *WORKER_LOST) if lost.is_set() else (STOPPED,)
    try:
        generation.result()
    except ProviderError as exc:
        return FAILED, exc.code, exc.message
    except Exception:
        log.exception("chatbot round %s/%s failed", chat.workflow_id, chat.number)
        return FAILED, "internal_error", "The chatbot failed unexpectedly."
    return (COMPLETED,)


async def _stream(runtime: Runtime, chat: ChatRound, reply: Reply, turns: list[ChatTurn]) -> None:
    async def on_usage(usage: dict) -> None:
        log.info("round %s/%s token usage %s", chat.workflow_id, chat.number, usage)
        reply.usage = usage  # logged as the round ends: a stop cannot cut it between its store and its emit

    # aclosing: a stop closes the provider's upstream request now, not when collected.
    async with aclosing(runtime.provider.stream_reply(turns, on_usage)) as pieces:
        async for piece in pieces:
            if not piece:
                continue
            delta = {"messageId": reply.message_id, "index": len(reply.parts), "text": piece}
            if not reply.parts:
                FIRST_DELTA_SECONDS.observe(time.time() - chat.started_at)
            REPLY_DELTAS.inc()
            reply.parts.append(piece)
            # A stop may cancel this await; the delta is already in the feed's hands (see
            # EventFeed.emit), so sent deltas and the stored text still agree. A feed that
            # failed to take it (Redis away) did not send it: the stored text leaves it out.
            try:
                await publish_item(runtime, "delta", delta, chat.workflow_id)
            except Exception:
                reply.parts.pop()
                raise


async def _finish(runtime: Runtime, chat: ChatRound, reply: Reply, status: str, *error: str) -> bool:
    """Store what was generated (sent deltas must join to a stored message), end the round;
    whether this call ended it (see end_round)."""
    if reply.usage:
        counts = ", ".join(f"{name.replace('_', ' ')}: {value}" for name, value in reply.usage.items())
        await _log_steps(runtime, chat, ("usage", f"Token usage ({counts})"), kind="usage")
    if reply.parts or status == COMPLETED:
        await _store_reply(runtime, chat, reply)
    return await end_round(runtime, chat.workflow_id, chat.number, status, *error)


async def _store_reply(runtime: Runtime, chat: ChatRound, reply: Reply) -> None:
    message = await create_once(
        Message, id=reply.message_id, workflow_id=chat.workflow_id, role="assistant", content=reply.text, round_number=chat.number
    )
    if message is not None:
        await publish_item(runtime, "message", message.to_item(), chat.workflow_id)


async def _log_steps(runtime: Runtime, chat: ChatRound, *steps: tuple[str, str], kind: str = "step") -> None:
    """Store log entries, one after the other (their times order them), then emit them together."""
    entries = [
        await create_once(Log, id=round_item_id(chat.workflow_id, chat.number, step), workflow_id=chat.workflow_id, message=text,
                          type=kind, round_number=chat.number)
        for step, text in steps
    ]
    await asyncio.gather(*(publish_item(runtime, "log", entry.to_item(), chat.workflow_id) for entry in entries if entry is not None))
