"""The HTTP and SSE contract of ../shared/API.md, against a real Hypercorn server in both
modes (embedded; Redis with two arq worker processes)."""
from __future__ import annotations

import asyncio
import json
import uuid
from urllib.parse import quote

import pytest

from events import parse_cursor
from tests.sse import Received, assistant_message, read_stream, reply_text, round_outcome

END = {"complete", "stopped", "error"}


async def start(client, prompt="hello", workflow_id=None, **extra):
    response = await client.post("/api/chatbot/start", json={"prompt": prompt, "workflowId": workflow_id, **extra})
    assert response.status_code == 202, response.text
    return response.json()


async def run_round(client, prompt="hello", workflow_id=None) -> tuple[dict, list[Received]]:
    started = await start(client, prompt, workflow_id)
    return started, await read_stream(client, started["streamUrl"])


def assert_increasing(events: list[Received]) -> None:
    positions = [parse_cursor(e.id) for e in events]
    assert positions == sorted(set(positions)), "cursors must increase strictly"


async def test_start_then_stream_a_whole_round(client):
    started = await start(client, "tell me about streams")
    assert set(started) == {"workflowId", "messageId", "streamUrl"}
    async with client.stream("GET", started["streamUrl"]) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
    events = await read_stream(client, started["streamUrl"])
    first = events[0]
    assert (first.event, first.kind, first.item["id"]) == ("chatdata", "message", started["messageId"])
    assert first.item == {
        "id": started["messageId"], "workflowId": started["workflowId"], "role": "user",
        "content": "tell me about streams", "createdAt": first.item["createdAt"], "roundNumber": 1,
    }
    assert isinstance(first.data["createdAt"], float)
    logs = [e for e in events if e.kind == "log"]
    assert logs and all(e.item.keys() >= {"id", "workflowId", "message", "type", "status", "createdAt", "roundNumber"} for e in logs)
    reply = assistant_message(events)
    assert reply["content"] and reply_text(events, reply["id"]) == reply["content"]
    last_delta = max(i for i, e in enumerate(events) if e.kind == "delta")
    assert events.index(next(e for e in events if e.kind == "message" and e.item["role"] == "assistant")) > last_delta
    assert events[-1].event == "complete" and events[-1].data["workflowId"] == started["workflowId"]
    assert_increasing(events)
    detail = (await client.get(f"/api/chatbot/{started['workflowId']}")).json()
    assert detail["workflow"]["status"] == "completed"
    assert [i["item"]["content"] for i in detail["items"] if i["type"] == "message"] == ["tell me about streams", reply["content"]]


async def test_categories_filter_and_still_close(client):
    started = await start(client)
    chat_only, workflow_only = await asyncio.gather(
        read_stream(client, started["streamUrl"] + "?categories=chat"),
        read_stream(client, started["streamUrl"] + "?categories=workflow"),
    )
    assert {e.kind for e in chat_only} == {"message", "delta"}
    assert {e.kind for e in workflow_only} == {"log", "complete"}


async def test_start_stream_in_one_request(client):
    events = await read_stream(client, "/api/chatbot/start/stream", method="POST", json_body={"prompt": "one request"})
    assert events[0].item["content"] == "one request"
    assert events[-1].event == "complete"
    reply = assistant_message(events)
    assert reply_text(events, reply["id"]) == reply["content"]


