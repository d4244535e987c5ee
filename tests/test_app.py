"""The app factory (embedded mode, SQLite in a temporary folder): its serving lifespan,
in process and under Hypercorn, and SSE responses sent after Quart has finished the request."""
from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import subprocess
import weakref
from collections.abc import AsyncIterator

import pytest
import quart.typing
from quart import Blueprint, Quart, request
from quart.testing.app import LifespanError

from app import create_app
from blueprints import api_error, runtime, send_streams_after_quart, sse_response
from events.sse import frame, stream_context
from models import Message
from tasks import workflows
from tests.servers import BIN, ROOT, free_port


async def test_serving_tunes_the_garbage_collector_for_long_lived_streams_and_restores_it(tmp_path):
    """With Python's defaults a full collection ran every few seconds at 10,000 idle streams
    and paused the web process for a second each time: see bench/run.py --scenario idle."""
    before = gc.get_threshold()
    app = create_app({"database_url": f"sqlite://{tmp_path / 'chat.sqlite3'}", "secret_key": "test"})
    async with app.test_app():
        assert gc.get_threshold()[2] >= 1000  # the oldest generation: minutes apart, not seconds
        assert gc.get_threshold()[0] >= 10_000
        assert gc.get_freeze_count() > 0  # start-up objects are not examined again
        response = await app.test_client().get("/healthz")
        assert response.status_code == 200
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


async def test_embedded_mode_serves_a_database_from_one_process_until_it_stops(tmp_path):
    settings = {"database_url": f"sqlite://{tmp_path / 'chat.sqlite3'}", "secret_key": "test"}
    first, second = create_app(settings), create_app(settings)
    async with first.test_app():
        with pytest.raises(LifespanError, match="Another process already serves this database"):
            async with second.test_app():
                pass
        assert (await first.test_client().get("/healthz")).status_code == 200
    async with create_app(settings).test_app() as third:
        assert (await third.test_client().get("/healthz")).status_code == 200


def test_hypercorn_with_two_workers_in_embedded_mode_is_refused(tmp_path):
    """Each worker would keep its own in-memory feed: a stream served by one would never
    see the events of a round started on the other. Hypercorn stops both and says why
    (with exit status 0: Hypercorn 0.18 reports its workers' last status, not the first
    failure, pgjones/hypercorn#269)."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")} | {"DATA_DIR": str(tmp_path)}
    command = [str(BIN / "hypercorn"), "--workers", "2", "app:app", "--bind", f"127.0.0.1:{free_port()}"]
    try:
        served = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired as running:
        raise AssertionError("two embedded web processes served together") from running
    assert "Another process already serves this database in embedded mode" in served.stderr


async def test_a_client_leaving_mid_start_leaves_a_whole_round(tmp_path, monkeypatch):
    """Quart cancels a request's handler when its client leaves. A start cut after it has
    claimed the round would leave it running with no message and no job. (The message's
    insert is held until the client has gone, to leave at that exact point.)"""
    async with app_after_one_round(tmp_path) as (client, workflow_id):
        inserting, left = hold_message_insert(monkeypatch, "two")
        async with client.request("/api/chatbot/start", method="POST", headers={"Content-Type": "application/json"}) as connection:
            await connection.send(json.dumps({"prompt": "two", "workflowId": workflow_id}).encode())
            await connection.send_complete()
            await inserting.wait()  # the round is claimed
            await connection.disconnect()
            await asyncio.sleep(0.05)  # Quart cancels the handler
            left.set()
        detail = await until_status(client, workflow_id, "completed")
        assert [(i["item"]["role"], i["item"]["roundNumber"]) for i in detail["items"] if i["type"] == "message"][2:] == [
            ("user", 2), ("assistant", 2)]


@pytest.mark.parametrize("error, logged", [
    (workflows.WorkflowNotFound("theirs"), []),  # an answer nobody is there to hear
    (ConnectionError("the database went away"), [("ERROR", ("the database went away",))]),  # a failure, once
])
async def test_what_fails_after_its_client_left_is_logged_only_if_it_is_a_failure(caplog, error, logged):
    """A stream's open and a start run to their end when the client leaves; what they
    raise then is not asyncio's "exception was never retrieved" error either way."""
    opened = asyncio.Event()

    async def open_a_stream():
        await opened.wait()
        raise error

    handler = asyncio.create_task(workflows._to_the_end(open_a_stream()))
    await asyncio.sleep(0)
    handler.cancel()  # the client left
    with pytest.raises(asyncio.CancelledError):
        await handler
    opened.set()
    await asyncio.sleep(0.01)
    gc.collect()  # where asyncio reports an exception nobody retrieved
    assert "never retrieved" not in caplog.text
    assert [(r.levelname, r.exc_info[1].args) for r in caplog.records] == logged


