"""What must survive: clients that drop, workers that die, feeds that expire."""
from __future__ import annotations

import asyncio
import re
import signal
import time
import uuid
from urllib.parse import urlparse

import pytest

from tests.conftest import MODES, stack_for
from tests.sse import assistant_message, read_stream, reply_text, round_outcome
from tests.test_contract import run_round, start


async def gauge(client, name: str) -> float:
    text = (await client.get("/metrics")).text
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


async def wait_for_gauge(client, name: str, predicate, timeout: float = 5.0) -> float:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await gauge(client, name)
        if predicate(value) or asyncio.get_running_loop().time() > deadline:
            return value
        await asyncio.sleep(0.1)


async def test_a_client_that_goes_away_frees_its_stream_and_subscription(client, server):
    started, _ = await run_round(client)
    streams_before = await gauge(client, "chat_sse_streams")
    subscriptions_before = await gauge(client, "chat_feed_subscriptions")
    readers = [asyncio.create_task(read_stream(client, started["streamUrl"], timeout=60)) for _ in range(5)]
    assert await wait_for_gauge(client, "chat_feed_subscriptions", lambda v: v >= subscriptions_before + 5) >= subscriptions_before + 5
    assert await gauge(client, "chat_sse_streams") >= streams_before + 5
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    # freed within a keepalive period (1 s here)
    assert await wait_for_gauge(client, "chat_feed_subscriptions", lambda v: v <= subscriptions_before, 3) <= subscriptions_before
    assert await wait_for_gauge(client, "chat_sse_streams", lambda v: v <= streams_before, 3) <= streams_before


async def test_a_client_dropping_mid_reply_loses_nothing_stored(client, server):
    started = await start(client)
    head = await read_stream(client, started["streamUrl"], limit=5)  # then the connection drops
    events = head + await read_stream(client, started["streamUrl"], last_event_id=head[-1].id)
    reply = assistant_message(events)
    assert reply_text(events, reply["id"]) == reply["content"]
    detail = (await client.get(f"/api/chatbot/{started['workflowId']}")).json()
    assert [i["item"]["role"] for i in detail["items"] if i["type"] == "message"] == ["user", "assistant"]


async def mid_reply(client, server, prompt: str) -> tuple[dict, list]:
    """Redis mode only (workers, leases and the queue are Redis mode's): a round started
    and followed until its first deltas; the start's answer and the events so far."""
    if server.mode != "redis":
        pytest.skip("workers, leases and the arq queue exist in Redis mode only")
    started = await start(client, prompt)
    head = await read_stream(client, started["streamUrl"], limit=6)
    assert head[-1].kind == "delta"  # the job is running
    return started, head


async def test_a_worker_killed_mid_reply_ends_the_round_with_an_error_keeping_the_text_sent(client, server):
    started, head = await mid_reply(client, server, "this worker will die")
    for worker in list(server.workers):
        server.kill_worker(worker)
    try:
        rest = await read_stream(client, started["streamUrl"], last_event_id=head[-1].id, timeout=20)
    finally:
        server.start_worker()
        server.start_worker()
    assert rest[-1].event == "error" and rest[-1].data["code"] == "worker_lost"
    events = head + rest
    reply = assistant_message(events)  # what was sent, stored and sent as the reply, before the error
    assert reply["content"] and reply_text(events, reply["id"]) == reply["content"]
    detail = (await client.get(f"/api/chatbot/{started['workflowId']}")).json()
    assert detail["workflow"]["status"] == "failed"
    assert detail["workflow"]["error"]["code"] == "worker_lost"
    assert f"round {started['workflowId']}/1 failed: its job's lease ran out" in (server.logs / "web.log").read_text()  # said
    assert [i["item"] for i in detail["items"] if i["type"] == "message"][1] == reply
    outcome = round_outcome(events)
    assert (outcome["type"], outcome["status"], outcome["message"]) == ("error", "failed", rest[-1].data["message"])
    _, events = await run_round(client, "and again", started["workflowId"])  # the conversation goes on
    assert events[-1].event == "complete"
    # The workflow's error is gone with the next round; the failed round's stored steps keep it.
    detail = (await client.get(f"/api/chatbot/{started['workflowId']}")).json()
    assert detail["workflow"]["error"] is None and round_outcome(detail["items"]) == outcome


