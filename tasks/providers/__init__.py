"""Model providers: anything that turns a conversation into a stream of text pieces.

A provider is an object with ``stream_reply(turns, on_usage)``, an async iterator of
text pieces, and ``aclose()``. It raises ``ProviderError(code, message)`` for failures
the user should see; cancellation (a stop) must close any upstream request at once.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from config import Settings


@dataclass(frozen=True)
class ChatTurn:
    role: str  # "system" | "user" | "assistant"
    content: str


class ProviderError(Exception):
    """A failure to show the user as an ``error`` event: a slug ``code`` and a message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


UsageCallback = Callable[[dict], Awaitable[None]]


class ChatProvider(Protocol):
    name: str

    def stream_reply(self, turns: list[ChatTurn], on_usage: UsageCallback | None = None) -> AsyncIterator[str]: ...

    async def aclose(self) -> None: ...


def make_provider(settings: Settings) -> ChatProvider:
    if settings.chatbot_provider == "demo":
        from tasks.providers.demo import DemoProvider

        return DemoProvider(settings)
    if settings.chatbot_provider == "openai":
        from tasks.providers.openai_compat import OpenAIProvider

        return OpenAIProvider(settings)
    raise ValueError(f"unknown CHATBOT_PROVIDER {settings.chatbot_provider!r} (expected 'demo' or 'openai')")
