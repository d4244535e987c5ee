"""Every Prometheus metric, served at /metrics by web processes and by workers with
WORKER_METRICS_BIND.

A process answers for itself, unless prometheus-client's PROMETHEUS_MULTIPROC_DIR names a
directory (empty when the first process starts): then every process on the machine that
has it (web processes of ``hypercorn --workers N``, workers beside them) writes its
metrics there, and each /metrics answers for all of them.
"""
from __future__ import annotations

import os

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess, start_http_server

# Web processes
OPEN_STREAMS = Gauge("chat_sse_streams", "SSE responses being served", multiprocess_mode="livesum")
EVENTS_SENT = Counter("chat_sse_events_total", "Events written to SSE clients")
ROUNDS_STARTED = Counter("chat_rounds_started_total", "Chat rounds started")
FEED_SUBSCRIPTIONS = Gauge("chat_feed_subscriptions", "Event feed subscriptions being followed", multiprocess_mode="livesum")

# Wherever rounds run or end: workers (Redis mode), the web process (embedded mode)
ROUNDS_ENDED = Counter("chat_rounds_ended_total", "Chat rounds ended, by status and error code", ["status", "code"])
ROUNDS_RUNNING = Gauge("chat_rounds_running", "Chat jobs generating a reply", multiprocess_mode="livesum")
REPLY_DELTAS = Counter("chat_reply_deltas_total", "Pieces of replies generated (delta events)")
FIRST_DELTA_SECONDS = Histogram(
    "chat_first_delta_seconds", "From a round's start (its user message stored) to its reply's first piece",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
JOB_SECONDS = Histogram(
    "chat_job_seconds", "A chat job's run, from its start to its round's end", buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)


def registry() -> CollectorRegistry:
    """What /metrics answers for: this process, or every process writing to
    PROMETHEUS_MULTIPROC_DIR."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    machine = CollectorRegistry()
    multiprocess.MultiProcessCollector(machine)
    return machine


def serve(port: int, address: str) -> None:
    """/metrics of a process with no web server of its own (a worker), from a thread."""
    start_http_server(port, address, registry=registry())


def process_ended() -> None:
    """Drop this process's share of the live gauges (multiprocess mode): they are for
    processes that run. Its counters stay in the machine's totals."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(os.getpid())
