"""HTTP handlers: thin, one blueprint per resource; the work happens in tasks/."""
from __future__ import annotations

from collections.abc import AsyncIterator

from quart import current_app, make_response, session
from quart.wrappers import Response

from tasks.runtime import Runtime


def runtime() -> Runtime:
    return current_app.extensions["chat_runtime"]


def user_id() -> str:
    return session["uid"]


def api_error(status: int, code: str, message: str) -> tuple[dict, int]:
    return {"error": {"code": code, "message": message}}, status


async def sse_response(events: AsyncIterator[str]) -> Response:
    response = await make_response(
        events,
        200,
        {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    response.timeout = None  # Quart cuts responses at 60 s by default; streams are long-lived
    return response
