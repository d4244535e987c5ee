#!/usr/bin/env python
"""What an idle SSE stream costs before the app does anything: web RSS per stream for a
bare ASGI app and for a minimal Quart app, both on Hypercorn with uvloop as the app runs.

The app's own figure comes from ``bench/run.py --scenario idle``; the difference between
the three says which layer a memory target has to come out of. Figures are printed.

    .venv/bin/python bench/sse_floor.py --streams 10000
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
from quart import Quart, make_response

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make tests.servers importable
    sys.path.insert(0, str(ROOT))

from bench.run import RawStream, raise_fd_limit  # noqa: E402
from tests.servers import BIN, free_port, wait_until  # noqa: E402

KEEPALIVE_SECONDS = 2.0
HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


async def asgi_app(scope, receive, send) -> None:
    """The least a server can do per stream: headers, then a comment per keepalive."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    while True:
        await send({"type": "http.response.body", "body": b": keepalive\n", "more_body": True})
        await asyncio.sleep(KEEPALIVE_SECONDS)


quart_app = Quart(__name__)


@quart_app.get("/stream")
async def stream():
    async def comments():
        while True:
            yield ": keepalive\n"
            await asyncio.sleep(KEEPALIVE_SECONDS)

    response = await make_response(comments(), 200, dict((k.decode(), v.decode()) for k, v in HEADERS))
    response.timeout = None
    return response


def hold_streams(port: int, n: int, opened: mp.Queue, release) -> None:
    """A client process: open ``n`` streams (16 at a time), report, hold until released."""

    async def one(gate: asyncio.Semaphore, streams: contextlib.AsyncExitStack) -> None:
        async with gate:  # the same request as the app's idle streams get (bench/run.py)
            stream = await streams.enter_async_context(RawStream(f"http://127.0.0.1:{port}", "/stream", httpx.Cookies()))
            async for _ in stream.chunks():  # the first comment
                break

    async def main() -> None:
        gate = asyncio.Semaphore(16)
        async with contextlib.AsyncExitStack() as streams:
            try:
                await asyncio.gather(*(one(gate, streams) for _ in range(n)))
            except OSError as error:  # e.g. out of file descriptors: say so instead of hanging
                opened.put(f"{type(error).__name__}: {error}")
                return
            opened.put(n)
            while not release.is_set():
                await asyncio.sleep(0.2)

    asyncio.run(main())


def measure(app: str, n: int, procs: int) -> float:
    """KB of web RSS per open idle stream of ``app`` (a name in this module)."""
    port = free_port()
    web = subprocess.Popen(
        [str(BIN / "hypercorn"), "--worker-class", "uvloop", "--backlog", "2048", f"bench.sse_floor:{app}",
         "--bind", f"127.0.0.1:{port}"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    context = mp.get_context("spawn")
    opened, release, clients = context.Queue(), context.Event(), []
    try:
        wait_until(lambda: socket.create_connection(("127.0.0.1", port), 0.5).close() is None, what=app)
        server = next(c for c in psutil.Process(web.pid).children() if "spawn_main" in " ".join(c.cmdline()))
        time.sleep(1)
        before = server.memory_info().rss
        shares = [n // procs + (1 if p < n % procs else 0) for p in range(procs)]
        clients = [context.Process(target=hold_streams, args=(port, share, opened, release)) for share in shares]
        for client in clients:
            client.start()
        reports = [opened.get(timeout=300) for _ in clients]
        if errors := [r for r in reports if isinstance(r, str)]:
            raise SystemExit(f"{app}: a client could not open its streams: {errors[0]}")
        total = sum(reports)
        time.sleep(2 * KEEPALIVE_SECONDS + 0.5)  # every stream has sent keepalives since
        return (server.memory_info().rss - before) / 1024 / total
    finally:
        release.set()
        for client in clients:
            client.join(30)
        web.terminate()
        web.wait(10)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=10_000, help="idle streams per app (default %(default)s)")
    parser.add_argument("--procs", type=int, default=4, help="client processes (default %(default)s)")
    args = parser.parse_args(argv)
    raise_fd_limit()  # inherited by the server and the clients
    print(f"{args.streams:,} idle SSE streams on Hypercorn (uvloop), keepalive every {KEEPALIVE_SECONDS:g} s:")
    for app, what in (("asgi_app", "bare ASGI app"), ("quart_app", "minimal Quart app (one route, a generator)")):
        print(f"  {what}: {measure(app, args.streams, args.procs):.1f} KB web RSS per stream", flush=True)
    print("  the chat app: bench/run.py --scenario idle")


if __name__ == "__main__":
    main()
