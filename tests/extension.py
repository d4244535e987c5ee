"""An extension kept apart from the app, as README's "Building on the feed" has it: a
blueprint and jobs of its own, served by ``hypercorn tests.extension:app`` and run by
``arq tests.extension.WorkerSettings`` (Redis mode) or in the web process (embedded)."""
from __future__ import annotations

from arq import Retry
from quart import Blueprint, request

from app import create_app
from blueprints import api_error, runtime, sse_response
from events.sse import stream_context
from tasks.worker import with_jobs

bp = Blueprint("documents", __name__, url_prefix="/api/documents")


async def count_words(ctx: dict, doc_id: str, text: str) -> int:
    words = len(text.split())
    data = {"words": words, "jobId": ctx["job_id"], "jobTry": ctx["job_try"]}
    await ctx["runtime"].feed.emit(f"doc:{doc_id}", "counted", data, category="document")
    await ctx["runtime"].feed.finish(f"doc:{doc_id}")  # its events go FEED_RETENTION_SECONDS from now
    return words


async def count_after_a_retry(ctx: dict, doc_id: str, text: str) -> None:
    """Asks to be run again on its first try (a service it needs is away), then has
    count_words do the counting: a job enqueued by a job."""
    await ctx["runtime"].feed.emit(f"doc:{doc_id}", "tried", {"jobTry": ctx["job_try"]}, category="document")
    if ctx["job_try"] == 1:
        raise Retry(defer=0.1)
    await ctx["runtime"].enqueue(count_words, doc_id, text)


JOBS = {job.__name__: job for job in (count_words, count_after_a_retry)}


@bp.post("/<doc_id>/<job_name>")
async def enqueue(doc_id: str, job_name: str):
    body = await request.get_json()
    job_id = await runtime().enqueue(JOBS[job_name], doc_id, body["text"], job_id=body.get("jobId"), defer=body.get("defer", 0))
    if job_id is None:
        return api_error(409, "job_exists", "A job with this id is queued, running or has just ended.")
    return {"jobId": job_id}, 202


@bp.get("/<doc_id>/events")
async def events(doc_id: str):
    feed, last_event_id = runtime().feed, request.headers.get("Last-Event-ID")
    return await sse_response(stream_context(feed, f"doc:{doc_id}", last_event_id, keepalive=1))


WorkerSettings = with_jobs(*JOBS.values())


app = create_app()
app.register_blueprint(bp)
