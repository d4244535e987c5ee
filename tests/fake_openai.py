"""A real local HTTP server speaking the OpenAI chat-completions protocol, for tests.

It runs on 127.0.0.1 (a free port) in a thread with its own event loop, so it serves the
test's own event loop, other processes (arq workers) and sync code alike. It is plain
asyncio with a small HTTP/1.1 (keep-alive, chunked) implementation rather than an ASGI
server, so it can do what a framework would hide: cut a connection abruptly, hang before
the headers, and see the instant a client closes the connection mid-response.

Fixtures (import them into a conftest or a test module):
- ``fake_openai_server``: the session's server;
- ``fake_openai``: that server, reset for one test (script and records cleared).

Tell it what to do with ``fake.script(Reply(...), ...)`` (the next requests, in order) and
``fake.default`` (every other request); read ``fake.requests`` to see what arrived.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

DEFAULT_PIECES = ("Hello", ",", " wörld", "! ", "🙂", "\n", "Bye.")
DEFAULT_MODEL = "fake-model"

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}
_ERROR_TYPES = {401: "invalid_request_error", 403: "permission_error", 404: "invalid_request_error",
                429: "rate_limit_error"}


@dataclass
class Reply:
    """What the server does with one chat-completions request.

    ``*_after`` counts text pieces already sent; 0 means before the first one (but after
    the response headers and the role chunk, as real servers do).
    """

    pieces: Sequence[str] = DEFAULT_PIECES
    status: int = 200  # another status: an OpenAI-style JSON error body
    message: str | None = None  # that error's message; "{key}" becomes the key the client sent
    drop: bool = False  # read the request, then close the connection without answering
    hang_before_headers: bool = False  # read the request, then send nothing at all
    hang_after: int | None = None  # stop sending (keep the connection open)
    drop_after: int | None = None  # cut the connection mid-body
    end_after: int | None = None  # end the body cleanly there: no finish_reason, no [DONE]
    bad_chunk_after: int | None = None  # send ``data: <bad_chunk>`` there (then go on)
    bad_chunk: str = "{not json"  # "{key}" becomes the key the client sent
    interval: float = 0.0  # seconds to wait before each piece (a slow model)
    usage: bool = True  # send the usage chunk when the client asks for it
    ignore_stream: bool = False  # answer with a whole completion even when a stream is asked for


@dataclass
class Received:
    """One request as the server saw it, and how its response went."""

    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: Any
    reply: Reply | None = None
    status: int = 0
    pieces_sent: int = 0
    finished: bool = False  # the whole response was sent
    disconnected: bool = False  # the client closed the connection before it was

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body.get("messages", []) if isinstance(self.body, dict) else []


@dataclass
class FakeOpenAI:
    models: set[str] = field(default_factory=lambda: {DEFAULT_MODEL})  # others get 404
    api_key: str | None = None  # when set, other bearer tokens get 401
    default: Reply = field(default_factory=Reply)
    requests: list[Received] = field(default_factory=list)
    connections: int = 0  # TCP connections accepted
    port: int = 0

    def __post_init__(self) -> None:
        self._script: list[Reply] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task] = set()

    # -- control ---------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *replies: Reply) -> None:
        """The replies to the next requests, in order (then ``default`` again)."""
        with self._lock:
            self._script.extend(replies)

    def reset(self) -> None:
        with self._lock:
            self._script.clear()
        self.models = {DEFAULT_MODEL}
        self.api_key = None
        self.default = Reply()
        self.requests = []
        self.connections = 0

    @property
    def chat_requests(self) -> list[Received]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait (from any event loop) until ``predicate()`` holds; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"fake OpenAI server: condition not met within {timeout}s")
            await asyncio.sleep(0.01)

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> "FakeOpenAI":
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-openai", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(timeout=10)
        self._loop.close()
        self._loop = None

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    # -- HTTP ------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        try:
            while await self._one_request(reader, writer):  # keep-alive: next request
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._handlers.discard(task)
            writer.transport.abort()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; whether the connection may carry another."""
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, path, _ = request_line.split(" ", 2)
        headers = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        raw = await reader.readexactly(int(headers.get("content-length", "0")))
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        received = Received(method, path, headers, body)
        self.requests.append(received)
        exchange = _Exchange(reader, writer, received)

        if not (method == "POST" and path.rstrip("/").endswith("/chat/completions")):
            return await exchange.error(404, f"Invalid URL ({method} {path})", "invalid_request_error")
        if not isinstance(body, dict):
            return await exchange.error(400, "We could not parse the JSON body of your request.")
        with self._lock:
            reply = self._script.pop(0) if self._script else self.default
        received.reply = reply
        key = exchange.key
        if reply.drop:
            return False
        if reply.hang_before_headers:
            await exchange.wait(None)
            return False
        if reply.status != 200:
            message = (reply.message or _default_message(reply.status)).replace("{key}", key)
            return await exchange.error(reply.status, message)
        if self.api_key is not None and key != self.api_key:
            masked = f"{key[:3]}***{key[-4:]}" if len(key) > 8 else "***"
            return await exchange.error(401, f"Incorrect API key provided: {masked}.", code="invalid_api_key")
        model = body.get("model")
        if model not in self.models:
            message = f"The model `{model}` does not exist or you do not have access to it."
            return await exchange.error(404, message, code="model_not_found")
        if not body.get("stream") or reply.ignore_stream:
            return await exchange.completion(reply, model)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return await exchange.stream(reply, model, include_usage)


