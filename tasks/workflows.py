"""Conversations as the API sees them: start a round, stop it, read it, stream it."""
from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Iterable
from typing import TypeVar

from events import ORIGIN, Event, FeedGap, category_set, encode, parse_cursor, wanted
from events.sse import KEEPALIVE, frame
from metrics import EVENTS_SENT, OPEN_STREAMS, ROUNDS_STARTED
from models import (
    FAILED, ROUND_END_EVENT, RUNNING, STOPPED, Log, Message, Workflow, chat_items, claim_next_round, is_workflow_id,
    owned_workflow_or_none, round_item_id,
)
from tasks.chatbot import end_abandoned_round
from tasks.runtime import Runtime, chatdata, chatdata_category, publish_item, resent_round_end, send_owed_round_end

log = logging.getLogger(__name__)

END_EVENTS = frozenset(ROUND_END_EVENT.values())
T = TypeVar("T")


class WorkflowNotFound(Exception):
    pass


class RoundRunning(Exception):
    pass


class PromptTooLong(Exception):
    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"The prompt is {length} characters; the limit is {limit}.")


async def owned_workflow(owner_id: str, workflow_id: str) -> Workflow:
    """The workflow if it exists and is this user's: others' look exactly like missing ones."""
    if not is_workflow_id(workflow_id):  # never ours, and not for the database to choke on
        raise WorkflowNotFound(workflow_id)
    workflow = await owned_workflow_or_none(owner_id, workflow_id)
    if workflow is None:
        raise WorkflowNotFound(workflow_id)
    return workflow


def _runs_to_the_end(command):
    """A command that writes in several steps goes on when its caller is cancelled, as
    Quart cancels a request's handler when the client leaves: a start cut after its claim
    would leave a round running with no message or job."""

    @functools.wraps(command)
    async def shielded(*args, **kwargs):
        return await _to_the_end(command(*args, **kwargs))

    return shielded


