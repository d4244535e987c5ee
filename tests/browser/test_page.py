"""The bundled chat page in a real browser (Debian's Chromium driven by Playwright) against
real servers: streaming, stop, reload, offline, two tabs, restarts, Markdown safety, the
conversation list and the composer's rules.

Chromium comes from the system (``apt-get install chromium``), never ``playwright install``.
Without it these tests skip on a developer's machine and fail when ``CI`` is set.
"""
from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from urllib.parse import parse_qs, urlparse

import pytest

try:
    from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect
except ImportError:  # pragma: no cover - depends on the machine
    if os.environ.get("CI"):
        raise
    pytest.skip("playwright is not installed (pip install '.[test]')", allow_module_level=True)

from tests.fake_openai import FakeOpenAI, Reply, fake_openai_server  # noqa: F401  (fixture)
from tests.servers import BIN, ROOT, Stack, start_stack, wait_until

SCREENSHOTS = ROOT / "docs" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Replies slow enough to act in the middle of one (stop, reload, go offline): ~4 s.
SLOW_ENV = {"DEMO_TOKEN_INTERVAL_MS": "50", "DEMO_REPLY_TOKENS": "80"}
MODES = ["memory", "redis"]
LONG = 30_000  # ms: generous waits for a loaded CI machine

pytestmark = pytest.mark.timeout(300)


# ---- fixtures ---------------------------------------------------------------------------


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        message = "Chromium is not installed (apt-get install chromium); the page tests need it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
async def browser():
    path = chromium_path()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


def _stack(request, mode: str, env: dict[str, str], **options):
    if mode == "redis":
        return start_stack("redis", env, redis_url=request.getfixturevalue("redis_url"), **options)
    return start_stack("memory", env, **options)


@pytest.fixture(scope="session", params=MODES)
def slow_server(request):
    with _stack(request, request.param, SLOW_ENV) as stack:
        yield stack


@pytest.fixture(scope="module")
def model_server(fake_openai_server: FakeOpenAI):  # noqa: F811
    """The app with an OpenAI-compatible model whose replies the test writes."""
    env = {
        "CHATBOT_PROVIDER": "openai",
        "OPENAI_BASE_URL": fake_openai_server.base_url,
        "OPENAI_API_KEY": "sk-page-test",
        "CHATBOT_MODEL": "fake-model",
        "OPENAI_MAX_RETRIES": "0",
        "OPENAI_FIRST_TOKEN_TIMEOUT": "5",
        "OPENAI_STALL_TIMEOUT": "5",
    }
    with start_stack("memory", env) as stack:
        yield stack


@pytest.fixture
def fake_model(fake_openai_server: FakeOpenAI) -> FakeOpenAI:  # noqa: F811
    fake_openai_server.reset()
    return fake_openai_server