async def test_a_round_started_as_a_stream_opens_reaches_it_whole(tmp_path, monkeypatch):
    """The stream reads the feed, then the status (idle), then the stored items; a round
    started in between is in the items but not sent from them: it must come live, whole."""
    async with app_after_one_round(tmp_path) as (client, workflow_id):
        read_items = workflows.chat_items

        async def items_read_after_a_start(workflow_id: str):
            monkeypatch.setattr(workflows, "chat_items", read_items)
            assert (await client.post("/api/chatbot/start", json={"prompt": "two", "workflowId": workflow_id})).status_code == 202
            return await read_items(workflow_id)

        monkeypatch.setattr(workflows, "chat_items", items_read_after_a_start)
        async with client.request(f"/api/chatbot/{workflow_id}/stream") as connection:
            await connection.send_complete()
            received = (await read_until(connection, b'"roundNumber":2}\n\n')).decode()
            await connection.disconnect()
        detail = await until_status(client, workflow_id, "completed")
        round_two = [i["item"] for i in detail["items"] if i["item"]["roundNumber"] == 2]
        assert len(round_two) == 5  # the user's message, three logs, the reply
        for item in round_two:
            assert received.count(f'"id":"{item["id"]}"') == 1, item
        reply = round_two[-1]
        assert received.count(f'"messageId":"{reply["id"]}"') == 3  # its deltas


async def test_a_start_racing_a_start_that_has_claimed_its_round_is_409(tmp_path, monkeypatch):
    """The first start has claimed round 2 but not yet enqueued its job: the second must
    not take the round for lost (it failed it and took round 3) but answer 409."""
    async with app_after_one_round(tmp_path) as (client, workflow_id):
        inserting, go_on = hold_message_insert(monkeypatch, "two")  # the first start's message only
        first = asyncio.create_task(client.post("/api/chatbot/start", json={"prompt": "two", "workflowId": workflow_id}))
        await inserting.wait()  # round 2 is claimed
        second = await client.post("/api/chatbot/start", json={"prompt": "three", "workflowId": workflow_id})
        go_on.set()
        assert ((await first).status_code, second.status_code) == (202, 409)
        detail = await until_status(client, workflow_id, "completed")
        assert [i["item"]["content"] for i in detail["items"] if i["type"] == "message"][2] == "two"
        assert detail["workflow"]["roundNumber"] == 2


@contextlib.asynccontextmanager
async def app_after_one_round(tmp_path) -> AsyncIterator[tuple[quart.typing.TestClientProtocol, str]]:
    """An embedded app with fast demo replies, its test client, and a conversation whose
    first round has completed."""
    app = create_app({"database_url": f"sqlite://{tmp_path / 'chat.sqlite3'}", "secret_key": "test",
                      "demo_reply_tokens": 3, "demo_token_interval_ms": 1})
    async with app.test_app() as test_app:
        client = test_app.test_client()
        workflow_id = (await (await client.post("/api/chatbot/start", json={"prompt": "one"})).get_json())["workflowId"]
        await until_status(client, workflow_id, "completed")
        yield client, workflow_id


def hold_message_insert(monkeypatch, content: str) -> tuple[asyncio.Event, asyncio.Event]:
    """Hold the insert of the message with this content: set when it starts, and the
    event to set to let it go on."""
    inserting, go_on, create = asyncio.Event(), asyncio.Event(), Message.create

    async def create_when_told(**values):
        if values.get("content") == content:
            inserting.set()
            await go_on.wait()
        return await create(**values)

    monkeypatch.setattr(Message, "create", create_when_told)
    return inserting, go_on


async def until_status(client, workflow_id: str, status: str, timeout: float = 5.0) -> dict:
    async with asyncio.timeout(timeout):
        while (detail := await (await client.get(f"/api/chatbot/{workflow_id}")).get_json())["workflow"]["status"] != status:
            await asyncio.sleep(0.02)
    return detail