async def test_resume_with_last_event_id_from_several_cut_points(client):
    started = await start(client)
    events = await read_stream(client, started["streamUrl"])
    for cut in (0, 1, len(events) // 2, len(events) - 2):
        resumed = await read_stream(client, started["streamUrl"], last_event_id=events[cut].id)
        assert [(e.id, e.event, e.data) for e in resumed] == [(e.id, e.event, e.data) for e in events[cut + 1 :]]
    by_query = await read_stream(client, f"{started['streamUrl']}?lastEventId={events[3].id}")
    assert [e.id for e in by_query] == [e.id for e in events[4:]]


async def test_resume_mid_round_gets_the_rest_exactly(client):
    started = await start(client)
    head = await read_stream(client, started["streamUrl"], limit=8)
    rest = await read_stream(client, started["streamUrl"], last_event_id=head[-1].id)
    events = head + rest
    assert_increasing(events)
    reply = assistant_message(events)
    assert reply_text(events, reply["id"]) == reply["content"]
    assert events[-1].event == "complete"


async def test_ten_concurrent_subscribers_each_get_every_event(client):
    started = await start(client)
    streams = await asyncio.gather(*(read_stream(client, started["streamUrl"]) for _ in range(10)))
    reference = [(e.id, e.event, e.data) for e in streams[0]]
    assert reference[-1][1] == "complete"
    for events in streams[1:]:
        assert [(e.id, e.event, e.data) for e in events] == reference


async def test_subscriber_joining_mid_reply_gets_the_whole_text(client):
    started = await start(client)
    early = await read_stream(client, started["streamUrl"], limit=10)
    assert any(e.kind == "delta" for e in early)
    late = await read_stream(client, started["streamUrl"])
    assert [e.kind for e in late].count("message") == 2  # the user's, then the reply, once each
    reply = assistant_message(late)
    assert reply_text(late, reply["id"]) == reply["content"]
    assert late[-1].event == "complete"


async def test_new_subscriber_of_an_idle_workflow_gets_stored_items_once_and_stays_open(client):
    started, _ = await run_round(client, "first")
    stored = (await client.get(f"/api/chatbot/{started['workflowId']}")).json()["items"]
    snapshot = await read_stream(client, started["streamUrl"], limit=len(stored))
    assert [(e.kind, e.item) for e in snapshot] == [(i["type"], i["item"]) for i in stored]
    assert_increasing(snapshot)
    with pytest.raises(asyncio.TimeoutError):  # no end event: the stream waits for the next round
        await read_stream(client, started["streamUrl"], limit=len(stored) + 1, timeout=2.5)


async def test_idle_stream_follows_the_next_round_and_closes_at_its_end(client):
    started, _ = await run_round(client, "first")
    reader = asyncio.create_task(read_stream(client, started["streamUrl"]))
    await asyncio.sleep(0.5)
    second = await start(client, "second", started["workflowId"])
    events = await reader
    assert events[-1].event == "complete" and events[-1].data.get("roundNumber") == 2
    assert [e.item["content"] for e in events if e.kind == "message" and e.item["role"] == "user"] == ["first", "second"]
    assert second["messageId"] in {e.item.get("id") for e in events}
    ids = [e.item["id"] for e in events if e.kind in ("message", "log")]
    assert len(ids) == len(set(ids)), "an item was sent twice"


async def test_resume_from_a_snapshot_cursor(client):
    started, _ = await run_round(client)
    snapshot = await read_stream(client, started["streamUrl"], limit=4)
    rest = await read_stream(client, started["streamUrl"], last_event_id=snapshot[1].id, limit=2)
    assert [e.item for e in rest] == [e.item for e in snapshot[2:4]]


async def test_resume_from_a_snapshot_cursor_after_a_whole_round_gets_its_events(client):
    """Back from an idle workflow's snapshot after another client ran a round: the round's
    events as they were sent (deltas and its end included) while the feed retains them,
    and the stream closes at that round's end as the first stream would have."""
    first, _ = await run_round(client, "first")
    wf = first["workflowId"]
    snapshot = await read_stream(client, first["streamUrl"], limit=len((await client.get(f"/api/chatbot/{wf}")).json()["items"]))
    second, live = await run_round(client, "second", wf)
    resumed = await read_stream(client, first["streamUrl"], last_event_id=snapshot[-1].id)
    round_two = [(e.id, e.event, e.data) for e in live if e.data.get("roundNumber", e.item.get("roundNumber")) == 2 or e.kind == "delta"]
    assert [(e.id, e.event, e.data) for e in resumed] == round_two
    assert resumed[0].item["id"] == second["messageId"] and resumed[-1].event == "complete"
    for cut in (1, 3):  # left in the middle of the snapshot: the rest of it, then round 2 from the feed
        rest = await read_stream(client, first["streamUrl"], last_event_id=snapshot[cut - 1].id)
        assert [e.item for e in rest[: len(snapshot) - cut]] == [e.item for e in snapshot[cut:]]
        assert [(e.id, e.event, e.data) for e in rest[len(snapshot) - cut :]] == round_two
    third = await start(client, "third", wf)  # running now: round 2 as it was sent, then round 3 to its end
    resumed = await read_stream(client, first["streamUrl"], last_event_id=snapshot[-1].id)
    assert [(e.id, e.event, e.data) for e in resumed[: len(round_two)]] == round_two
    assert resumed[len(round_two)].item["id"] == third["messageId"]
    assert resumed[-1].event == "complete" and resumed[-1].data["roundNumber"] == 3


async def test_resume_from_an_earlier_round_closes_at_the_end_of_the_running_one(client):
    first, events = await run_round(client, "first")
    second = await start(client, "second", first["workflowId"])
    resumed = await read_stream(client, first["streamUrl"], last_event_id=events[3].id)
    assert [e.id for e in resumed[: len(events) - 4]] == [e.id for e in events[4:]]  # the rest of round 1, its end included
    assert resumed[-1].event == "complete" and resumed[-1].data["roundNumber"] == 2
    assert second["messageId"] in {e.item.get("id") for e in resumed}


async def test_a_cursor_the_server_never_issued_starts_over(client):
    started, _ = await run_round(client)
    stored = (await client.get(f"/api/chatbot/{started['workflowId']}")).json()["items"]
    # Past the last event; past 64 bits; spellings int() takes but Redis does not.
    for never_issued in ("99999999999999-0", "99999999999999999999999-0", "1-99999999999999999999999", "+5-1", "5_000-1", "٥-1"):
        url = f"{started['streamUrl']}?lastEventId={quote(never_issued)}"  # a header cannot carry the last one
        snapshot = await read_stream(client, url, limit=len(stored))
        assert [(e.kind, e.item) for e in snapshot] == [(i["type"], i["item"]) for i in stored], never_issued


async def test_second_round_has_history_and_its_own_numbers(client):
    first, _ = await run_round(client, "one")
    second, events = await run_round(client, "two", first["workflowId"])
    assert second["workflowId"] == first["workflowId"]
    reply = assistant_message([e for e in events if e.item.get("roundNumber", 2) == 2])
    assert reply["roundNumber"] == 2 and "two" in reply["content"]
    items = (await client.get(f"/api/chatbot/{first['workflowId']}")).json()["items"]
    messages = [(i["item"]["role"], i["item"]["roundNumber"]) for i in items if i["type"] == "message"]
    assert messages == [("user", 1), ("assistant", 1), ("user", 2), ("assistant", 2)]


async def test_a_second_start_while_running_is_409_and_stores_nothing(client):
    first = await start(client)
    response = await client.post("/api/chatbot/start", json={"prompt": "too soon", "workflowId": first["workflowId"]})
    assert response.status_code == 409 and response.json()["error"]["code"] == "round_running"
    await read_stream(client, first["streamUrl"])
    items = (await client.get(f"/api/chatbot/{first['workflowId']}")).json()["items"]
    assert "too soon" not in json.dumps(items)


async def test_stop_mid_reply_keeps_the_text_so_far(client):
    started = await start(client)
    head = await read_stream(client, started["streamUrl"], limit=6)
    assert head[-1].kind == "delta"
    response = await client.post(f"/api/chatbot/{started['workflowId']}/stop")
    assert response.status_code == 202 and response.json()["workflowId"] == started["workflowId"]
    events = head + await read_stream(client, started["streamUrl"], last_event_id=head[-1].id)
    assert events[-1].event == "stopped"
    reply = assistant_message(events)
    assert reply_text(events, reply["id"]) == reply["content"]
    assert len([e for e in events if e.kind == "delta"]) < 40, "the reply ran to its end"
    # The round's steps end with how it ended, sent before `stopped` and stored with them.
    assert events[-2].kind == "log" and events[-2].item == round_outcome(events)
    assert (events[-2].item["type"], events[-2].item["status"]) == ("stopped", "stopped")
    detail = (await client.get(f"/api/chatbot/{started['workflowId']}")).json()
    assert detail["workflow"]["status"] == "stopped"
    assert [i["item"]["content"] for i in detail["items"] if i["type"] == "message"][-1] == reply["content"]
    assert round_outcome(detail["items"]) == events[-2].item


async def test_stop_does_not_reach_the_next_round(client):
    first = await start(client)
    head = await read_stream(client, first["streamUrl"], limit=1)
    await client.post(f"/api/chatbot/{first['workflowId']}/stop")
    stopped = await read_stream(client, first["streamUrl"], last_event_id=head[-1].id)
    assert stopped[-1].event == "stopped"
    second, events = await run_round(client, "next", first["workflowId"])
    assert events[-1].event == "complete"


async def test_stopping_a_finished_workflow_is_a_no_op(client):
    started, _ = await run_round(client)
    response = await client.post(f"/api/chatbot/{started['workflowId']}/stop")
    assert response.status_code == 202
    assert response.json() == {"workflowId": started["workflowId"], "status": "completed"}


async def test_list_is_this_users_workflows_most_recent_first(client, server):
    a, _ = await run_round(client, "a")
    b, _ = await run_round(client, "b")
    await run_round(client, "a again", a["workflowId"])
    listed = (await client.get("/api/chatbot")).json()["workflows"]
    ids = [w["id"] for w in listed]
    assert ids.index(a["workflowId"]) < ids.index(b["workflowId"])
    assert listed[0].keys() >= {"id", "status", "createdAt", "updatedAt", "title"}
    async with server.client() as stranger:
        assert (await stranger.get("/api/chatbot")).json() == {"workflows": []}


async def test_another_users_workflow_is_404_like_a_missing_one(client, server):
    started, events = await run_round(client)
    wf, cursor = started["workflowId"], events[2].id  # a live cursor: the resume path
    async with server.client() as stranger:
        for method, path, body, headers in [
            ("GET", f"/api/chatbot/{wf}", None, None),
            ("GET", f"/api/chatbot/{wf}/stream", None, None),
            ("GET", f"/api/chatbot/{wf}/stream", None, {"Last-Event-ID": cursor}),
            ("GET", f"/api/chatbot/{wf}/stream?lastEventId={cursor}", None, None),
            ("POST", f"/api/chatbot/{wf}/stop", None, None),
            ("POST", "/api/chatbot/start", {"prompt": "hijack", "workflowId": wf}, None),
        ]:
            theirs = await stranger.request(method, path, json=body, headers=headers)
            assert theirs.status_code == 404 and theirs.json()["error"]["code"] == "not_found"
            for missing_id in ("no-such-workflow", str(uuid.uuid4()), "a" * 37):  # longer than any id stored
                missing = await stranger.request(
                    method, path.replace(wf, missing_id), json=body and {**body, "workflowId": missing_id}, headers=headers
                )
                assert (missing.status_code, missing.json()) == (404, theirs.json()), missing_id
    items = (await client.get(f"/api/chatbot/{wf}")).json()["items"]
    assert "hijack" not in json.dumps(items)


async def test_session_cookie_is_signed_httponly_and_lax(server):
    async with server.client() as fresh:
        response = await fresh.get("/api/chatbot")
        cookie = response.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
        assert (await fresh.get("/api/chatbot")).headers.get("set-cookie") is None  # same user kept
        fresh.cookies.clear()
        fresh.cookies.set("chat_session", "forged.value.here")
        assert "set-cookie" in (await fresh.get("/api/chatbot")).headers  # a bad signature is a new user
    async with server.client() as fresh:
        assert "HttpOnly" in (await fresh.get("/static/style.css")).headers["set-cookie"]  # every request


BAD_INPUT = [
    ("text/plain", '{"prompt": "hi"}', 415),
    ("application/json", '{"prompt": "hi"', 400),
    ("application/json", '["hi"]', 400),
    ("application/json", '"hi"', 400),
    ("application/json", "null", 400),
    ("application/json", "{}", 422),
    ("application/json", '{"prompt": ""}', 422),
    ("application/json", '{"prompt": "  \\n\\t "}', 422),
    ("application/json", '{"prompt": 42}', 422),
    ("application/json", '{"prompt": ["hi"]}', 422),
    ("application/json", '{"prompt": "hi", "workflowId": 7}', 422),
    ("application/json", json.dumps({"prompt": "x" * 8001}), 413),
    ("application/json", '{"prompt": "half a pair \\ud800"}', 422),  # valid JSON, not storable text
    ("application/json", '{"prompt": "nul \\u0000 inside"}', 422),
    ("application/json", b'{"prompt": "caf\xe9"}', 400),  # Latin-1, not UTF-8
]


@pytest.mark.parametrize("path", ["/api/chatbot/start", "/api/chatbot/start/stream"])
async def test_bad_input_is_a_json_error_and_stores_nothing(server, path):
    async with server.client() as fresh:
        for content_type, body, status in BAD_INPUT:
            response = await fresh.post(path, content=body, headers={"Content-Type": content_type})
            assert response.status_code == status, (body, response.text)
            error = response.json()["error"]
            assert error["code"] and error["message"], body
        assert (await fresh.get("/api/chatbot")).json() == {"workflows": []}


async def test_bad_input_on_an_existing_workflow_changes_nothing(client):
    started, _ = await run_round(client)
    wf = started["workflowId"]
    before = (await client.get(f"/api/chatbot/{wf}")).json()
    for content_type, body, status in BAD_INPUT:
        if isinstance(body, str) and status in (413, 422) and body.startswith('{"prompt"') and "workflowId" not in body:
            body = json.dumps({**json.loads(body), "workflowId": wf})
        response = await client.post("/api/chatbot/start", content=body, headers={"Content-Type": content_type})
        assert response.status_code == status, (body, response.text)
    assert (await client.get(f"/api/chatbot/{wf}")).json() == before
    second, events = await run_round(client, "still fine", wf)  # the next round is round 2
    assert events[-1].data["roundNumber"] == 2


async def test_the_prompt_limit_counts_characters_and_extra_fields_are_ignored(client):
    started = await start(client, "é" * 8000, unknownField=True)  # 16,000 bytes, 8,000 characters
    await read_stream(client, started["streamUrl"])


async def test_unknown_api_paths_and_methods_answer_json(client):
    assert (await client.get("/api/nothing-here")).json()["error"]["code"]
    response = await client.delete("/api/chatbot/start")
    assert response.status_code == 405 and response.json()["error"]["code"]


async def test_keepalive_comment_while_idle(client):
    started, _ = await run_round(client)
    lines = []
    async with client.stream("GET", started["streamUrl"]) as response:
        async for line in response.aiter_lines():
            lines.append(line)
            if line == ": keepalive":
                break
    assert ": keepalive" in lines


async def test_health_and_readiness(client):
    assert (await client.get("/healthz")).status_code == 200
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "feed": "ok"}


async def test_the_page_is_served_with_a_strict_policy(client):
    response = await client.get("/")
    assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    assert "script-src 'self'" in response.headers["content-security-policy"]