class Watch:
    """What must never happen on any page: a script error or a CSP violation."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def attach(self, page: Page) -> None:
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        page.on(
            "console",
            lambda message: self.problems.append(f"console: {message.text}")
            if "Content Security Policy" in message.text or "Refused to" in message.text
            else None,
        )


@pytest.fixture
async def watch():
    watcher = Watch()
    yield watcher
    assert not watcher.problems, watcher.problems


async def new_context(browser: Browser, stack: Stack, watch: Watch, **options) -> BrowserContext:
    """A fresh browser profile: its own cookie jar, so its own anonymous user."""
    options.setdefault("viewport", {"width": 1200, "height": 820})
    context = await browser.new_context(base_url=stack.url, **options)
    context.set_default_timeout(LONG)
    context.on("page", watch.attach)
    return context


@pytest.fixture
async def context(browser, server, watch):
    ctx = await new_context(browser, server, watch)
    yield ctx
    await ctx.close()


@pytest.fixture
async def slow_context(browser, slow_server, watch):
    ctx = await new_context(browser, slow_server, watch)
    yield ctx
    await ctx.close()


# ---- helpers ------------------------------------------------------------------------------


async def open_app(context: BrowserContext, path: str = "/") -> Page:
    page = await context.new_page()
    await page.goto(path)
    await page.wait_for_selector("html[data-ready]")
    return page


def send_button(page: Page):
    return page.get_by_role("button", name="Send", exact=True)


def stop_button(page: Page):
    return page.get_by_role("button", name="Stop", exact=True)


def prompt_box(page: Page):
    return page.get_by_role("textbox", name="Message")


async def send(page: Page, text: str) -> None:
    await prompt_box(page).fill(text)
    await prompt_box(page).press("Enter")


def workflow_id(page: Page) -> str:
    values = parse_qs(urlparse(page.url).query).get("c")
    assert values, f"the URL names no conversation: {page.url}"
    return values[0]


async def wait_for_workflow_id(page: Page) -> str:
    await page.wait_for_url(re.compile(r"[?&]c="))
    return workflow_id(page)


def norm(text: str) -> str:
    return " ".join(text.split())


async def assistant_texts(page: Page) -> list[str]:
    """The replies shown as stored (not those marked incomplete after a lost worker)."""
    return [norm(t) for t in await page.locator(".msg-assistant:not(.incomplete) .md").all_inner_texts()]


async def user_texts(page: Page) -> list[str]:
    return [norm(t) for t in await page.locator(".msg-user .md").all_inner_texts()]


async def wait_reply_done(page: Page, replies: int = 1) -> None:
    """The page shows `replies` finished replies and offers Send again."""
    await page.wait_for_function(
        """n => document.querySelectorAll('.msg-assistant.is-final').length >= n
               && !document.querySelector('.msg-assistant.streaming')
               && !document.getElementById('send').hidden""",
        arg=replies,
        timeout=LONG,
    )
    await expect(send_button(page)).to_be_visible()
    await expect(stop_button(page)).to_be_hidden()


async def stored(page: Page, wid: str) -> dict:
    """GET /api/chatbot/<id> with the page's own cookies."""
    response = await page.request.get(f"/api/chatbot/{wid}")
    assert response.status == 200, await response.text()
    return await response.json()


async def stored_when_settled(page: Page, wid: str) -> dict:
    for _ in range(200):
        data = await stored(page, wid)
        if data["workflow"]["status"] != "running":
            return data
        await asyncio.sleep(0.05)
    raise AssertionError("the workflow is still running")


def stored_messages(data: dict, role: str) -> list[str]:
    return [e["item"]["content"] for e in data["items"] if e["type"] == "message" and e["item"]["role"] == role]


async def record_lengths(page: Page) -> None:
    """Record every length the last reply's text takes, to see it grow (and never shrink)."""
    await page.evaluate(
        """() => {
            window.__lengths = [];
            const rounds = document.getElementById('rounds');
            new MutationObserver(() => {
                const all = document.querySelectorAll('.msg-assistant .md');
                const last = all[all.length - 1];
                if (last) window.__lengths.push(last.textContent.length);
            }).observe(rounds, { subtree: true, childList: true, characterData: true });
        }"""
    )


async def lengths(page: Page) -> list[int]:
    return await page.evaluate("window.__lengths")


async def wait_text_longer_than(page: Page, chars: int) -> str:
    await page.wait_for_function(
        """n => { const all = document.querySelectorAll('.msg-assistant .md');
                  return all.length && all[all.length - 1].textContent.length > n; }""",
        arg=chars,
    )
    return (await assistant_texts(page))[-1]


async def assert_final_equals_stored(page: Page, wid: str) -> dict:
    data = await stored_when_settled(page, wid)
    await wait_reply_done(page, len(stored_messages(data, "assistant")))
    assert await assistant_texts(page) == [norm(t) for t in stored_messages(data, "assistant")]
    assert await user_texts(page) == [norm(t) for t in stored_messages(data, "user")]
    return data


# ---- streaming ---------------------------------------------------------------------------


