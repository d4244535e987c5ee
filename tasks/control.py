"""Round control: which rounds are running where, and stop requests that reach them.

A running job registers its round with a stop callback. ``request_stop`` reaches it in
this process (embedded mode) or on any worker (Redis mode: a flag plus a Pub/Sub nudge;
the flag covers a job that registers after the nudge). Keys name the round, so a stop can
never reach a later round of the same workflow.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from redis.asyncio import Redis

from events.shared_redis import SharedRedis

log = logging.getLogger(__name__)

RoundKey = tuple[str, int]


class LocalControl:
    """Embedded mode: everything in this process."""

    def __init__(self) -> None:
        self.active: dict[RoundKey, Callable[[], None]] = {}
        self.queued: set[RoundKey] = set()
        self.stops: set[RoundKey] = set()

    async def expect(self, workflow_id: str, round_number: int) -> None:
        """A job for this round was just enqueued: count it alive until it runs."""
        self.queued.add((workflow_id, round_number))

    @contextlib.asynccontextmanager
    async def running(
        self, workflow_id: str, round_number: int, on_stop: Callable[[], None], on_lost: Callable[[], None]
    ) -> AsyncIterator[None]:
        """The round runs here: ``on_stop`` when a stop is asked for, ``on_lost`` if it may
        have been called lost meanwhile (its job must give it up: see RedisControl)."""
        key = (workflow_id, round_number)
        self.active[key] = on_stop
        try:
            if await self._begin(key):  # after registering: no stop falls between
                on_stop()
            yield
        finally:
            self.active.pop(key, None)
            self.queued.discard(key)
            await self._end(key)

    async def request_stop(self, workflow_id: str, round_number: int) -> None:
        key = (workflow_id, round_number)
        self.stops.add(key)
        self._nudge(key)

    def _nudge(self, key: RoundKey) -> None:
        if (on_stop := self.active.get(key)) is not None:
            on_stop()

    async def alive(self, workflow_id: str, round_number: int) -> bool:
        key = (workflow_id, round_number)
        return key in self.active or key in self.queued

    async def _begin(self, key: RoundKey) -> bool:
        """A round starts running here: whether a stop came for it before."""
        return key in self.stops

    async def _end(self, key: RoundKey) -> None:
        self.stops.discard(key)

    async def close(self) -> None:
        pass


class RedisControl(LocalControl):
    """Redis mode: stop flags and liveness leases in Redis, nudges over Pub/Sub."""

    def __init__(self, redis: SharedRedis, key_prefix: str, lease_seconds: float) -> None:
        super().__init__()
        self.redis = redis
        self.prefix = key_prefix
        self.channel = f"{key_prefix}stops"
        self.lease_seconds = lease_seconds
        self._listener: asyncio.Task | None = None

    def _key(self, kind: str, key: RoundKey) -> str:
        return f"{self.prefix}{kind}:{key[0]}:{key[1]}"

    async def expect(self, workflow_id: str, round_number: int) -> None:
        # A queued job has no heartbeat yet: give the queue time before calling it lost.
        grace = max(30.0, 3 * self.lease_seconds)
        await self.redis.execute("SET", self._key("lease", (workflow_id, round_number)), "queued", "PX", int(grace * 1000))

    async def taken(self, workflow_id: str, round_number: int) -> None:
        """A worker took the round's job: a lease as short as a running job's, so that a
        worker dying before the job runs is noticed as soon as one dying while it runs."""
        await self._renew((workflow_id, round_number))

    @contextlib.asynccontextmanager
    async def running(
        self, workflow_id: str, round_number: int, on_stop: Callable[[], None], on_lost: Callable[[], None]
    ) -> AsyncIterator[None]:
        heartbeat = asyncio.create_task(self._heartbeat((workflow_id, round_number), on_stop, on_lost))
        try:
            async with super().running(workflow_id, round_number, on_stop, on_lost):
                yield
        finally:
            heartbeat.cancel()

    async def _renew(self, key: RoundKey, *options: str) -> bool:
        return await self.redis.execute("SET", self._key("lease", key), "running", "PX", int(self.lease_seconds * 1000), *options) is not None

    async def _heartbeat(self, key: RoundKey, on_stop: Callable[[], None], on_lost: Callable[[], None]) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                # Only while the lease holds: one that ran out (this process stalled for
                # longer than it) may have had its round failed and its text salvaged by
                # then, and what the job sent after that would be sent after the round's end.
                if not await self._renew(key, "XX"):
                    log.warning("round %s outlived its lease (the process stalled?): giving it up", key)
                    on_lost()
                    return
                if await self._stop_flagged(key):  # in case a Pub/Sub nudge was lost
                    on_stop()
            except Exception as exc:  # Redis away: keep trying, the lease says the rest
                log.warning("lease renewal for %s failed: %s", key, exc)

    async def request_stop(self, workflow_id: str, round_number: int) -> None:
        key = (workflow_id, round_number)
        await self.redis.execute("SET", self._key("stop", key), "1", "EX", 3600)
        await self.redis.execute("PUBLISH", self.channel, f"{workflow_id}:{round_number}")

    async def alive(self, workflow_id: str, round_number: int) -> bool:
        return bool(await self.redis.execute("EXISTS", self._key("lease", (workflow_id, round_number))))

    async def _stop_flagged(self, key: RoundKey) -> bool:
        return bool(await self.redis.execute("EXISTS", self._key("stop", key)))

    async def _begin(self, key: RoundKey) -> bool:
        _, flagged = await asyncio.gather(self._renew(key), self._stop_flagged(key))  # one trip to Redis
        return flagged

    async def _end(self, key: RoundKey) -> None:
        with contextlib.suppress(Exception):
            await self.redis.execute("DEL", self._key("stop", key), self._key("lease", key))

    def listen(self, redis_url: str) -> None:
        """Workers: take stop nudges for the rounds this process runs (on a connection of
        its own: a subscribed connection can do nothing else)."""
        self._listener = asyncio.create_task(self._listen(Redis.from_url(redis_url)))

    async def _listen(self, redis: Redis) -> None:
        backoff = 0.5
        while True:
            try:
                async with redis.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    backoff = 0.5
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            data = message["data"]
                            workflow_id, _, round_number = (data.decode() if isinstance(data, bytes) else data).rpartition(":")
                            self._nudge((workflow_id, int(round_number)))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("stop listener lost Redis (%s); reconnecting in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(2 * backoff, 8.0)  # one line a few seconds while Redis is away, not two a second

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
