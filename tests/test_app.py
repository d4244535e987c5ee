"""The app factory's serving lifespan, in process (embedded mode, SQLite in a temporary folder)."""
from __future__ import annotations

import gc

from app import create_app


async def test_serving_tunes_the_garbage_collector_for_long_lived_streams_and_restores_it(tmp_path):
    """With Python's defaults a full collection ran every few seconds at 10,000 idle streams
    and paused the web process for a second each time: see bench/run.py --scenario idle."""
    before = gc.get_threshold()
    app = create_app({"database_url": f"sqlite://{tmp_path / 'chat.sqlite3'}", "secret_key": "test"})
    async with app.test_app():
        assert gc.get_threshold()[2] >= 1000  # the oldest generation: minutes apart, not seconds
        assert gc.get_threshold()[0] >= 10_000
        assert gc.get_freeze_count() > 0  # start-up objects are not examined again
        response = await app.test_client().get("/healthz")
        assert response.status_code == 200
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