async def test_send_shows_the_reply_growing_then_final(context):
    page = await open_app(context)
    await expect(page.get_by_role("heading", name="How can I help?")).to_be_visible()
    await record_lengths(page)
    await send(page, "hello there, streaming page")
    await expect(stop_button(page)).to_be_visible()
    await expect(page.locator(".msg-user")).to_have_count(1)
    wid = await wait_for_workflow_id(page)
    await wait_reply_done(page)
    seen = await lengths(page)
    assert len(set(seen)) >= 5, f"the reply did not appear piece by piece: {seen}"
    assert seen == sorted(seen), f"the reply's text shrank while streaming: {seen}"
    data = await assert_final_equals_stored(page, wid)
    assert data["workflow"]["status"] == "completed"
    await expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    # The round's log events are one collapsed "steps" line under the reply.
    steps = page.locator(".round details.steps")
    await expect(steps).to_have_count(1)
    assert await steps.get_attribute("open") is None
    await steps.locator("summary").click()
    await expect(steps.locator(".step").first).to_be_visible()
    # The focus is back where the next prompt is typed, and a new line is Shift+Enter.
    await prompt_box(page).click()
    await prompt_box(page).type("line one")
    await prompt_box(page).press("Shift+Enter")
    await prompt_box(page).type("line two")
    assert await prompt_box(page).input_value() == "line one\nline two"
    await expect(page.locator(".msg-user")).to_have_count(1)
    await prompt_box(page).press("Enter")
    await wait_reply_done(page, 2)
    await expect(page.locator(".msg-user").nth(1).locator("br")).to_have_count(1)
    await assert_final_equals_stored(page, wid)


async def test_stop_keeps_the_partial_reply(slow_context):
    page = await open_app(slow_context)
    await send(page, "please stop me halfway")
    wid = await wait_for_workflow_id(page)
    await wait_text_longer_than(page, 60)
    await stop_button(page).click()
    await expect(send_button(page)).to_be_visible(timeout=10_000)
    await expect(page.locator(".badge-stopped")).to_be_visible()
    data = await assert_final_equals_stored(page, wid)
    assert data["workflow"]["status"] == "stopped"
    [partial] = stored_messages(data, "assistant")
    assert 60 < len(partial) < 400, partial  # kept, and cut short (a whole reply is ~600)
    # The conversation goes on after a stop.
    await send(page, "and now a whole one")
    await expect(stop_button(page)).to_be_visible()
    await wait_reply_done(page, 2)
    # After a reload the first round still shows it was stopped (the workflow's status is
    # the second round's).
    await page.reload()
    await expect(page.locator(".msg-assistant.is-final")).to_have_count(2, timeout=10_000)
    await expect(page.locator(".round").first.locator(".badge-stopped")).to_be_visible()
    await expect(page.locator(".badge-stopped")).to_have_count(1)


async def hold_answers(page: Page, url) -> tuple[list[dict], asyncio.Event]:
    """Requests to ``url`` are answered by the server at once but reach the page only once
    the returned event is set, as from a busy server; the answers' bodies, in order."""
    answers, release = [], asyncio.Event()

    async def hold(route) -> None:
        response = await route.fetch()
        answers.append(await response.json())
        await release.wait()
        await route.fulfill(response=response)

    await page.route(url, hold)
    return answers, release


async def deliver_late_answers(page: Page, release: asyncio.Event) -> None:
    """Let the held answers land; the page must still offer Send (not Stop)."""
    release.set()
    await page.wait_for_timeout(500)
    await expect(send_button(page)).to_be_visible(timeout=1000)  # before the page's own 5 s re-check


async def test_a_status_asked_mid_reply_and_answered_after_it_ended_is_ignored(slow_context):
    # The page asks for the status while a round runs; on a loaded server the answer
    # ("running") can come after the round's end event. It must not bring Stop back.
    page = await open_app(slow_context)
    answers, release = await hold_answers(page, re.compile(r".*/api/chatbot/[0-9a-f-]{36}$"))
    await send(page, "a status that arrives late")
    for _ in range(400):
        if any(a["workflow"]["status"] == "running" for a in answers):
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the page never asked for the status mid-reply")
    await wait_reply_done(page)
    await deliver_late_answers(page, release)


async def test_a_start_answered_after_its_round_ended_leaves_send(context):
    # The conversation's stream is open, so a short round can reach the page whole
    # before the answer to its POST does (a busy server). The page must not then show Stop.
    page = await open_app(context)
    await send(page, "first")
    await wait_reply_done(page)
    _, release = await hold_answers(page, "**/api/chatbot/start")
    await send(page, "second, answered late")
    await expect(page.locator(".msg-assistant.is-final")).to_have_count(2, timeout=LONG)
    await expect(page.locator(".msg-assistant.streaming")).to_have_count(0)
    await deliver_late_answers(page, release)