async def _to_the_end(work: Awaitable[T]) -> T:
    """``work``, run to its end even if the caller is cancelled meanwhile."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_after_the_caller_left)
        raise


def _after_the_caller_left(task: asyncio.Future) -> None:
    """What work raised after its caller left: an answer such as a 404 is nobody's to
    hear (not an error that was never retrieved, as asyncio would log it); a failure is
    logged as one."""
    if task.cancelled() or (error := task.exception()) is None:
        return
    if not isinstance(error, (WorkflowNotFound, RoundRunning, PromptTooLong)):
        log.error("a request's work failed after its client left", exc_info=error)


@_runs_to_the_end
async def start_round(runtime: Runtime, owner_id: str, prompt: str, workflow_id: str | None) -> tuple[Workflow, Message]:
    """Store the user's message, emit it and enqueue the chatbot: a new conversation or
    the next round of an existing one (RoundRunning while a round still runs)."""
    if len(prompt) > runtime.settings.max_prompt_chars:
        raise PromptTooLong(len(prompt), runtime.settings.max_prompt_chars)
    if workflow_id is None:
        workflow, previous_end = await Workflow.create(owner_id=owner_id, title=_title(prompt)), list
    else:
        workflow = await owned_workflow(owner_id, workflow_id)
        await fail_if_lost(runtime, workflow)
        previous_end = await resent_round_end(runtime, workflow)  # before this round's message
        now = time.time()
        if not await claim_next_round(workflow.id, workflow.round_number, now):
            raise RoundRunning(workflow.id)
        workflow.status, workflow.round_number, workflow.updated_at = RUNNING, workflow.round_number + 1, now
    message = await Message.create(
        id=round_item_id(workflow.id, workflow.round_number, "user"),
        workflow_id=workflow.id,
        role="user",
        content=prompt,
        round_number=workflow.round_number,
    )
    # Emitted and enqueued in one trip to Redis: gather starts its tasks in order, so the
    # message goes after the previous round's end and before anything the job emits.
    await asyncio.gather(
        *previous_end(),
        publish_item(runtime, "message", message.to_item(), workflow.id),
        runtime.enqueue_round(workflow.id, workflow.round_number),
    )
    ROUNDS_STARTED.inc()
    return workflow, message


@_runs_to_the_end
async def stop_round(runtime: Runtime, workflow: Workflow) -> str:
    """Ask the running round to stop; the status when answering."""
    if workflow.status == RUNNING:
        await runtime.control.request_stop(workflow.id, workflow.round_number)
        if not await _job_alive(runtime, workflow):  # no job left to answer
            await end_abandoned_round(runtime, workflow.id, workflow.round_number, STOPPED)
        await workflow.refresh_from_db(fields=["status"])
    return workflow.status


async def fail_if_lost(runtime: Runtime, workflow: Workflow) -> None:
    """A round marked running whose job is gone (its worker died) ends as failed."""
    if workflow.status == RUNNING and not await _job_alive(runtime, workflow):
        if await end_abandoned_round(runtime, workflow.id, workflow.round_number):
            log.warning("round %s/%s failed: its job's lease ran out (its worker died or stalled)", workflow.id, workflow.round_number)
            workflow.status = FAILED


async def _job_alive(runtime: Runtime, workflow: Workflow) -> bool:
    """Whether a running round's job may still answer. One claimed less than a lease ago
    counts: its start may not have recorded the job it enqueues yet (a second start, a
    stop or a stream would call it lost), and no job that dies is noticed sooner anyway."""
    if time.time() - workflow.updated_at < runtime.settings.lease_seconds:
        return True
    return await runtime.control.alive(workflow.id, workflow.round_number)


async def fail_orphaned_rounds(runtime: Runtime) -> None:
    """Embedded mode, at start-up: rounds left running died with the previous process."""
    for workflow_id, round_number in await Workflow.filter(status=RUNNING).values_list("id", "round_number"):
        await end_abandoned_round(runtime, workflow_id, round_number)


async def workflow_detail(workflow: Workflow) -> dict:
    items = [chatdata(kind, item, item["createdAt"]) for kind, item, _ in await chat_items(workflow.id)]
    return {"workflow": workflow.to_dict(), "items": items}


async def list_workflows(owner_id: str) -> list[dict]:
    workflows = await Workflow.filter(owner_id=owner_id).order_by("-updated_at")
    return [w.to_dict() for w in workflows]


def _title(prompt: str) -> str:
    words = " ".join(prompt.split())
    return words if len(words) <= 60 else words[:59].rstrip() + "…"


async def stream_workflow(
    runtime: Runtime, owner_id: str, workflow_id: str, last_event_id: str | None, categories: Iterable[str] | None
) -> AsyncIterator[str]:
    """The workflow's events as SSE text: what the client has not seen, then live events,
    until the end of the round that was running when it opened (see API.md, "Stream").
    Opened before the response starts: WorkflowNotFound unless it is this user's."""
    stream = _Stream(runtime, workflow_id, category_set(categories))
    # Shielded: a client that leaves while we read must not cut a database query in half
    # and leave its pooled connection mid-reply (Redis commands are safe to leave).
    initial, follow_from = await _to_the_end(stream.open(owner_id, last_event_id))
    return _send(stream, initial, follow_from)


async def _send(stream: _Stream, initial: list[Event], follow_from: str) -> AsyncIterator[str]:
    OPEN_STREAMS.inc()
    try:
        snapshot, done = stream.render(initial, live=False)
        if snapshot:
            yield snapshot
        del initial, snapshot  # an idle stream lives long: keep no snapshot around, as events or text
        if done:
            return
        runtime = stream.runtime
        keepalive, loop = runtime.settings.keepalive_seconds, asyncio.get_running_loop()
        last_write = loop.time()
        async for batch in runtime.feed.subscribe(stream.workflow_id, follow_from, idle_timeout=keepalive):
            chunk, done = stream.render(batch)
            if not chunk and loop.time() - last_write >= keepalive:  # idle, or all filtered out
                chunk = KEEPALIVE
                await stream.check_alive()
            if chunk:
                yield chunk
                last_write = loop.time()
            if done:
                return
    except FeedGap:
        # This client fell behind what the feed retains (or the feed expired under it):
        # end the response; its reconnection with Last-Event-ID gets a fresh snapshot.
        return
    finally:
        OPEN_STREAMS.dec()


