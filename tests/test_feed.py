"""One contract suite for both EventFeed implementations (events/memory.py, events/redis.py).

Every test that takes ``feed`` or ``make_feed`` runs twice: against MemoryFeed and against
RedisFeed on a real redis-server (the session fixture ``redis_url``), under a key prefix of
its own that is deleted afterwards. Nothing else on that Redis is read, written or killed.
"""
from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from events import ORIGIN, Event, EventFeed, FeedGap, make_feed as open_feed, parse_cursor

BACKENDS = ["memory", "redis"]
CATEGORIES = ["chat", "workflow", "default"]


# fixtures


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def feed_url(backend, request) -> str:
    return "memory://" if backend == "memory" else request.getfixturevalue("redis_url")


@pytest.fixture
async def make_feed(feed_url):
    """A factory of feeds of this test's backend. Feeds made by one test share a key
    prefix, as the web and worker processes of one deployment do; all are closed after."""
    prefix = f"test-feed-{uuid.uuid4().hex[:12]}:"
    feeds: list[EventFeed] = []

    def factory(**options) -> EventFeed:
        if not feed_url.startswith("memory://"):
            options.setdefault("key_prefix", prefix)
        feed = open_feed(feed_url, **options)
        feeds.append(feed)
        return feed

    yield factory
    for feed in feeds:
        await feed.close()
    if not feed_url.startswith("memory://"):
        admin = Redis.from_url(feed_url)
        try:  # only the keys of this test's own prefix
            keys = [key async for key in admin.scan_iter(match=f"{prefix}*", count=1000)]
            if keys:
                await admin.delete(*keys)
        finally:
            await admin.aclose()


@pytest.fixture
def feed(make_feed) -> EventFeed:
    return make_feed()


# helpers


def ctx() -> str:
    return f"ctx-{uuid.uuid4().hex[:10]}"


async def emit_many(feed: EventFeed, context_id: str, count: int, start: int = 0, concurrently: bool = False) -> list[str]:
    """Emit ``count`` events {"i": start..}, cycling through the categories; their cursors."""

    def one(i: int):
        return feed.emit(context_id, f"type{i % 2}", {"i": i}, category=CATEGORIES[i % len(CATEGORIES)])

    if concurrently:
        return list(await asyncio.gather(*(one(i) for i in range(start, start + count))))
    return [await one(i) for i in range(start, start + count)]


async def next_batch(agen: AsyncIterator[list[Event]], timeout: float = 5.0) -> list[Event]:
    return await asyncio.wait_for(agen.__anext__(), timeout)


async def collect(agen: AsyncIterator[list[Event]], count: int, timeout: float = 5.0, what: str = "") -> list[Event]:
    """Events from a subscription (empty batches skipped) until at least ``count`` arrived."""
    events: list[Event] = []

    async def run() -> None:
        while len(events) < count:
            events.extend(await agen.__anext__())

    try:
        await asyncio.wait_for(run(), timeout)
    except TimeoutError:
        pytest.fail(f"{what}{': ' if what else ''}got {len(events)} of {count} events within {timeout}s: {[e.data for e in events]}")
    return events


async def assert_quiet(agen: AsyncIterator[list[Event]], timeout: float = 2.0) -> None:
    """Nothing more arrives: the next batch is the idle one (subscribe with idle_timeout)."""
    batch = await next_batch(agen, timeout)
    assert batch == [], f"unexpected extra events: {[(e.cursor, e.data) for e in batch]}"


def numbers(events: list[Event]) -> list[int]:
    return [e.data["i"] for e in events]


def assert_increasing(cursors: list[str]) -> None:
    positions = [parse_cursor(c) for c in cursors]
    for before, after in zip(positions, positions[1:]):
        assert after > before, f"cursor {after} does not follow {before}"


