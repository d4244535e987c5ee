#!/usr/bin/env python
"""What a round costs apart from its events: CPU per round of each server process.

Chats of two-token replies with no pacing, 20 at a time, so each round is nearly all
fixed cost: the start request, the stream open, the arq job's start and end, and their
queries. Then the floor under a request: an empty one (``/healthz``) through Hypercorn
and Quart. ``bench/run.py`` gives the per-event side. Figures are printed.

    .venv/bin/python bench/rounds.py --redis-url redis://127.0.0.1:6379/0 --postgres-url postgres://postgres@127.0.0.1:5432/test
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import RawClient, new_client, open_session, redis_for, run_round, serve  # noqa: E402

CONCURRENT = 20
ENV = {"DEMO_TOKEN_INTERVAL_MS": "0", "DEMO_REPLY_TOKENS": "2", "KEEPALIVE_SECONDS": "15", "LEASE_SECONDS": "10"}


async def run_rounds(url: str, rounds: int) -> None:
    """Conversations of three rounds each, CONCURRENT at a time."""
    async with new_client(url, 8, 30.0) as session:
        await open_session(session)

        async def chat(number: int) -> None:
            workflow_id = None
            async with RawClient(url, session.cookies) as client:
                for i in range(rounds // CONCURRENT):
                    result = await run_round(client, f"round {number}-{i}", workflow_id if i % 3 else None)
                    if not result["ok"]:
                        raise RuntimeError(f"a broken round: {result.get('trace') or result['broken']}")
                    workflow_id = result["workflowId"]

        await asyncio.gather(*(chat(n) for n in range(CONCURRENT)))


async def run_requests(url: str, requests: int) -> None:
    async with new_client(url, CONCURRENT + 8, 30.0) as client:
        await open_session(client)

        async def one() -> None:
            for _ in range(requests // CONCURRENT):
                (await client.get("/healthz")).raise_for_status()

        await asyncio.gather(*(one() for _ in range(CONCURRENT)))


def measure(server, label: str, count: int, work) -> None:
    before, wall = server.cpu_seconds(), time.monotonic()
    asyncio.run(work)
    after, wall = server.cpu_seconds(), time.monotonic() - wall
    each = ", ".join(f"{name} {1000 * (after[name] - before[name]) / count:.2f}" for name in after if name != "redis")
    print(f"  {label}: {count:,} in {wall:.1f} s; server CPU ms each: {each}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1200)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--redis-url", help="an existing Redis (a key prefix of our own); default: a throwaway redis-server")
    parser.add_argument("--postgres-url", metavar="ADMIN_URL", help="PostgreSQL to make a throwaway database on; default: SQLite")
    args = parser.parse_args(argv)
    with redis_for("redis", args.redis_url) as (redis_url, redis_pid):
        with serve("redis", ENV, redis_url, redis_pid, args.postgres_url) as server:
            print(f"Redis mode, two workers, {'PostgreSQL' if args.postgres_url else 'SQLite'}, {CONCURRENT} at a time:")
            measure(server, "rounds (start, stream, two-token job)", args.rounds, run_rounds(server.stack.url, args.rounds))
            measure(server, "empty requests (GET /healthz)", args.requests, run_requests(server.stack.url, args.requests))


if __name__ == "__main__":
    main()
