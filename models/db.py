"""Opening and closing the database; schema changes are aerich migrations under migrations/."""
from __future__ import annotations

from tortoise import Tortoise


def tortoise_config(database_url: str) -> dict:
    return {
        "connections": {"default": database_url},
        "apps": {"models": {"models": ["models", "aerich.models"], "default_connection": "default"}},
    }


async def open_db(database_url: str) -> None:
    await Tortoise.init(config=tortoise_config(database_url))
    await Tortoise.generate_schemas(safe=True)


async def close_db() -> None:
    await Tortoise.close_connections()
