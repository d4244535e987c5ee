"""The models against real databases: SQLite always, PostgreSQL when TEST_POSTGRES_URL names
a server (a fresh database is created on it and dropped afterwards). The schema is the one
production gets: the aerich migrations, applied by the documented command
(``python -m models.db``) as an operator would."""
from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aerich.models import Aerich
from tortoise.exceptions import IntegrityError
from tortoise.transactions import in_transaction

from models import (
    COMPLETED, FAILED, HISTORY_PAGE, RUNNING, STOPPED, Log, Message, Workflow, chat_items, claim_next_round, end_running_round,
    owned_workflow_or_none, recent_messages, round_item_id,
)
from models.db import ServedElsewhere, close_db, migrations_for, open_db, serving_alone
from tasks.workflows import list_workflows
from tests.servers import postgres_database


@contextlib.contextmanager
def new_database(kind: str, directory: Path) -> Iterator[str]:
    """An empty database: an SQLite file in ``directory`` or a fresh PostgreSQL database."""
    if kind == "sqlite":
        yield f"sqlite://{directory / 'chat.sqlite3'}"
        return
    admin = os.environ.get("TEST_POSTGRES_URL")
    if not admin:
        if os.environ.get("CI"):
            pytest.fail("CI is set but TEST_POSTGRES_URL is not: the PostgreSQL model tests must run in CI")
        pytest.skip("TEST_POSTGRES_URL is not set")
    with postgres_database(admin) as url:
        yield url


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def database_url(request, tmp_path_factory):
    with new_database(request.param, tmp_path_factory.mktemp("models")) as url:
        yield migrated(url)


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database_url(request, tmp_path):
    with new_database(request.param, tmp_path) as url:
        yield url


def migrated(database_url: str) -> str:
    for _ in range(2):  # the second run must find nothing to do
        subprocess.run([sys.executable, "-m", "models.db"], env={**os.environ, "DATABASE_URL": database_url}, check=True)
    return database_url


def test_processes_starting_together_on_a_new_database_migrate_it_once(empty_database_url):
    """As web processes do when they start together (hypercorn --workers N): without a
    lock, all but one failed on tables the first had just created, and Hypercorn stopped."""
    env = {**os.environ, "DATABASE_URL": empty_database_url}
    runs = [subprocess.Popen([sys.executable, "-m", "models.db"], env=env, stderr=subprocess.PIPE) for _ in range(6)]
    errors = [err.decode()[-300:] for err in (run.communicate(timeout=120)[1] for run in runs) if err]
    assert [run.returncode for run in runs] == [0] * 6, errors

    async def applied() -> list[str]:
        await open_db(empty_database_url)
        try:
            return [row.version for row in await Aerich.all()]
        finally:
            await close_db()

    versions = asyncio.run(applied())
    assert sorted(versions) == sorted(path.name for path in migrations_for(empty_database_url).glob("models/*.py"))


@pytest.fixture
async def db(database_url):
    await open_db(database_url)
    try:
        yield database_url
    finally:
        await close_db()


async def test_an_install_without_its_migrations_refuses_to_start(tmp_path, monkeypatch):
    # `pip install .` run elsewhere than the checkout: aerich would find no migration,
    # apply nothing and report success, and every query would then fail.
    monkeypatch.setattr("models.db.MIGRATIONS", tmp_path / "nowhere")
    with pytest.raises(RuntimeError, match="No migrations at"):
        await open_db(f"sqlite://{tmp_path / 'chat.sqlite3'}", migrate=True)
    await close_db()


async def test_the_list_holds_every_workflow_of_its_owner(db):
    owner = f"user-{uuid.uuid4().hex[:8]}"
    await Workflow.bulk_create([Workflow(owner_id=owner, title=f"w{i}", updated_at=1000.0 + i) for i in range(250)])
    listed = await list_workflows(owner)
    assert [w["title"] for w in listed] == [f"w{i}" for i in reversed(range(250))]


async def test_one_process_at_a_time_serves_a_database_in_embedded_mode(db):
    """A second holder (another process: here another file handle or PostgreSQL session)
    is refused while the first holds the database, and gets it once the first lets go."""
    async with serving_alone(db):
        with pytest.raises(ServedElsewhere, match="REDIS_URL"):
            async with serving_alone(db):
                pass
    async with serving_alone(db):
        pass