async def test_reload_mid_reply_shows_the_text_so_far_then_the_rest(slow_context):
    page = await open_app(slow_context)
    await send(page, "reload me in the middle")
    wid = await wait_for_workflow_id(page)
    before = await wait_text_longer_than(page, 80)
    await page.reload()
    await page.wait_for_selector("html[data-ready]")
    assert workflow_id(page) == wid
    await record_lengths(page)
    now = await wait_text_longer_than(page, len(before) - 1)
    assert now.startswith(before), (before, now)
    await expect(stop_button(page)).to_be_visible()
    await wait_reply_done(page)
    seen = await lengths(page)
    assert seen == sorted(seen), f"text shrank after the reload: {seen}"
    await assert_final_equals_stored(page, wid)
    await expect(page.locator(".msg-assistant")).to_have_count(1)
    await expect(page.locator(".msg-user")).to_have_count(1)


async def test_offline_and_back_mid_reply_resumes_without_gaps_or_repeats(slow_context):
    page = await open_app(slow_context)
    await send(page, "survive a network drop")
    wid = await wait_for_workflow_id(page)
    await wait_text_longer_than(page, 40)
    await record_lengths(page)
    await slow_context.set_offline(True)
    await expect(page.locator("#conn")).to_have_attribute("data-state", "offline")
    await expect(page.locator("#conn")).to_contain_text("Offline")
    await page.wait_for_timeout(1200)  # the server goes on writing meanwhile
    await slow_context.set_offline(False)
    await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=15_000)
    await wait_reply_done(page)
    seen = await lengths(page)
    assert seen == sorted(seen), f"text shrank around the drop: {seen}"
    await assert_final_equals_stored(page, wid)
    await expect(page.locator(".msg-assistant")).to_have_count(1)


async def test_offline_until_the_round_has_ended(slow_context):
    page = await open_app(slow_context)
    await send(page, "finish while I am away")
    wid = await wait_for_workflow_id(page)
    await wait_text_longer_than(page, 20)
    await slow_context.set_offline(True)
    await expect(page.locator("#conn")).to_have_attribute("data-state", "offline")
    await stored_when_settled(page, wid)  # page.request is not affected by set_offline
    await slow_context.set_offline(False)
    await assert_final_equals_stored(page, wid)
    await expect(page.locator("#conn")).to_have_attribute("data-state", "live")


async def test_two_tabs_on_one_conversation_both_stay_live(browser, slow_server, watch):
    context = await new_context(browser, slow_server, watch)
    try:
        first = await open_app(context)
        await send(first, "two tabs watching")
        wid = await wait_for_workflow_id(first)
        await wait_text_longer_than(first, 10)
        second = await open_app(context, f"/?c={wid}")
        await expect(stop_button(second)).to_be_visible()
        await assert_final_equals_stored(first, wid)
        await assert_final_equals_stored(second, wid)
        # A round started in the second tab streams live in the first one as well.
        await record_lengths(first)
        await send(second, "sent from the second tab")
        await expect(stop_button(first)).to_be_visible()
        await expect(first.locator(".msg-user")).to_have_count(2)
        await wait_reply_done(first, 2)
        assert len(set(await lengths(first))) >= 5
        await assert_final_equals_stored(first, wid)
        await assert_final_equals_stored(second, wid)
    finally:
        await context.close()


# ---- a server restart -------------------------------------------------------------------------


@pytest.fixture(params=MODES)
def restartable_server(request):
    with _stack(request, request.param, SLOW_ENV) as stack:
        yield stack


def restart_web(stack: Stack) -> None:
    """Stop the web process and start it again on the same port (workers keep running)."""
    stack.web.terminate()
    stack.web.wait(15)
    log = open(stack.logs / "web.log", "ab")
    stack.web = subprocess.Popen(
        [str(BIN / "hypercorn"), "app:app", "--bind", stack.url.removeprefix("http://"), "--graceful-timeout", "2"],
        cwd=ROOT, env=stack.env, stdout=log, stderr=log,
    )
    import httpx

    wait_until(lambda: httpx.get(stack.url + "/readyz").status_code == 200, what="the restarted web process")


