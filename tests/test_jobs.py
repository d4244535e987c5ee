"""Jobs of your own (README, "Building on the feed"): enqueued with ``runtime.enqueue``
from a handler or a job, run by arq workers in Redis mode and in the web process in
embedded mode, with the same ``ctx``, ids and retries. Against a real server in both
modes, serving the extension in tests/extension.py."""
from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from arq import Retry
from arq.worker import func

from tasks.in_process import InProcessJobs
from tests.conftest import MODES, stack_for
from tests.sse import read_stream


@pytest.fixture(scope="module", params=MODES)
def documents_server(request):
    with stack_for(request, request.param, app="tests.extension:app", worker_settings="tests.extension.WorkerSettings") as stack:
        yield stack


@pytest.fixture
async def documents(documents_server):
    async with documents_server.client() as client:
        yield client


async def document_events(client, doc_id: str, count: int) -> list[tuple[str, dict]]:
    """(type, data) of a document's first ``count`` events."""
    return [(e.event, e.data) for e in await read_stream(client, f"/api/documents/{doc_id}/events", limit=count, timeout=15)]


async def enqueue(client, doc_id: str, job: str, text: str, job_id: str | None = None, defer: float = 0):
    return await client.post(f"/api/documents/{doc_id}/{job}", json={"text": text, "jobId": job_id, "defer": defer})


async def test_a_job_enqueued_by_a_handler_runs_and_reaches_the_feed(documents):
    doc_id = uuid.uuid4().hex
    response = await enqueue(documents, doc_id, "count_words", "three little words")
    assert response.status_code == 202
    job_id = response.json()["jobId"]
    assert job_id
    [(kind, data)] = await document_events(documents, doc_id, 1)
    assert (kind, data) == ("counted", {"words": 3, "jobId": job_id, "jobTry": 1})


async def test_a_job_id_of_yours_runs_one_job_while_it_is_kept(documents):
    """arq's rule, in both modes: an id that is queued, running or ended less than
    KEEP_RESULT_SECONDS ago is not enqueued again."""
    doc_id = uuid.uuid4().hex
    first = await enqueue(documents, doc_id, "count_words", "one two", job_id=f"count:{doc_id}")
    assert first.status_code == 202 and first.json() == {"jobId": f"count:{doc_id}"}
    await document_events(documents, doc_id, 1)  # it ran and ended
    again = await enqueue(documents, doc_id, "count_words", "one two three", job_id=f"count:{doc_id}")
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_exists"
    other = await enqueue(documents, doc_id, "count_words", "one two three", job_id=f"count:{doc_id}:2")
    assert other.status_code == 202
    events = await document_events(documents, doc_id, 2)
    assert [data["words"] for kind, data in events if kind == "counted"] == [2, 3]


async def test_a_deferred_job_runs_no_sooner_and_holds_its_id_meanwhile(documents):
    doc_id, asked = uuid.uuid4().hex, time.monotonic()
    assert (await enqueue(documents, doc_id, "count_words", "later", job_id=f"later:{doc_id}", defer=0.5)).status_code == 202
    assert (await enqueue(documents, doc_id, "count_words", "later", job_id=f"later:{doc_id}")).status_code == 409
    [(kind, data)] = await document_events(documents, doc_id, 1)
    assert time.monotonic() - asked >= 0.5
    assert (kind, data["words"]) == ("counted", 1)


async def test_a_job_that_raises_retry_runs_again_and_can_enqueue_a_job(documents):
    doc_id = uuid.uuid4().hex
    assert (await enqueue(documents, doc_id, "count_after_a_retry", "a b c d")).status_code == 202
    events = await document_events(documents, doc_id, 3)
    assert [kind for kind, _ in events] == ["tried", "tried", "counted"]
    assert [data["jobTry"] for _, data in events] == [1, 2, 1]  # the job it enqueued is a job of its own
    assert events[-1][1]["words"] == 4


# The in-process runner's own rules (embedded mode), where a server would only make them slow.


async def wait_for(condition, timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_the_in_process_runner_gives_up_after_max_tries():
    jobs, tries = InProcessJobs(timeout=5, max_tries=3, keep_result=60), []

    async def always_retries(ctx):
        tries.append(ctx["job_try"])
        raise Retry(defer=0.01)

    assert jobs.start("always_retries", always_retries, (), "j1", {})
    await wait_for(lambda: not jobs.tasks)
    assert tries == [1, 2, 3]
    function = func(always_retries, max_tries=2)
    assert jobs.start(function.name, function.coroutine, (), "j2", {}, max_tries=function.max_tries)
    await wait_for(lambda: not jobs.tasks)
    assert tries == [1, 2, 3, 1, 2]


async def test_the_in_process_runner_times_a_job_out_and_keeps_its_id_for_keep_result():
    jobs, cancelled = InProcessJobs(timeout=0.05, max_tries=3, keep_result=0.2), asyncio.Event()

    async def hangs(ctx):
        try:
            await asyncio.sleep(10)
        finally:
            cancelled.set()

    assert jobs.start("hangs", hangs, (), "j", {})
    await asyncio.wait_for(cancelled.wait(), 2)
    await wait_for(lambda: not jobs.tasks)
    assert not jobs.start("hangs", hangs, (), "j", {})  # ended, and kept
    await asyncio.sleep(0.25)
    assert jobs.start("hangs", hangs, (), "j", {}, timeout=0.01)  # forgotten after keep_result


async def test_the_in_process_runner_cancels_running_jobs_on_close():
    jobs, started = InProcessJobs(timeout=5, max_tries=3, keep_result=60), asyncio.Event()

    async def runs(ctx):
        started.set()
        await asyncio.sleep(10)

    jobs.start("runs", runs, (), "j", {})
    await asyncio.wait_for(started.wait(), 2)
    [task] = jobs.tasks
    await jobs.close()
    assert task.cancelled()
