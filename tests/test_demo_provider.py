"""The built-in demo model: offline, deterministic for a prompt, honest, paced by the clock."""
from __future__ import annotations

import asyncio
import time

from config import Settings
from tasks.providers import ChatTurn
from tasks.providers.demo import DemoProvider


def demo(tokens: int, interval_ms: float) -> DemoProvider:
    return DemoProvider(Settings(secret_key="test", demo_reply_tokens=tokens, demo_token_interval_ms=interval_ms))


async def reply(provider: DemoProvider, prompt: str) -> list[str]:
    return [piece async for piece in provider.stream_reply([ChatTurn("user", prompt)])]


async def test_the_reply_is_deterministic_says_it_is_a_demo_and_echoes_the_prompt() -> None:
    provider = demo(12, 0)
    first, again, other = await reply(provider, "hello there"), await reply(provider, "hello there"), await reply(provider, "bye")
    assert first == again != other
    assert len(first) == 12
    assert "Demo model" in first[0] and "hello there" in first[0]


async def test_a_slow_consumer_does_not_slow_the_token_rate(monkeypatch) -> None:
    """Tokens are due at fixed times, as a model server sends them whatever its client
    does: a consumer that takes longer than the interval over each token finds the next
    one already due (no pause), where pausing after each token would add up."""
    pauses: list[float] = []
    real_sleep = asyncio.sleep

    async def recording_sleep(delay: float) -> None:
        pauses.append(delay)
        await real_sleep(delay)

    monkeypatch.setattr("tasks.providers.demo.asyncio.sleep", recording_sleep)
    async for _ in demo(6, 5).stream_reply([ChatTurn("user", "hi")]):
        time.sleep(0.012)  # a busy consumer: more than two intervals per token
    assert len(pauses) == 5
    assert all(pause <= 0 for pause in pauses), pauses
