"""The ``openai`` provider against a real local OpenAI-compatible server (tests/fake_openai.py)."""
from __future__ import annotations

import asyncio
import logging
import socket
import time
import traceback
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing

import pytest
import pytest_asyncio

from config import Settings
from tasks.providers import ChatTurn, ProviderError, make_provider
from tasks.providers.openai_compat import OpenAIProvider, build_messages
from tests.fake_openai import DEFAULT_MODEL, DEFAULT_PIECES, FakeOpenAI, Reply, fake_openai, fake_openai_server  # noqa: F401

KEY = "sk-test-Zq8uN3vKx1Y7pLwQ"
SYSTEM = "You are a test assistant."
TURNS = [ChatTurn("user", "hello there")]


def settings(base_url: str, **overrides) -> Settings:
    values = dict(
        chatbot_provider="openai",
        openai_base_url=base_url,
        openai_api_key=KEY,
        chatbot_model=DEFAULT_MODEL,
        chatbot_system_prompt=SYSTEM,
        openai_first_token_timeout=5.0,
        openai_stall_timeout=5.0,
        openai_max_retries=3,
        openai_retry_backoff=0.01,
        secret_key="test",
    )
    return Settings(**{**values, **overrides})


@pytest_asyncio.fixture
async def provider(fake_openai: FakeOpenAI) -> AsyncIterator[OpenAIProvider]:
    p = OpenAIProvider(settings(fake_openai.base_url))
    yield p
    await p.aclose()


async def make(base_url: str, **overrides) -> OpenAIProvider:
    return OpenAIProvider(settings(base_url, **overrides))


async def collect(provider: OpenAIProvider, turns: list[ChatTurn] = TURNS, on_usage=None) -> list[str]:
    return [piece async for piece in provider.stream_reply(turns, on_usage)]


async def fail(provider: OpenAIProvider, got: list[str] | None = None) -> ProviderError:
    """The ProviderError a reply ends with (pieces before it go to ``got``)."""
    got = [] if got is None else got
    with pytest.raises(ProviderError) as info:
        async for piece in provider.stream_reply(TURNS):
            got.append(piece)
    return info.value


# -- history ------------------------------------------------------------------------------


def test_history_all_fits() -> None:
    turns = [ChatTurn("user", "a"), ChatTurn("assistant", "b"), ChatTurn("user", "c")]
    assert build_messages("sys", turns, 100) == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]


def test_history_drops_oldest_first_and_never_leaves_gaps() -> None:
    turns = [ChatTurn("user", "u" * 1), ChatTurn("assistant", "a" * 50), ChatTurn("user", "x" * 5),
             ChatTurn("assistant", "y" * 5), ChatTurn("user", "z" * 5)]
    # 15 chars fit the last three; the 50-char turn does not, so the 1-char one before it
    # is dropped too, though it would fit: the model must not see a hole in the talk.
    assert build_messages("sys", turns, 15)[1:] == [
        {"role": "user", "content": "x" * 5},
        {"role": "assistant", "content": "y" * 5},
        {"role": "user", "content": "z" * 5},
    ]
    assert build_messages("", turns, 14) == [{"role": "user", "content": "z" * 5}]  # leading assistant dropped


def test_history_keeps_the_newest_turn_cut_to_fit() -> None:
    turns = [ChatTurn("user", "old"), ChatTurn("assistant", "reply"), ChatTurn("user", "0123456789")]
    assert build_messages("sys", turns, 4) == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "0123"},
    ]


def test_history_system_prompt_optional_and_zero_means_unlimited() -> None:
    turns = [ChatTurn("user", "a" * 1000), ChatTurn("assistant", "b"), ChatTurn("user", "c")]
    assert build_messages("", turns, 0) == [{"role": t.role, "content": t.content} for t in turns]


