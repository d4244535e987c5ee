"""Tortoise models: workflows (one conversation each), their messages and their logs.

Timestamps are unix seconds (floats), as the API sends them. Rows written by the chatbot
job have ids derived from (workflow, round, step), so a job that runs twice finds its own
rows instead of writing them again.
"""
from __future__ import annotations

import asyncio
import functools
import re
import time
import uuid
from typing import Any

from tortoise import fields
from tortoise.exceptions import IntegrityError
from tortoise.models import Model

RUNNING, COMPLETED, STOPPED, FAILED = "running", "completed", "stopped", "failed"
ROUND_END_EVENT = {COMPLETED: "complete", STOPPED: "stopped", FAILED: "error"}

_IDS = uuid.UUID("6f1c8a52-9d8e-4d54-a1f7-0c3a4b6e2d11")


def new_id() -> str:
    return str(uuid.uuid4())


def is_workflow_id(text: str) -> bool:
    """Whether ``text`` has the form of the ids new_id makes."""
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


def round_item_id(workflow_id: str, round_number: int, name: str) -> str:
    return str(uuid.uuid5(_IDS, f"{workflow_id}/{round_number}/{name}"))


class Workflow(Model):
    id = fields.CharField(primary_key=True, max_length=36, default=new_id)
    owner_id = fields.CharField(max_length=64)
    status = fields.CharField(max_length=16, default=RUNNING)
    round_number = fields.IntField(default=1)
    title = fields.CharField(max_length=120, default="")
    error_code = fields.CharField(max_length=64, default="")  # why the last round failed
    error_message = fields.CharField(max_length=500, default="")
    created_at = fields.FloatField(default=time.time)
    updated_at = fields.FloatField(default=time.time)

    class Meta:
        table = "workflows"
        indexes = (("owner_id", "updated_at"),)

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "status": self.status,
            "title": self.title,
            "roundNumber": self.round_number,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "error": {"code": self.error_code, "message": self.error_message} if self.status == FAILED else None,
        }


class Message(Model):
    id = fields.CharField(primary_key=True, max_length=36, default=new_id)
    workflow = fields.ForeignKeyField("models.Workflow", related_name="messages", on_delete=fields.CASCADE)
    role = fields.CharField(max_length=16)
    content = fields.TextField()
    round_number = fields.IntField()
    created_at = fields.FloatField(default=time.time)

    class Meta:
        table = "messages"
        unique_together = (("workflow", "round_number", "role"),)
        indexes = (("workflow", "created_at"),)

    def to_item(self) -> dict:
        return {
            "id": self.id,
            "workflowId": self.workflow_id,
            "role": self.role,
            "content": self.content,
            "createdAt": self.created_at,
            "roundNumber": self.round_number,
        }


class Log(Model):
    id = fields.CharField(primary_key=True, max_length=36, default=new_id)
    workflow = fields.ForeignKeyField("models.Workflow", related_name="logs", on_delete=fields.CASCADE)
    message = fields.TextField()
    type = fields.CharField(max_length=32, default="step")
    status = fields.CharField(max_length=16, default="done")
    round_number = fields.IntField()
    created_at = fields.FloatField(default=time.time)

    class Meta:
        table = "logs"
        indexes = (("workflow", "created_at"),)

    def to_item(self) -> dict:
        return {
            "id": self.id,
            "workflowId": self.workflow_id,
            "message": self.message,
            "type": self.type,
            "status": self.status,
            "createdAt": self.created_at,
            "roundNumber": self.round_number,
        }


async def create_once(model: type[Model], **values) -> Model | None:
    """Insert a row with a derived id, or None if it is already there (a job that ran
    twice). One INSERT, where get_or_create would take a transaction and a SELECT."""
    try:
        return await model.create(**values)
    except IntegrityError:
        return None


HISTORY_PAGE = 50
_HISTORY_PAGE_SQL = (
    "SELECT m.id, m.role, m.content, m.created_at, w.status, w.round_number AS round"
    " FROM messages m JOIN workflows w ON w.id = m.workflow_id WHERE m.workflow_id = $1 AND m.round_number <= $2"
    " ORDER BY m.round_number DESC, m.created_at DESC LIMIT $3 OFFSET $4"
)