class _Stream:
    """Where one SSE client starts, what it must not get twice, and when it ends."""

    __slots__ = ("runtime", "workflow_id", "categories", "closing_round", "running_round", "sent_ids")  # one per open stream

    def __init__(self, runtime: Runtime, workflow_id: str, categories: frozenset[str] | None) -> None:
        self.runtime, self.workflow_id, self.categories = runtime, workflow_id, categories
        self.closing_round = 0  # the first end event of this round or later closes the stream
        self.running_round = 0  # a round seen running, whose job we watch for death
        self.sent_ids: tuple[str, ...] = ()  # snapshot items that may still arrive live (a few)

    async def open(self, owner_id: str, last_event_id: str | None) -> tuple[list[Event], str]:
        """The events to send first and the cursor to follow the feed from."""
        position = _position(last_event_id)
        if position is not None and position[0] > 0:
            cursor = "%d-%d" % position  # as the feed writes it, whatever the client's spelling
            try:  # a live cursor: exactly what came after it, to the next end of a round
                events = await self.runtime.feed.read(self.workflow_id, cursor)
            except FeedGap:
                position = None
            else:
                workflow = await owned_workflow(owner_id, self.workflow_id)
                if workflow.status == RUNNING:  # the round running now ends it, not an earlier one it replays
                    self.closing_round = self.running_round = workflow.round_number
                else:  # the client may be waiting for an end that whoever ended the round died before sending
                    await send_owed_round_end(self.runtime, workflow)
                return events, events[-1].cursor if events else cursor
        return await self._snapshot(owner_id, skip=position[1] if position else 0)

    async def _snapshot(self, owner_id: str, skip: int) -> tuple[list[Event], str]:
        # Order matters: feed, then status, then database. Whatever was stored and emitted
        # by then is in one of them; what is stored but not yet emitted is deduplicated.
        # (The feed is read before the ownership check: a stranger's read is thrown away.)
        retained = await self.runtime.feed.read(self.workflow_id)
        workflow = await owned_workflow(owner_id, self.workflow_id)
        rows = await chat_items(self.workflow_id)
        current = workflow.round_number
        # A client back from a snapshot cursor after whole rounds ran gets those rounds'
        # events as they were sent (deltas and ends included) while the feed holds them.
        replayed = _replayed_round(rows, skip, retained)
        if workflow.status == RUNNING or _ending(retained, current):
            self.closing_round = self.running_round = current
            first_from_feed = current if replayed is None else replayed
        elif replayed is not None:
            self.closing_round = first_from_feed = replayed  # it closes at that round's end, as before it left
        else:  # the feed, read before the status, cannot hold a round after it
            self.closing_round = first_from_feed = current + 1
        live_part = retained[_round_start(retained, first_from_feed) :] if first_from_feed <= current else []
        stored = [row for row in rows if row[2].round_number < first_from_feed]
        if workflow.status == RUNNING and not live_part:
            # The feed does not hold the running round's start: not emitted yet, dropped
            # from a reply longer than the feed keeps, or lost with Redis. Its stored items
            # come from the database, then what the feed holds of it.
            live_part, stored = retained[_after_last_end(retained) :], rows
        # What was sent from the database of the latest rounds may still arrive live.
        self.sent_ids = tuple(item["id"] for _, item, row in stored if row.round_number >= current)
        if skip > len(stored):  # the client had more from the database than now comes from it
            self.sent_ids += tuple(item["id"] for _, item, _ in rows[len(stored) : skip])
            live_part = [event for event in live_part if not self._seen(event)]
        if self.running_round and workflow.status != RUNNING:
            # Ended after the feed was read, or its ender died before sending its end: a
            # page reloaded then must not wait for a keepalive's check to get it.
            await send_owed_round_end(self.runtime, workflow)
        synthetic = [
            Event(f"0-{i}", "chatdata", chatdata_category(kind), encode(chatdata(kind, item, item["createdAt"])))
            for i, (kind, item, _) in enumerate(stored, start=1)
        ]
        return synthetic[skip:] + live_part, retained[-1].cursor if retained else ORIGIN

    def render(self, events: list[Event], live: bool = True) -> tuple[str, bool]:
        """SSE text for a batch, and whether the stream ends with it."""
        out, done = [], False
        for event in events:
            if live and self._seen(event):
                continue
            if wanted(event, self.categories):
                out.append(frame(event.type, event.data_json, event.cursor))
            if event.type in END_EVENTS and event.data.get("roundNumber", 0) >= self.closing_round:
                done = True
                break
            if live and (started := _user_message_round(event)):
                self.running_round = max(self.running_round, started)
        EVENTS_SENT.inc(len(out))
        return "".join(out), done

    def _seen(self, event: Event) -> bool:
        if not self.sent_ids or event.type != "chatdata":
            return False
        if not any(sent in event.data_json for sent in self.sent_ids):  # cheaper than decoding
            return False
        item = event.data["item"]
        return item.get("id", item.get("messageId")) in self.sent_ids

    async def check_alive(self) -> None:
        """While idle in a running round: end it if its job is gone, and send its end if
        it ended and whoever ended it died before sending that."""
        if self.running_round:
            workflow = await Workflow.get(id=self.workflow_id)
            await fail_if_lost(self.runtime, workflow)
            if workflow.status != RUNNING:
                if workflow.round_number == self.running_round:
                    await send_owed_round_end(self.runtime, workflow)
                self.running_round = 0


