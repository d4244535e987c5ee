"""The chatbot job run twice (a worker died, arq retried it) or with its feed failing under
it: nothing stored twice, the stored text is the text sent, and the round always ends,
once, and reads ended to whoever got its end."""
from __future__ import annotations

import asyncio
import contextvars

import pytest

from config import Settings
from events import ORIGIN
from models import COMPLETED, FAILED, RUNNING, STOPPED, Log, Message, Workflow, round_item_id
from models.db import close_db, open_db
from tasks.chatbot import end_abandoned_round, run_chatbot
from tasks.runtime import Runtime, end_round, publish_item
from tasks.workflows import END_EVENTS, fail_orphaned_rounds, stream_workflow


@pytest.fixture
async def runtime(tmp_path):
    await open_db(f"sqlite://{tmp_path / 'job.sqlite3'}", migrate=True)
    settings = Settings.from_env(database_url="", redis_url=None, secret_key="test", demo_reply_tokens=5, demo_token_interval_ms=1)
    opened = await Runtime.open(settings, runs_jobs=True)
    yield opened
    await opened.close()
    await close_db()


async def running_round(prompt: str = "hello") -> Workflow:
    workflow = await Workflow.create(owner_id="someone", status=RUNNING, round_number=1)
    await Message.create(id=round_item_id(workflow.id, 1, "user"), workflow=workflow, role="user", content=prompt, round_number=1)
    return workflow


async def event_types(runtime: Runtime, workflow: Workflow) -> list[str]:
    return [e.type for e in await runtime.feed.read(workflow.id, ORIGIN)]


async def test_a_round_completes_once_even_if_the_job_runs_again(runtime):
    workflow = await running_round()
    assert await run_chatbot({"runtime": runtime, "job_try": 1}, workflow.id, 1) == COMPLETED
    assert await run_chatbot({"runtime": runtime, "job_try": 2}, workflow.id, 1) == "skipped: round is not running"
    assert await Message.filter(workflow_id=workflow.id).count() == 2
    assert (await event_types(runtime, workflow)).count("complete") == 1


async def test_a_retry_after_the_reply_was_stored_just_completes_the_round(runtime):
    workflow = await running_round()
    await Message.create(id=round_item_id(workflow.id, 1, "assistant"), workflow=workflow, role="assistant", content="done", round_number=1)
    assert await run_chatbot({"runtime": runtime, "job_try": 2}, workflow.id, 1) == "completed earlier"
    assert await Message.filter(workflow_id=workflow.id, role="assistant").count() == 1
    assert (await Workflow.get(id=workflow.id)).status == COMPLETED
    assert await event_types(runtime, workflow) == ["complete"]


async def test_a_retry_mid_reply_ends_the_round_with_an_error_not_a_second_reply(runtime):
    workflow = await running_round()
    assert await run_chatbot({"runtime": runtime, "job_try": 2}, workflow.id, 1) == "failed: worker lost"
    assert await Message.filter(workflow_id=workflow.id, role="assistant").count() == 0
    assert (await Workflow.get(id=workflow.id)).status == FAILED
    outcome, error = await runtime.feed.read(workflow.id, ORIGIN)
    assert (error.type, error.data["code"]) == ("error", "worker_lost")
    # The round's failure is among its stored steps, as the page shows it after a reload.
    item = outcome.data["item"]
    assert (outcome.data["type"], item["type"], item["status"], item["message"]) == ("log", "error", FAILED, error.data["message"])
    assert [entry.id for entry in await Log.filter(workflow_id=workflow.id)] == [item["id"]]


async def test_a_job_for_an_old_round_does_nothing(runtime):
    workflow = await running_round()
    await Workflow.filter(id=workflow.id).update(round_number=2)
    assert await run_chatbot({"runtime": runtime, "job_try": 1}, workflow.id, 1) == "skipped: round is not running"
    assert await event_types(runtime, workflow) == []


class SilentModel:
    """A model that never answers: the job is cancelled while it waits."""

    name = "silent"

    async def stream_reply(self, turns, on_usage=None):
        await asyncio.Event().wait()
        yield ""

    async def aclose(self) -> None:
        pass


