"""The ``openai`` provider: streams a reply from any OpenAI-compatible chat-completions
endpoint (OpenAI, Ollama, vLLM, llama.cpp, LM Studio) with the official ``openai`` client.

Failures become ``ProviderError`` with a slug code. Rate limits, server errors and
connection errors are retried with exponential backoff, but only until the first piece of
text has been yielded: after that a retry would repeat text the user has already seen.
"""
from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing, asynccontextmanager
from typing import Any

import openai

from config import Settings
from tasks.providers import ChatTurn, ProviderError, UsageCallback

log = logging.getLogger(__name__)

RETRYABLE_CODES = frozenset({"model_unreachable", "model_rate_limited", "model_server_error"})
_MAX_DETAIL_CHARS = 300


def build_messages(system_prompt: str, turns: Sequence[ChatTurn], max_chars: int) -> list[dict[str, str]]:
    """The request's ``messages``: the system prompt, then the newest turns whose contents
    fit ``max_chars`` in total (the system prompt is not counted; ``max_chars <= 0`` means
    no limit).

    Turns are dropped from the oldest, never from the middle, so the model sees a contiguous
    conversation. The newest turn (the new user prompt) is always kept, cut to ``max_chars``
    if it alone is too long. A leading assistant turn is dropped too, because strict chat
    templates (Mistral, Gemma, ... on vLLM or llama.cpp) require the first turn to be a user's.
    """
    kept: list[ChatTurn] = []
    budget = max_chars if max_chars > 0 else None
    for turn in reversed(turns):
        if budget is not None and len(turn.content) > budget:
            if not kept:  # the newest turn: keep its beginning rather than nothing
                kept.append(ChatTurn(turn.role, turn.content[:budget]))
            break
        kept.append(turn)
        if budget is not None:
            budget -= len(turn.content)
    kept.reverse()
    while len(kept) > 1 and kept[0].role == "assistant":
        kept.pop(0)
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": t.role, "content": t.content} for t in kept]


class _BadChunk(Exception):
    """A streamed chunk that is not shaped like a chat-completion chunk."""


def _read_chunk(chunk: Any) -> tuple[str, bool, dict[str, int] | None]:
    """The text, whether the reply ends here (a ``finish_reason``) and the usage (if any)
    carried by one streamed chunk.

    The client builds chunks without validation, so whatever JSON a server sends arrives
    here; only the fields we use are checked, leniently enough for compatible servers.
    """
    choices = getattr(chunk, "choices", None)
    usage = getattr(chunk, "usage", None)
    if not isinstance(choices, list) and not (choices is None and usage is not None):
        raise _BadChunk(f"expected a chat.completion.chunk, got {str(chunk)[:100]!r}")
    text, finished = "", False
    for choice in choices or []:
        delta = getattr(choice, "delta", None)
        content = getattr(delta, "content", None)
        if (
            not isinstance(choice, openai.BaseModel)
            or not isinstance(delta, (openai.BaseModel, type(None)))
            or not isinstance(content, (str, type(None)))
        ):
            raise _BadChunk(f"expected a choice with a text delta, got {str(choice)[:100]!r}")
        if getattr(choice, "index", None) in (0, None):  # other indexes: candidates (n > 1) not asked for
            text += content or ""
            finished = finished or getattr(choice, "finish_reason", None) is not None
    # Usage is for the record: counts a server leaves out (or garbles) are left out, and a
    # reply that streamed whole is not failed over them.
    names = ("prompt_tokens", "completion_tokens", "total_tokens")
    counts = {name: count for name in names if isinstance(count := getattr(usage, name, None), int)}
    return text, finished, counts or None