async def new_workflow(**fields) -> Workflow:
    return await Workflow.create(owner_id=fields.pop("owner_id", f"user-{uuid.uuid4().hex[:8]}"), **fields)


async def test_create_a_workflow_with_messages_and_logs(db):
    before = time.time()
    workflow = await new_workflow(owner_id="user-1", title="Hello there")
    assert (workflow.status, workflow.round_number) == (RUNNING, 1)
    assert len(workflow.id) == 36 and before <= workflow.created_at <= time.time()

    user = await Message.create(workflow=workflow, role="user", content="Hello there", round_number=1)
    step = await Log.create(workflow=workflow, message="thinking", round_number=1)
    reply = await Message.create(workflow=workflow, role="assistant", content="Hi! ünï 🌍\nsecond line", round_number=1)

    stored = await Workflow.get(id=workflow.id)
    assert stored.to_dict() == workflow.to_dict()
    assert stored.to_dict() == {
        "id": workflow.id,
        "status": RUNNING,
        "title": "Hello there",
        "roundNumber": 1,
        "createdAt": workflow.created_at,
        "updatedAt": workflow.updated_at,
        "error": None,
    }
    assert (await Message.get(id=reply.id)).to_item() == {
        "id": reply.id,
        "workflowId": workflow.id,
        "role": "assistant",
        "content": "Hi! ünï 🌍\nsecond line",
        "createdAt": reply.created_at,
        "roundNumber": 1,
    }
    assert (await Log.get(id=step.id)).to_item() == {
        "id": step.id,
        "workflowId": workflow.id,
        "message": "thinking",
        "type": "step",
        "status": "done",
        "createdAt": step.created_at,
        "roundNumber": 1,
    }
    assert {m.id for m in await workflow.messages.all()} == {user.id, reply.id}
    assert [entry.id for entry in await workflow.logs.all()] == [step.id]


async def test_chat_items_are_oldest_first(db):
    workflow, other = await new_workflow(), await new_workflow()
    t = 1_700_000_000.0
    # written out of order, as a retried job or a slow writer could
    rows = [
        await Message.create(workflow=workflow, role="assistant", content="reply 1", round_number=1, created_at=t + 3.5),
        await Log.create(workflow=workflow, message="step 2", round_number=1, created_at=t + 2.25),
        await Message.create(workflow=workflow, role="user", content="prompt 1", round_number=1, created_at=t + 0.001),
        await Log.create(workflow=workflow, message="step 1", round_number=1, created_at=t + 1.125),
        await Message.create(workflow=workflow, role="user", content="prompt 2", round_number=2, created_at=t + 10.0),
        await Log.create(workflow=workflow, message="step 3", round_number=2, created_at=t + 10.000001),
        await Message.create(workflow=workflow, role="assistant", content="reply 2", round_number=2, created_at=t + 11.0),
    ]
    await Message.create(workflow=other, role="user", content="someone else", round_number=1, created_at=t + 5)
    await Log.create(workflow=other, message="someone else's step", round_number=1, created_at=t + 6)

    items = await chat_items(workflow.id)
    expected = sorted(rows, key=lambda row: row.created_at)
    assert [row.id for _, _, row in items] == [row.id for row in expected]
    assert [kind for kind, _, _ in items] == ["message", "log", "log", "message", "message", "log", "message"]
    assert [item["createdAt"] for _, item, _ in items] == sorted(row.created_at for row in rows)
    for kind, item, row in items:
        assert item == row.to_item()
        assert item["workflowId"] == workflow.id
        assert ("content" in item) == (kind == "message")
    assert await chat_items(str(uuid.uuid4())) == []