async def test_workers_told_to_stop_finish_the_replies_they_are_writing(client, server):
    # A deploy restarts workers with SIGTERM: the reply in flight must not fail for it.
    started, head = await mid_reply(client, server, "finish me before you go")
    draining = list(server.workers)
    for worker in draining:
        worker.send_signal(signal.SIGTERM)
    try:
        rest = await read_stream(client, started["streamUrl"], last_event_id=head[-1].id)
        exits = [await asyncio.to_thread(worker.wait, 10) for worker in draining]
    finally:
        for worker in draining:
            if worker.poll() is None:
                worker.kill()
            server.workers.remove(worker)
        server.start_worker()
        server.start_worker()
    assert rest[-1].event == "complete"
    events = head + rest
    reply = assistant_message(events)
    assert reply_text(events, reply["id"]) == reply["content"] and "finish me before you go" in reply["content"]
    assert exits == [0, 0]  # and they did go, once it was done
    _, events = await run_round(client, "and the new workers answer", started["workflowId"])
    assert events[-1].event == "complete"


async def test_stopping_a_round_whose_worker_died_keeps_the_text_sent(client, server):
    started, head = await mid_reply(client, server, "this worker will die before the stop")
    for worker in list(server.workers):
        server.kill_worker(worker)
    try:
        await asyncio.sleep(2.5)  # past the lease (LEASE_SECONDS=2): no job is left to answer
        stop = await client.post(f"/api/chatbot/{started['workflowId']}/stop")
        rest = await read_stream(client, started["streamUrl"], last_event_id=head[-1].id)
    finally:
        server.start_worker()
        server.start_worker()
    assert stop.json()["status"] == "stopped" and rest[-1].event == "stopped"
    events = head + rest
    reply = assistant_message(events)
    assert reply["content"] and reply_text(events, reply["id"]) == reply["content"]


async def test_a_job_that_outlived_its_lease_gives_its_round_up(client, server):
    # A worker that stalls past its lease may have had its round failed (and the text it
    # sent stored) by a stream's or a start's check: what it generates after that must not
    # be sent after the round's end. Here the lease is taken away while the job runs.
    from redis.asyncio import Redis

    started, head = await mid_reply(client, server, "a job that will lose its lease")
    redis = Redis.from_url(server.env["REDIS_URL"], decode_responses=True)
    try:
        assert await redis.delete(f"{server.env['KEY_PREFIX']}lease:{started['workflowId']}:1") == 1
    finally:
        await redis.aclose()
    rest = await read_stream(client, started["streamUrl"], last_event_id=head[-1].id)
    assert rest[-1].event == "error" and rest[-1].data["code"] == "worker_lost"
    events = head + rest
    reply = assistant_message(events)
    assert reply_text(events, reply["id"]) == reply["content"]
    assert len([e for e in events if e.kind == "delta"]) < 40, "the job went on to the end of its reply"
    detail = (await client.get(f"/api/chatbot/{started['workflowId']}")).json()
    assert [i["item"] for i in detail["items"] if i["type"] == "message"][1] == reply


async def end_behind_the_jobs_back(client, server, prompt: str, follow: bool = False) -> tuple[dict, list, asyncio.Task | None]:
    """A round whose status is committed as completed while its job runs: the job's own
    end then finds the round ended and sends nothing, as if whoever ended the round had
    died between its commit and its end event. The start, the events to the job's sixth,
    and (``follow``) a reader of the whole round, opened before its status changed."""
    started = await start(client, prompt)
    follower = asyncio.create_task(read_stream(client, started["streamUrl"], timeout=10)) if follow else None
    head = await read_stream(client, started["streamUrl"], limit=6)
    assert head[-1].kind == "delta"  # the job is running
    await server.execute_sql("UPDATE workflows SET status = 'completed', updated_at = ? WHERE id = ?", time.time(), started["workflowId"])
    return started, head, follower


