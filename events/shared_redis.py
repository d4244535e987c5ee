"""One Redis connection that any number of coroutines use at once.

redis-py lends a pooled connection to one command at a time, for as long as its reply
takes to come back, which on a busy event loop is a whole loop turn. With hundreds of
requests in flight, a small pool becomes a queue. Here commands issued while a write is
on the wire go out together in the next one, and replies come back in order (Redis
answers a connection's commands in the order sent), so one connection serves them all
and writes grow with load instead of multiplying. Single commands only: no transactions,
no blocking reads, no Pub/Sub. Replies are as Redis sends them (no redis-py parsing).
"""
from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError

WRITE_EVERY = 0.001


class SharedRedis:
    def __init__(self, url: str) -> None:
        # Pinged (and reconnected if need be) before a write after a second of silence,
        # so that a batch is not lost to a connection that died while idle.
        self.connection = ConnectionPool.from_url(
            url, decode_responses=True, health_check_interval=1, retry=Retry(NoBackoff(), 1)
        ).make_connection()
        self._pending: list[tuple[tuple, asyncio.Future]] = []
        self._sending: asyncio.Task | None = None
        self._last_write = 0.0

    def send(self, *command: Any) -> asyncio.Future:
        """Queue one command now; the future gets its reply. A caller cancelled while
        awaiting it does not take the command back."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((command, future))
        if self._sending is None or self._sending.done():
            self._sending = loop.create_task(self._send_pending())
        return future

    async def execute(self, *command: Any) -> Any:
        return await self.send(*command)

    async def _send_pending(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            # At most one write per WRITE_EVERY: under load a write then carries many
            # commands (a worker streaming hundreds of replies writes every token).
            await asyncio.sleep(max(0.0, self._last_write + WRITE_EVERY - loop.time()))
            self._last_write = loop.time()
            batch, self._pending = self._pending, []
            try:
                await self.connection.send_packed_command(b"".join(pack(*command) for command, _ in batch))
                for _, future in batch:
                    await self._reply_to(future)
            except Exception as exc:  # the rest of this batch's replies are lost with the connection
                await self.connection.disconnect()
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)

    async def _reply_to(self, future: asyncio.Future) -> None:
        try:
            reply = await self.connection.read_response()
        except ResponseError as exc:  # an error reply: the connection is still in step
            reply = exc
        if future.done():  # its caller was cancelled
            return
        if isinstance(reply, ResponseError):
            future.set_exception(reply)
        else:
            future.set_result(reply)

    async def close(self) -> None:
        if self._sending is not None:
            self._sending.cancel()
            await asyncio.gather(self._sending, return_exceptions=True)
        for _, future in self._pending:
            future.cancel()
        await self.connection.disconnect()


def pack(*args: Any) -> bytes:
    """A command in the Redis protocol. Written here because redis-py's packing costs
    more than the rest of a command's trip on a busy worker."""
    return b"*%d\r\n" % len(args) + bulk(*args)


def bulk(*args: Any) -> bytes:
    """Arguments (bytes as they are, anything else as text) as Redis protocol bulk strings."""
    parts = []
    for arg in args:  # a loop, not generators: this runs for every argument of every command
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)
