"""HTTP handlers: thin, one blueprint per resource; the work happens in tasks/."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from quart import current_app, make_response, request, session
from quart.wrappers import Response
from werkzeug.datastructures import Headers

from tasks.runtime import Runtime

_EVENTS = "chat.sse_events"  # scope key: the body an SSE response leaves to send_streams_after_quart
_SSE_HEADERS = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no")]


def runtime() -> Runtime:
    return current_app.extensions["chat_runtime"]


def user_id() -> str:
    return session["uid"]


def api_error(status: int, code: str, message: str) -> tuple[dict, int]:
    return {"error": {"code": code, "message": message}}, status


async def sse_response(events: AsyncIterator[str]) -> Response:
    """A Server-Sent Events response. Quart sends its headers; under
    ``send_streams_after_quart`` (``create_app`` installs it) ``events`` are sent after
    Quart is done with the request, elsewhere Quart sends them itself."""
    # Headers, not a dict: quart-schema converts a dict through a new pydantic TypeAdapter (≈ 60 µs)
    headers = Headers(_SSE_HEADERS)
    if _EVENTS in request.scope:
        request.scope[_EVENTS] = events
        return await make_response(_no_body(), 200, headers)  # streamed: no Content-Length, events follow
    response = await make_response(events, 200, headers)
    response.timeout = None  # Quart cuts responses at 60 s by default; streams are long-lived
    return response


async def _no_body() -> AsyncIterator[str]:
    """A streamed body with nothing in it."""
    return
    yield


def send_streams_after_quart(asgi_app):
    """ASGI middleware (``app.asgi_app = send_streams_after_quart(app.asgi_app)``) that
    sends an SSE response's events after Quart has finished the request. Quart keeps
    a request's objects (its request and body, context, two tasks, the response) for as
    long as the response is sent, ≈ 9 KB an idle stream; here a stream holds one task
    that watches for the client leaving. The handler's work (session, ownership, errors,
    headers) is done by Quart as for any request."""

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return await asgi_app(scope, receive, send)
        streaming, end, left = False, None, False
        held = asyncio.get_running_loop().create_future()  # done once the response's end is held
        scope[_EVENTS] = None  # sse_response may leave its events here

        async def receive_for_quart():
            """The client's messages, noting a disconnect (the server says so once). Once the
            response's end is held, a disconnect of our own: Quart >= 0.23 returns only
            after one, which the server sends only after the end we hold."""
            nonlocal left
            receiving = asyncio.ensure_future(receive())
            try:
                await asyncio.wait((receiving, held), return_when=asyncio.FIRST_COMPLETED)
            finally:  # also when Quart < 0.23 cancels this wait, its handler done
                received = receiving.done() and not receiving.cancelled()
                if received:
                    left = left or receiving.result()["type"] == "http.disconnect"
                else:
                    receiving.cancel()  # the server's queue keeps what it has not handed over
            return receiving.result() if received else {"type": "http.disconnect"}

        async def send_or_hold(message) -> None:
            nonlocal streaming, end
            if message["type"] == "http.response.start":  # the handler may have answered otherwise after all
                streaming = message["status"] == 200 and _is_event_stream(message["headers"])
            elif message["type"] == "http.response.body" and not message.get("more_body") and streaming and scope[_EVENTS]:
                end = message  # the end of the response waits for the events
                held.set_result(None)
                return
            await send(message)

        await asgi_app(scope, receive_for_quart, send_or_hold)
        if (events := scope.pop(_EVENTS)) is None:
            return
        if end is None or left:  # an error was sent instead, or the client left first
            await events.aclose()
        elif await _send_events(events, receive, send):
            await send(end)

    return app


def _is_event_stream(headers) -> bool:
    return any(name.lower() == b"content-type" and value.startswith(b"text/event-stream") for name, value in headers)


async def _send_events(events: AsyncIterator[str], receive, send) -> bool:
    """Each chunk as it comes, until the events end (True) or the client leaves (False)."""
    streaming, left = asyncio.current_task(), False

    async def watch() -> None:
        nonlocal left
        while (await receive())["type"] != "http.disconnect":
            pass
        left = True
        streaming.cancel()  # the events are awaited somewhere in the feed: stop there

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        async for chunk in events:
            await send({"type": "http.response.body", "body": chunk.encode(), "more_body": True})
        return True
    except asyncio.CancelledError:
        if not left:
            raise
        streaming.uncancel()
        return False
    finally:
        watcher.cancel()
        await events.aclose()
