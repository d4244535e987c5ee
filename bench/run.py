#!/usr/bin/env python
"""Load benchmark for the chat service: starts the app itself and drives it over real HTTP.

Two scenarios, each run against a fresh stack (one Hypercorn web process; in Redis mode
two ``arq`` workers) so that RSS, CPU and connection figures belong to that run alone:

* chats: N concurrent conversations at 50 tokens/s each; delivery latency, time from
  ``POST start`` to the first delta, event rate against nominal, rounds whose deltas do
  not join to the stored reply, server CPU per delivered event, Redis connections.
* idle:  N idle SSE streams held for a few keepalive periods; web RSS per stream,
  keepalive gaps, Redis connections.

Clients run in separate processes (multiprocessing, spawn), each with its own uvloop
loop and httpx clients, so the client side is not one Python thread, and takes as little
of the two cores the servers share with it as it can. Everything talks to
127.0.0.1; every loop is bounded in count and time. Figures are printed, never asserted.

    .venv/bin/python bench/run.py --quick
    .venv/bin/python bench/run.py --mode redis --chats 50,200 --idle 1000,5000
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing as mp
import queue as queue_module
import resource
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make tests.servers importable
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import uvloop  # noqa: E402

try:
    import psutil  # noqa: E402
except ImportError:  # pragma: no cover - a hint instead of a traceback
    sys.exit("bench/run.py needs psutil: .venv/bin/pip install psutil (or pip install '.[test]')")

from tests.servers import BIN, postgres_database, redis_server, start_stack, wait_until  # noqa: E402

TOKEN_INTERVAL_MS = 20  # 50 tokens/s per chat, as the targets are stated
REPLY_TOKENS = 100
OWN_CODE = ("app.py", "blueprints/", "tasks/", "events/", "models/")  # the project's frames in profiles
LATE_MARGIN = 1.0  # a keepalive gap longer than KEEPALIVE_SECONDS + this is late

TARGETS = (
    "Targets: at 200 chats p99 delivery <= 15 ms, start-to-first-delta p50 <= 30 ms, "
    ">= 95 % of nominal event rate, 0 broken rounds; 10,000 idle streams at <= 30 KB each "
    "with every keepalive on time; <= 4 Redis connections per web process."
)


# ---------------------------------------------------------------------------------------
# Shared helpers (parent and client processes)


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit; servers started afterwards inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile; NaN for no values (printed as "-")."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(pct / 100 * len(ordered)) - 1))]


class RawStream:
    """GET an SSE stream over a plain asyncio connection (HTTP/1.1, chunked body, as
    Hypercorn sends streams). httpx costs the client ~300 µs per event, which on the
    shared 2-core machine is CPU the servers would otherwise have."""

    def __init__(self, base_url: str, path: str, cookies: httpx.Cookies, last_event_id: str | None = None) -> None:
        url = urlparse(base_url)
        self.host, self.port, self.path = url.hostname, url.port, path
        self.cookie = cookie_header(cookies)
        self.resume = f"Last-Event-ID: {last_event_id}\r\n" if last_event_id else ""
        self.status_code = 0
        self.writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> "RawStream":
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nAccept: text/event-stream\r\n"
            f"Cookie: {self.cookie}\r\n{self.resume}\r\n".encode()
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        self.status_code = int(head.split(b" ", 2)[1])
        self.chunked = b"transfer-encoding: chunked" in head.lower()
        return self

    async def __aexit__(self, *exc) -> None:
        if self.writer is not None:
            self.writer.close()

    async def chunks(self):
        """The body's chunks as they arrive (a chunk is one server write)."""
        while True:
            if not self.chunked:  # not expected from Hypercorn; still correct
                data = await self.reader.read(65536)
                if not data:
                    return
                yield data
                continue
            size = int((await self.reader.readline()).split(b";")[0], 16)
            if size == 0:
                return
            yield (await self.reader.readexactly(size + 2))[:-2]

    async def events(self):
        """(receipt time, event type, id, data) per SSE event, and (time, ":", None, text)
        per comment line; one clock read per chunk."""
        buffer, event_type, event_id, data = b"", b"message", None, []
        async for chunk in self.chunks():
            now = time.time()
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if not line:
                    if data:
                        yield now, event_type.decode(), event_id, b"\n".join(data).decode()
                    event_type, event_id, data = b"message", None, []
                elif line[:1] == b":":
                    yield now, ":", None, line[1:].strip().decode()
                else:
                    name, _, value = line.partition(b":")
                    value = value[1:] if value[:1] == b" " else value
                    if name == b"data":
                        data.append(value)
                    elif name == b"event":
                        event_type = value
                    elif name == b"id":
                        event_id = value.decode()


def cookie_header(cookies: httpx.Cookies) -> str:
    return "; ".join(f"{name}={value}" for name, value in cookies.items())


class RawClient:
    """One chat's start requests, one after the other, over a kept-alive HTTP/1.1
    connection of its own; its streams are RawStreams. A shared httpx client scans every
    pooled connection on each request (at 200 chats, more of the clients' CPU than their
    streams'), and one client per chat costs an SSL context each."""

    def __init__(self, base_url: str, cookies: httpx.Cookies) -> None:
        self.base_url, self.cookies = base_url, cookies
        url = urlparse(base_url)
        self.host, self.port = url.hostname, url.port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post_json(self, path: str, payload: dict) -> tuple[int, dict]:
        body = json.dumps(payload).encode()
        request = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(body)}\r\nCookie: {cookie_header(self.cookies)}\r\n\r\n").encode() + body
        head = await self._exchange(request)
        headers = head.lower()
        length = int(headers.partition(b"content-length:")[2].split(b"\r\n", 1)[0] or 0)
        answer = await self.reader.readexactly(length)
        if b"connection: close" in headers:
            self.close()
        return int(head.split(b" ", 2)[1]), json.loads(answer) if answer else {}

    async def _exchange(self, request: bytes) -> bytes:
        """Send the request and read the response's head: on a new connection if the
        server closed the idle one (its keep-alive timeout) before it read the request."""
        for retry in (False, True):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            self.writer.write(request)
            try:
                return await self.reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                self.close()
                if retry:
                    raise
        raise AssertionError("not reached")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def __aenter__(self) -> "RawClient":
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()


def new_client(base_url: str, connections: int, read_timeout: float | None, cookies=None) -> httpx.AsyncClient:
    # Idle connections are dropped before Hypercorn's 5 s keep-alive timeout would close
    # them under a request (a POST on a connection the server is closing fails).
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=2.0)
    timeout = httpx.Timeout(30.0, read=read_timeout)  # connect may wait out a full accept backlog
    return httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout, cookies=cookies)


