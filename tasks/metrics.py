"""Prometheus metrics of the web process, served at /metrics."""
from __future__ import annotations

from prometheus_client import Counter, Gauge

OPEN_STREAMS = Gauge("chat_sse_streams", "SSE responses being served")
EVENTS_SENT = Counter("chat_sse_events_total", "Events written to SSE clients")
ROUNDS_STARTED = Counter("chat_rounds_started_total", "Chat rounds started")
FEED_SUBSCRIPTIONS = Gauge("chat_feed_subscriptions", "Event feed subscriptions held by this process")