@pytest.mark.asyncio
async def test_history_is_sent_with_system_prompt_and_trimmed(fake_openai: FakeOpenAI) -> None:
    turns = [ChatTurn("user", "first question " * 10), ChatTurn("assistant", "first answer"),
             ChatTurn("user", "second question"), ChatTurn("assistant", "second answer"),
             ChatTurn("user", "third question")]
    p = await make(fake_openai.base_url, history_max_chars=60)
    try:
        await collect(p, turns)
    finally:
        await p.aclose()
    (request,) = fake_openai.chat_requests
    assert request.messages == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "second question"},
        {"role": "assistant", "content": "second answer"},
        {"role": "user", "content": "third question"},
    ]
    assert request.body["model"] == DEFAULT_MODEL
    assert request.body["stream"] is True
    assert request.body["stream_options"] == {"include_usage": True}
    assert request.headers["authorization"] == f"Bearer {KEY}"


# -- streaming ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_pieces_are_yielded_as_sent_and_join_exactly(provider: OpenAIProvider, fake_openai: FakeOpenAI) -> None:
    fake_openai.default = Reply(pieces=("  lead", "", "ing", " \n\n", "ünï", "😀", "", "end  "))
    pieces = await collect(provider)
    assert pieces == ["  lead", "ing", " \n\n", "ünï", "😀", "end  "]  # every non-empty piece, untouched
    assert "".join(pieces) == "  leading \n\nünï😀end  "
    await fake_openai.wait_for(lambda: fake_openai.chat_requests[0].finished)


@pytest.mark.asyncio
async def test_pieces_arrive_while_the_model_still_generates(provider: OpenAIProvider, fake_openai: FakeOpenAI) -> None:
    fake_openai.default = Reply(pieces=("a", "b", "c"), interval=0.3)
    async with aclosing(provider.stream_reply(TURNS)) as pieces:
        first = await anext(pieces)
        assert first == "a"
        sent = fake_openai.chat_requests[-1]
        assert sent.pieces_sent < 3 and not sent.finished  # not buffered until the end
        assert [p async for p in pieces] == ["b", "c"]


@pytest.mark.asyncio
async def test_one_http_client_and_connection_reused(provider: OpenAIProvider, fake_openai: FakeOpenAI) -> None:
    client = provider.client
    assert await collect(provider) == list(DEFAULT_PIECES)
    assert await collect(provider) == list(DEFAULT_PIECES)
    assert provider.client is client
    assert fake_openai.connections == 1  # the second request went over the pooled connection


@pytest.mark.asyncio
async def test_make_provider_builds_the_openai_provider(fake_openai: FakeOpenAI) -> None:
    p = make_provider(settings(fake_openai.base_url))
    try:
        assert isinstance(p, OpenAIProvider) and p.name == "openai"
        assert "".join(await collect(p)) == "".join(DEFAULT_PIECES)
    finally:
        await p.aclose()


# -- usage ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_usage_is_reported_and_logged(provider: OpenAIProvider, fake_openai: FakeOpenAI, caplog) -> None:
    caplog.set_level(logging.INFO, logger="tasks.providers.openai_compat")
    reports: list[dict] = []

    async def on_usage(usage: dict) -> None:
        reports.append(usage)

    await collect(provider, on_usage=on_usage)
    prompt = len(SYSTEM.split()) + len(TURNS[0].content.split())
    expected = {"prompt_tokens": prompt, "completion_tokens": len(DEFAULT_PIECES),
                "total_tokens": prompt + len(DEFAULT_PIECES)}
    assert reports == [expected]
    usage_logs = [r.getMessage() for r in caplog.records if "usage" in r.getMessage()]
    assert usage_logs and f"prompt_tokens={prompt}" in usage_logs[0]


@pytest.mark.asyncio
async def test_no_usage_from_the_server_is_fine(provider: OpenAIProvider, fake_openai: FakeOpenAI) -> None:
    fake_openai.default = Reply(usage=False)
    reports: list[dict] = []

    async def on_usage(usage: dict) -> None:
        reports.append(usage)

    assert "".join(await collect(provider, on_usage=on_usage)) == "".join(DEFAULT_PIECES)
    assert reports == []