async def test_server_restart_mid_reply(browser, restartable_server, watch):
    stack = restartable_server
    context = await new_context(browser, stack, watch)
    try:
        page = await open_app(context)
        await send(page, "outlive a restart")
        wid = await wait_for_workflow_id(page)
        await wait_text_longer_than(page, 40)
        await record_lengths(page)
        await asyncio.get_running_loop().run_in_executor(None, restart_web, stack)
        if stack.mode == "redis":
            # The workers kept writing: the page resumes and ends with the whole reply once.
            await assert_final_equals_stored(page, wid)
            seen = await lengths(page)
            assert seen == sorted(seen), seen
        else:
            # One process: the round died with it. The page says so and offers Retry.
            await expect(page.locator(".error-box")).to_be_visible(timeout=LONG)
            await expect(send_button(page)).to_be_visible()
            await page.get_by_role("button", name="Retry").click()
            await expect(page.locator(".msg-user")).to_have_count(2)
            await wait_reply_done(page, 1)
            data = await assert_final_equals_stored(page, wid)
            assert stored_messages(data, "user") == ["outlive a restart"] * 2
        await expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    finally:
        await context.close()


# ---- Markdown and safety -------------------------------------------------------------------

XSS_PROMPT = (
    "<img src=x onerror=window.__xss=1> <script>window.__xss=2</script> "
    "<a href=javascript:window.__xss=3>a</a> [click](javascript:window.__xss=4) "
    "<svg onload=window.__xss=5>"
)


async def assert_inert(page: Page) -> None:
    assert await page.evaluate("typeof window.__xss") == "undefined"
    rounds = page.locator("#rounds")
    for tag in ("img", "script", "svg", "iframe", "style"):
        await expect(rounds.locator(tag)).to_have_count(0)
    hrefs = await rounds.locator("a[href]").evaluate_all("links => links.map(a => a.getAttribute('href'))")
    assert not [h for h in hrefs if h.strip().lower().startswith("javascript")], hrefs
    await expect(rounds.locator("[onerror], [onload], [style]")).to_have_count(0)


async def test_html_in_a_prompt_is_shown_as_inert_text(context):
    page = await open_app(context)
    await send(page, XSS_PROMPT)
    wid = await wait_for_workflow_id(page)
    await wait_reply_done(page)
    await assert_inert(page)
    shown = (await user_texts(page))[0]
    assert "<img src=x onerror=window.__xss=1>" in shown
    assert "<script>window.__xss=2</script>" in shown
    # Also after a reload (history and snapshot render the same way).
    await page.reload()
    await page.wait_for_selector("html[data-ready]")
    await expect(page.locator(".msg-user")).to_have_count(1)
    await assert_inert(page)
    assert (await user_texts(page))[0] == shown
    assert workflow_id(page) == wid


MODEL_MARKDOWN = (
    "Here is how a **reconnecting** stream works:\n\n"
    "1. The browser keeps the last event id.\n"
    "2. It reconnects with `Last-Event-ID`.\n"
    "3. The server sends only what came after.\n\n"
    "```python\nasync for event in feed.subscribe(workflow_id, after=cursor):\n    yield event\n```\n\n"
    "See [the spec](https://html.spec.whatwg.org/multipage/server-sent-events.html).\n\n"
    "<img src=x onerror=window.__xss=1><script>window.__xss=2</script> [bad](javascript:window.__xss=3)"
)


def pieces(text: str, size: int = 6) -> tuple[str, ...]:
    return tuple(text[i : i + size] for i in range(0, len(text), size))