async def open_session(client: httpx.AsyncClient) -> None:
    """Get the session cookie before anything concurrent: parallel first requests would each
    make a new user and the jar would keep only the last, so streams would get 404."""
    (await client.get("/healthz")).raise_for_status()


def empty_round(workflow_id: str | None, broken: str = "") -> dict:
    return {"ok": False, "broken": broken, "late": False, "latencies": [], "catch_up": [], "to_feed": [], "from_feed": [],
            "first_delta": None, "deltas": 0,
            "delta_span": None, "events": 0, "workflowId": workflow_id, "post_ms": None, "open_ms": None, "last_cursor": None}


async def run_round(client: RawClient, prompt: str, workflow_id: str | None, resume_from: str | None = None) -> dict:
    """One round: POST start, read its stream to the end of the round. The stream opens
    after the start, or (``resume_from``: the cursor of the previous round's end) before
    it, as the bundled page's does: it reconnects from there as soon as a round ends
    (static/js/stream.js), so it is open when the user sends the next prompt."""
    result = empty_round(workflow_id)
    async with contextlib.AsyncExitStack() as held:

        async def open_stream(last_event_id: str | None = None) -> RawStream | None:
            asked, path = time.time(), f"/api/chatbot/{result['workflowId']}/stream"
            stream = await held.enter_async_context(RawStream(client.base_url, path, client.cookies, last_event_id))
            result["open_ms"] = (time.time() - asked) * 1000
            if stream.status_code != 200:
                result["broken"] = f"stream {stream.status_code}"
                return None
            return stream

        response = established = None
        if resume_from is not None:
            if (response := await open_stream(resume_from)) is None:
                return result
            established = time.time()
        sent = time.time()
        for pause in (0.0, *[0.02] * 50):
            # A previous round the stream sent whole from the database (its stored reply,
            # see Reply.take) may still be ending: the reply is stored before the round ends.
            await asyncio.sleep(pause)
            status, body = await client.post_json("/api/chatbot/start", {"prompt": prompt, "workflowId": workflow_id})
            if status != 409:
                break
        if status != 202:
            result["broken"] = f"start {status}"
            return result
        result["workflowId"] = workflow_id = body["workflowId"]
        opened = time.time()
        result["post_ms"] = (opened - sent) * 1000
        reply = Reply(body["messageId"], sent, opened, established)
        if response is None and (response := await open_stream()) is None:
            return result
        async for received, kind, cursor, data in response.events():
            if kind != ":" and reply.take(received, kind, cursor, data):
                break
        else:
            result["broken"] = "stream closed before the round ended"
    result |= reply.outcome(result["broken"])
    if not result["ok"]:  # what the stream carried, to tell a server bug from a client one
        trace = [describe(*event) for event in reply.trace]
        trace = trace if len(trace) <= 12 else trace[:8] + ["..."] + trace[-4:]
        result["trace"] = f"round of {prompt!r} in {workflow_id}: " + ", ".join(trace)
    return result


class Reply:
    """One round as its stream delivers it: timings, the deltas and the final message."""

    def __init__(self, user_message_id: str, sent: float, opened: float, established: float | None = None) -> None:
        self.user_message_id, self.sent, self.opened = user_message_id, sent, opened
        self.round: int | None = None  # from our user message: end events of other rounds do not count
        self.message_id: str | None = None
        self.texts: list[str] = []
        self.out_of_order = 0
        self.final: str | None = None
        self.ended = ""
        self.late = False
        self.established = established  # the stream's headers or first byte: the server follows the feed for us
        self.latencies: list[float] = []  # live events: created after the stream was established
        self.catch_up: list[float] = []  # created after we asked for the stream, before it was established
        self.to_feed: list[float] = []  # live events: createdAt -> the time in their cursor
        self.from_feed: list[float] = []  # live events: the time in their cursor -> receipt
        self.first_delta: float | None = None
        self.first_created = self.last_received = 0.0
        self.last_cursor: str | None = None
        self.trace: list[tuple] = []  # (kind, cursor, data): described only if the round breaks

    def take(self, received: float, kind: str, cursor: str | None, data: str) -> bool:
        """Record one event; True once the round is over for this client."""
        self.established = self.established or received
        self.last_cursor = cursor or self.last_cursor
        self.trace.append((kind, cursor, data))
        event = json.loads(data)
        if kind in ("complete", "stopped", "error"):
            if self.round is not None and event.get("roundNumber", self.round) < self.round:
                return False
            self.ended = kind
            return True
        if kind != "chatdata":
            return False
        stored = (cursor or "").startswith("0-")  # replayed from the database, not live
        # Stored items and events created before we asked for the stream say nothing about
        # delivery; those created while the server was still opening it wait for that.
        if not stored and event["createdAt"] >= self.opened:
            latency = (received - event["createdAt"]) * 1000
            if event["createdAt"] >= self.established:
                self.latencies.append(latency)
                # The cursor is the time the feed took the event (Redis: its stream id), in
                # whole ms: latency = the job's side (to the feed) + the web's (from it).
                fed = int(cursor.partition("-")[0]) / 1000
                self.to_feed.append((fed - event["createdAt"]) * 1000)
                self.from_feed.append((received - fed) * 1000)
            else:
                self.catch_up.append(latency)
        item = event["item"]
        if event["type"] == "delta":
            self._delta(item, event["createdAt"], received)
        elif event["type"] == "message" and item["role"] == "user" and item["id"] == self.user_message_id:
            self.round = item["roundNumber"]
        elif event["type"] == "message" and item["role"] == "assistant":
            if item["id"] == self.message_id:
                self.final = item["content"]
            elif stored and self.message_id is None and item["roundNumber"] == self.round:
                # The round ended (or is ending) before the stream opened (the server was
                # slower than the reply): the stream sent it whole from the database.
                self.final, self.late = item["content"], True
                return True
        return False

    def _delta(self, item: dict, created: float, received: float) -> None:
        if self.message_id is None:
            self.message_id, self.first_created = item["messageId"], created
            self.first_delta = (received - self.sent) * 1000
        self.out_of_order += item["index"] != len(self.texts) or item["messageId"] != self.message_id
        self.texts.append(item["text"])
        self.last_received = received

    def outcome(self, broken: str) -> dict:
        if not broken and not self.late:
            broken = self.ended if self.ended != "complete" else self.problem()
        span = None
        if len(self.texts) > 1:
            # From when the first token was generated to when the last one arrived: late
            # delivery and a slowed generator both lower the rate, batching does not raise it.
            span = (self.first_created, self.last_received)
        return {"ok": not broken, "broken": broken, "late": self.late, "latencies": self.latencies, "catch_up": self.catch_up,
                "to_feed": self.to_feed, "from_feed": self.from_feed,
                "first_delta": self.first_delta, "deltas": len(self.texts), "delta_span": span,
                "events": len(self.trace), "last_cursor": self.last_cursor}

    def problem(self) -> str:
        """Why the deltas do not join to the final message ("" when they do)."""
        if self.final is None:
            return "no final assistant message" if self.texts else "no deltas"
        if self.out_of_order:
            return f"deltas missing, repeated or out of order ({self.out_of_order} of {len(self.texts)})"
        if "".join(self.texts) != self.final:
            return f"joined deltas differ from the final message ({len(''.join(self.texts))} vs {len(self.final)} chars)"
        return ""