async def test_a_round_whose_end_was_never_sent_still_ends_its_streams(client, server):
    started, head, follower = await end_behind_the_jobs_back(client, server, "an end nobody sends", follow=True)
    events = await follower  # a stream of the running round: once idle, it looks
    assert events[-1].event == "complete" and events[-1].data["roundNumber"] == 1
    reply = assistant_message(events)
    assert reply_text(events, reply["id"]) == reply["content"]
    # Sent once: a stream resumed from before it gets the same events.
    rest = await read_stream(client, started["streamUrl"], last_event_id=head[-1].id)
    assert [e.id for e in head + rest] == [e.id for e in events]


async def test_the_next_round_comes_after_the_end_of_one_whose_end_was_never_sent(client, server):
    started, head, _ = await end_behind_the_jobs_back(client, server, "another end nobody sends")
    workflow_id = started["workflowId"]
    await until_the_job_has_sent_its_reply(client, workflow_id)
    await start(client, "the next round", workflow_id)  # no stream was open to notice
    rest = await read_stream(client, f"/api/chatbot/{workflow_id}/stream", last_event_id=head[-1].id)
    ends = [(e.event, e.data["roundNumber"]) for e in rest if e.event in ("complete", "stopped", "error")]
    assert ends == [("complete", 1), ("complete", 2)]
    first_of_round_2 = next(i for i, e in enumerate(rest) if e.kind == "message" and e.item["roundNumber"] == 2)
    assert rest[first_of_round_2 - 1].event == "complete"


async def test_a_stream_resumed_after_a_round_whose_end_was_never_sent_gets_that_end(client, server):
    started, head, _ = await end_behind_the_jobs_back(client, server, "an end still owed")
    await until_the_job_has_sent_its_reply(client, started["workflowId"])
    rest = await read_stream(client, started["streamUrl"], last_event_id=head[-1].id, timeout=10)
    assert rest[-1].event == "complete" and rest[-1].data["roundNumber"] == 1
    assert reply_text(head + rest, assistant_message(rest)["id"]) == assistant_message(rest)["content"]


@pytest.fixture(scope="module", params=MODES)
def long_keepalive_server(request):
    with stack_for(request, request.param, {"KEEPALIVE_SECONDS": "30"}) as stack:
        yield stack


async def test_a_page_opened_after_a_round_whose_end_was_never_sent_gets_that_end_at_once(long_keepalive_server):
    # A reload: no Last-Event-ID. Its stream must not wait for its first idle check.
    async with long_keepalive_server.client() as client:
        started, _, _ = await end_behind_the_jobs_back(client, long_keepalive_server, "an end owed to a reload")
        await until_the_job_has_sent_its_reply(client, started["workflowId"])
        events = await read_stream(client, started["streamUrl"], timeout=10)
    assert events[-1].event == "complete" and events[-1].data["roundNumber"] == 1
    assert [e.event for e in events].count("complete") == 1


async def until_the_job_has_sent_its_reply(client, workflow_id: str) -> None:
    for _ in range(100):  # the job stores its reply, sends it, then finds the round ended
        detail = (await client.get(f"/api/chatbot/{workflow_id}")).json()
        if [i for i in detail["items"] if i["type"] == "message" and i["item"]["role"] == "assistant"]:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)


async def test_a_running_chat_job_is_no_longer_in_the_queue(client, server):
    # arq re-examines every job left in its queue on every poll, so running jobs would make
    # each poll of every worker slower and new chats wait behind them (tasks/worker.py).
    from redis.asyncio import Redis

    started, head = await mid_reply(client, server, "a job that leaves the queue")
    redis = Redis.from_url(server.env["REDIS_URL"], decode_responses=True)
    try:
        assert await redis.zrange(server.env["QUEUE_NAME"], 0, -1) == []
    finally:
        await redis.aclose()
    rest = await read_stream(client, started["streamUrl"], last_event_id=head[-1].id)
    assert rest[-1].event == "complete"


