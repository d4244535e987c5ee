"""Prometheus metrics where rounds run (the web process in embedded mode, a worker's own
/metrics in Redis mode) and for a whole machine (PROMETHEUS_MULTIPROC_DIR): several web
processes and workers, one answer."""
from __future__ import annotations

import asyncio
import re
import tempfile

import httpx
import pytest

from tests.conftest import MODES, stack_for
from tests.servers import free_port, wait_until
from tests.sse import read_stream
from tests.test_contract import start


def samples(text: str) -> dict[str, float]:
    """Each sample line of an exposition, ``name{labels}`` -> value."""
    return {m[1]: float(m[2]) for m in re.finditer(r"^(\w+(?:\{[^}]*\})?) (\S+)$", text, re.M)}


def scrape(url: str) -> dict[str, float]:
    """A new connection each time: with several web processes, any of them may answer."""
    response = httpx.get(url, headers={"Connection": "close"})
    assert response.status_code == 200
    return samples(response.text)


COMPLETED = 'chat_rounds_ended_total{code="",status="completed"}'
STOPPED = 'chat_rounds_ended_total{code="",status="stopped"}'


@pytest.fixture(scope="module", params=MODES)
def rounds_metrics(request):
    """A stack of its own, and where its chat jobs' metrics are read."""
    if request.param == "memory":
        with stack_for(request, "memory") as stack:
            yield stack, stack.url + "/metrics"
        return
    url = f"http://127.0.0.1:{free_port()}/metrics"
    with stack_for(request, "redis", {"WORKER_METRICS_BIND": url.split("/")[2]}, workers=1) as stack:
        wait_until(lambda: httpx.get(url).status_code == 200, what="the worker's /metrics")
        yield stack, url


async def test_a_round_is_counted_where_it_ran(rounds_metrics):
    stack, url = rounds_metrics
    async with stack.client() as client:
        started = await start(client)
        events = await read_stream(client, started["streamUrl"])
    deltas = sum(e.kind == "delta" for e in events)
    assert deltas > 0 and events[-1].event == "complete"
    counted = scrape(url)
    assert counted[COMPLETED] == 1
    assert counted["chat_reply_deltas_total"] == deltas
    assert counted["chat_first_delta_seconds_count"] == 1 and 0 < counted["chat_first_delta_seconds_sum"] < 10
    assert counted["chat_job_seconds_count"] == 1
    assert counted["chat_rounds_running"] == 0


async def test_a_stopped_round_is_counted_as_stopped(rounds_metrics):
    stack, url = rounds_metrics
    async with stack.client() as client:
        started = await start(client, "stop me")
        head = await read_stream(client, started["streamUrl"], limit=6)
        assert scrape(url)["chat_rounds_running"] == 1
        assert (await client.post(f"/api/chatbot/{started['workflowId']}/stop")).status_code == 202
        rest = await read_stream(client, started["streamUrl"], last_event_id=head[-1].id)
    assert rest[-1].event == "stopped"
    counted = scrape(url)
    assert counted[STOPPED] == 1 and counted["chat_rounds_running"] == 0


@pytest.fixture(scope="module")
def machine(request):
    """Redis mode with two web processes and two workers sharing PROMETHEUS_MULTIPROC_DIR."""
    with tempfile.TemporaryDirectory() as directory:
        with stack_for(request, "redis", {"PROMETHEUS_MULTIPROC_DIR": directory}, web_processes=2) as stack:
            yield stack


async def test_every_process_of_a_machine_answers_for_all_of_them(machine):
    rounds, url = 4, machine.url + "/metrics"
    async with machine.client() as client:
        await client.get("/healthz")  # one user: concurrent first requests would each make one

        async def whole_round(number: int):
            return await read_stream(client, (await start(client, f"round {number}"))["streamUrl"])

        finished = await asyncio.gather(*(whole_round(i) for i in range(rounds)))
        deltas = sum(e.kind == "delta" for events in finished for e in events)
        idle = [asyncio.create_task(read_stream(client, f"/api/chatbot/{events[0].item['workflowId']}/stream", timeout=60))
                for events in finished[:3]]
        try:
            await until_scraped(url, "chat_sse_streams", 3)
            for _ in range(6):  # whichever web process answers
                counted = await asyncio.to_thread(scrape, url)
                assert counted["chat_rounds_started_total"] == rounds
                assert counted[COMPLETED] == rounds  # ended on the workers
                assert counted["chat_reply_deltas_total"] == deltas
                assert counted["chat_sse_streams"] == 3 and counted["chat_feed_subscriptions"] == 3
        finally:
            for task in idle:
                task.cancel()
            await asyncio.gather(*idle, return_exceptions=True)
    await until_scraped(url, "chat_sse_streams", 0)


async def until_scraped(url: str, name: str, value: float, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while (await asyncio.to_thread(scrape, url)).get(name) != value:
            await asyncio.sleep(0.05)


def test_a_worker_whose_metrics_address_is_taken_stops_saying_so(request):
    """Two workers of a machine given one WORKER_METRICS_BIND: the second stops at start-up
    naming the variable, where it would have left a traceback about a socket."""
    bind = f"127.0.0.1:{free_port()}"
    with stack_for(request, "redis", {"WORKER_METRICS_BIND": bind}, workers=2) as stack:
        wait_until(lambda: any(worker.poll() is not None for worker in stack.workers), what="a worker to stop")
        [stopped] = [n for n, worker in enumerate(stack.workers) if worker.poll() is not None]
        log = (stack.logs / f"worker-{stopped}.log").read_text()
        assert f"WORKER_METRICS_BIND={bind}: Address already in use" in log