def documents_blueprint() -> Blueprint:
    """README, "Building on the feed", as written there."""
    bp = Blueprint("documents", __name__)

    @bp.post("/api/documents/<doc_id>/progress")
    async def progress(doc_id):
        cursor = await runtime().feed.emit(f"doc:{doc_id}", "progress", {"percent": 40}, category="document")
        return {"cursor": cursor}

    @bp.get("/api/documents/<doc_id>/events")
    async def events(doc_id):
        seen.append(weakref.ref(request._get_current_object()))
        last_event_id = request.headers.get("Last-Event-ID")
        return await sse_response(stream_context(runtime().feed, f"doc:{doc_id}", last_event_id, keepalive=15))

    async def index_document(ctx, doc_id):
        feed = ctx["runtime"].feed
        await feed.emit(f"doc:{doc_id}", "progress", {"percent": 100}, category="document")
        await feed.finish(f"doc:{doc_id}")

    @bp.post("/api/documents/<doc_id>/index")
    async def index(doc_id):
        job_id = await runtime().enqueue(index_document, doc_id, job_id=f"index:{doc_id}")
        if job_id is None:
            return api_error(409, "job_exists", "This document is being indexed.")
        return {"jobId": job_id}, 202

    seen: list[weakref.ref] = []
    bp.requests_seen = seen
    return bp


async def read_until(connection, text: bytes) -> bytes:
    received = b""
    while text not in received:
        received += await asyncio.wait_for(connection.receive(), 5)
    return received


async def test_the_documented_extension_streams_and_lets_quart_free_the_request(tmp_path):
    """A blueprint of one's own, as the README shows it, streams the feed; while it does,
    Quart's request is gone (the middleware sends the events after Quart has finished
    with it: ≈ 9 KB less per idle stream)."""
    app = create_app({"database_url": f"sqlite://{tmp_path / 'chat.sqlite3'}", "secret_key": "test"})
    documents = documents_blueprint()
    app.register_blueprint(documents)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        cursor = (await (await client.post("/api/documents/d1/progress")).get_json())["cursor"]
        async with client.request("/api/documents/d1/events", method="GET") as connection:
            await connection.send_complete()
            received = await read_until(connection, b'data: {"percent":40}\n')
            assert f"id: {cursor}\nevent: progress\n".encode() in received
            gc.collect()
            assert documents.requests_seen[0]() is None, "Quart still holds the request of an open stream"
            await client.post("/api/documents/d1/progress")  # and live events follow
            await read_until(connection, b'data: {"percent":40}\n')
            await connection.disconnect()


async def test_the_documented_extension_resumes_from_last_event_id(tmp_path):
    app = create_app({"database_url": f"sqlite://{tmp_path / 'chat.sqlite3'}", "secret_key": "test"})
    app.register_blueprint(documents_blueprint())
    async with app.test_app() as test_app:
        client = test_app.test_client()
        first, second = [(await (await client.post("/api/documents/d2/progress")).get_json())["cursor"] for _ in range(2)]

        async def events_after(last_event_id: str | None) -> bytes:
            """What the stream sends up to the second event (it comes last: ids increase)."""
            headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
            async with client.request("/api/documents/d2/events", method="GET", headers=headers) as connection:
                await connection.send_complete()
                received = await read_until(connection, f"id: {second}\n".encode())
                await connection.disconnect()
            return received

        assert f"id: {first}\n".encode() not in await events_after(first)
        for unknown in (None, "not-a-cursor", "99999999999999-0"):  # ids it never issued: all it retains
            assert f"id: {first}\n".encode() in await events_after(unknown)


async def test_the_documented_extension_runs_its_job_in_process_once_per_id(tmp_path):
    app = create_app({"database_url": f"sqlite://{tmp_path / 'chat.sqlite3'}", "secret_key": "test"})
    app.register_blueprint(documents_blueprint())
    async with app.test_app() as test_app:
        client = test_app.test_client()
        async with client.request("/api/documents/d3/events", method="GET") as connection:
            await connection.send_complete()
            indexing = await client.post("/api/documents/d3/index")
            assert indexing.status_code == 202 and await indexing.get_json() == {"jobId": "index:d3"}
            await read_until(connection, b'data: {"percent":100}\n')
            await connection.disconnect()
        again = await client.post("/api/documents/d3/index")
        assert again.status_code == 409 and (await again.get_json())["error"]["code"] == "job_exists"


@pytest.mark.parametrize("leaves", [False, True])
async def test_the_middleware_serves_an_app_that_returns_only_after_the_disconnect(leaves):
    """Quart >= 0.23 (Python >= 3.13) returns from a request only once the server has said
    the client is gone, which a server says only after the response's end, which the
    middleware holds until the events are sent: it tells Quart itself. (With 0.22 the
    page's streams never ended or began: found on Python 3.13.)"""
    from_client, sent = asyncio.Queue(), []
    await from_client.put({"type": "http.request", "body": b"", "more_body": False})

    async def events():
        yield "event: tick\ndata: 1\n\n"

    async def quart_like(scope, receive, send):
        scope["chat.sse_events"] = events()  # as sse_response leaves them
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        while (await receive())["type"] != "http.disconnect":
            pass

    async def send(message):
        sent.append(message)

    if leaves:  # the client left before the response's end: Quart hears of it, no events go out
        await from_client.put({"type": "http.disconnect"})
    app = send_streams_after_quart(quart_like)
    await asyncio.wait_for(app({"type": "http"}, from_client.get, send), 2)
    bodies = [m.get("body") for m in sent if m["type"] == "http.response.body"]
    assert bodies == ([] if leaves else [b"event: tick\ndata: 1\n\n", b""])