async def test_the_web_process_holds_two_redis_connections_however_busy(client, server):
    # One multiplexed connection for every command, one blocking reader for every stream.
    if server.mode != "redis":
        pytest.skip("Redis mode only")
    import psutil

    first, _ = await run_round(client)
    streams = [asyncio.create_task(read_stream(client, first["streamUrl"], timeout=60)) for _ in range(20)]
    try:
        await asyncio.gather(*(run_round(client, f"busy {i}") for i in range(10)))
        redis_port = urlparse(server.env["REDIS_URL"]).port or 6379
        web = psutil.Process(server.web.pid)
        held = {
            c.laddr.port
            for p in (web, *web.children(recursive=True))
            for c in getattr(p, "net_connections", p.connections)("tcp")
            if c.raddr and c.raddr.port == redis_port and c.status == psutil.CONN_ESTABLISHED
        }
        assert len(held) == 2, held
    finally:
        for stream in streams:
            stream.cancel()
        await asyncio.gather(*streams, return_exceptions=True)


@pytest.fixture(scope="module", params=MODES)
def short_retention_server(request):
    with stack_for(request, request.param, {"FEED_RETENTION_SECONDS": "0.5"}) as stack:
        yield stack


async def test_a_cursor_older_than_the_feed_gets_the_stored_items_again(short_retention_server):
    async with short_retention_server.client() as http:
        started, events = await run_round(http)
        await asyncio.sleep(1.5)  # the round's feed has expired
        stored = (await http.get(f"/api/chatbot/{started['workflowId']}")).json()["items"]
        resumed = await read_stream(http, started["streamUrl"], last_event_id=events[3].id, limit=len(stored))
        assert [(e.kind, e.item) for e in resumed] == [(i["type"], i["item"]) for i in stored]
        _, second = await run_round(http, "after expiry", started["workflowId"])
        assert second[-1].event == "complete"


async def test_streams_outlive_the_feed_expiring_under_them(short_retention_server):
    async with short_retention_server.client() as http:
        started, _ = await run_round(http)
        follower = asyncio.create_task(read_stream(http, started["streamUrl"]))  # idle: waits for round 2
        await asyncio.sleep(1.5)  # the feed expires while it is followed
        stored = (await http.get(f"/api/chatbot/{started['workflowId']}")).json()["items"]
        newcomer = await read_stream(http, started["streamUrl"], limit=len(stored))
        assert [e.item for e in newcomer] == [i["item"] for i in stored]
        second = await start(http, "round two", started["workflowId"])
        events = await follower
        assert events[-1].event == "complete" and second["messageId"] in {e.item.get("id") for e in events}


@pytest.fixture(scope="module", params=MODES)
def long_reply_server(request):
    with stack_for(request, request.param, {"FEED_MAX_EVENTS": "20", "DEMO_REPLY_TOKENS": "400", "DEMO_TOKEN_INTERVAL_MS": "4"}) as stack:
        yield stack


async def test_a_subscriber_joining_a_reply_longer_than_the_feed_keeps_gets_the_round_and_the_rest(long_reply_server):
    """The feed has dropped the reply's beginning (and the round's user message): the
    stored items of the round come first, then the deltas it still holds, then the end."""
    async with long_reply_server.client() as http:
        started = await start(http, "a long one")
        # Until 250 of the 400 deltas are out: far more than the feed keeps (Redis trims
        # MAXLEN ~ by whole nodes of 100 entries), however slow the machine.
        await read_stream(http, started["streamUrl"], limit=3 + 250)
        late = await read_stream(http, started["streamUrl"])
        assert [e.item["id"] for e in late if e.kind == "message" and e.item["role"] == "user"] == [started["messageId"]]
        assert [e.kind for e in late].count("log") == len({e.item["id"] for e in late if e.kind == "log"})  # none twice
        indexes = [e.item["index"] for e in late if e.kind == "delta"]
        assert indexes and indexes[0] > 0 and indexes == list(range(indexes[0], 400))
        reply = assistant_message(late)
        assert reply["content"].endswith("".join(e.item["text"] for e in late if e.kind == "delta"))
        assert late[-1].event == "complete"


@pytest.fixture
async def bare_runtime(redis_url):
    """A web process's runtime on the test Redis, under a key prefix of its own (no database)."""
    from dataclasses import replace

    from config import Settings
    from tasks.runtime import Runtime

    settings = replace(Settings.from_env(), redis_url=redis_url, key_prefix=f"test-{uuid.uuid4().hex[:8]}:", lease_seconds=2.0)
    runtime = await Runtime.open(settings, runs_jobs=False)
    yield runtime
    await runtime.close()