class OpenAIProvider:
    name = "openai"

    def __init__(self, settings: Settings) -> None:
        self.model = settings.chatbot_model
        self.system_prompt = settings.chatbot_system_prompt
        self.history_max_chars = settings.history_max_chars
        self.first_token_timeout = settings.openai_first_token_timeout
        self.stall_timeout = settings.openai_stall_timeout
        self.max_retries = settings.openai_max_retries
        self.retry_backoff = settings.openai_retry_backoff
        self._api_key = settings.openai_api_key or ""
        # One client, so one connection pool, per provider (the worker makes one per
        # process). Its own retries are off: we retry only before the first token. Read
        # timeouts are ours (first token, stall), so the pool only bounds connecting.
        self.client = openai.AsyncOpenAI(
            # Local servers (Ollama, llama.cpp, ...) ignore the key, but the client wants one.
            api_key=self._api_key or "not-needed",
            base_url=settings.openai_base_url,
            max_retries=0,
            timeout=openai.Timeout(None, connect=min(10.0, self.first_token_timeout)),
        )
        self.base_url = str(self.client.base_url).rstrip("/")

    async def aclose(self) -> None:
        await self.client.close()

    def _scrub(self, text: str) -> str:
        """Text with the API key masked: server messages may echo what we sent."""
        return text.replace(self._api_key, "***") if self._api_key else text

    async def stream_reply(self, turns: list[ChatTurn], on_usage: UsageCallback | None = None) -> AsyncIterator[str]:
        messages = build_messages(self.system_prompt, turns, self.history_max_chars)
        attempt = 0
        while True:
            yielded = False
            try:
                # aclosing: if our consumer stops early, the attempt (and its HTTP
                # response) is closed now, not whenever the generator is collected.
                async with aclosing(self._attempt(messages, on_usage)) as pieces:
                    async for piece in pieces:
                        yielded = True
                        yield piece
                return
            except ProviderError as error:
                if yielded or error.code not in RETRYABLE_CODES or attempt >= self.max_retries:
                    log.warning("model request failed (%s): %s", error.code, error.message)
                    raise
                attempt += 1
                delay = self.retry_backoff * 2 ** (attempt - 1) * random.uniform(0.75, 1.0)
                log.warning(
                    "model request failed (%s): %s; retry %d/%d in %.2fs",
                    error.code, error.message, attempt, self.max_retries, delay,
                )
                await asyncio.sleep(delay)

    async def _attempt(self, messages: list[dict[str, str]], on_usage: UsageCallback | None) -> AsyncIterator[str]:
        """One request: its text pieces as they arrive, or a ProviderError."""
        loop = asyncio.get_running_loop()
        # Until the first text, one deadline covers connecting, the response headers and
        # any chunks without text (role, reasoning); after it, each chunk has its own.
        deadline = loop.time() + self.first_token_timeout
        got_text = finished = False
        try:
            async with self._deadline(deadline, got_text):
                stream = await self.client.chat.completions.create(
                    model=self.model,
                    messages=messages,  # type: ignore[arg-type]
                    stream=True,
                    stream_options={"include_usage": True},
                )
            # Closing the stream closes the HTTP response, so on a stop (cancellation) or
            # any failure the upstream connection is dropped at once and the server stops.
            async with stream:
                kind = stream.response.headers.get("content-type", "nothing")
                if not kind.startswith("text/event-stream"):  # e.g. a whole completion: stream ignored
                    raise _BadChunk(f"expected an event stream, got {kind[:60]}")
                while True:
                    async with self._deadline(deadline, got_text):
                        try:
                            chunk = await anext(stream)
                        except StopAsyncIteration:
                            break
                    text, ends, usage = _read_chunk(chunk)
                    finished = finished or ends
                    if usage is not None:
                        log.info("model usage: model=%s %s", self.model, " ".join(f"{k}={v}" for k, v in usage.items()))
                        if on_usage is not None:
                            await on_usage(usage)
                    if text:  # only text: chunks without any (keepalives, reasoning) are no progress
                        got_text = True
                        yield text
                        deadline = loop.time() + self.stall_timeout  # after the yield: our consumer's time is no stall
            if not finished:  # a body that ended cleanly mid-reply (a proxy, a crashed server)
                message = f"the model server at {self.base_url} ended the stream before the reply was finished (no finish_reason)"
                raise ProviderError("model_bad_response", message)
        except (_BadChunk, json.JSONDecodeError, UnicodeDecodeError, openai.APIResponseValidationError) as error:
            raise ProviderError(
                "model_bad_response", self._scrub(f"the model server sent a malformed stream chunk: {error}")
            ) from None
        except openai.OpenAIError as error:
            # ``from None`` keeps the client's exception (and its request) out of tracebacks.
            raise self._to_provider_error(error, mid_reply=got_text) from None

    @asynccontextmanager
    async def _deadline(self, when: float, got_text: bool) -> AsyncIterator[None]:
        """Time out the block at loop time ``when`` as model_timeout or model_stalled."""
        timeout = asyncio.timeout_at(when)
        try:
            async with timeout:
                yield
        except TimeoutError:
            if not timeout.expired():
                raise
            if got_text:
                message = f"the model stopped sending text for over {self.stall_timeout:g}s mid-reply"
                raise ProviderError("model_stalled", message) from None
            raise ProviderError("model_timeout", f"the model sent no text within {self.first_token_timeout:g}s") from None

    def _to_provider_error(self, error: openai.OpenAIError, *, mid_reply: bool) -> ProviderError:
        where = f"the model server at {self.base_url}"
        if isinstance(error, openai.APIStatusError):
            status, hint = error.status_code, ""
            if status == 401:
                code, what, hint = "model_auth_failed", f"{where} rejected the API key", "check OPENAI_API_KEY"
            elif status == 403:
                code, what, hint = "model_auth_failed", f"{where} denied access", "check OPENAI_API_KEY"
            elif status == 404:
                code, what = "model_not_found", f"model {self.model!r} was not found at {where}"
                hint = "check CHATBOT_MODEL and OPENAI_BASE_URL (it usually ends in /v1)"
            elif status == 429:
                code, what = "model_rate_limited", f"{where} is rate limiting requests"
            elif status >= 500:
                code, what = "model_server_error", f"{where} failed"
            else:
                code, what = "model_bad_request", f"{where} refused the request"
            detail = _detail(error.body)
            message = f"{what} (HTTP {status})" + (f": {detail}" if detail else "") + (f"; {hint}" if hint else "")
        elif isinstance(error, openai.APIConnectionError):
            code = "model_unreachable"
            cause = f" ({_detail(str(error.__cause__))})" if error.__cause__ else ""
            if mid_reply:
                message = f"the connection to {where} was lost mid-reply{cause}"
            elif isinstance(error, openai.APITimeoutError):
                message = f"could not connect to {where} in time"
            else:
                message = f"could not connect to {where}{cause}; check OPENAI_BASE_URL and that the server runs"
        elif isinstance(error, openai.APIError):  # an error object sent inside the stream
            code, message = "model_server_error", f"{where} reported an error: {_detail(error.body) or error.message}"
        else:
            code, message = "model_error", f"the model client failed: {error}"
        return ProviderError(code, self._scrub(message))


def _detail(body: object) -> str:
    """A short human text out of an error body (an OpenAI error object, JSON or text)."""
    if isinstance(body, dict):
        body = body.get("message") or body.get("error") or json.dumps(body)
    text = " ".join(str(body or "").split())
    return text[:_MAX_DETAIL_CHARS]