def _replayed_round(rows: list[tuple[str, dict, Message | Log]], skip: int, retained: list[Event]) -> int | None:
    """The first round a client back from the snapshot cursor ``0-<skip>`` has seen nothing
    of, if the feed still holds it from its start (and so every round after it)."""
    if not 0 < skip < len(rows):
        return None
    first_unseen = rows[skip][2].round_number
    if rows[skip - 1][2].round_number == first_unseen:  # it left in the middle of this round's items
        first_unseen += 1
    return first_unseen if _round_start(retained, first_unseen) < len(retained) else None


def _ending(events: list[Event], round_number: int) -> bool:
    """Whether the feed holds the round's start but not yet its end: its status changed
    after the feed was read, and the rest of it, to its end, is on its way."""
    start = _round_start(events, round_number)
    return start < len(events) and not any(
        event.type in END_EVENTS and event.data.get("roundNumber") == round_number for event in events[start:]
    )


def _after_last_end(events: list[Event]) -> int:
    """Index after the last end of a round in ``events`` (0 if there is none)."""
    return next((index + 1 for index in range(len(events) - 1, -1, -1) if events[index].type in END_EVENTS), 0)


def _round_start(events: list[Event], round_number: int) -> int:
    """Index of the round's user message in the retained events (len if not there yet)."""
    for index in range(len(events) - 1, -1, -1):
        if _user_message_round(events[index]) == round_number:
            return index
    return len(events)


def _user_message_round(event: Event) -> int | None:
    """The round a user's message event starts; None for any other event. Decoding every
    delta would cost more than the loops that ask: the text is looked at first."""
    if event.type != "chatdata" or '"role":"user"' not in event.data_json:
        return None
    data = event.data
    return data["item"]["roundNumber"] if data["type"] == "message" and data["item"]["role"] == "user" else None


def _position(cursor: str | None) -> tuple[int, int] | None:
    try:
        return parse_cursor(cursor) if cursor else None
    except ValueError:
        return None  # a cursor we never issued: start over