def worker_module():
    """tasks.worker, which makes uvloop's the loop policy on import (for arq): not the tests'."""
    policy = asyncio.get_event_loop_policy()
    import tasks.worker

    asyncio.set_event_loop_policy(policy)
    return tasks.worker


async def test_a_taken_job_holds_the_round_by_a_running_jobs_lease(bare_runtime):
    # A queued round's lease is long (the queue may be slow); once a worker has taken its
    # job, a worker dying before the job runs must be noticed as fast as one dying in it.
    from tasks.runtime import chat_job_id

    workflow_id, prefix = str(uuid.uuid4()), bare_runtime.settings.key_prefix
    lease = f"{prefix}lease:{workflow_id}:1"
    try:
        await bare_runtime.control.expect(workflow_id, 1)
        assert await bare_runtime.redis.execute("PTTL", lease) > 20_000
        await worker_module().leave_queue({"runtime": bare_runtime, "job_id": chat_job_id(prefix, workflow_id, 1)})
        assert 0 < await bare_runtime.redis.execute("PTTL", lease) <= 2_000
    finally:
        await bare_runtime.redis.execute("DEL", lease)


def test_a_chat_jobs_id_names_its_round_under_the_deployments_prefix():
    from tasks.runtime import chat_job_id, chat_job_round

    workflow_id = str(uuid.uuid4())
    assert chat_job_id("chat:", workflow_id, 12) == f"chat:{workflow_id}:12"  # the default prefix: the ids of earlier releases
    assert chat_job_round("test-1:", chat_job_id("test-1:", workflow_id, 12)) == (workflow_id, 12)
    for job_id in (chat_job_id("test-2:", workflow_id, 12), f"test-1:{workflow_id}", "test-1:doc-7:3", f"index:{workflow_id}:1"):
        assert chat_job_round("test-1:", job_id) is None, job_id  # another deployment's, or a job of yours


async def test_a_job_of_your_own_stays_in_the_queue_while_it_runs(bare_runtime):
    # Chat jobs leave arq's queue when they start (their rounds' leases stand in for
    # arq's retry); any other job must stay, for arq to run again if its worker dies.
    worker = worker_module()
    queue, job_id = worker.WorkerSettings.queue_name, f"index-document:{bare_runtime.settings.key_prefix}"
    try:
        await bare_runtime.redis.execute("ZADD", queue, 1, job_id)
        await worker.leave_queue({"runtime": bare_runtime, "job_id": job_id})
        assert await bare_runtime.redis.execute("ZSCORE", queue, job_id) is not None
    finally:
        await bare_runtime.redis.execute("ZREM", queue, job_id)


async def test_a_worker_without_redis_url_says_so():
    # arq alone would use redis://localhost:6379, someone else's maybe, and fail later.
    worker = worker_module()
    if worker._settings.redis_url is not None:
        pytest.skip("REDIS_URL is set in this environment")
    with pytest.raises(RuntimeError, match="REDIS_URL is not set"):
        await worker.startup({})


async def test_a_stack_takes_its_redis_keys_with_it_even_after_a_worker_died_mid_reply(redis_url):
    # The tests share the machine's Redis; a worker killed under a job leaves arq's keys
    # for that job (a day's expiry), and the round's own under the stack's prefix.
    import redis.asyncio as redis

    from tests.servers import start_stack

    shared = redis.from_url(redis_url)

    async def left(prefix: str) -> list[bytes]:
        return [key for pattern in (f"{prefix}*", f"arq:*:{prefix}*") for key in [k async for k in shared.scan_iter(match=pattern)]]

    try:
        with start_stack("redis", redis_url=redis_url, workers=1) as stack:
            async with stack.client() as client:
                started = await start(client, "a reply cut short")
                await read_stream(client, started["streamUrl"], limit=6)
            stack.kill_worker(stack.workers[0])
            assert any(key.startswith(b"arq:in-progress:") for key in await left(stack.redis_prefix))
        assert await left(stack.redis_prefix) == []
    finally:
        await shared.aclose()