async def wait_for_condition(check, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


# cursors and read()


async def test_emit_returns_strictly_increasing_cursors(feed):
    a, b = ctx(), ctx()
    sequential = await emit_many(feed, a, 200)  # many within one millisecond: the sequence part grows
    assert_increasing(sequential)
    concurrent = await emit_many(feed, a, 200, start=200, concurrently=True)
    assert_increasing(sequential + concurrent)
    assert len(set(sequential + concurrent)) == 400

    interleaved: dict[str, list[str]] = {a: [], b: []}
    for i in range(50):
        for context_id in (a, b):
            interleaved[context_id].append(await feed.emit(context_id, "t", {"i": i}))
    assert_increasing(concurrent[-1:] + interleaved[a])
    assert_increasing(interleaved[b])
    assert [e.cursor for e in await feed.read(a)] == sequential + concurrent + interleaved[a]


async def test_read_returns_exactly_the_events_after_a_cursor(feed):
    context_id = ctx()
    assert await feed.read(context_id) == []  # an unknown context from the origin: nothing, no error
    cursors = await emit_many(feed, context_id, 30)

    everything = await feed.read(context_id, ORIGIN)
    assert [e.cursor for e in everything] == cursors
    assert numbers(everything) == list(range(30))
    assert [(e.type, e.category) for e in everything] == [(f"type{i % 2}", CATEGORIES[i % 3]) for i in range(30)]
    assert everything[7].data_json == '{"i":7}'

    for cut in (0, 1, 2, 14, 15, 28, 29):
        after = await feed.read(context_id, cursors[cut])
        assert [e.cursor for e in after] == cursors[cut + 1 :], f"cut after event {cut}"
        assert numbers(after) == list(range(cut + 1, 30))
    assert await feed.read(context_id, cursors[-1]) == []


async def test_read_pages_through_long_histories(feed):
    """More events than one batch of the memory log (500) or one XRANGE (1000)."""
    context_id = ctx()
    cursors = await emit_many(feed, context_id, 1200, concurrently=True)
    assert_increasing(cursors)
    assert numbers(await feed.read(context_id)) == list(range(1200))
    for cut in (0, 499, 500, 999, 1000, 1198):
        assert numbers(await feed.read(context_id, cursors[cut])) == list(range(cut + 1, 1200)), f"cut after {cut}"


# subscribe()


async def test_subscribe_from_origin_gets_history_then_live_events(feed):
    context_id = ctx()
    history = await emit_many(feed, context_id, 5)
    agen = feed.subscribe(context_id, ORIGIN, idle_timeout=0.1)
    try:
        got = await collect(agen, 5)
        assert [e.cursor for e in got] == history
        live = await emit_many(feed, context_id, 5, start=5)
        got += await collect(agen, 5)
        assert [e.cursor for e in got] == history + live
        assert numbers(got) == list(range(10))
        await assert_quiet(agen)
    finally:
        await agen.aclose()


async def test_fan_out_every_subscriber_gets_every_event(feed):
    context_id = ctx()
    history = await emit_many(feed, context_id, 3)
    caught_up = 0
    all_caught_up = asyncio.Event()

    async def subscriber() -> list[Event]:
        nonlocal caught_up
        agen = feed.subscribe(context_id, idle_timeout=0.1)
        try:
            got = await collect(agen, 3)
            caught_up += 1
            if caught_up == 10:
                all_caught_up.set()
            got += await collect(agen, 50, timeout=10)
            await assert_quiet(agen)
            return got
        finally:
            await agen.aclose()

    tasks = [asyncio.create_task(subscriber()) for _ in range(10)]
    await asyncio.wait_for(all_caught_up.wait(), 10)
    live = await emit_many(feed, context_id, 25, start=3)
    live += await emit_many(feed, context_id, 25, start=28, concurrently=True)
    results = await asyncio.gather(*tasks)
    for got in results:  # each subscriber has all of them: none was taken by another
        assert [e.cursor for e in got] == history + live
        assert numbers(got) == list(range(53))


async def test_subscribe_filters_by_category(feed):
    context_id = ctx()
    await emit_many(feed, context_id, 9)  # categories cycle chat, workflow, default
    wanted = {"chat": [0, 3, 6, 9, 12, 15], "chat,workflow": [0, 1, 3, 4, 6, 7, 9, 10, 12, 13, 15, 16]}
    agens = {name: feed.subscribe(context_id, categories=name.split(","), idle_timeout=0.1) for name in wanted}
    nothing = feed.subscribe(context_id, categories=[], idle_timeout=0.1)
    try:
        for name, agen in agens.items():  # history part
            assert numbers(await collect(agen, len(wanted[name]) // 2)) == wanted[name][: len(wanted[name]) // 2]
        await emit_many(feed, context_id, 9, start=9)
        for name, agen in agens.items():  # live part
            got = await collect(agen, len(wanted[name]) // 2)
            assert numbers(got) == wanted[name][len(wanted[name]) // 2 :], name
            assert {e.category for e in got} <= set(name.split(","))
            await assert_quiet(agen)
        await assert_quiet(nothing)
    finally:
        for agen in [*agens.values(), nothing]:
            await agen.aclose()


async def test_idle_timeout_yields_an_empty_batch_when_nothing_flows(feed):
    context_id = ctx()
    agen = feed.subscribe(context_id, idle_timeout=0.2)
    try:
        started = time.monotonic()
        assert await next_batch(agen) == []
        assert 0.15 <= time.monotonic() - started < 2.0
        cursor = await feed.emit(context_id, "t", {"i": 0})
        assert [e.cursor for e in await next_batch(agen)] == [cursor]
        started = time.monotonic()
        assert await next_batch(agen) == []
        assert 0.15 <= time.monotonic() - started < 2.0
    finally:
        await agen.aclose()

    quiet = feed.subscribe(context_id, after=cursor)  # no idle_timeout: no empty batches
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(quiet.__anext__(), 0.5)
    finally:
        await quiet.aclose()


async def test_idle_timeout_counts_only_the_events_a_subscriber_gets(feed):
    """The empty batch is there for keepalives: a subscriber that filters out every event
    that flows receives nothing, so it must still get its empty batch every idle_timeout."""
    context_id = ctx()
    agen = feed.subscribe(context_id, categories=["workflow"], idle_timeout=0.2)
    stop = asyncio.Event()

    async def chatter() -> None:
        i = 0
        while not stop.is_set():
            await feed.emit(context_id, "chatdata", {"i": i}, category="chat")
            i += 1
            await asyncio.sleep(0.04)

    writer = asyncio.create_task(chatter())
    try:
        started = time.monotonic()
        batch = await next_batch(agen, timeout=1.5)
        assert batch == [] and time.monotonic() - started < 1.0, "no empty batch while only filtered-out events flowed"
    except TimeoutError:
        pytest.fail("no empty batch within 1.5 s (idle_timeout 0.2 s) while only filtered-out events flowed")
    finally:
        stop.set()
        await writer
        await agen.aclose()


async def test_subscriber_that_starts_before_the_first_emit_gets_it(feed):
    """The emit lands at every stage of the subscription's setup: none may lose it."""
    for k in range(0, 40, 2):
        context_id = ctx()
        agen = feed.subscribe(context_id, idle_timeout=0.1)
        receiver = asyncio.create_task(collect(agen, 1, timeout=2.0, what=f"emit {k} loop turns after the subscription started"))
        for _ in range(k):
            await asyncio.sleep(0)
        cursor = await feed.emit(context_id, "t", {"i": k})
        try:
            assert [e.cursor for e in await receiver] == [cursor], f"emit after {k} loop turns"
        finally:
            await agen.aclose()

    # and one that is surely waiting already
    context_id = ctx()
    agen = feed.subscribe(context_id, idle_timeout=0.1)
    try:
        assert await next_batch(agen) == []
        cursor = await feed.emit(context_id, "t", {"i": 0})
        assert [e.cursor for e in await collect(agen, 1)] == [cursor]
    finally:
        await agen.aclose()


async def test_subscribers_attaching_together_to_a_new_feed_all_get_live_events(make_feed):
    """Two subscribers of different contexts open at almost the same time on a fresh feed
    (a web process that just started); the second one starts k loop turns after the first.
    Once both are waiting, an event for the second must reach it promptly."""
    for k in range(12):
        feed = make_feed()
        first = feed.subscribe(ctx(), idle_timeout=0.05)
        context_id = ctx()
        second = feed.subscribe(context_id, idle_timeout=0.05)

        async def start_second():
            for _ in range(k):
                await asyncio.sleep(0)
            return await next_batch(second)

        try:
            assert await asyncio.gather(next_batch(first), start_second()) == [[], []]
            cursor = await feed.emit(context_id, "t", {"i": k})
            got: list[Event] = []

            async def receive() -> None:
                while not got:
                    got.extend(await second.__anext__())

            try:
                await asyncio.wait_for(receive(), 1.5)
            except TimeoutError:
                pytest.fail(f"the event did not reach a subscriber within 1.5 s (second subscriber started {k} loop turns later)")
            assert [e.cursor for e in got] == [cursor]
        finally:
            await first.aclose()
            await second.aclose()


async def test_resume_from_any_retained_cursor_gets_nothing_twice_and_nothing_missing(feed):
    context_id = ctx()
    history = await emit_many(feed, context_id, 20)
    starts = [ORIGIN, *history]
    agens = [feed.subscribe(context_id, after, idle_timeout=0.1) for after in starts]
    try:
        for n, agen in enumerate(agens):  # subscriber n resumes after event n-1
            assert [e.cursor for e in await collect(agen, 20 - n)] == history[n:]
        live = await emit_many(feed, context_id, 5, start=20)
        for agen in agens:
            assert [e.cursor for e in await collect(agen, 5)] == live
        await asyncio.gather(*(assert_quiet(agen) for agen in agens))

        # Resuming again now that live events have flowed (the Redis feed's local log
        # holds them, older cursors are served from the stream).
        everything = history + live
        late = [feed.subscribe(context_id, after, idle_timeout=0.1) for after in [ORIGIN, *everything]]
        try:
            for n, agen in enumerate(late):
                assert [e.cursor for e in await collect(agen, 25 - n)] == everything[n:]
            await asyncio.gather(*(assert_quiet(agen) for agen in late))
        finally:
            for agen in late:
                await agen.aclose()
    finally:
        for agen in agens:
            await agen.aclose()


# retention


async def test_a_subscriber_that_comes_as_another_leaves_gets_every_event_after_its_cursor(backend, make_feed):
    # A page reload: the old stream leaves and the new one resumes from a cursor it had
    # passed. RedisFeed's one reader has a read for the context blocked in Redis when its
    # last subscriber leaves; the reply, events after the old one's position, must not
    # be taken for the new one's, which would skip what lies between.
    feed = make_feed()
    writer = make_feed() if backend == "redis" else feed  # another process writes, as a worker does
    context = ctx()
    first, *_ = await emit_many(writer, context, 3)
    replies_go = asyncio.Event()
    replies_go.set()
    if backend == "redis":  # hold the reader's replies where the test says
        read_response = feed.reader.read_response

        async def held_read_response(*args, **kwargs):
            reply = await read_response(*args, **kwargs)
            await replies_go.wait()
            return reply

        feed.reader.read_response = held_read_response
    leaving = feed.subscribe(context, first)
    assert numbers(await collect(leaving, 2)) == [1, 2]
    await asyncio.sleep(0.05)  # the reader's next read is blocked in Redis, naming the context
    replies_go.clear()
    await leaving.aclose()
    await emit_many(writer, context, 1, start=3)  # the blocked read's reply: event 3
    coming = feed.subscribe(context, first)
    arriving = asyncio.create_task(collect(coming, 3))
    await asyncio.sleep(0.05)  # it has attached (a generator's code runs when it is first awaited)
    replies_go.set()
    assert numbers(await arriving) == [1, 2, 3]
    await coming.aclose()


async def test_a_cursor_older_than_what_is_retained_raises_feed_gap(make_feed):
    # 300 rather than 50: RedisFeed trims with XADD MAXLEN ~ (approximate), which drops
    # whole stream nodes (100 entries by default) and so may keep far more than max_events.
    feed = make_feed(max_events=10)
    context_id = ctx()
    cursors = await emit_many(feed, context_id, 300, concurrently=True)
    with pytest.raises(FeedGap):
        await feed.read(context_id, cursors[0])
    agen = feed.subscribe(context_id, cursors[0], idle_timeout=0.1)
    try:
        with pytest.raises(FeedGap):
            await next_batch(agen)
    finally:
        await agen.aclose()
    for cut in range(289, 300):  # the last max_events events are retained
        assert [e.cursor for e in await feed.read(context_id, cursors[cut])] == cursors[cut + 1 :]


async def test_a_cursor_past_the_last_event_raises_feed_gap(feed):
    """A cursor the feed never issued (a client's invention, or another feed's): read from
    it, a reader would skip every event until the clock passed it."""
    context_id = ctx()
    cursors = await emit_many(feed, context_id, 3)
    ms, _, seq = cursors[-1].partition("-")
    for never_issued in (f"{ms}-{int(seq) + 1}", f"{int(ms) + 3_600_000}-0", "99999999999999-0"):
        with pytest.raises(FeedGap):
            await feed.read(context_id, never_issued)
    assert await feed.read(context_id, cursors[-1]) == []


async def test_finish_expires_the_context_after_the_delay(feed):
    context_id = ctx()
    cursors = await emit_many(feed, context_id, 5)
    await feed.finish(context_id, expire_after=0.2)
    assert [e.cursor for e in await feed.read(context_id)] == cursors  # not yet
    await asyncio.sleep(0.5)

    with pytest.raises(FeedGap):
        await feed.read(context_id, cursors[2])
    with pytest.raises(FeedGap):
        await feed.read(context_id, cursors[-1])
    assert await feed.read(context_id, ORIGIN) == []
    agen = feed.subscribe(context_id, cursors[2], idle_timeout=0.1)
    try:
        with pytest.raises(FeedGap):
            await next_batch(agen)
    finally:
        await agen.aclose()

    # The context lives again; its cursors keep increasing past the ones clients hold.
    fresh = feed.subscribe(context_id, ORIGIN, idle_timeout=0.1)
    try:
        assert await next_batch(fresh) == []
        new = await feed.emit(context_id, "t", {"i": 5})
        assert parse_cursor(new) > parse_cursor(cursors[-1])
        assert [e.cursor for e in await collect(fresh, 1)] == [new]
    finally:
        await fresh.aclose()


async def test_new_events_after_finish_keep_the_context(feed):
    context_id = ctx()
    cursors = await emit_many(feed, context_id, 3)
    await feed.finish(context_id, expire_after=0.2)
    cursors += await emit_many(feed, context_id, 1, start=3)
    await asyncio.sleep(0.5)
    assert [e.cursor for e in await feed.read(context_id)] == cursors
    assert [e.cursor for e in await feed.read(context_id, cursors[0])] == cursors[1:]


async def test_an_emit_whose_caller_is_cancelled_is_still_delivered(feed):
    # A stopped job is cancelled while awaiting a delta's cursor; the delta is already
    # counted in the stored reply, so it must reach subscribers too.
    context_id = ctx()
    agen = feed.subscribe(context_id, ORIGIN, idle_timeout=0.1)
    try:
        assert await next_batch(agen) == []
        emitting = asyncio.create_task(feed.emit(context_id, "t", {"i": 0}))
        await asyncio.sleep(0)  # the emit has begun
        emitting.cancel()
        assert numbers(await collect(agen, 1)) == [0]
        assert numbers(await feed.read(context_id)) == [0]
    finally:
        await agen.aclose()


async def test_a_subscriber_at_the_tail_outlives_the_expiry(feed):
    context_id = ctx()
    old = await emit_many(feed, context_id, 3)
    agen = feed.subscribe(context_id, ORIGIN, idle_timeout=0.1)
    try:
        assert [e.cursor for e in await collect(agen, 3)] == old
        await feed.finish(context_id, expire_after=0.2)
        await asyncio.sleep(0.5)
        with pytest.raises(FeedGap):
            await feed.read(context_id, old[0])
        assert await next_batch(agen) == []  # still subscribed, idle
        new = await emit_many(feed, context_id, 3, start=3)
        got = await collect(agen, 3)
        assert [e.cursor for e in got] == new
        assert numbers(got) == [3, 4, 5]
        assert_increasing(old + new)
        await assert_quiet(agen)
    finally:
        await agen.aclose()


async def test_an_expired_context_reads_as_empty_from_the_origin_even_while_subscribed(feed):
    """What a new viewer gets must not depend on whether someone else is still connected:
    without subscribers both feeds answer read(ORIGIN) with [] after the expiry (see
    test_finish_expires_the_context_after_the_delay); with one at the tail, the same."""
    context_id = ctx()
    old = await emit_many(feed, context_id, 3)
    agen = feed.subscribe(context_id, ORIGIN, idle_timeout=0.1)
    try:
        await collect(agen, 3)
        await feed.finish(context_id, expire_after=0.2)
        await asyncio.sleep(0.5)
        assert await feed.read(context_id, ORIGIN) == []
        new = await emit_many(feed, context_id, 2, start=3)
        assert [e.cursor for e in await feed.read(context_id, ORIGIN)] == new
        viewer = feed.subscribe(context_id, ORIGIN, idle_timeout=0.1)
        try:
            assert [e.cursor for e in await collect(viewer, 2)] == new
        finally:
            await viewer.aclose()
        assert_increasing(old + new)
    finally:
        await agen.aclose()


async def test_a_slow_subscriber_gets_feed_gap_instead_of_a_growing_buffer(make_feed):
    feed = make_feed(max_events=10)
    context_id = ctx()
    agen = feed.subscribe(context_id, idle_timeout=0.1)
    try:
        assert await next_batch(agen) == []
        first = await feed.emit(context_id, "t", {"i": 0})
        assert [e.cursor for e in await collect(agen, 1)] == [first]
        # The subscriber stops reading while 300 events flow.
        cursors = await emit_many(feed, context_id, 300, start=1, concurrently=True)
        local = feed.logs[context_id]  # the per-context log both feeds keep in this process
        await wait_for_condition(lambda: local.events and local.events[-1].cursor == cursors[-1], what="the feed to take in the events")
        assert len(local.events) <= 10 * 5 // 4, "the feed buffers what its slow subscriber has not read"

        got: list[Event] = []
        with pytest.raises(FeedGap):
            async with asyncio.timeout(5):
                async for batch in agen:
                    got += batch
                    assert len(got) < 300, "the slow subscriber got every event: nothing was dropped"
        # whatever it got before the gap follows on from where it was, without holes
        assert [e.cursor for e in got] == cursors[: len(got)]
    finally:
        await agen.aclose()


# Redis only


def _own_tcp_ports() -> set[int]:
    """Local ports of this process's TCP sockets (Linux /proc), to tell our connections
    from other clients of a shared Redis."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


async def _our_clients(admin: Redis) -> list[dict]:
    clients = await admin.client_list()
    if not os.path.isdir("/proc/self/fd"):
        return clients
    ports = _own_tcp_ports()
    ours = [c for c in clients if int(c["addr"].rsplit(":", 1)[1]) in ports]
    return ours or clients  # Redis behind a proxy sees other ports: count every client


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
async def test_redis_feed_uses_few_connections_for_many_subscribers(make_feed, redis_url):
    admin = Redis.from_url(redis_url, decode_responses=True)
    try:
        before = {c["id"] for c in await _our_clients(admin)}
        feed = make_feed()
        contexts = [ctx() for _ in range(50)]
        agens = [feed.subscribe(c, idle_timeout=0.3) for c in contexts]
        try:
            assert await asyncio.wait_for(asyncio.gather(*(a.__anext__() for a in agens)), 10) == [[]] * 50
            await feed.ping()
            new = [c for c in await _our_clients(admin) if c["id"] not in before]
            assert 1 <= len(new) <= 4, f"{len(new)} connections for 50 subscriptions: {[(c['addr'], c['cmd']) for c in new]}"

            cursors = [await feed.emit(c, "t", {"i": i}) for i, c in enumerate(contexts)]
            received = await asyncio.gather(*(collect(a, 1) for a in agens))
            assert [[e.cursor for e in got] for got in received] == [[c] for c in cursors]
            new = [c for c in await _our_clients(admin) if c["id"] not in before]
            assert len(new) <= 4  # the writer, the reader and at most 2 for other commands
        finally:
            for agen in agens:
                await agen.aclose()
    finally:
        await admin.aclose()


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
async def test_redis_feed_reader_reconnects_after_losing_its_connection(make_feed, redis_url):
    feed = make_feed()
    await feed.reader.send_command("CLIENT", "ID")  # the reader's own connection, before it blocks in XREAD
    reader_id = await feed.reader.read_response()
    context_id = ctx()
    agen = feed.subscribe(context_id, idle_timeout=0.1)
    admin = Redis.from_url(redis_url)
    try:
        assert await next_batch(agen) == []
        first = await feed.emit(context_id, "t", {"i": 0})
        assert [e.cursor for e in await collect(agen, 1)] == [first]

        assert await admin.client_kill_filter(_id=str(reader_id)) == 1  # only that connection
        during = await feed.emit(context_id, "t", {"i": 1})  # while the reader is down or reconnecting
        await asyncio.sleep(0.3)
        after = await feed.emit(context_id, "t", {"i": 2})
        got = await collect(agen, 2)
        assert [e.cursor for e in got] == [during, after]
        await assert_quiet(agen)
    finally:
        await agen.aclose()
        await admin.aclose()


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
async def test_redis_feed_delivers_events_emitted_by_another_process(make_feed):
    """A worker's feed writes, a web process's feed reads: two instances, one Redis."""
    worker, web = make_feed(), make_feed()
    context_id = ctx()
    history = await emit_many(worker, context_id, 3)
    agen = web.subscribe(context_id, idle_timeout=0.1)
    try:
        assert [e.cursor for e in await collect(agen, 3)] == history
        live = await emit_many(worker, context_id, 3, start=3)
        assert [e.cursor for e in await collect(agen, 3)] == live
        assert [e.cursor for e in await web.read(context_id, history[0])] == history[1:] + live
    finally:
        await agen.aclose()


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
async def test_redis_feed_keeps_a_context_that_another_process_finished_while_events_flow(make_feed):
    """Writers renew a context's long TTL at most once a second: a ``finish`` by another
    process (a web process stopping the round) is undone within that second by the next write."""
    worker, web = make_feed(), make_feed()
    context_id = ctx()
    cursors = [await worker.emit(context_id, "t", {"i": 0})]
    await web.finish(context_id, expire_after=1.5)
    for i in range(1, 9):  # 2.4 s of events, one every 0.3 s
        cursors.append(await worker.emit(context_id, "t", {"i": i}))
        await asyncio.sleep(0.3)
    assert [e.cursor for e in await web.read(context_id)] == cursors


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
async def test_redis_feed_command_connection_reconnects_after_losing_it(make_feed, redis_url):
    feed = make_feed()
    context_id = ctx()
    first = await feed.emit(context_id, "t", {"i": 0})
    writer_id = await feed.redis.execute("CLIENT", "ID")
    admin = Redis.from_url(redis_url)
    try:
        assert await admin.client_kill_filter(_id=str(writer_id)) == 1
    finally:
        await admin.aclose()
    await asyncio.sleep(1.2)  # idle past the health check: the next write pings first
    second = await feed.emit(context_id, "t", {"i": 1})
    assert [e.cursor for e in await feed.read(context_id)] == [first, second]


async def test_an_event_emitted_once_is_in_the_context_once(feed):
    # Round ends: a job sends its end, and whoever takes over from a job that died may
    # send it again. The key is the context's own.
    context_id, other = ctx(), ctx()
    first = await feed.emit(context_id, "end", {"i": 0}, once="end:1")
    assert await feed.emit(context_id, "end", {"i": 1}, once="end:1") is None
    assert await feed.emit(context_id, "end", {"i": 2}, once="end:2") is not None
    assert await feed.emit(other, "end", {"i": 3}, once="end:1") is not None
    assert [e.cursor for e in await feed.read(context_id)][0] == first
    assert numbers(await feed.read(context_id)) == [0, 2]
    assert numbers(await feed.read(other)) == [3]


async def test_once_keys_last_as_long_as_their_context(feed):
    context_id = ctx()
    await feed.emit(context_id, "end", {"i": 0}, once="end:1")
    await feed.finish(context_id, expire_after=0.2)
    await feed.emit(context_id, "t", {"i": 1})  # the context lives on, and so do its keys
    await asyncio.sleep(0.5)
    assert await feed.emit(context_id, "end", {"i": 2}, once="end:1") is None
    await feed.finish(context_id, expire_after=0.2)
    await asyncio.sleep(0.5)
    assert await feed.emit(context_id, "end", {"i": 3}, once="end:1") is not None  # a new life
    assert numbers(await feed.read(context_id)) == [3]


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
async def test_redis_feed_processes_sending_the_same_event_at_once_put_it_in_once(make_feed):
    job, stream = make_feed(), make_feed()
    context_id = ctx()
    sent = await asyncio.gather(*(feed.emit(context_id, "end", {"i": i}, once="end:1") for i, feed in enumerate([job, stream] * 5)))
    assert len([cursor for cursor in sent if cursor is not None]) == 1
    assert len(await stream.read(context_id)) == 1


async def test_a_context_never_finished_goes_after_a_while_without_events(make_feed):
    # Its writer died before finishing it (or a developer's job never does): it must not
    # stay for ever, in either backend. One that keeps getting events stays.
    feed = make_feed(abandoned_seconds=2)
    abandoned, busy = ctx(), ctx()
    left = await emit_many(feed, abandoned, 2)
    kept = []
    for i in range(11):  # 3.3 s, an event every 0.3 s
        kept.append(await feed.emit(busy, "t", {"i": i}))
        await asyncio.sleep(0.3)
    with pytest.raises(FeedGap):
        await feed.read(abandoned, left[0])
    assert await feed.read(abandoned) == []
    assert [e.cursor for e in await feed.read(busy)] == kept