def describe(kind: str, cursor: str | None, data: str) -> str:
    """One received event in a few characters: cursor, type and round."""
    event = json.loads(data)
    if kind == "chatdata":
        item = event["item"]
        kind = f"{event['type']}:{item.get('role', item.get('index', ''))}:r{item.get('roundNumber', '')}"
    else:
        kind = f"{kind}:r{event.get('roundNumber', '')}"
    return f"{cursor} {kind}"


def run_client_process(target, job: dict, results: mp.Queue, go, release) -> None:
    """Entry point of a client process: its own fd limit and its own event loop (uvloop:
    the clients' CPU is taken from the servers on the shared machine; asyncio's own loop
    cost them ≈ 40 % more)."""
    raise_fd_limit()
    started = time.process_time()
    try:
        outcome = uvloop.run(target(job, results, go, release))
    except Exception as exc:  # report instead of dying silently: the parent waits for us
        outcome = {"error": f"{type(exc).__name__}: {exc}"}
    outcome["client_cpu"] = time.process_time() - started
    results.put(("result", job["index"], outcome))


async def wait_event(event, timeout: float) -> bool:
    """Wait for a multiprocessing.Event without blocking the loop (bounded)."""
    return await asyncio.get_running_loop().run_in_executor(None, event.wait, timeout)


# ---------------------------------------------------------------------------------------
# Chats scenario: client side


async def chats_client(job: dict, results: mp.Queue, go, release) -> dict:
    async with new_client(job["url"], 8, 30.0) as client:
        await open_session(client)
        results.put(("seeded", job["index"], None))
        if not await wait_event(go, job["timeout"]):
            return {"error": "never told to start"}
        begin, cpu = time.monotonic(), time.process_time()
        chats = [run_chat(client, job, i, offset, begin) for i, offset in enumerate(job["offsets"])]
        rounds = await asyncio.gather(*chats)
    return {"rounds": [r for chat in rounds for r in chat], "run_cpu": time.process_time() - cpu}


async def run_chat(session: httpx.AsyncClient, job: dict, number: int, offset: float, begin: float) -> list[dict]:
    """One conversation: its rounds back to back, starting ``offset`` s into the ramp."""
    await asyncio.sleep(max(0.0, begin + offset - time.monotonic()))
    workflow_id, rounds = None, []
    async with RawClient(job["url"], session.cookies) as client:
        for round_number in range(job["rounds"]):
            prompt = f"bench {job['index']}-{number} round {round_number}"
            try:
                resume_from = None if job["fresh_streams"] or not rounds or not rounds[-1]["ok"] else rounds[-1]["last_cursor"]
                result = await asyncio.wait_for(run_round(client, prompt, workflow_id, resume_from), job["round_timeout"])
            except Exception as exc:  # a timeout or a dropped connection is a broken round, not a crash
                client.close()  # it may be mid-request
                result = empty_round(workflow_id, type(exc).__name__)
            rounds.append(result)
            workflow_id = result["workflowId"]
            if workflow_id is None:
                break
    return rounds


# ---------------------------------------------------------------------------------------
# Idle scenario: client side


@dataclass
class IdleStream:
    opened_at: float | None = None
    keepalives: list[float] = field(default_factory=list)
    error: str | None = None


async def idle_client(job: dict, results: mp.Queue, go, release) -> dict:
    # One user per process with one finished (idle) workflow; its streams all follow it.
    async with new_client(job["url"], 8, 30.0) as seed:
        await open_session(seed)
        async with RawClient(job["url"], seed.cookies) as client:
            seeded = await run_round(client, f"idle seed {job['index']}", None)
        cookies = seed.cookies
    if not seeded["ok"] or seeded["late"]:
        return {"error": f"seeding failed: {seeded['broken']}"}
    results.put(("seeded", job["index"], None))
    if not await wait_event(go, job["timeout"]):
        return {"error": "never told to open"}
    url = f"/api/chatbot/{seeded['workflowId']}/stream"
    n = job["streams"]
    streams = [IdleStream() for _ in range(n)]
    gate, settled = asyncio.Semaphore(job["open_concurrency"]), asyncio.Queue()
    tasks = [asyncio.create_task(hold_stream(job["url"], url, cookies, gate, stream, settled)) for stream in streams]
    await wait_settled(settled, n, job["open_timeout"])
    opened = sum(s.opened_at is not None and s.error is None for s in streams)
    results.put(("ready", job["index"], opened))
    ready = time.time()
    await wait_event(release, job["timeout"])
    released = time.time()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return summarize_idle(streams, ready, released)


async def hold_stream(base_url: str, path: str, cookies, gate: asyncio.Semaphore, stream: IdleStream, settled: asyncio.Queue) -> None:
    """Open one stream (a few at a time, not ten thousand connects at once) and record
    when each keepalive comment arrives, until cancelled."""
    reported = False
    try:
        async with contextlib.AsyncExitStack() as exits:
            async with gate:  # held only while opening
                response = await exits.enter_async_context(RawStream(base_url, path, cookies))
            if response.status_code != 200:
                stream.error = f"status {response.status_code}"
                return
            async for received, kind, *_ in response.events():  # the stored items come first
                if not reported:
                    stream.opened_at, reported = received, True
                    settled.put_nowait(True)
                if kind == ":":
                    stream.keepalives.append(received)
            stream.error = "closed by the server"
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        stream.error = type(exc).__name__
    finally:
        if not reported:
            settled.put_nowait(False)