async def test_a_job_cancelled_before_any_token_ends_the_round_and_stores_no_empty_reply(runtime):
    workflow = await running_round()
    runtime.provider = SilentModel()
    job = asyncio.create_task(run_chatbot({"runtime": runtime, "job_try": 1}, workflow.id, 1))
    while "Generating the reply" not in str(await event_log(runtime, workflow)):
        await asyncio.sleep(0.01)
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    assert await Message.filter(workflow_id=workflow.id, role="assistant").count() == 0
    stored = await Workflow.get(id=workflow.id)
    assert (stored.status, stored.error_code) == (FAILED, "worker_lost")


async def test_rounds_left_running_by_a_dead_embedded_process_fail_with_a_reason(runtime):
    workflow = await running_round()
    await fail_orphaned_rounds(runtime)
    stored = await Workflow.get(id=workflow.id)
    assert stored.to_dict()["error"] == {"code": "worker_lost", "message": stored.error_message} and stored.status == FAILED
    [outcome] = await Log.filter(workflow_id=workflow.id)
    assert (outcome.type, outcome.status, outcome.message, outcome.round_number) == ("error", FAILED, stored.error_message, 1)


async def event_log(runtime: Runtime, workflow: Workflow) -> list[str]:
    return [e.data_json for e in await runtime.feed.read(workflow.id, ORIGIN)]


async def test_a_delta_the_feed_failed_to_take_is_not_in_the_stored_reply(runtime, monkeypatch):
    """Redis away mid-reply: the round fails, and its stored text is what was sent."""
    workflow = await running_round()
    emit, deltas = runtime.feed.emit, []

    async def emit_failing_the_third_delta(context_id, event_type, data, category="default", **options):
        if data.get("type") == "delta":
            deltas.append(data)
            if len(deltas) == 3:
                raise ConnectionError("the feed is away")
        return await emit(context_id, event_type, data, category, **options)

    monkeypatch.setattr(runtime.feed, "emit", emit_failing_the_third_delta)
    assert await run_chatbot({"runtime": runtime, "job_try": 1}, workflow.id, 1) == FAILED
    sent = [e.data["item"]["text"] for e in await runtime.feed.read(workflow.id, ORIGIN) if e.data.get("type") == "delta"]
    [reply] = await Message.filter(workflow_id=workflow.id, role="assistant")
    assert len(sent) == 2 and reply.content == "".join(sent)


