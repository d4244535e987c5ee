"""The whole pipeline with CHATBOT_PROVIDER=openai against the fake OpenAI server: HTTP start,
the job (in the web process, or in arq workers over Redis), the model stream, the SSE stream."""
from __future__ import annotations

import json

import pytest
from httpx_sse import aconnect_sse

from tests.fake_openai import DEFAULT_MODEL, DEFAULT_PIECES, FakeOpenAI, Reply, fake_openai, fake_openai_server  # noqa: F401
from tests.servers import Stack, free_port, start_stack
from tests.sse import Received, assistant_message, read_stream, reply_text

KEY = "sk-pipeline-Hq2Lr9TzW4mC"
SYSTEM = "You are the pipeline test's assistant."


@pytest.fixture(scope="module", params=["memory", "redis"])
def openai_stack(request, fake_openai_server: FakeOpenAI):
    env = {
        "CHATBOT_PROVIDER": "openai",
        "OPENAI_BASE_URL": fake_openai_server.base_url,
        "OPENAI_API_KEY": KEY,
        "CHATBOT_MODEL": DEFAULT_MODEL,
        "CHATBOT_SYSTEM_PROMPT": SYSTEM,
        "OPENAI_FIRST_TOKEN_TIMEOUT": "1",
        "OPENAI_STALL_TIMEOUT": "1",
        "OPENAI_MAX_RETRIES": "2",
        "OPENAI_RETRY_BACKOFF": "0.01",
    }
    if request.param == "redis":
        stack = start_stack("redis", env, redis_url=request.getfixturevalue("redis_url"), workers=1)
    else:
        stack = start_stack("memory", env)
    with stack as running:
        yield running


async def start_and_read(stack: Stack, prompt: str, workflow_id: str | None = None) -> list[Received]:
    async with stack.client() as http:
        return await read_stream(http, "/api/chatbot/start/stream", method="POST",
                                 json_body={"prompt": prompt, "workflowId": workflow_id})


def user_message(events: list[Received]) -> dict:
    return next(e.item for e in events if e.kind == "message" and e.item["role"] == "user")


async def test_reply_streams_from_the_model(openai_stack: Stack, fake_openai: FakeOpenAI) -> None:
    events = await start_and_read(openai_stack, "Hello model")
    message = assistant_message(events)
    assert reply_text(events, message["id"]) == message["content"] == "".join(DEFAULT_PIECES)
    assert events[-1].event == "complete"
    usage = [e.item for e in events if e.kind == "log" and e.item["type"] == "usage"]
    assert len(usage) == 1 and "prompt tokens" in usage[0]["message"]
    (request,) = fake_openai.chat_requests
    assert request.messages == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hello model"}]
    assert request.headers["authorization"] == f"Bearer {KEY}"


async def test_next_round_sends_the_conversation(openai_stack: Stack, fake_openai: FakeOpenAI) -> None:
    fake_openai.default = Reply(pieces=("First", " answer"))
    async with openai_stack.client() as http:  # one cookie jar: the same user both rounds
        first = await read_stream(http, "/api/chatbot/start/stream", method="POST",
                                  json_body={"prompt": "First question"})
        workflow_id = user_message(first)["workflowId"]
        second = await read_stream(http, "/api/chatbot/start/stream", method="POST",
                                   json_body={"prompt": "Follow-up", "workflowId": workflow_id})
    assert second[-1].event == "complete"
    assert fake_openai.chat_requests[-1].messages == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "First question"},
        {"role": "assistant", "content": "First answer"},
        {"role": "user", "content": "Follow-up"},
    ]


async def test_stop_closes_the_model_stream_and_keeps_the_partial_reply(openai_stack: Stack, fake_openai: FakeOpenAI) -> None:
    fake_openai.default = Reply(pieces=("tok ",) * 2000, interval=0.01)
    events: list[Received] = []
    async with openai_stack.client() as http:
        async with aconnect_sse(http, "POST", "/api/chatbot/start/stream", json={"prompt": "Talk long"}) as source:
            stopped = False
            async for sse in source.aiter_sse():
                events.append(Received(sse.id, sse.event, json.loads(sse.data)))
                if not stopped and sum(e.kind == "delta" for e in events) >= 3:
                    workflow_id = user_message(events)["workflowId"]
                    answer = await http.post(f"/api/chatbot/{workflow_id}/stop")
                    assert answer.status_code == 202
                    stopped = True
        detail = (await http.get(f"/api/chatbot/{workflow_id}")).json()
    assert events[-1].event == "stopped"
    message = assistant_message(events)
    assert message["content"] == reply_text(events, message["id"])
    assert 3 <= len(message["content"]) // 4 < 2000
    assert detail["workflow"]["status"] == "stopped"
    (request,) = fake_openai.chat_requests
    await fake_openai.wait_for(lambda: request.disconnected, timeout=2)  # the model server saw it
    assert not request.finished


@pytest.mark.parametrize(
    ("reply", "code", "partial"),
    [
        (Reply(status=401, message="Incorrect API key provided: {key}"), "model_auth_failed", ""),
        (Reply(status=503), "model_server_error", ""),
        (Reply(hang_after=0), "model_timeout", ""),
        (Reply(hang_after=2), "model_stalled", "".join(DEFAULT_PIECES[:2])),
        (Reply(bad_chunk_after=1), "model_bad_response", DEFAULT_PIECES[0]),
    ],
    ids=["auth", "server-error", "timeout", "stall", "malformed"],
)
async def test_model_failures_end_the_round_with_an_error(
    openai_stack: Stack, fake_openai: FakeOpenAI, reply: Reply, code: str, partial: str
) -> None:
    fake_openai.default = reply
    async with openai_stack.client() as http:
        events = await read_stream(http, "/api/chatbot/start/stream", method="POST", json_body={"prompt": "Hi"})
        workflow_id = user_message(events)["workflowId"]
        detail = (await http.get(f"/api/chatbot/{workflow_id}")).json()
    end = events[-1]
    assert end.event == "error" and end.data["code"] == code and end.data["workflowId"] == workflow_id
    assert KEY not in end.data["message"]
    assert detail["workflow"]["status"] == "failed"
    assistant = [e.item for e in events if e.kind == "message" and e.item["role"] == "assistant"]
    assert [m["content"] for m in assistant] == ([partial] if partial else [])
    logs = "".join(p.read_text(errors="replace") for p in openai_stack.logs.glob("*.log"))
    assert KEY not in logs


async def test_unknown_model_is_an_error(openai_stack: Stack, fake_openai: FakeOpenAI) -> None:
    fake_openai.models = {"another-model"}
    events = await start_and_read(openai_stack, "Hi")
    assert events[-1].event == "error" and events[-1].data["code"] == "model_not_found"
    assert DEFAULT_MODEL in events[-1].data["message"]


async def test_unreachable_model_is_an_error() -> None:
    env = {"CHATBOT_PROVIDER": "openai", "OPENAI_BASE_URL": f"http://127.0.0.1:{free_port()}/v1",
           "OPENAI_API_KEY": KEY, "OPENAI_MAX_RETRIES": "1", "OPENAI_RETRY_BACKOFF": "0.01"}
    with start_stack("memory", env) as stack:
        events = await start_and_read(stack, "Hi")
    assert events[-1].event == "error" and events[-1].data["code"] == "model_unreachable"


async def test_replies_reuse_the_pooled_connection(openai_stack: Stack, fake_openai: FakeOpenAI) -> None:
    for _ in range(3):
        await start_and_read(openai_stack, "Hi")
    assert fake_openai.connections <= 1  # one provider (one client, one pool) per process
    assert len(fake_openai.chat_requests) == 3