async def wait_settled(settled: asyncio.Queue, n: int, timeout: float) -> None:
    """Until every stream has opened or failed, or the timeout."""
    deadline = time.monotonic() + timeout
    for _ in range(n):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        try:
            await asyncio.wait_for(settled.get(), remaining)
        except TimeoutError:
            return


def summarize_idle(streams: list[IdleStream], ready: float, released: float) -> dict:
    """Per stream, the longest silence between keepalives: over the hold (all streams open,
    the server idle) and over its whole life (also while the others were being opened)."""
    hold_gaps, life_gaps, errors = [], [], Counter()
    for stream in streams:
        if stream.opened_at is None or (stream.error and stream.error != "closed by the server"):
            errors[stream.error or "never opened"] += 1
            continue
        if stream.error:
            errors[stream.error] += 1
        life_gaps.append(longest_gap([stream.opened_at, *stream.keepalives, released]))
        hold_gaps.append(longest_gap([ready, *(t for t in stream.keepalives if t > ready), released]))
    return {"max_gaps": hold_gaps, "life_gaps": life_gaps, "errors": dict(errors)}


def longest_gap(marks: list[float]) -> float:
    return max(b - a for a, b in zip(marks, marks[1:]))


# ---------------------------------------------------------------------------------------
# Parent: servers, processes, measurements


