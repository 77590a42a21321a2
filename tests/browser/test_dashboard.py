"""The dashboard in a real browser (Debian's Chromium, driven by Playwright) against the real
API, Postgres and NATS: sign in, find an event, open its chain, replay a dead delivery;
keyboard and screen-reader basics; live updates.

Screenshots go to the test's temp dir; with HOOKBUS_DASHBOARD_SCREENSHOTS=1 they are
written to docs/img/ instead (for docs/dashboard.md).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from hookbus_api import tokens
from hookbus_common import events as ev
from hookbus_common.service import Runtime
from hookbus_common.settings import Settings

from ..integration.api_support import (
    api_config,
    failing_chain,
    record_chain,
    serve_api,
    webhook,
)
from ..integration.test_consumer import until

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
RULES_TOML = """
[endpoints.ops-chat]
url = "https://chat.example.com/hook"
events = ["push"]

[[rules]]
name = "deploy"
source = "github"
branch = "main"
actions = [{ kind = "shell", command = ["./deploy.sh"] }]

[[rules]]
name = "notify"
source = "github"
actions = [{ kind = "webhook", endpoint = "ops-chat" }]
"""


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
    async with async_playwright() as p:
        b = await p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    if os.environ.get("HOOKBUS_DASHBOARD_SCREENSHOTS") == "1":
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        return DOCS_IMG
    return tmp_path


class Site(msgspec.Struct):
    base: str
    keys: dict[str, str]
    rt: Runtime


@pytest.fixture
async def site(settings: Settings, rt: Runtime, tmp_path: Path) -> AsyncIterator[Site]:
    keys: dict[str, str] = {}
    async with rt.pool.acquire() as conn:
        for name, scope in (("alice", "operate"), ("rita", "read")):
            _, keys[scope] = await tokens.create(
                conn, settings.prefix, name=name, scope=scope, by="admin"
            )
    async with serve_api(api_config(settings, tmp_path, RULES_TOML)) as base:
        yield Site(base=base, keys=keys, rt=rt)


async def _sign_in(browser: Browser, site: Site, scope: str) -> Page:
    page = await browser.new_page(viewport={"width": 1280, "height": 860})
    await page.goto(site.base + "/")
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await page.get_by_label("API token").fill(site.keys[scope])
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    return page


async def test_sign_in_find_an_event_open_its_chain_and_replay_a_dead_delivery(
    site: Site, browser: Browser, shots: Path
) -> None:
    for n in range(3):
        await site.rt.outbox.commit_and_publish([webhook("gitlab", n, tenant="globex")])
    chain = failing_chain(webhook("github", 1))
    await record_chain(site.rt, chain)

    page = await browser.new_page(viewport={"width": 1280, "height": 860})
    await page.goto(site.base + "/")
    # A wrong token is refused, and says so.
    await page.get_by_label("API token").fill("hbk_wrong")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_have_text("That token is not valid.")
    await page.get_by_label("API token").fill(site.keys["operate"])
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    await expect(page.get_by_text("alice (operate)")).to_be_visible()
    await expect(page.locator(".card", has_text="deliveries dead").locator(".n")).to_have_text("1")
    await page.screenshot(path=shots / "dashboard-overview.png", full_page=True)

    # Find the github webhook among the events.
    await page.get_by_role("link", name="Events", exact=True).click()
    await page.get_by_label("Type (glob)").fill("webhook.received")
    await page.get_by_label("Source").fill("github")
    await page.get_by_role("button", name="Search").click()
    rows = page.locator("main table tbody tr")
    await expect(rows).to_have_count(1)
    await page.screenshot(path=shots / "dashboard-events.png", full_page=True)
    await rows.get_by_role("link", name="webhook.received").click()
    await expect(page.get_by_role("heading", name="webhook.received")).to_be_visible()
    await expect(page.get_by_label("Raw body")).to_have_text(
        bytes(chain.hook.data.payload).decode()
    )
    await expect(page.get_by_role("cell", name="x-github-event")).to_be_visible()
    await page.screenshot(path=shots / "dashboard-event.png", full_page=True)

    # Its chain, as a timeline with the rule decisions.
    await page.get_by_role("link", name=chain.hook.id).click()
    await expect(page.get_by_role("heading", name="Chain")).to_be_visible()
    timeline = page.get_by_role("list", name="Events of this chain, in order")
    await expect(timeline.locator(":scope > li")).to_have_count(len(chain.events))
    await expect(page.get_by_role("cell", name="branch main is not gh-pages")).to_be_visible()
    await page.screenshot(path=shots / "dashboard-chain.png", full_page=True)

    # The dead delivery, its attempts, and a replay.
    await timeline.get_by_role("link", name=chain.delivery_id).first.click()
    await expect(page.get_by_role("heading", name=f"Delivery {chain.delivery_id}")).to_be_visible()
    attempts = page.get_by_role("table", name="Each attempt and its answer")
    await expect(attempts.locator("tbody tr")).to_have_count(2)
    await page.get_by_role("button", name="Replay this webhook").click()
    await expect(page.locator("#replay-note")).to_contain_text("started: 1 webhook to redrive")
    await page.screenshot(path=shots / "dashboard-delivery.png", full_page=True)

    async def replayed() -> bool:
        async with site.rt.pool.acquire() as conn:
            return bool(
                await conn.fetchval(
                    "SELECT count(*) FROM events WHERE type = $1 AND data->>'replay_of' = $2",
                    ev.WebhookReplayed.TYPE,
                    chain.hook.id,
                )
            )

    await until(replayed, timeout=30)
    async with site.rt.pool.acquire() as conn:
        by = await conn.fetchval(
            "SELECT data->>'requested_by' FROM events WHERE type = $1", ev.ReplayStarted.TYPE
        )
    assert by == "api:alice"
    await page.get_by_role("link", name="Replays", exact=True).click()
    await expect(page.get_by_role("cell", name="api:alice")).to_be_visible()


async def test_a_read_token_sees_no_replay_button(site: Site, browser: Browser) -> None:
    chain = failing_chain(webhook("github", 2))
    await record_chain(site.rt, chain)
    page = await _sign_in(browser, site, "read")
    await page.goto(f"{site.base}/#/deliveries/{chain.delivery_id}")
    await expect(
        page.get_by_text("Replaying needs a token with the operate scope.")
    ).to_be_visible()
    await expect(page.get_by_role("button", name="Replay this webhook")).to_have_count(0)


async def test_keyboard_and_landmarks(site: Site, browser: Browser) -> None:
    page = await _sign_in(browser, site, "read")
    await expect(page.get_by_role("banner")).to_have_count(1)
    await expect(page.get_by_role("navigation", name="Main")).to_be_visible()
    await expect(page.get_by_role("main")).to_have_count(1)
    # The first Tab reaches the skip link; following it puts focus in main.
    await page.goto(site.base + "/")
    await expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    await page.keyboard.press("Tab")
    focused = await page.evaluate("document.activeElement.textContent")
    assert focused == "Skip to content"
    # Navigating with the keyboard moves focus to the new page's heading, and the nav
    # marks where we are.
    await page.get_by_role("link", name="Jobs", exact=True).focus()
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="Jobs")).to_be_focused()
    await expect(page.get_by_role("link", name="Jobs", exact=True)).to_have_attribute(
        "aria-current", "page"
    )
    # Every form field has a label.
    await page.get_by_role("link", name="Events", exact=True).click()
    unlabeled = await page.evaluate(
        "[...document.querySelectorAll('main input, main select')]"
        ".filter(e => !e.labels || e.labels.length === 0).length"
    )
    assert unlabeled == 0


@pytest.mark.parametrize(
    ("path", "title", "shot"),
    [
        ("#/jobs", "Jobs", "dashboard-jobs.png"),
        ("#/deliveries", "Deliveries", "dashboard-deliveries.png"),
        ("#/dead-letters", "Dead letters", "dashboard-dead-letters.png"),
        ("#/replays", "Replays", "dashboard-replays.png"),
        ("#/endpoints", "Endpoints", "dashboard-endpoints.png"),
        ("#/projects", "Projects", "dashboard-projects.png"),
        ("#/partners", "Partners", "dashboard-partners.png"),
    ],
)
async def test_every_page_opens_with_its_heading_and_no_error(
    site: Site, browser: Browser, shots: Path, path: str, title: str, shot: str
) -> None:
    await record_chain(site.rt, failing_chain(webhook("github", 7)))
    page = await _sign_in(browser, site, "operate")
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"{site.base}/{path}")
    await expect(page.get_by_role("heading", name=title, exact=True)).to_be_visible()
    await expect(page.get_by_role("alert")).to_have_count(0)
    assert errors == []
    await page.screenshot(path=shots / shot, full_page=True)


async def test_live_updates_reach_the_events_page(site: Site, browser: Browser) -> None:
    page = await _sign_in(browser, site, "read")
    await expect(page.locator("#live-state")).to_have_text("live: on")
    await page.get_by_role("link", name="Events", exact=True).click()
    await expect(page.get_by_role("heading", name="Events")).to_be_visible()
    await site.rt.outbox.commit_and_publish([webhook("github", 40)])
    await expect(page.get_by_text("1 new event since this page loaded")).to_be_visible()
    await page.get_by_role("button", name="Show them").click()
    rows = page.locator("main table tbody tr", has_text="webhook.received")
    await expect(rows).to_have_count(1)


def test_chromium_is_debians() -> None:
    # Playwright's own browser download is not used (and cannot be reached here).
    assert shutil.which("chromium") == str(CHROMIUM) or CHROMIUM.exists()
