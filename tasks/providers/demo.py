"""The built-in offline model: deterministic for a prompt, paced like a real one."""
from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

from config import Settings
from tasks.providers import ChatTurn, UsageCallback

_WORDS = (
    "streaming events keeps every subscriber in step while the worker writes each token "
    "to the feed and the browser renders it as soon as it arrives over server sent events"
).split()


class DemoProvider:
    name = "demo"

    def __init__(self, settings: Settings) -> None:
        self.tokens = settings.demo_reply_tokens
        self.interval = settings.demo_token_interval_ms / 1000

    def reply_tokens(self, prompt: str) -> list[str]:
        """The whole reply for a prompt: says it is a demo, echoes the prompt, then filler."""
        echo = " ".join(prompt.split())[:80]
        head = f"(Demo model, no AI here.) You said: “{echo}”."
        seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big")
        words = [_WORDS[(seed + i * 7) % len(_WORDS)] for i in range(self.tokens)]
        pieces = [head] + [" " + word for word in words]
        return pieces[: self.tokens]

    async def stream_reply(self, turns: list[ChatTurn], on_usage: UsageCallback | None = None) -> AsyncIterator[str]:
        prompt = next((t.content for t in reversed(turns) if t.role == "user"), "")
        pieces = self.reply_tokens(prompt)
        # Paced by the clock, not by pauses after each token: a model server generates at
        # its own rate however long its client takes over each token.
        loop = asyncio.get_running_loop()
        begin = loop.time()
        for i, piece in enumerate(pieces):
            if i:
                await asyncio.sleep(begin + i * self.interval - loop.time())
            yield piece
        if on_usage is not None:
            await on_usage({"prompt_tokens": len(prompt.split()), "completion_tokens": len(pieces)})

    async def aclose(self) -> None:
        pass