@pytest.mark.asyncio
async def test_incomplete_usage_is_reported_as_it_is_and_fails_nothing(provider: OpenAIProvider, fake_openai: FakeOpenAI) -> None:
    partial = ('{"id":"c","object":"chat.completion.chunk","created":0,"model":"fake-model","choices":[],'
               '"usage":{"prompt_tokens":3,"completion_tokens":7}}')
    fake_openai.default = Reply(usage=False, bad_chunk_after=len(DEFAULT_PIECES), bad_chunk=partial)
    reports: list[dict] = []

    async def on_usage(usage: dict) -> None:
        reports.append(usage)

    assert "".join(await collect(provider, on_usage=on_usage)) == "".join(DEFAULT_PIECES)
    assert reports == [{"prompt_tokens": 3, "completion_tokens": 7}]
    garbled = partial.replace('"prompt_tokens":3', '"prompt_tokens":"many"')
    fake_openai.default = Reply(usage=False, bad_chunk_after=len(DEFAULT_PIECES), bad_chunk=garbled)
    assert "".join(await collect(provider, on_usage=on_usage)) == "".join(DEFAULT_PIECES)
    assert reports[-1] == {"completion_tokens": 7}


@pytest.mark.asyncio
async def test_a_server_that_ignores_stream_true_is_a_bad_response(provider: OpenAIProvider, fake_openai: FakeOpenAI) -> None:
    """A whole completion as JSON, not an event stream: the client reads no chunk from it,
    and the round would end as complete with an empty reply."""
    fake_openai.default = Reply(ignore_stream=True)
    error = await fail(provider)
    assert error.code == "model_bad_response" and "event stream" in error.message


# -- HTTP errors ------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("status", [401, 403])
async def test_auth_failure(provider: OpenAIProvider, fake_openai: FakeOpenAI, status: int) -> None:
    fake_openai.default = Reply(status=status)
    error = await fail(provider)
    assert error.code == "model_auth_failed"
    assert str(status) in error.message and "OPENAI_API_KEY" in error.message
    assert len(fake_openai.chat_requests) == 1  # not retried


@pytest.mark.asyncio
async def test_wrong_key_is_rejected(fake_openai: FakeOpenAI) -> None:
    fake_openai.api_key = "sk-the-right-one"
    p = await make(fake_openai.base_url)
    try:
        assert (await fail(p)).code == "model_auth_failed"
    finally:
        await p.aclose()


@pytest.mark.asyncio
async def test_unknown_model(fake_openai: FakeOpenAI) -> None:
    p = await make(fake_openai.base_url, chatbot_model="no-such-model:7b")
    try:
        error = await fail(p)
    finally:
        await p.aclose()
    assert error.code == "model_not_found"
    assert "no-such-model:7b" in error.message
    assert len(fake_openai.chat_requests) == 1


@pytest.mark.asyncio
@pytest.mark.parametrize(("status", "code"), [(429, "model_rate_limited"), (500, "model_server_error"),
                                              (503, "model_server_error")])
async def test_retried_then_succeeds(provider: OpenAIProvider, fake_openai: FakeOpenAI, status: int, code: str) -> None:
    fake_openai.script(Reply(status=status), Reply(status=status))
    assert "".join(await collect(provider)) == "".join(DEFAULT_PIECES)
    assert [r.status for r in fake_openai.chat_requests] == [status, status, 200]


@pytest.mark.asyncio
@pytest.mark.parametrize(("status", "code"), [(429, "model_rate_limited"), (500, "model_server_error")])
async def test_retries_are_bounded(fake_openai: FakeOpenAI, status: int, code: str) -> None:
    fake_openai.default = Reply(status=status)
    p = await make(fake_openai.base_url, openai_max_retries=2)
    try:
        error = await fail(p)
    finally:
        await p.aclose()
    assert error.code == code and str(status) in error.message
    assert len(fake_openai.chat_requests) == 3  # the first try and 2 retries