async def test_model_markdown_is_rendered_and_sanitized(browser, model_server, fake_model, watch):
    fake_model.default = Reply(pieces=pieces(MODEL_MARKDOWN), interval=0.005)
    context = await new_context(browser, model_server, watch)
    try:
        page = await open_app(context)
        await send(page, "How does **reconnection** work? Use `code` and a list:\n\n- one\n- two")
        wid = await wait_for_workflow_id(page)
        await wait_reply_done(page)
        reply = page.locator(".msg-assistant .md")
        await expect(reply.locator("strong")).to_have_text("reconnecting")
        await expect(reply.locator("ol > li")).to_have_count(3)
        await expect(reply.locator("pre code")).to_contain_text("feed.subscribe(workflow_id, after=cursor)")
        link = reply.locator("a", has_text="the spec")
        await expect(link).to_have_attribute("target", "_blank")
        await expect(link).to_have_attribute("rel", "noopener noreferrer")
        await expect(reply).to_contain_text("<img src=x onerror=window.__xss=1>")
        await assert_inert(page)
        user = page.locator(".msg-user .md")
        await expect(user.locator("strong")).to_have_text("reconnection")
        await expect(user.locator("code")).to_have_text("code")
        await expect(user.locator("li")).to_have_count(2)
        [content] = stored_messages(await stored(page, wid), "assistant")
        assert content == MODEL_MARKDOWN
    finally:
        await context.close()


GENERIC_ERROR = "The reply could not be completed."


async def test_model_failures_are_shown_with_retry(browser, model_server, fake_model, watch):
    fake_model.script(
        # Round 1 fails at once, likely before the new conversation's stream is even open.
        Reply(status=500, message="the fake model broke"),
        # Round 2 (the retry) fails in the middle: its error event arrives live.
        Reply(pieces=("Partial", " text", " lost"), drop_after=1, interval=0.3),
    )
    fake_model.default = Reply(pieces=("Third", " time", " lucky."))
    context = await new_context(browser, model_server, watch)
    try:
        page = await open_app(context)
        await send(page, "try me thrice")
        wid = await wait_for_workflow_id(page)
        errors = page.locator(".error-box")
        await expect(errors).to_have_count(1, timeout=LONG)
        await expect(send_button(page)).to_be_visible()
        assert (await stored(page, wid))["workflow"]["status"] == "failed"

        await errors.first.get_by_role("button", name="Retry").click()
        await expect(errors).to_have_count(2, timeout=LONG)
        await expect(send_button(page)).to_be_visible()
        live_error = norm(await errors.nth(1).locator(".error-text").inner_text())
        assert live_error and live_error != GENERIC_ERROR, "the error event's message is not shown"
        await expect(page.locator(".msg-assistant.is-final .md")).to_have_text(["Partial"])
        await expect(page.get_by_role("button", name="Retry")).to_have_count(1)  # only the newest

        await errors.nth(1).get_by_role("button", name="Retry").click()
        await wait_reply_done(page, 2)
        await expect(page.get_by_role("button", name="Retry")).to_have_count(0)
        data = await assert_final_equals_stored(page, wid)
        assert stored_messages(data, "user") == ["try me thrice"] * 3
        assert stored_messages(data, "assistant") == ["Partial", "Third time lucky."]
        assert await user_texts(page) == ["try me thrice"] * 3

        # After a reload the two failed rounds still say why, though the workflow's own
        # status is the last round's (completed); a later round went on, so no Retry.
        shown = [norm(text) for text in await errors.locator(".error-text").all_inner_texts()]
        await page.reload()
        await expect(page.locator(".msg-assistant.is-final .md")).to_have_text(["Partial", "Third time lucky."], timeout=LONG)
        await expect(errors).to_have_count(2)
        assert [norm(text) for text in await errors.locator(".error-text").all_inner_texts()] == shown
        await expect(page.get_by_role("button", name="Retry")).to_have_count(0)
    finally:
        await context.close()


# ---- conversations and the URL -----------------------------------------------------------------


async def test_the_list_follows_a_conversation_that_replies_while_another_is_open(slow_context):
    page = await open_app(slow_context)
    await send(page, "a long one")
    first = await wait_for_workflow_id(page)
    await page.wait_for_selector(".msg-assistant.streaming")
    await page.get_by_role("button", name="New chat").click()
    entry = page.locator(f'#conversations a[data-id="{first}"]')
    await expect(entry).to_contain_text("replying")
    await expect(entry).not_to_contain_text("replying", timeout=LONG)  # it ends while nothing of it is open