async def recent_messages(workflow_id: str, round_number: int, max_chars: int) -> list[dict]:
    """The conversation up to a round, newest first, in pages until they hold ``max_chars``
    (what a model is sent at most), so a long conversation costs what is used of it. Each
    row carries its workflow's ``status`` and current ``round``: one query answers both."""
    rows: list[dict] = []
    chars = 0
    while True:
        _, page = await _execute(_HISTORY_PAGE_SQL, workflow_id, round_number, HISTORY_PAGE, len(rows))
        rows += page
        chars += sum(len(row["content"]) for row in page)
        if len(page) < HISTORY_PAGE or chars >= max_chars:
            return rows


async def owned_workflow_or_none(owner_id: str, workflow_id: str) -> Workflow | None:
    """Workflow.get_or_none(id=workflow_id, owner_id=owner_id), by hand (see _execute)."""
    _, rows = await _execute("SELECT * FROM workflows WHERE id = $1 AND owner_id = $2", workflow_id, owner_id)
    return Workflow._init_from_db(**rows[0]) if rows else None  # as Tortoise makes a row's model


async def claim_next_round(workflow_id: str, round_number: int, now: float) -> bool:
    """Start the round after ``round_number`` unless a round runs or another start got there first."""
    claimed, _ = await _execute(
        "UPDATE workflows SET status = $1, round_number = $2, updated_at = $3 WHERE id = $4 AND round_number = $5 AND status <> $6",
        RUNNING, round_number + 1, now, workflow_id, round_number, RUNNING,
    )
    return claimed > 0


async def end_running_round(workflow_id: str, round_number: int, status: str, now: float, code: str, message: str) -> bool:
    """Give the round its final status if it is still running; whether this call did."""
    ended, _ = await _execute(
        "UPDATE workflows SET status = $1, updated_at = $2, error_code = $3, error_message = $4"
        " WHERE id = $5 AND round_number = $6 AND status = $7",
        status, now, code, message[:500], workflow_id, round_number, RUNNING,
    )
    return ended > 0


async def _execute(sql: str, *values: Any) -> tuple[int, list[dict]]:
    """One of the statements every round runs, written here: Tortoise builds a query anew
    on each call, 140–370 µs of CPU more than the query itself (measured on PostgreSQL),
    which on these paths is a share of a busy machine. Rows changed, and rows as dicts."""
    db = Workflow._meta.db  # inside in_transaction(), the transaction's connection
    count, rows = await db.execute_query(_for_dialect(sql, db.capabilities.dialect), list(values))
    return count, [dict(row) for row in rows]


@functools.cache
def _for_dialect(sql: str, dialect: str) -> str:
    """``sql`` with $1, $2… (each once, in order: asyncpg's form) as the driver takes them."""
    return sql if dialect == "postgres" else re.sub(r"\$\d+", "?", sql)


async def chat_items(workflow_id: str) -> list[tuple[str, dict, Message | Log]]:
    """Every stored message and log of a workflow as ("message"|"log", item, row), oldest first."""
    # Both at once (two pooled connections): each still comes after what the caller read first.
    messages, logs = await asyncio.gather(
        Message.filter(workflow_id=workflow_id).order_by("created_at", "id"), Log.filter(workflow_id=workflow_id).order_by("created_at", "id")
    )
    return _in_order(messages, logs)


async def round_items(workflow_id: str, round_number: int) -> list[tuple[str, dict, Message | Log]]:
    """A round's stored messages and logs, as chat_items; one query after the other, as a
    transaction's one connection takes them."""
    messages = await Message.filter(workflow_id=workflow_id, round_number=round_number)
    return _in_order(messages, await Log.filter(workflow_id=workflow_id, round_number=round_number))


def _in_order(messages: list[Message], logs: list[Log]) -> list[tuple[str, dict, Message | Log]]:
    rows = [("message", m.to_item(), m) for m in messages] + [("log", entry.to_item(), entry) for entry in logs]
    return sorted(rows, key=lambda row: (row[2].created_at, row[0] == "message", row[2].id))
