"""Opening and closing the database. Schema changes are aerich migrations, one folder per
dialect under migrations/, applied by the web process when it starts (or by
``python -m models.db``)."""
from __future__ import annotations

import asyncio
from pathlib import Path

from aerich import Command
from tortoise import Tortoise

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def tortoise_config(database_url: str) -> dict:
    return {
        "connections": {"default": database_url},
        "apps": {"models": {"models": ["models", "aerich.models"], "default_connection": "default"}},
    }


def migrations_for(database_url: str) -> Path:
    dialect = "postgres" if database_url.startswith(("postgres://", "asyncpg://", "psycopg://")) else "sqlite"
    return MIGRATIONS / dialect


async def open_db(database_url: str, *, migrate: bool = False) -> None:
    config = tortoise_config(database_url)
    if migrate:
        command = Command(tortoise_config=config, app="models", location=str(migrations_for(database_url)))
        await command.init()
        await command.upgrade(run_in_transaction=True)
    else:
        await Tortoise.init(config=config)


async def close_db() -> None:
    await Tortoise.close_connections()


def __getattr__(name: str):
    # aerich's CLI reads TORTOISE_ORM from here; computed on use, so importing has no effects.
    if name == "TORTOISE_ORM":
        from config import Settings

        return tortoise_config(Settings.from_env().database_url)
    raise AttributeError(name)


if __name__ == "__main__":
    from config import Settings

    async def _migrate() -> None:
        await open_db(Settings.from_env().database_url, migrate=True)
        await close_db()

    asyncio.run(_migrate())