@pytest.mark.asyncio
async def test_retries_back_off_exponentially(fake_openai: FakeOpenAI) -> None:
    fake_openai.default = Reply(status=503)
    p = await make(fake_openai.base_url, openai_max_retries=3, openai_retry_backoff=0.1)
    started = time.monotonic()
    try:
        await fail(p)
    finally:
        await p.aclose()
    # Waits of about 0.1, 0.2 and 0.4s (each cut by up to a quarter of jitter): at least 0.525s.
    assert 0.5 <= time.monotonic() - started < 3


@pytest.mark.asyncio
async def test_other_client_errors_are_not_retried(provider: OpenAIProvider, fake_openai: FakeOpenAI) -> None:
    fake_openai.default = Reply(status=400, message="stream_options is not supported")
    error = await fail(provider)
    assert error.code == "model_bad_request" and "stream_options is not supported" in error.message
    assert len(fake_openai.chat_requests) == 1


# -- connection errors ------------------------------------------------------------------------


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port that refuses connections: bound, but not listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.mark.asyncio
async def test_connection_refused(closed_port: int) -> None:
    p = await make(f"http://127.0.0.1:{closed_port}/v1", openai_max_retries=1)
    try:
        error = await fail(p)
    finally:
        await p.aclose()
    assert error.code == "model_unreachable"
    assert f"127.0.0.1:{closed_port}" in error.message


@pytest.mark.asyncio
async def test_dns_failure() -> None:
    p = await make("http://no-such-host.invalid/v1", openai_max_retries=0)
    try:
        error = await fail(p)
    finally:
        await p.aclose()
    assert error.code == "model_unreachable"
    assert "no-such-host.invalid" in error.message


@pytest.mark.asyncio
async def test_dropped_connections_are_retried(provider: OpenAIProvider, fake_openai: FakeOpenAI) -> None:
    fake_openai.script(Reply(drop=True), Reply(drop=True))
    assert "".join(await collect(provider)) == "".join(DEFAULT_PIECES)
    assert len(fake_openai.chat_requests) == 3


@pytest.mark.asyncio
async def test_a_stream_cut_before_any_text_is_retried(provider: OpenAIProvider, fake_openai: FakeOpenAI) -> None:
    fake_openai.script(Reply(drop_after=0))  # headers and the role chunk came, then the cut
    assert "".join(await collect(provider)) == "".join(DEFAULT_PIECES)
    assert len(fake_openai.chat_requests) == 2


@pytest.mark.asyncio
async def test_no_retry_after_the_first_piece(provider: OpenAIProvider, fake_openai: FakeOpenAI) -> None:
    # A retry would succeed here, and repeat "Hello," to the user: it must not happen.
    fake_openai.script(Reply(drop_after=2))
    got: list[str] = []
    error = await fail(provider, got)
    assert got == list(DEFAULT_PIECES[:2])
    assert error.code == "model_unreachable" and "mid-reply" in error.message
    assert len(fake_openai.chat_requests) == 1


# -- timeouts ------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("reply", [Reply(hang_before_headers=True), Reply(hang_after=0)], ids=["no-headers", "no-text"])
async def test_no_first_token_in_time(fake_openai: FakeOpenAI, reply: Reply) -> None:
    fake_openai.default = reply
    p = await make(fake_openai.base_url, openai_first_token_timeout=0.3)
    started = time.monotonic()
    try:
        error = await fail(p)
    finally:
        await p.aclose()
    assert error.code == "model_timeout" and "0.3s" in error.message
    assert time.monotonic() - started < 2
    assert len(fake_openai.chat_requests) == 1  # a hang is not retried: that would multiply the wait
    await fake_openai.wait_for(lambda: fake_openai.chat_requests[0].disconnected)


@pytest.mark.asyncio
async def test_stall_mid_stream(fake_openai: FakeOpenAI) -> None:
    fake_openai.default = Reply(hang_after=3)
    p = await make(fake_openai.base_url, openai_stall_timeout=0.3)
    got: list[str] = []
    started = time.monotonic()
    try:
        error = await fail(p, got)
    finally:
        await p.aclose()
    assert got == list(DEFAULT_PIECES[:3])
    assert error.code == "model_stalled" and "0.3s" in error.message
    assert time.monotonic() - started < 2
    assert len(fake_openai.chat_requests) == 1
    await fake_openai.wait_for(lambda: fake_openai.chat_requests[0].disconnected)


