"""Server-Sent Events framing (https://html.spec.whatwg.org/multipage/server-sent-events.html)."""
from __future__ import annotations

import re

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def frame(event_type: str, data: str, cursor: str | None = None) -> str:
    """One event; every line of ``data`` becomes its own ``data:`` line."""
    if _LINE_BREAK.search(event_type) or (cursor and _LINE_BREAK.search(cursor)):
        raise ValueError("event type and id must be single lines")
    head = f"id: {cursor}\n" if cursor is not None else ""
    if "\n" in data or "\r" in data:
        body = "".join(f"data: {line}\n" for line in _LINE_BREAK.split(data))
    else:  # the common case (JSON): no split
        body = f"data: {data}\n"
    return f"{head}event: {event_type}\n{body}\n"


def comment(text: str) -> str:
    """Comment lines. No blank line after them: that would end an empty event, which
    some clients (httpx-sse) hand to the application as a blank ``message``."""
    return "".join(f": {line}\n" for line in _LINE_BREAK.split(text))


KEEPALIVE = comment("keepalive")