async def test_conversation_list_and_url_across_reloads(context):
    page = await open_app(context)
    await expect(page.locator("#conversations li")).to_have_count(0)
    await send(page, "first topic")
    first = await wait_for_workflow_id(page)
    await wait_reply_done(page)

    await page.get_by_role("button", name="New chat").click()
    await expect(page).to_have_url(re.compile(r"/$"))
    await expect(page.locator(".msg-user")).to_have_count(0)
    await send(page, "second topic")
    await page.wait_for_url(re.compile(r"[?&]c=(?!" + re.escape(first) + ")"))
    second = workflow_id(page)
    await wait_reply_done(page)
    await expect(page.locator("#conversations li")).to_have_count(2)
    await expect(page.locator("#conversations .conv-title-text")).to_have_text(["second topic", "first topic"])

    # The URL names the conversation shown after a reload.
    await page.reload()
    await page.wait_for_selector("html[data-ready]")
    assert workflow_id(page) == second
    await expect(page.locator(".msg-user .md")).to_have_text(["second topic"])
    await expect(page.locator("#conversations .conv-title-text")).to_have_text(["second topic", "first topic"])
    await expect(page.locator('#conversations [aria-current="page"]')).to_have_text(re.compile("second topic"))

    # Picking one from the list shows its whole history and names it in the URL.
    await page.locator("#conversations a", has_text="first topic").click()
    await expect(page.locator(".msg-user")).to_have_text(["first topic"])
    assert workflow_id(page) == first
    await page.reload()
    await page.wait_for_selector("html[data-ready]")
    await expect(page.locator(".msg-user .md")).to_have_text(["first topic"])
    await expect(page.locator(".msg-assistant")).to_have_count(1)

    # Back goes to the previous conversation.
    await page.go_back()
    await expect(page.locator(".msg-user")).to_have_text(["second topic"])

    # Without a conversation in the URL: the most recently active one.
    await page.goto("/")
    await page.wait_for_selector("html[data-ready]")
    assert workflow_id(page) == second
    await expect(page.locator(".msg-user .md")).to_have_text(["second topic"])

    # A new round makes the first one the most recently active.
    await page.locator("#conversations a", has_text="first topic").click()
    await expect(page.locator(".msg-user")).to_have_text(["first topic"])
    await send(page, "back to the first")
    await wait_reply_done(page, 2)
    await page.goto("/")
    await page.wait_for_selector("html[data-ready]")
    assert workflow_id(page) == first
    await expect(page.locator("#conversations .conv-title-text")).to_have_text(["first topic", "second topic"])
    await expect(page.locator(".msg-user .md")).to_have_text(["first topic", "back to the first"])


async def test_unknown_conversation_in_the_url(context):
    page = await open_app(context, "/?c=no-such-conversation")
    await expect(page.locator("#notice")).to_be_visible()
    await send(page, "still works")
    await wait_reply_done(page)
    assert workflow_id(page) != "no-such-conversation"


# ---- the composer -----------------------------------------------------------------------------


async def test_empty_prompt_is_not_sent(context):
    page = await open_app(context)
    starts: list[str] = []
    page.on("request", lambda r: starts.append(r.url) if "/api/chatbot/start" in r.url else None)
    await prompt_box(page).press("Enter")
    await prompt_box(page).fill("   \n\t  ")
    await prompt_box(page).press("Enter")
    await send_button(page).click(force=True)  # it looks (and is announced) disabled; a click does nothing
    await page.wait_for_timeout(300)
    assert starts == []
    await expect(page.locator(".msg-user")).to_have_count(0)
    assert await send_button(page).get_attribute("aria-disabled") == "true"
    await prompt_box(page).fill("now with words")
    assert await send_button(page).get_attribute("aria-disabled") == "false"
    await send_button(page).click()
    await wait_reply_done(page)
    assert len(starts) == 1