async def test_recent_messages_load_only_what_a_model_can_be_sent(db):
    """Newest first, up to the round asked for, in pages until they hold max_chars: a
    long conversation is not read whole for every round. Each row says the workflow's
    status and current round."""
    workflow = await new_workflow()
    rounds = 2 * HISTORY_PAGE  # two messages a round: four pages
    for n in range(1, rounds + 1):
        await Message.create(workflow=workflow, role="user", content=f"q{n}".ljust(10), round_number=n)
        await Message.create(workflow=workflow, role="assistant", content=f"a{n}".ljust(10), round_number=n)
    await Workflow.filter(id=workflow.id).update(round_number=rounds)

    everything = await recent_messages(workflow.id, rounds - 1, max_chars=10**9)
    assert [row["content"].strip() for row in everything[:3]] == [f"a{rounds - 1}", f"q{rounds - 1}", f"a{rounds - 2}"]
    assert len(everything) == 2 * (rounds - 1)  # nothing of the later round
    assert {(row["status"], row["round"]) for row in everything} == {(RUNNING, rounds)}

    newest = [row["id"] for row in await recent_messages(workflow.id, rounds, max_chars=10**9)]
    assert len(newest) == 2 * rounds
    one_page = await recent_messages(workflow.id, rounds, max_chars=10 * HISTORY_PAGE)  # 10 characters a message
    assert [row["id"] for row in one_page] == newest[:HISTORY_PAGE]
    two_pages = await recent_messages(workflow.id, rounds, max_chars=10 * HISTORY_PAGE + 1)
    assert [row["id"] for row in two_pages] == newest[: 2 * HISTORY_PAGE]
    assert await recent_messages(str(uuid.uuid4()), 1, max_chars=100) == []


async def test_one_message_per_role_and_round(db):
    workflow = await new_workflow()
    await Message.create(workflow=workflow, role="user", content="prompt", round_number=1)
    await Message.create(workflow=workflow, role="assistant", content="first", round_number=1)
    with pytest.raises(IntegrityError):
        await Message.create(workflow=workflow, role="assistant", content="a second reply to the same round", round_number=1)
    # the same role in another round, or in another workflow, is fine
    await Message.create(workflow=workflow, role="assistant", content="next round", round_number=2)
    await Message.create(workflow=await new_workflow(), role="assistant", content="elsewhere", round_number=1)
    replies = await Message.filter(workflow_id=workflow.id, role="assistant").order_by("round_number")
    assert [(m.round_number, m.content) for m in replies] == [(1, "first"), (2, "next round")]


def test_round_item_id_is_deterministic():
    workflow_id = str(uuid.uuid4())
    first = round_item_id(workflow_id, 1, "assistant")
    assert first == round_item_id(workflow_id, 1, "assistant")
    assert str(uuid.UUID(first)) == first and len(first) == 36
    others = {
        round_item_id(workflow_id, 2, "assistant"),
        round_item_id(workflow_id, 1, "user"),
        round_item_id(workflow_id, 1, "log-0"),
        round_item_id(str(uuid.uuid4()), 1, "assistant"),
    }
    assert first not in others and len(others) == 4
    # fixed across processes and versions: stored rows are found again by recomputing it
    assert round_item_id("00000000-0000-0000-0000-000000000000", 1, "assistant") == str(
        uuid.uuid5(uuid.UUID("6f1c8a52-9d8e-4d54-a1f7-0c3a4b6e2d11"), "00000000-0000-0000-0000-000000000000/1/assistant")
    )


async def test_a_job_that_runs_twice_finds_its_own_rows(db):
    workflow = await new_workflow()
    reply_id = round_item_id(workflow.id, 1, "assistant")
    log_id = round_item_id(workflow.id, 1, "log-0")
    await Message.create(id=reply_id, workflow=workflow, role="assistant", content="partial", round_number=1)
    await Log.create(id=log_id, workflow=workflow, message="step", round_number=1)
    with pytest.raises(IntegrityError):
        await Log.create(id=round_item_id(workflow.id, 1, "log-0"), workflow=workflow, message="step again", round_number=1)
    again, created = await Message.get_or_create(
        id=round_item_id(workflow.id, 1, "assistant"), defaults={"workflow": workflow, "role": "assistant", "content": "x", "round_number": 1}
    )
    assert not created and again.content == "partial"
    assert await Message.filter(workflow_id=workflow.id).count() == 1
    assert await Log.filter(workflow_id=workflow.id).count() == 1