async def test_sse_response_without_the_middleware_is_sent_by_quart(tmp_path):
    """An app that does not install send_streams_after_quart still streams (Quart sends
    the events itself, with no response timeout)."""
    app = Quart(__name__)
    app.config["RESPONSE_TIMEOUT"] = 0.2

    @app.get("/events")
    async def events():
        async def stream():
            for n in range(3):
                yield frame("tick", str(n))
                await asyncio.sleep(0.15)

        return await sse_response(stream())

    response = await app.test_client().get("/events")
    assert response.headers["Content-Type"] == "text/event-stream"
    assert (await response.get_data()).decode().count("event: tick") == 3


async def test_a_client_gone_as_its_stream_is_handed_over_gets_no_stream(tmp_path):
    """Quart's own receiver may take the server's one http.disconnect in the very turn the
    response is handed over; the stream must then end, not wait for a second one."""
    app = create_app({"database_url": f"sqlite://{tmp_path / 'chat.sqlite3'}", "secret_key": "test"})
    app.register_blueprint(documents_blueprint())
    headers_sent, sent = asyncio.Event(), []
    messages = iter([{"type": "http.request", "body": b"", "more_body": False}, {"type": "http.disconnect"}])

    async def receive():
        message = next(messages, None)
        if message is None or message["type"] == "http.disconnect":
            await headers_sent.wait()  # the client leaves as the headers go out
        return message or await asyncio.Event().wait()  # the server says it once

    async def send(message):
        sent.append(message)
        if message["type"] == "http.response.start":
            headers_sent.set()

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": "/api/documents/d1/events", "raw_path": b"/api/documents/d1/events", "query_string": b"",
             "root_path": "", "headers": [(b"host", b"localhost")], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    async with app.test_app():
        await asyncio.wait_for(app(scope, receive, send), 5)
    assert sent[0]["status"] == 200 and all(not m.get("body") for m in sent[1:])


async def test_a_handler_that_prepares_a_stream_but_answers_otherwise_gets_its_answer(tmp_path):
    """sse_response leaves its events to the middleware; a handler that then returns another
    response (here JSON, 200) must have that response sent whole, not held for the events."""
    app = create_app({"database_url": f"sqlite://{tmp_path / 'chat.sqlite3'}", "secret_key": "test"})

    @app.get("/changed-my-mind")
    async def changed_my_mind():
        async def stream():
            yield frame("tick", "1")
            await asyncio.Event().wait()

        await sse_response(stream())
        return {"answer": "not a stream"}

    async with app.test_app() as test_app:
        response = await asyncio.wait_for(test_app.test_client().get("/changed-my-mind"), 5)
        assert response.status_code == 200 and await response.get_json() == {"answer": "not a stream"}


async def test_the_openapi_schema_describes_every_json_answer(tmp_path):
    """quart-schema's /openapi.json, for clients that generate code from it: each JSON
    answer of the chat API with its fields, as API.md names them."""
    app = create_app({"database_url": f"sqlite://{tmp_path / 'chat.sqlite3'}", "secret_key": "test"})
    async with app.test_app() as test_app:
        spec = await (await test_app.test_client().get("/openapi.json")).get_json()

    def fields(path: str, method: str, status: str) -> set[str]:
        schema = spec["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]
        while "$ref" in schema:
            schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        return set(schema["properties"])

    assert fields("/api/chatbot/start", "post", "202") == {"workflowId", "messageId", "streamUrl"}
    assert fields("/api/chatbot/{workflow_id}/stop", "post", "202") == {"workflowId", "status"}
    assert fields("/api/chatbot/{workflow_id}", "get", "200") == {"workflow", "items"}
    assert fields("/api/chatbot", "get", "200") == {"workflows"}
    workflow = spec["components"]["schemas"]["WorkflowSummary"]
    assert set(workflow["properties"]) >= {"id", "status", "createdAt", "updatedAt", "title"}
    assert set(workflow["properties"]["status"]["enum"]) == {"running", "completed", "stopped", "failed"}