@pytest.mark.asyncio
async def test_chunks_without_text_do_not_hold_off_a_stall(fake_openai: FakeOpenAI) -> None:
    # A server that goes on sending empty chunks mid-reply has stopped all the same.
    fake_openai.default = Reply(pieces=("a", "b", *[""] * 30), interval=0.1)
    p = await make(fake_openai.base_url, openai_stall_timeout=0.35)
    got: list[str] = []
    try:
        error = await fail(p, got)
    finally:
        await p.aclose()
    assert got == ["a", "b"]
    assert error.code == "model_stalled"


@pytest.mark.asyncio
async def test_slow_but_steady_is_no_stall(fake_openai: FakeOpenAI) -> None:
    # Each piece comes within the stall timeout though the whole reply takes longer.
    fake_openai.default = Reply(pieces=("a", "b", "c", "d", "e"), interval=0.1)
    p = await make(fake_openai.base_url, openai_stall_timeout=0.3, openai_first_token_timeout=0.3)
    try:
        assert await collect(p) == ["a", "b", "c", "d", "e"]
    finally:
        await p.aclose()


# -- malformed chunks ------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("bad", ['{"choices": [{"delta": {"content": "x"', "[1, 2]", '"text"', '{"choices": "nope"}',
                                 '{"choices": [{"index": 0, "delta": {"content": 42}}]}', '{"choices": ["x"]}',
                                 '{"choices": [{"index": 0, "delta": "x"}]}'])
async def test_malformed_chunk_mid_stream(provider: OpenAIProvider, fake_openai: FakeOpenAI, bad: str) -> None:
    # A long, slow reply: the server must see the connection close, not finish the reply.
    fake_openai.script(Reply(pieces=DEFAULT_PIECES[:2] + ("tok",) * 500, interval=0.005, bad_chunk_after=2, bad_chunk=bad))
    got: list[str] = []
    error = await fail(provider, got)
    assert got == list(DEFAULT_PIECES[:2])
    assert error.code == "model_bad_response"
    assert len(fake_openai.chat_requests) == 1
    await fake_openai.wait_for(lambda: fake_openai.chat_requests[0].disconnected, timeout=1)


@pytest.mark.asyncio
@pytest.mark.parametrize("after", [0, 2])
async def test_a_stream_that_ends_before_the_reply_is_a_bad_response(
    provider: OpenAIProvider, fake_openai: FakeOpenAI, after: int
) -> None:
    # The body ends cleanly (a proxy or a server cut short) with no finish_reason: what came
    # is not the whole reply, and must not be stored as if it were.
    fake_openai.script(Reply(end_after=after))
    got: list[str] = []
    error = await fail(provider, got)
    assert got == list(DEFAULT_PIECES[:after])
    assert error.code == "model_bad_response" and "before the reply was finished" in error.message
    assert len(fake_openai.chat_requests) == 1


@pytest.mark.asyncio
async def test_malformed_chunk_before_text_is_not_retried(provider: OpenAIProvider, fake_openai: FakeOpenAI) -> None:
    fake_openai.script(Reply(bad_chunk_after=0))
    assert (await fail(provider)).code == "model_bad_response"
    assert len(fake_openai.chat_requests) == 1


@pytest.mark.asyncio
async def test_error_object_inside_the_stream(provider: OpenAIProvider, fake_openai: FakeOpenAI) -> None:
    fake_openai.script(Reply(bad_chunk_after=1, bad_chunk='{"error": {"message": "out of memory", "type": "server_error"}}'))
    error = await fail(provider)
    assert error.code == "model_server_error" and "out of memory" in error.message


