"""The app factory: configuration, the serving lifespan (database, feed, queue), blueprints.

Run it with ``hypercorn app:app``; tests and embedders call ``create_app()``.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import uuid
from collections.abc import AsyncIterator

from quart import Quart, request, session
from quart_schema import QuartSchema, RequestSchemaValidationError
from werkzeug.exceptions import HTTPException

import metrics
from blueprints import api_error, chat, health, page, send_streams_after_quart, stream
from config import LOG_FORMAT, Settings
from models.db import close_db, open_db, serving_alone
from tasks.runtime import Runtime
from tasks.workflows import PromptTooLong, RoundRunning, WorkflowNotFound, fail_orphaned_rounds


def create_app(test_config: dict | None = None) -> Quart:
    settings = Settings.from_env(**(test_config or {}))
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)  # unless the server configured logging
    app = Quart(__name__, static_folder="static")
    app.config.update(
        SECRET_KEY=settings.secret_key,
        SESSION_COOKIE_NAME="chat_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=365 * 24 * 3600,
        SESSION_REFRESH_EACH_REQUEST=False,
        SEND_FILE_MAX_AGE_DEFAULT=0,  # revalidate assets (ETag), so a deploy reaches every browser
        MAX_CONTENT_LENGTH=4 * settings.max_prompt_chars + 64 * 1024,
        QUART_SCHEMA_CONVERSION_PREFERENCE="pydantic",
    )
    QuartSchema(app, info={"title": "Chat streaming API", "version": "1.0"})
    for blueprint in (chat.bp, stream.bp, health.bp, page.bp):
        app.register_blueprint(blueprint)
    app.asgi_app = send_streams_after_quart(app.asgi_app)
    _lifespan(app, settings)
    _identity(app)
    _errors(app)
    return app


def _lifespan(app: Quart, settings: Settings) -> None:
    @app.while_serving
    async def services() -> AsyncIterator[None]:
        await open_db(settings.database_url, migrate=True)
        async with contextlib.AsyncExitStack() as opened:  # closed in reverse order, also if start-up fails
            opened.callback(metrics.process_ended)
            opened.push_async_callback(close_db)
            embedded = settings.redis_url is None
            if embedded:
                await opened.enter_async_context(serving_alone(settings.database_url))
            runtime = app.extensions["chat_runtime"] = await Runtime.open(settings, runs_jobs=embedded)
            opened.push_async_callback(runtime.close)
            if embedded:
                await fail_orphaned_rounds(runtime)
            gc_thresholds = _collect_for_long_lived_streams()
            yield
            gc.set_threshold(*gc_thresholds)
            gc.unfreeze()


def _collect_for_long_lived_streams() -> tuple[int, int, int]:
    """Tune the cyclic garbage collector for a process that holds thousands of streams for
    hours; the thresholds it had. A full collection examines every object of every open
    stream (a few hundred each), and with Python's defaults one ran every 2–3 s at 10,000
    idle streams, pausing the process for a second each time (keepalives every 3 s instead
    of 2). Objects made at start-up are frozen out of collections; young collections come
    less often, so fewer short-lived objects reach the oldest generation; and that one is
    collected after 1,000 collections of the next (minutes under load), not 10."""
    previous = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(10_000, 50, 1_000)
    return previous


def _identity(app: Quart) -> None:
    @app.before_request
    async def anonymous_user() -> None:
        if not isinstance(session.get("uid"), str):
            session["uid"] = uuid.uuid4().hex
            session.permanent = True


def _errors(app: Quart) -> None:
    @app.errorhandler(WorkflowNotFound)
    async def not_found(_: WorkflowNotFound):
        return api_error(404, "not_found", "No such workflow.")

    @app.errorhandler(RoundRunning)
    async def round_running(_: RoundRunning):
        return api_error(409, "round_running", "A reply is still being generated in this conversation. Stop it or wait.")

    @app.errorhandler(PromptTooLong)
    async def prompt_too_long(error: PromptTooLong):
        return api_error(413, "prompt_too_long", str(error))

    @app.errorhandler(RequestSchemaValidationError)
    async def invalid(error: RequestSchemaValidationError):
        details = getattr(error.validation_error, "errors", lambda: [])()
        message = "; ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']}" for d in details) or str(error.validation_error)
        return api_error(422, "invalid_request", message)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException):
        if not request.path.startswith("/api/"):
            return error
        return api_error(error.code or 500, (error.name or "error").lower().replace(" ", "_"), error.description or "")

    @app.errorhandler(Exception)
    async def unexpected(error: Exception):
        logging.getLogger(__name__).exception("unhandled error", exc_info=error)
        return api_error(500, "internal_error", "Something went wrong on our side.")


app = create_app()