async def test_overlong_prompt_shows_the_servers_message(context):
    page = await open_app(context)
    too_long = "x" * 20_000
    answer = await page.request.post("/api/chatbot/start", data={"prompt": too_long, "workflowId": None})
    assert answer.status == 413
    message = (await answer.json())["error"]["message"]
    await prompt_box(page).fill(too_long)
    await prompt_box(page).press("Enter")
    error = page.locator("#composer-error")
    await expect(error).to_have_text(message)
    await expect(page.locator(".msg-user")).to_have_count(0)
    assert await prompt_box(page).input_value() == too_long  # nothing the user typed is lost
    await expect(page).to_have_url(re.compile(r"/$"))
    # Editing clears the message; a shorter prompt goes through.
    await prompt_box(page).fill("short enough")
    await expect(error).to_be_hidden()
    await prompt_box(page).press("Enter")
    await wait_reply_done(page)


async def test_keyboard_only(context):
    page = await open_app(context)
    await page.evaluate("document.activeElement && document.activeElement.blur()")
    await page.keyboard.press("Tab")  # the skip link
    await page.keyboard.press("Enter")
    await expect(prompt_box(page)).to_be_focused()
    await page.keyboard.type("typed without a mouse")
    await page.keyboard.press("Enter")
    await expect(stop_button(page)).to_be_visible()
    await wait_reply_done(page)
    await expect(page.locator("#announcer")).to_contain_text("Assistant")
    assert await page.locator("#announcer").get_attribute("aria-live") == "polite"


# ---- phone-sized screens and screenshots -----------------------------------------------------------


async def test_phone_layout_collapses_the_list(browser, server, watch):
    context = await new_context(browser, server, watch, viewport={"width": 390, "height": 800}, is_mobile=True, has_touch=True)
    try:
        page = await open_app(context)
        await send(page, "hello from a phone")
        await wait_reply_done(page)
        await expect(page.locator("#sidebar")).not_to_be_in_viewport()
        toggle = page.get_by_role("button", name="Show conversations")
        await toggle.click()
        await expect(toggle).to_have_attribute("aria-expanded", "true")
        await expect(page.locator("#sidebar")).to_be_in_viewport()
        await page.keyboard.press("Escape")
        await expect(toggle).to_have_attribute("aria-expanded", "false")
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page scrolls sideways on a phone ({width}px)"
    finally:
        await context.close()


SHOT_PROMPT = "How does the page survive a dropped connection? Keep it **short**."


async def test_screenshots_light_and_dark(browser, model_server, fake_model, watch, tmp_path):
    """A finished conversation in both colour schemes. With UPDATE_SCREENSHOTS=1 they
    replace the README's images in docs/screenshots/; otherwise a test run leaves the
    checkout as it was."""
    shots = SCREENSHOTS if os.environ.get("UPDATE_SCREENSHOTS") == "1" else tmp_path
    fake_model.default = Reply(pieces=pieces(MODEL_MARKDOWN.split("<img")[0].rstrip()), interval=0.002)
    context = await new_context(browser, model_server, watch)
    try:
        page = await open_app(context)
        await send(page, SHOT_PROMPT)
        wid = await wait_for_workflow_id(page)
        await wait_reply_done(page)
        fake_model.default = Reply(pieces=pieces("Yes: stopping keeps the text written so far, and **Retry** re-sends your prompt."), interval=0.002)
        await send(page, "And if I press Stop?")
        await wait_reply_done(page, 2)
        await page.get_by_role("button", name="New chat").click()
        fake_model.default = Reply(pieces=("Sure.",))
        await send(page, "Plan a weekend in Lisbon")
        await wait_reply_done(page)
        await page.goto(f"/?c={wid}")
        await page.wait_for_selector("html[data-ready]")
        await wait_reply_done(page, 2)
    finally:
        state = await context.storage_state()
        await context.close()
    shots.mkdir(parents=True, exist_ok=True)
    for scheme in ("light", "dark"):
        ctx = await new_context(browser, model_server, watch, color_scheme=scheme, storage_state=state, viewport={"width": 1280, "height": 860})
        try:
            page = await open_app(ctx, f"/?c={wid}")
            await wait_reply_done(page, 2)
            await page.locator("#prompt").blur()
            await page.wait_for_timeout(200)
            await page.screenshot(path=str(shots / f"{scheme}.png"), animations="disabled", caret="hide")
        finally:
            await ctx.close()
    assert (shots / "light.png").stat().st_size > 10_000
    assert (shots / "dark.png").stat().st_size > 10_000
