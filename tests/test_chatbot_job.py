"""The chatbot job run twice (a worker died, arq retried it) or with its feed failing under
it: nothing stored twice, the stored text is the text sent, and the round always ends."""
from __future__ import annotations

import asyncio

import pytest

from config import Settings
from events import ORIGIN
from models import COMPLETED, FAILED, RUNNING, Log, Message, Workflow, round_item_id
from models.db import close_db, open_db
from tasks.chatbot import run_chatbot
from tasks.runtime import Runtime
from tasks.workflows import fail_orphaned_rounds


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

    async def emit_failing_the_third_delta(context_id, event_type, data, category="default"):
        if data.get("type") == "delta":
            deltas.append(data)
            if len(deltas) == 3:
                raise ConnectionError("the feed is away")
        return await emit(context_id, event_type, data, category)

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