def _default_message(status: int) -> str:
    if status == 429:
        return "Rate limit reached for requests. Please try again in 20ms."
    if status >= 500:
        return "The server had an error while processing your request. Sorry about that!"
    return _REASONS.get(status, "Error")


class _Exchange:
    """Writing one response, and noticing when the client goes away meanwhile."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, received: Received) -> None:
        self.reader = reader
        self.writer = writer
        self.received = received
        self.key = received.headers.get("authorization", "").removeprefix("Bearer ")

    def gone(self) -> bool:
        # While a response is written the client sends nothing, so EOF (or a reset) on the
        # read side means it closed the connection.
        gone = self.reader.at_eof() or self.reader.exception() is not None or self.writer.transport.is_closing()
        if gone and not self.received.finished:
            self.received.disconnected = True
        return gone

    async def wait(self, seconds: float | None) -> bool:
        """Sleep ``seconds`` (None: until the client leaves); whether the client left."""
        deadline = None if seconds is None else time.monotonic() + seconds
        while not self.gone():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    async def write(self, data: bytes) -> bool:
        """Send bytes; whether the client is still there."""
        if self.gone():
            return False
        try:
            self.writer.write(data)
            await self.writer.drain()
        except ConnectionError:
            self.received.disconnected = True
            return False
        return True

    async def head(self, status: int, headers: dict[str, str]) -> bool:
        self.received.status = status
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
        lines += [f"{name}: {value}" for name, value in {**headers, "Connection": "keep-alive"}.items()]
        return await self.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    async def json(self, status: int, payload: Any) -> bool:
        data = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json", "Content-Length": str(len(data))}
        if await self.head(status, headers) and await self.write(data):
            self.received.finished = True
        return self.received.finished

    async def error(self, status: int, message: str, kind: str | None = None, code: str | None = None) -> bool:
        kind = kind or _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        return await self.json(status, {"error": {"message": message, "type": kind, "param": None, "code": code}})

    async def completion(self, reply: Reply, model: str) -> bool:
        """A non-streamed answer (``stream`` false)."""
        content = "".join(reply.pieces)
        return await self.json(200, {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": _usage(self.received.messages, reply.pieces),
        })

    async def stream(self, reply: Reply, model: str, include_usage: bool) -> bool:
        base = {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": model, "system_fingerprint": "fp_fake"}
        if include_usage:
            base["usage"] = None  # OpenAI sends "usage": null on every chunk but the last

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        headers = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
                   "Transfer-Encoding": "chunked"}
        if not await self.head(200, headers) or not await self.event(chunk({"role": "assistant", "content": ""})):
            return False
        for index in range(len(reply.pieces) + 1):
            if reply.bad_chunk_after == index and not await self.event(reply.bad_chunk.replace("{key}", self.key)):
                return False
            if reply.hang_after == index:
                await self.wait(None)
                return False
            if reply.drop_after == index:
                return False  # the caller aborts the connection: an incomplete chunked body
            if reply.end_after == index:
                return await self.write(b"0\r\n\r\n")
            if index == len(reply.pieces):
                break
            if reply.interval and await self.wait(reply.interval):
                return False
            if not await self.event(chunk({"content": reply.pieces[index]})):
                return False
            self.received.pieces_sent += 1
        if not await self.event(chunk({}, "stop")):
            return False
        if include_usage and reply.usage:
            usage_chunk = {**base, "choices": [], "usage": _usage(self.received.messages, reply.pieces)}
            if not await self.event(usage_chunk):
                return False
        if await self.event("[DONE]") and await self.write(b"0\r\n\r\n"):
            self.received.finished = True
        return self.received.finished

    async def event(self, data: dict[str, Any] | str) -> bool:
        """One SSE event as one HTTP chunk."""
        text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
        payload = f"data: {text}\n\n".encode()
        return await self.write(b"%x\r\n%s\r\n" % (len(payload), payload))


def _usage(messages: list[dict[str, Any]], pieces: Sequence[str]) -> dict[str, int]:
    prompt = sum(len(str(m.get("content", "")).split()) for m in messages)
    return {"prompt_tokens": prompt, "completion_tokens": len(pieces), "total_tokens": prompt + len(pieces)}


@pytest.fixture(scope="session")
def fake_openai_server() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI().start()
    yield server
    server.stop()


@pytest.fixture
def fake_openai(fake_openai_server: FakeOpenAI) -> FakeOpenAI:
    fake_openai_server.reset()
    return fake_openai_server
