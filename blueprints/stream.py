"""GET /api/chatbot/<id>/stream: a workflow's events as Server-Sent Events."""
from __future__ import annotations

from quart import Blueprint, request

from blueprints import runtime, sse_response, user_id
from tasks.workflows import stream_workflow

bp = Blueprint("stream", __name__, url_prefix="/api/chatbot")


@bp.get("/<workflow_id>/stream")
async def stream(workflow_id: str):
    last_event_id = request.headers.get("Last-Event-ID") or request.args.get("lastEventId")
    categories = request.args.get("categories")
    wanted = {c.strip() for c in categories.split(",") if c.strip()} if categories else None
    return await sse_response(await stream_workflow(runtime(), user_id(), workflow_id, last_event_id, wanted))
