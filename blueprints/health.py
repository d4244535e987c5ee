"""Liveness and readiness probes, and Prometheus metrics."""
from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from quart import Blueprint
from quart_schema import validate_response
from tortoise import connections

from blueprints import runtime
from metrics import registry

bp = Blueprint("health", __name__)


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    checks: dict[str, str]  # what was probed: "ok", or why not


@bp.get("/metrics")
async def metrics():
    return generate_latest(registry()), 200, {"Content-Type": CONTENT_TYPE_LATEST}


@bp.get("/healthz")
@validate_response(Health)
async def healthz():
    return Health(status="ok")


@bp.get("/readyz")
@validate_response(Readiness, 200)
@validate_response(Readiness, 503)
async def readyz():
    checks = {}
    for name, probe in (("database", _database), ("feed", runtime().feed.ping)):
        try:
            await probe()
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"unavailable: {type(exc).__name__}"
    ready = all(value == "ok" for value in checks.values())
    return Readiness(status="ready" if ready else "unavailable", checks=checks), 200 if ready else 503


async def _database() -> None:
    for connection in connections.all():
        await connection.execute_query("SELECT 1")