class ModelStoppedAtItsUsage:
    """A model that reports its usage and is stopped right then (as a user's stop can
    land at the end of a reply), then never finishes."""

    name = "stopped at its usage"

    def __init__(self, runtime: Runtime, workflow_id: str) -> None:
        self.runtime, self.workflow_id = runtime, workflow_id

    async def stream_reply(self, turns, on_usage=None):
        yield "Hello"
        await self.runtime.control.request_stop(self.workflow_id, 1)
        await on_usage({"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4})
        await asyncio.Event().wait()

    async def aclose(self) -> None:
        pass


async def test_a_stop_as_the_usage_comes_leaves_no_stored_log_unsent(runtime):
    workflow = await running_round()
    runtime.provider = ModelStoppedAtItsUsage(runtime, workflow.id)
    assert await run_chatbot({"runtime": runtime, "job_try": 1}, workflow.id, 1) == "stopped"
    sent = {e.data["item"].get("id") for e in await runtime.feed.read(workflow.id, ORIGIN) if e.type == "chatdata"}
    stored = {entry.id for entry in await Log.filter(workflow_id=workflow.id)}
    assert stored <= sent, "a log was stored and never sent"
    assert [entry.type for entry in await Log.filter(workflow_id=workflow.id, type="usage")] == ["usage"]


async def test_a_rounds_end_goes_out_once_the_round_reads_ended(runtime, monkeypatch):
    # A client that got the end event and asks for the workflow must find it ended.
    workflow = await running_round()
    emit, seen_at_the_end = runtime.feed.emit, []

    async def emit_noting_the_status(context_id, event_type, data, category="default", **options):
        if event_type in END_EVENTS:  # read as another request would: outside the ender's context
            async def status() -> str:
                return (await Workflow.get(id=context_id)).status

            read = asyncio.get_running_loop().create_task(status(), context=contextvars.Context())
            seen_at_the_end.append(await asyncio.wait_for(read, 2))
        return await emit(context_id, event_type, data, category, **options)

    monkeypatch.setattr(runtime.feed, "emit", emit_noting_the_status)
    assert await end_round(runtime, workflow.id, 1, STOPPED)
    assert seen_at_the_end == [STOPPED]


async def round_sent_as_far_as(runtime: Runtime, *texts: str) -> Workflow:
    """A running round whose job died: its user message and these deltas were sent."""
    workflow = await running_round()
    user = await Message.get(id=round_item_id(workflow.id, 1, "user"))
    await publish_item(runtime, "message", user.to_item(), workflow.id)
    for index, text in enumerate(texts):
        delta = {"messageId": round_item_id(workflow.id, 1, "assistant"), "index": index, "text": text}
        await publish_item(runtime, "delta", delta, workflow.id)
    return workflow


async def test_what_a_dead_job_stored_but_never_sent_is_sent_as_its_round_ends(runtime):
    workflow = await round_sent_as_far_as(runtime, "Hel", "lo")
    step = await Log.create(id=round_item_id(workflow.id, 1, "late step"), workflow=workflow, message="a step", round_number=1)
    reply = await Message.create(id=round_item_id(workflow.id, 1, "assistant"), workflow=workflow, role="assistant", content="Hello",
                                 round_number=1)
    assert await end_abandoned_round(runtime, workflow.id, 1)
    events = await runtime.feed.read(workflow.id, ORIGIN)
    ids = [e.data["item"].get("id") for e in events if e.type == "chatdata"]
    assert ids.count(step.id) == 1 and ids.count(reply.id) == 1, "a stored item never reached the feed"
    assert events[-1].type == "error"


async def test_a_subscriber_who_finds_a_round_ended_before_its_end_was_sent_follows_it_to_that_end(runtime):
    # A stream that read the feed just before a round's end was emitted, and its status
    # just after: that round is the one it follows (its end closes it, nothing twice).
    workflow = await round_sent_as_far_as(runtime, "Hel", "lo")
    reply = await Message.create(id=round_item_id(workflow.id, 1, "assistant"), workflow=workflow, role="assistant", content="Hello",
                                 round_number=1)
    await publish_item(runtime, "message", reply.to_item(), workflow.id)
    emit = runtime.feed.emit
    runtime.feed.emit = lambda *args, **kwargs: asyncio.sleep(0, "0-0")  # the end is on its way: sent later
    assert await end_round(runtime, workflow.id, 1, STOPPED)
    runtime.feed.emit = emit
    stream = await stream_workflow(runtime, "someone", workflow.id, None, None)
    snapshot = await anext(stream)
    assert snapshot.count("data:") == 4  # the user message, the two deltas and the reply
    outcome = await Log.get(workflow_id=workflow.id, type="stopped")
    await publish_item(runtime, "log", outcome.to_item(), workflow.id)
    await runtime.feed.emit(workflow.id, "stopped", {"workflowId": workflow.id, "roundNumber": 1}, "workflow")
    rest = "".join([chunk async for chunk in stream])  # it ends: no wait for a round 2
    assert rest.count(outcome.id) == 1 and rest.rstrip().split("\n")[-2] == "event: stopped"


async def test_a_client_back_from_a_snapshot_that_held_a_round_not_yet_sent_gets_nothing_twice(runtime):
    # Its snapshot came between a start's insert and its emit: the new round's user
    # message came from the database (cursor 0-m), and then reached the feed.
    workflow = await running_round()  # its user message stored, not yet emitted
    message = await Message.get(id=round_item_id(workflow.id, 1, "user"))
    stream = await stream_workflow(runtime, "someone", workflow.id, None, None)
    snapshot = await anext(stream)
    await stream.aclose()
    assert snapshot.count(message.id) == 1 and snapshot.startswith("id: 0-1\n")
    await publish_item(runtime, "message", message.to_item(), workflow.id)  # the start goes on
    await runtime.feed.emit(workflow.id, "complete", {"workflowId": workflow.id, "roundNumber": 1}, "workflow")
    rest = "".join([chunk async for chunk in await stream_workflow(runtime, "someone", workflow.id, "0-1", None)])
    assert message.id not in rest and "event: complete" in rest