@dataclass
class Server:
    """A stack plus the OS processes whose CPU, memory and connections we measure."""

    stack: object
    redis_url: str | None
    redis_pid: int | None

    @property
    def webs(self) -> list[psutil.Process]:
        # hypercorn serves from spawned children (one by default); the parent only
        # supervises, so the children hold the sockets, the memory and the CPU time.
        parent = psutil.Process(self.stack.web.pid)
        children = [c for c in parent.children() if "spawn_main" in " ".join(c.cmdline())]
        return children or [parent]

    @property
    def web(self) -> psutil.Process:
        return self.webs[0]

    def processes(self) -> dict[str, psutil.Process]:
        webs = self.webs
        procs = {"web": webs[0]} if len(webs) == 1 else {f"web{i}": p for i, p in enumerate(webs)}
        procs |= {f"worker{i}": psutil.Process(w.pid) for i, w in enumerate(self.stack.workers)}
        if self.redis_pid:
            procs["redis"] = psutil.Process(self.redis_pid)
        return procs

    def cpu_seconds(self) -> dict[str, float]:
        return {name: sum(p.cpu_times()[:2]) for name, p in self.processes().items()}

    def waited_seconds(self) -> dict[str, float]:
        return {name: run_queue_seconds(p.pid) for name, p in self.processes().items()}

    def web_redis_connections(self) -> int | None:
        """Redis connections held by a web process (CLIENT LIST entries whose client port
        is one of its TCP connections): the most any one web process holds."""
        if not self.redis_url:
            return None
        import redis

        port = urlparse(self.redis_url).port or 6379
        with redis.Redis.from_url(self.redis_url) as client:
            clients = {int(entry["addr"].rsplit(":", 1)[1]) for entry in client.client_list()}
        return max(
            sum(c.laddr.port in clients for c in web.net_connections("tcp") if c.raddr and c.raddr.port == port)
            for web in self.webs
        )

    def log_problems(self) -> tuple[int, str]:
        """Errors in the server logs (a traceback counts once, by its exception line) and
        the most frequent one, so that nothing fails silently."""
        problems = []
        for log in sorted(Path(self.stack.logs).glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()
            for i, line in enumerate(lines):
                if line.startswith("Traceback"):
                    last = next((x for x in lines[i + 1 :] if x and not x[0].isspace()), "?")
                    problems.append(f"{log.name}: {last.strip()[:160]}")
                elif "ERROR" in line and not (i + 1 < len(lines) and lines[i + 1].startswith("Traceback")):
                    problems.append(f"{log.name}: {line.strip()[:160]}")
        top = Counter(problems).most_common(1)
        return len(problems), (f"{top[0][1]} x {top[0][0]}" if top else "")


@contextlib.contextmanager
def serve(mode: str, env: dict[str, str], redis_url: str | None, redis_pid: int | None, postgres_url: str | None = None,
          web_processes: int = 1):
    with contextlib.ExitStack() as exits:
        # A database of our own on the given PostgreSQL server (dropped afterwards), else SQLite.
        database_url = exits.enter_context(postgres_database(postgres_url)) if postgres_url else None
        if mode == "redis":  # keys of our own, recognisable on a shared Redis; nothing is ever flushed
            run = uuid.uuid4().hex[:8]
            env = env | {"KEY_PREFIX": f"bench-{run}:", "QUEUE_NAME": f"bench-{run}:queue"}
        stack = exits.enter_context(start_stack(mode, env, workers=2, redis_url=redis_url, database_url=database_url,
                                                web_processes=web_processes))
        server = Server(stack, redis_url, redis_pid)
        if mode == "redis":
            wait_workers_ready(stack, redis_url, 2)
        asyncio.run(warm_up(stack.url))
        yield server


def wait_workers_ready(stack, redis_url: str, workers: int) -> None:
    """A worker subscribes to the stop channel last in its startup: count subscribers."""
    import redis

    channel = stack.env["KEY_PREFIX"] + "stops"
    with redis.Redis.from_url(redis_url) as client:
        wait_until(lambda: client.pubsub_numsub(channel)[0][1] >= workers, timeout=30, what="arq workers")


async def warm_up(url: str) -> None:
    """A few rounds first, so lazy imports and first-query costs are not measured."""
    async with new_client(url, 8, 30.0) as client:
        await open_session(client)

        async def warm(i: int) -> None:
            async with RawClient(url, client.cookies) as chat:
                await run_round(chat, f"warm up {i}", None)

        await asyncio.wait_for(asyncio.gather(*(warm(i) for i in range(4))), 60)


@contextlib.contextmanager
def redis_for(mode: str, url: str | None):
    """(url, pid): the given Redis (never flushed, never measured) or a throwaway one."""
    if mode != "redis":
        yield None, None
    elif url:
        yield url, None
    else:
        import redis

        with redis_server() as own:
            with redis.Redis.from_url(own) as client:
                pid = client.info("server")["process_id"]
            yield own, pid


class Clients:
    """Client processes and the messages they send back: "seeded" (session and data ready),
    "ready" (idle streams open) and "result" (last; a client that fails sends only that)."""

    def __init__(self, target, jobs: list[dict]) -> None:
        ctx = mp.get_context("spawn")  # a fresh interpreter: no inherited loop, sockets or locks
        self.queue, self.go, self.release = ctx.Queue(), ctx.Event(), ctx.Event()
        self.count = len(jobs)
        self.messages: dict[str, dict[int, object]] = {"seeded": {}, "ready": {}, "result": {}}
        self.procs = [ctx.Process(target=run_client_process, args=(target, job, self.queue, self.go, self.release), daemon=True) for job in jobs]
        for proc in self.procs:
            proc.start()

    def wait_for(self, kind: str, timeout: float, on_wait=None) -> dict[int, object]:
        """Until every client has sent ``kind`` (or its result), or the timeout; ``on_wait``
        runs about twice a second meanwhile (for sampling)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.messages[kind].keys() | self.messages["result"].keys()) >= self.count:
                break
            with contextlib.suppress(queue_module.Empty):
                what, index, payload = self.queue.get(timeout=0.5)
                self.messages[what][index] = payload
            if on_wait:
                on_wait()
        return self.messages[kind]

    def stop(self) -> None:
        self.go.set()  # a client still waiting to start or to let go goes on to its end
        self.release.set()
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)


# ---------------------------------------------------------------------------------------
# Chats scenario: parent side


def chats_env() -> dict[str, str]:
    return {"DEMO_TOKEN_INTERVAL_MS": str(TOKEN_INTERVAL_MS), "DEMO_REPLY_TOKENS": str(REPLY_TOKENS),
            "KEEPALIVE_SECONDS": "15", "LEASE_SECONDS": "10"}  # production-like, not the tests' 1 s / 2 s


def run_chats(server: Server, n: int, args) -> dict:
    procs_n = max(1, min(args.procs, n))
    offsets = [args.ramp * i / n for i in range(n)]  # spread starts: a steady state, not a burst
    jobs = [{"index": p, "url": server.stack.url, "offsets": offsets[p::procs_n], "rounds": args.rounds,
             "round_timeout": 60.0, "timeout": 60.0, "fresh_streams": args.fresh_streams} for p in range(procs_n)]
    run_timeout = 60.0 + args.ramp + args.rounds * 60.0
    clients, profiles, connections = Clients(chats_client, jobs), {}, []
    try:
        clients.wait_for("seeded", 60)
        # Every 5 s: a sample reads every socket of the machine (≈ 80 ms of CPU at 200 chats),
        # CPU the servers would otherwise have, and the web's connections do not change.
        sample = sampler(lambda: connections.append(server.web_redis_connections()), 5.0)
        background = wait_for_quiet(args.quiet_wait)
        cpu_before, machine_before, wall = server.cpu_seconds(), busy_seconds(), time.monotonic()
        steal_before, waited_before = steal_seconds(), server.waited_seconds()
        parent_before = sum(psutil.Process().cpu_times()[:2])
        clients.go.set()
        if args.py_spy:
            profiles = {name: py_spy_record(proc.pid, Path(args.py_spy) / f"{server.stack.mode}-chats-{n}-{name}.txt", run_timeout)
                        for name, proc in server.processes().items() if name != "redis"}
        outcomes = clients.wait_for("result", run_timeout, sample)
        wall = time.monotonic() - wall
        cpu_after, machine = server.cpu_seconds(), busy_seconds() - machine_before
        steal = steal_seconds() - steal_before
        waited = {name: seconds - waited_before.get(name, math.nan) for name, seconds in server.waited_seconds().items()}
        parent = sum(psutil.Process().cpu_times()[:2]) - parent_before
    finally:
        clients.stop()
        for proc in profiles.values():
            stop_py_spy(proc)
    for name, proc in profiles.items():
        print_profile(name, proc.args[proc.args.index("--output") + 1])
    return summarize_chats(n, args, outcomes, procs_n, cpu_before, cpu_after, wall, machine - parent, background, connections,
                           server.log_problems()) | {"steal": steal, "waited": waited}


def busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores)."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)


def run_queue_seconds(pid: int) -> float:
    """Seconds a process's main thread has been ready to run but waiting for a CPU (Linux
    schedstat; NaN elsewhere): where the machine, not the process, made it late."""
    try:
        with open(f"/proc/{pid}/schedstat") as stats:
            return int(stats.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return math.nan


def steal_seconds() -> float:
    """CPU seconds the hypervisor gave to other guests while ours wanted them: on a shared
    VM, time in which nothing here ran. Printed, since it makes every latency longer."""
    return getattr(psutil.cpu_times(), "steal", 0.0)


def wait_for_quiet(limit: float, threshold: float = 0.25) -> float:
    """On a shared machine, wait (at most ``limit`` s) until other load drops below
    ``threshold`` of all cores; the last busy fraction seen, to print with the figures."""
    deadline, busy = time.monotonic() + limit, math.nan
    for _ in range(int(limit) + 1):
        busy = psutil.cpu_percent(interval=1.0) / 100
        if busy < threshold or time.monotonic() >= deadline:
            break
    return busy


def sampler(action, every: float):
    """Run ``action`` at most every ``every`` seconds (called from collect's wait loop)."""
    last = [0.0]

    def maybe() -> None:
        if time.monotonic() - last[0] >= every:
            last[0] = time.monotonic()
            with contextlib.suppress(Exception):
                action()

    return maybe


def summarize_chats(n, args, outcomes, procs_n, cpu_before, cpu_after, wall, machine, background, connections, log_problems) -> dict:
    rounds = [r for o in outcomes.values() for r in o.get("rounds", [])]
    client_errors = [o["error"] for o in outcomes.values() if "error" in o]
    latencies = [x for r in rounds for x in r["latencies"]]
    catch_up = [x for r in rounds for x in r["catch_up"]]
    to_feed = [x for r in rounds for x in r["to_feed"]]
    from_feed = [x for r in rounds for x in r["from_feed"]]
    first = [r["first_delta"] for r in rounds if r["first_delta"] is not None]
    spans = [r["delta_span"] for r in rounds if r["delta_span"]]
    posts = [r["post_ms"] for r in rounds if r["post_ms"] is not None]
    opens = [r["open_ms"] for r in rounds if r["open_ms"] is not None]
    per_chat = [(r["deltas"] - 1) / (b - a) for r in rounds if r["delta_span"] for a, b in [r["delta_span"]] if b > a]
    total_deltas = sum(r["deltas"] for r in rounds)
    window = (max(b for _, b in spans) - min(a for a, _ in spans)) if spans else math.nan
    events = sum(r["events"] for r in rounds)
    nominal = n * 1000 / TOKEN_INTERVAL_MS
    cpu = {name: cpu_after[name] - cpu_before.get(name, 0.0) for name in cpu_after}
    client_cpu = sum(o.get("run_cpu", 0.0) for o in outcomes.values())
    return {
        "chats": n, "rounds": len(rounds), "expected_rounds": n * args.rounds,
        "lat_p50": percentile(latencies, 50), "lat_p99": percentile(latencies, 99), "lat_max": percentile(latencies, 100),
        "catch_up_n": len(catch_up), "catch_up_p99": percentile(catch_up, 99),
        "to_feed_p50": percentile(to_feed, 50), "to_feed_p99": percentile(to_feed, 99),
        "from_feed_p50": percentile(from_feed, 50), "from_feed_p99": percentile(from_feed, 99),
        "first_p50": percentile(first, 50), "first_p99": percentile(first, 99),
        "post_p50": percentile(posts, 50), "post_p99": percentile(posts, 99),
        "open_p50": percentile(opens, 50), "open_p99": percentile(opens, 99),
        "rate_per_chat": (sum(per_chat) / len(per_chat)) if per_chat else math.nan,
        "rate_nominal_chat": 1000 / TOKEN_INTERVAL_MS,
        "aggregate_rate": total_deltas / window if window and window > 0 else math.nan, "nominal": nominal,
        "broken": sum(not r["ok"] for r in rounds) + (n * args.rounds - len(rounds)),
        "late": sum(r["late"] for r in rounds),
        "broken_why": dict(Counter(r["broken"] for r in rounds if not r["ok"])),
        "broken_samples": [r["trace"] for r in rounds if r.get("trace")][:3],
        "events": events, "cpu": cpu, "cpu_per_event_us": {k: v / events * 1e6 if events else math.nan for k, v in cpu.items()},
        "client_cpu": client_cpu, "wall": wall, "machine_busy": machine / (wall * psutil.cpu_count()),
        # CPU spent by neither the servers nor our clients: other load on a shared machine
        "other_cpu": machine - sum(cpu.values()) - client_cpu, "background": background,
        "redis_conns": max((c for c in connections if c is not None), default=None),
        "client_errors": client_errors, "log_problems": log_problems, "procs": procs_n,
    }


def py_spy_record(pid: int, out: Path, duration: float) -> subprocess.Popen:
    """Sample a server process with py-spy (collapsed stacks) until stopped; optional."""
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [str(BIN / "py-spy"), "record", "--pid", str(pid), "--duration", str(int(duration)), "--rate", "100",
           "--format", "raw", "--nonblocking", "--output", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_py_spy(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)  # py-spy writes what it has sampled so far and exits
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def print_profile(name: str, path: str, top: int = 12) -> None:
    """Where a process spent its active samples: the project's own frames (and the
    libraries' leaf frames), inclusive, as a share of all active samples."""
    inclusive, leaves, total = Counter(), Counter(), 0
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            frames, n = stack.split(";"), int(count)
            total += n
            leaves[frames[-1]] += n
            inclusive.update({frame: n for frame in set(frames) if frame.split("(")[-1].startswith(OWN_CODE)})
    if not total:
        print(f"  py-spy {name}: no samples ({path})")
        return
    print(f"  py-spy {name} ({total} active samples, {path}):")
    for frame, n in inclusive.most_common(top):
        print(f"    {100 * n / total:5.1f} %  {frame}")
    print("    leaf frames: " + "; ".join(f"{100 * n / total:.0f} % {frame}" for frame, n in leaves.most_common(5)))


# ---------------------------------------------------------------------------------------
# Idle scenario: parent side


def idle_env(keepalive: float) -> dict[str, str]:
    return {"KEEPALIVE_SECONDS": str(keepalive), "DEMO_TOKEN_INTERVAL_MS": "5", "DEMO_REPLY_TOKENS": "5", "LEASE_SECONDS": "10"}


def run_idle(server: Server, n: int, args) -> dict:
    procs_n = max(1, min(args.idle_procs, n))
    per_proc = [n // procs_n + (1 if p < n % procs_n else 0) for p in range(procs_n)]
    open_timeout = max(60.0, n / 50)  # opening is a few ms of server CPU each
    hold = 3 * args.keepalive + 0.5
    jobs = [{"index": p, "url": server.stack.url, "streams": per_proc[p], "keepalive": args.keepalive,
             "open_concurrency": 16, "open_timeout": open_timeout,
             "timeout": open_timeout + hold + 120} for p in range(procs_n)]
    clients, web, figures = Clients(idle_client, jobs), server.web, {}
    try:
        clients.wait_for("seeded", 120)
        figures["background"] = wait_for_quiet(args.quiet_wait)
        rss_before, cpu_before, opening = web.memory_info().rss, sum(web.cpu_times()[:2]), time.monotonic()
        steal_before = steal_seconds()
        clients.go.set()
        ready = clients.wait_for("ready", open_timeout + 30)
        figures["open_seconds"] = time.monotonic() - opening
        figures["opened"] = opened = sum(v for v in ready.values() if isinstance(v, int))
        cpu_open = sum(web.cpu_times()[:2])
        figures["open_cpu_ms"] = (cpu_open - cpu_before) * 1000 / opened if opened else math.nan
        figures |= hold_streams(server, web, hold, args, f"{server.stack.mode}-idle-{n}", clients.release.set)
        figures["kb_per_stream"] = (figures["rss_after"] - rss_before) / 1024 / opened if opened else math.nan
        figures["rss_before"] = rss_before
        figures["steal"], figures["wall"] = steal_seconds() - steal_before, time.monotonic() - opening
        outcomes = clients.wait_for("result", 120)
    finally:
        clients.stop()
    return summarize_idle_run(n, args, outcomes, figures, server.log_problems())


def hold_streams(server: Server, web: psutil.Process, hold: float, args, name: str, release) -> dict:
    """The figures taken while every stream is open and idle: connections, RSS, CPU.
    ``release`` ends the hold as soon as it is over: a client counts the time until then
    as a keepalive gap, and counting connections over 10,000 sockets takes a second."""
    connections = [server.web_redis_connections()]
    server_streams = open_streams_metric(server.stack.url)
    profile = py_spy_record(web.pid, Path(args.py_spy) / f"{name}-web.txt", hold + 5) if args.py_spy else None
    cpu, machine = sum(web.cpu_times()[:2]), busy_seconds()
    rss_peak = sample_rss(web, hold)
    cpu, machine = sum(web.cpu_times()[:2]) - cpu, busy_seconds() - machine
    rss_after = web.memory_info().rss
    release()
    connections.append(server.web_redis_connections())
    if profile:
        stop_py_spy(profile)
        print_profile(f"web holding idle streams ({name})", profile.args[profile.args.index("--output") + 1])
    return {"rss_after": rss_after, "rss_peak": rss_peak, "server_streams": server_streams,
            "hold_cpu_pct": 100 * cpu / hold, "hold_busy_pct": 100 * machine / hold / psutil.cpu_count(), "redis_conns": max((c for c in connections if c is not None), default=None)}


def sample_rss(process: psutil.Process, seconds: float) -> int:
    """Hold the streams for ``seconds``, sampling the web RSS; the peak."""
    peak, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        peak = max(peak, process.memory_info().rss)
        time.sleep(0.25)
    return peak


def open_streams_metric(url: str) -> float | None:
    """The server's own count of open SSE responses (Prometheus gauge), as a cross-check."""
    with contextlib.suppress(Exception):
        for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
            if line.startswith("chat_sse_streams "):
                return float(line.split()[1])
    return None


def summarize_idle_run(n, args, outcomes, figures, log_problems) -> dict:
    gaps = [g for o in outcomes.values() for g in o.get("max_gaps", [])]
    life = [g for o in outcomes.values() for g in o.get("life_gaps", [])]
    errors = Counter()
    for o in outcomes.values():
        errors.update(o.get("errors", {}))
        if "error" in o:
            errors[o["error"]] += 1
    return figures | {
        "streams": n, "keepalive": args.keepalive, "log_problems": log_problems,
        "gap_p50": percentile(gaps, 50), "gap_p99": percentile(gaps, 99), "gap_max": percentile(gaps, 100),
        "late": sum(g > args.keepalive + LATE_MARGIN for g in gaps), "measured": len(gaps), "errors": dict(errors),
        "life_p99": percentile(life, 99), "life_max": percentile(life, 100),
        "life_late": sum(g > args.keepalive + LATE_MARGIN for g in life),
        "client_cpu": sum(o.get("client_cpu", 0.0) for o in outcomes.values()),
    }


# ---------------------------------------------------------------------------------------
# Printing


def fmt(value, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A markdown table, aligned so that it also reads well in a terminal."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|", *map(line, rows)])


def print_chats(mode: str, rows: list[dict]) -> None:
    names = sorted({k for r in rows for k in r["cpu_per_event_us"]}, key=lambda k: (k != "web", k))
    headers = ["mode", "chats", "rounds", "delivery p50/p99 ms", "first delta p50/p99 ms", "deltas/s (nominal)",
               "% nominal", "broken", "ended before open", *[f"{k} µs/ev" for k in names], "web Redis conns"]
    body = []
    for r in rows:
        pct = 100 * r["rate_per_chat"] / r["rate_nominal_chat"]
        body.append([mode, fmt(r["chats"]), f"{r['rounds']}/{r['expected_rounds']}",
                     f"{fmt(r['lat_p50'])} / {fmt(r['lat_p99'])}", f"{fmt(r['first_p50'])} / {fmt(r['first_p99'])}",
                     f"{fmt(r['rate_per_chat'] * r['chats'], 0)} ({fmt(r['nominal'], 0)})", fmt(pct),
                     fmt(r["broken"]), fmt(r["late"]), *[fmt(r["cpu_per_event_us"].get(k), 0) for k in names], fmt(r["redis_conns"])])
    print(f"\nChats ({mode}, {TOKEN_INTERVAL_MS} ms/token, {REPLY_TOKENS} tokens/reply; delivery = receipt - createdAt of events"
          " created after their stream was open (its first byte; a resumed one's headers); deltas/s = chats x mean per-round rate, first token generated -> last one"
          " received; µs/ev = process CPU / events delivered)")
    print(table(headers, body))
    for r in rows:
        extra = [f"POST start p50/p99 {fmt(r['post_p50'])}/{fmt(r['post_p99'])} ms",
                 f"stream headers p50/p99 {fmt(r['open_p50'])}/{fmt(r['open_p99'])} ms",
                 f"wall-clock aggregate {fmt(r['aggregate_rate'], 0)} deltas/s", f"delivery max {fmt(r['lat_max'])} ms",
                 f"delivery = job to feed p50/p99 {fmt(r['to_feed_p50'])}/{fmt(r['to_feed_p99'])} ms + feed to client"
                 f" {fmt(r['from_feed_p50'])}/{fmt(r['from_feed_p99'])} ms (the feed's time is the cursor's, in whole ms)",
                 f"{fmt(r['catch_up_n'])} events created while their stream was opening, p99 {fmt(r['catch_up_p99'])} ms",
                 f"{fmt(r['events'])} events", f"machine CPU busy {fmt(100 * r['machine_busy'], 0)} %",
                 f"client CPU {fmt(r['client_cpu'])} s in {r['procs']} procs over {fmt(r['wall'])} s",
                 f"other processes' CPU {fmt(r['other_cpu'])} s (machine {fmt(100 * r['background'], 0)} % busy before)",
                 f"stolen by the hypervisor {fmt(r['steal'])} s of {fmt(r['wall'] * psutil.cpu_count())} CPU s",
                 "server CPU s " + ", ".join(f"{k} {v:.2f}" for k, v in r["cpu"].items()),
                 "ready but waiting for a CPU s " + ", ".join(f"{k} {fmt(v)}" for k, v in r["waited"].items())]
        if r["broken_why"]:
            extra.append(f"broken: {r['broken_why']}")
            extra += [f"\n    e.g. {t}" for t in r["broken_samples"]]
        if r["client_errors"]:
            extra.append(f"client errors: {r['client_errors']}")
        if r["log_problems"][0]:
            extra.append(f"server log errors: {r['log_problems'][0]}, most often {r['log_problems'][1]}")
        print(f"  {r['chats']} chats: " + "; ".join(extra))


def print_idle(mode: str, rows: list[dict]) -> None:
    headers = ["mode", "streams", "opened", "open s", "KB/stream", "keepalive gap p50/p99/max s", "late",
               "web CPU % idle", "web Redis conns"]
    body = [[mode, fmt(r["streams"]), fmt(r["opened"]), fmt(r["open_seconds"]), fmt(r["kb_per_stream"]),
             f"{fmt(r['gap_p50'], 2)} / {fmt(r['gap_p99'], 2)} / {fmt(r['gap_max'], 2)}", fmt(r["late"]),
             fmt(r["hold_cpu_pct"], 0), fmt(r["redis_conns"])] for r in rows]
    keepalive = rows[0]["keepalive"] if rows else "?"
    print(f"\nIdle streams ({mode}, KEEPALIVE_SECONDS={keepalive}; gap = longest silence per stream while all are open,"
          f" as the client sees it; late = gap > keepalive + {LATE_MARGIN:g} s)")
    print(table(headers, body))
    for r in rows:
        extra = [f"web RSS {fmt(r['rss_before'] / 2**20)} -> {fmt(r['rss_after'] / 2**20)} MB (peak {fmt(r['rss_peak'] / 2**20)})",
                 f"web CPU {fmt(r['open_cpu_ms'], 2)} ms per stream opened",
                 f"gaps over each stream's whole life (incl. while others opened) p99/max {fmt(r['life_p99'], 2)}/"
                 f"{fmt(r['life_max'], 2)} s, {fmt(r['life_late'])} late",
                 f"server says {fmt(r['server_streams'], 0)} open", f"{fmt(r['measured'])} streams measured",
                 f"client CPU {fmt(r['client_cpu'])} s", f"machine {fmt(r['hold_busy_pct'], 0)} % busy while holding"
                 f" ({fmt(100 * r['background'], 0)} % before)",
                 f"stolen by the hypervisor {fmt(r['steal'])} s of {fmt(r['wall'] * psutil.cpu_count())} CPU s"]
        if r["errors"]:
            extra.append(f"errors: {r['errors']}")
        if r["log_problems"][0]:
            extra.append(f"server log errors: {r['log_problems'][0]}, most often {r['log_problems'][1]}")
        print(f"  {r['streams']} streams: " + "; ".join(extra))


# ---------------------------------------------------------------------------------------
# Main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=TARGETS)
    parser.add_argument("--mode", choices=["memory", "redis", "both"], default="redis", help="embedded (memory) or Redis with two arq workers")
    parser.add_argument("--redis-url", help="an existing Redis (a key prefix of our own, never flushed); default: a throwaway redis-server")
    parser.add_argument("--postgres-url", metavar="ADMIN_URL",
                        help="use PostgreSQL: a fresh database per run on this server, dropped afterwards (default: SQLite)")
    parser.add_argument("--scenario", choices=["chats", "idle", "all"], default="all")
    parser.add_argument("--chats", default="50,200,500", help="concurrent chats per run, comma-separated (default %(default)s)")
    parser.add_argument("--idle", default="1000,5000,10000", help="idle streams per run, comma-separated (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per chat, back to back (default %(default)s)")
    parser.add_argument("--fresh-streams", action="store_true",
                        help="chats: open each round's stream after its start, from nothing (not resumed from the previous round's end as the page does)")
    parser.add_argument("--ramp", type=float, default=2.0, help="seconds over which chats start (default %(default)s)")
    parser.add_argument("--web-processes", type=int, default=1, metavar="N",
                        help="Hypercorn web processes for the chats scenario in Redis mode (idle streams: always one; default %(default)s)")
    parser.add_argument("--procs", type=int, default=2, help="client processes for chats (default %(default)s)")
    parser.add_argument("--idle-procs", type=int, default=4, help="client processes for idle streams (default %(default)s)")
    parser.add_argument("--keepalive", type=float, default=2.0, help="KEEPALIVE_SECONDS for the idle run (default %(default)s)")
    parser.add_argument("--py-spy", metavar="DIR", help="profile with py-spy into DIR (web and workers during chats, web while holding idle streams) and print a summary")
    parser.add_argument("--quiet-wait", type=float, default=30.0, metavar="S",
                        help="before each run, wait up to S s for other load on the machine to settle (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 chats, 1 round, 200 idle streams (< 60 s)")
    args = parser.parse_args(argv)
    if args.quick:
        args.chats, args.idle, args.rounds, args.ramp, args.quiet_wait = "20", "200", 1, 0.5, 0.0
    args.chat_counts = [int(x) for x in args.chats.split(",") if x.strip()]
    args.idle_counts = [int(x) for x in args.idle.split(",") if x.strip()]
    if args.py_spy and not (BIN / "py-spy").exists():
        parser.error("--py-spy needs py-spy: .venv/bin/pip install py-spy")
    return args


def run_mode(mode: str, args) -> None:
    database = "postgres" if args.postgres_url else "sqlite"
    with redis_for(mode, args.redis_url) as (redis_url, redis_pid):
        if args.scenario in ("chats", "all"):
            rows = []
            for n in args.chat_counts:
                with serve(mode, chats_env(), redis_url, redis_pid, args.postgres_url, args.web_processes if mode == "redis" else 1) as server:
                    rows.append(run_chats(server, n, args))
                print(f"  [{mode}] {n} chats done", flush=True)
            webs = f" ({args.web_processes} web)" if mode == "redis" and args.web_processes > 1 else ""
            print_chats(f"{mode}/{database}{webs}", rows)
        if args.scenario in ("idle", "all"):
            rows = []
            for n in args.idle_counts:
                with serve(mode, idle_env(args.keepalive), redis_url, redis_pid, args.postgres_url) as server:
                    rows.append(run_idle(server, n, args))
                print(f"  [{mode}] {n} idle streams done", flush=True)
            print_idle(f"{mode}/{database}", rows)


def check_local(url: str) -> None:
    """All traffic stays on 127.0.0.1 (the connection counts rely on it too)."""
    host = urlparse(url).hostname
    if host != "127.0.0.1":
        sys.exit(f"{url}: the benchmark only talks to 127.0.0.1 (got {host})")


def main(argv=None) -> None:
    args = parse_args(argv)
    for url in (args.redis_url, args.postgres_url):
        if url:
            check_local(url)
    limit = raise_fd_limit()
    if max(args.idle_counts, default=0) + 200 > limit and args.scenario != "chats":
        print(f"warning: RLIMIT_NOFILE is {limit}; the web process needs one fd per stream", file=sys.stderr)
    print(f"bench: {psutil.cpu_count()} CPUs, fd limit {limit}, mode {args.mode}, chats {args.chat_counts} "
          f"x {args.rounds} rounds, idle {args.idle_counts}", flush=True)
    started = time.monotonic()
    for mode in (["memory", "redis"] if args.mode == "both" else [args.mode]):
        run_mode(mode, args)
    print(f"\n{TARGETS}\n(total {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