# -- the API key stays secret -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_key_never_in_errors_or_logs(fake_openai: FakeOpenAI, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    # A (misbehaving) server that echoes the key it got, in errors that are retried and logged.
    echo = "Incorrect API key provided: {key}"
    fake_openai.script(Reply(status=500, message=echo), Reply(status=429, message=echo), Reply(status=401, message=echo),
                       Reply(bad_chunk_after=0, bad_chunk='{"choices": "{key}"}'))
    p = await make(fake_openai.base_url, openai_max_retries=2)
    errors = []
    try:
        for _ in range(2):
            errors.append(await fail(p))
    finally:
        await p.aclose()
    assert [e.code for e in errors] == ["model_auth_failed", "model_bad_response"]
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in fake_openai.chat_requests)  # it was sent
    for error in errors:
        assert "***" in error.message  # where the echoed key was
        rendered = "".join(traceback.format_exception(error))  # as a logger would print it
        assert KEY not in rendered and KEY not in str(error) and KEY not in repr(error.args)
    assert caplog.records, "the failures are logged"
    for record in caplog.records:
        assert KEY not in record.getMessage()
        assert KEY not in (logging.Formatter().formatException(record.exc_info) if record.exc_info else "")


# -- stop ------------------------------------------------------------------------------


def spy_streams(provider: OpenAIProvider, monkeypatch) -> list:
    """The client's streams (HTTP responses) the provider opens, to see when they close."""
    streams: list = []
    create = provider.client.chat.completions.create

    async def spy(**kwargs):
        stream = await create(**kwargs)
        streams.append(stream)
        return stream

    monkeypatch.setattr(provider.client.chat.completions, "create", spy)
    return streams


@pytest.mark.asyncio
async def test_cancel_closes_the_upstream_connection(provider: OpenAIProvider, fake_openai: FakeOpenAI, monkeypatch) -> None:
    streams = spy_streams(provider, monkeypatch)
    fake_openai.default = Reply(pieces=("tok ",) * 500, interval=0.01)
    got: list[str] = []

    async def job() -> None:
        async for piece in provider.stream_reply(TURNS):
            got.append(piece)

    task = asyncio.create_task(job())
    await fake_openai.wait_for(lambda: len(got) >= 3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert streams[0].response.is_closed  # at once, not when some finalizer runs
    request = fake_openai.chat_requests[0]
    await fake_openai.wait_for(lambda: request.disconnected, timeout=1)
    assert not request.finished and request.pieces_sent < 100
    assert len(fake_openai.chat_requests) == 1  # and no retry after the stop
    # The provider is still usable for the next reply.
    fake_openai.default = Reply()
    assert await collect(provider) == list(DEFAULT_PIECES)


@pytest.mark.asyncio
async def test_cancel_while_waiting_for_the_first_token(provider: OpenAIProvider, fake_openai: FakeOpenAI) -> None:
    fake_openai.default = Reply(hang_after=0)
    task = asyncio.create_task(collect(provider))
    await fake_openai.wait_for(lambda: fake_openai.chat_requests and fake_openai.chat_requests[0].status == 200)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await fake_openai.wait_for(lambda: fake_openai.chat_requests[0].disconnected, timeout=1)


@pytest.mark.asyncio
async def test_cancel_during_retry_backoff(fake_openai: FakeOpenAI) -> None:
    fake_openai.default = Reply(status=503)
    p = await make(fake_openai.base_url, openai_retry_backoff=10)
    try:
        task = asyncio.create_task(collect(p))
        await fake_openai.wait_for(lambda: len(fake_openai.chat_requests) == 1)
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await p.aclose()
    assert len(fake_openai.chat_requests) == 1


@pytest.mark.asyncio
async def test_consumer_closing_the_reply_early_closes_upstream(
    provider: OpenAIProvider, fake_openai: FakeOpenAI, monkeypatch
) -> None:
    streams = spy_streams(provider, monkeypatch)
    fake_openai.default = Reply(pieces=("tok ",) * 500, interval=0.01)
    async with aclosing(provider.stream_reply(TURNS)) as pieces:
        async for _ in pieces:
            break
    assert streams[0].response.is_closed  # when aclose() returns, not when a finalizer runs
    request = fake_openai.chat_requests[0]
    await fake_openai.wait_for(lambda: request.disconnected, timeout=1)
    assert not request.finished