async def test_ending_a_round_changes_its_row_once(db):
    workflow, bystander = await new_workflow(), await new_workflow()
    now, long_message = time.time(), "x" * 600
    assert await end_running_round(workflow.id, 1, FAILED, now, "provider_error", long_message)
    assert not await end_running_round(workflow.id, 1, STOPPED, now + 1, "", "")
    stored = await Workflow.get(id=workflow.id)
    assert (stored.status, stored.updated_at, stored.error_code, stored.error_message) == (FAILED, now, "provider_error", "x" * 500)
    assert (await Workflow.get(id=bystander.id)).status == RUNNING
    assert not await end_running_round(bystander.id, 2, COMPLETED, now, "", "")  # not the round that runs
    assert not await end_running_round(str(uuid.uuid4()), 1, COMPLETED, now, "", "")
    assert (await Workflow.get(id=bystander.id)).status == RUNNING


async def test_concurrent_round_ends_have_one_winner(db):
    """A stop and the job's own completion racing: exactly one of them changes the row."""
    workflow = await new_workflow()
    results = await asyncio.gather(
        *(end_running_round(workflow.id, 1, status, time.time(), "", "") for status in [COMPLETED, STOPPED] * 4)
    )
    assert sorted(results) == [False] * 7 + [True]
    winner = [COMPLETED, STOPPED][results.index(True) % 2]
    assert (await Workflow.get(id=workflow.id)).status == winner


async def test_the_next_round_is_claimed_once_and_only_after_the_last_one_ended(db):
    workflow = await new_workflow()
    assert not await claim_next_round(workflow.id, 1, time.time())  # round 1 still runs
    await end_running_round(workflow.id, 1, COMPLETED, time.time(), "", "")
    now = time.time()
    claims = await asyncio.gather(*(claim_next_round(workflow.id, 1, now) for _ in range(6)))  # six starts at once
    assert sorted(claims) == [False] * 5 + [True]
    stored = await Workflow.get(id=workflow.id)
    assert (stored.status, stored.round_number, stored.updated_at) == (RUNNING, 2, now)
    await end_running_round(workflow.id, 2, STOPPED, time.time(), "", "")
    assert not await claim_next_round(workflow.id, 1, time.time())  # a start that read round 1: round 2 came since
    assert not await claim_next_round(str(uuid.uuid4()), 1, time.time())


async def test_a_workflow_is_read_only_by_its_owner(db):
    workflow = await new_workflow(owner_id="user-owner", title="Mine")
    mine = await owned_workflow_or_none("user-owner", workflow.id)
    assert mine is not None and mine.to_dict() == workflow.to_dict()
    assert await owned_workflow_or_none("user-other", workflow.id) is None
    assert await owned_workflow_or_none("user-owner", str(uuid.uuid4())) is None
    await end_running_round(workflow.id, 1, COMPLETED, time.time(), "", "")
    await mine.refresh_from_db(fields=["status"])  # a stored row's model, as Tortoise's own reads give
    assert mine.status == COMPLETED


def test_a_database_opened_after_another_one_closed_is_the_only_one(database_url, tmp_path):
    """As a process that closes one database and opens another, of the other dialect,
    does: the first one's connection lingered, and every transaction then failed."""
    other = "postgres" if database_url.startswith("sqlite") else "sqlite"

    async def each_in_turn(urls: list[str]) -> None:
        for url in urls:
            await open_db(url)
            try:
                async with in_transaction():
                    await Workflow.all().count()
            finally:
                await close_db()

    with new_database(other, tmp_path) as other_url:
        asyncio.run(each_in_turn([database_url, migrated(other_url)]))


async def test_a_pooled_connection_left_in_a_transaction_comes_back_without_it(db):
    # Pooled PostgreSQL connections skip asyncpg's reset query (models/db.py), relying on
    # asyncpg to roll back what this app can leave behind: a transaction left open.
    if not db.startswith("postgres"):
        pytest.skip("a PostgreSQL pool behaviour")
    from tortoise import Tortoise

    await Workflow.all().count()  # the pool opens on first use
    pool = Tortoise.get_connection("postgres")._pool
    async with pool.acquire() as connection:
        left = await connection.fetchval("SELECT pg_backend_pid()")
        await connection.execute("BEGIN")
        await connection.execute("CREATE TEMPORARY TABLE left_open (x int)")
    for _ in range(pool.get_max_size()):  # an idle pool hands back the connection just released
        async with pool.acquire() as connection:
            if await connection.fetchval("SELECT pg_backend_pid()") == left:
                assert not connection.is_in_transaction()
                assert await connection.fetchval("SELECT to_regclass('pg_temp.left_open')") is None  # rolled back
                return
    pytest.fail("never got the connection back")
