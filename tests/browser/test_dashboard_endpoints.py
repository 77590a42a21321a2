"""The dashboard's endpoints page in a real browser (Debian's Chromium, Playwright) against
the real API, Postgres and NATS: each endpoint's state and health, and disabling one from
the page with the keyboard (operate tokens only)."""

from __future__ import annotations

import httpx
import pytest
from playwright.async_api import Browser, expect

from hookbus_common import events as ev

from . import test_dashboard as dashboard
from .test_dashboard import Site, _sign_in

# The dashboard tests' fixtures: a served API with tokens, and the browser.
site = dashboard.site
browser = dashboard.browser

pytestmark = pytest.mark.integration


async def _a_failed_attempt(site: Site) -> None:
    """What the dispatcher records for an attempt at ops-chat answered 503."""
    req = ev.make_event(
        ev.DeliveryRequested(
            delivery_id="dlv_page", rule="notify", webhook_id="evt_w", url="",
            endpoint="ops-chat", event_type="push",
        ),
        source="/hookbus/router",
    )  # fmt: skip
    attempted = ev.make_event(
        ev.DeliveryAttempted(
            delivery_id="dlv_page", url="https://chat.example.com/hook", status_code=503,
            endpoint="ops-chat",
        ),
        source="/hookbus/dispatcher", cause=req,
    )  # fmt: skip
    await site.rt.outbox.commit_and_publish([req, attempted])


async def test_disable_an_endpoint_from_the_page(site: Site, browser: Browser) -> None:
    await _a_failed_attempt(site)
    page = await _sign_in(browser, site, "operate")
    await page.get_by_role("link", name="Endpoints & rules", exact=True).click()
    await expect(page.get_by_role("heading", name="Endpoints & rules", level=1)).to_be_focused()

    table = page.get_by_role("table", name="State and health of each endpoint (no secrets)")
    row = table.locator("tbody tr", has_text="ops-chat")
    await expect(row).to_have_count(1)
    await expect(row.locator(".badge")).to_have_text("active")
    await expect(row).to_contain_text("0 ok · 0 failed · 0 dead (1 attempts, 1 failed)")
    await expect(row).to_contain_text("503")

    # With the keyboard: the button is reachable, and says which endpoint it disables.
    button = page.get_by_role("button", name="Disable ops-chat")
    await button.focus()
    await page.keyboard.press("Enter")
    await expect(row.locator(".badge")).to_have_text("disabled")
    await expect(row).to_contain_text("disabled by api:alice")
    await expect(page.get_by_role("status")).to_have_text("Endpoint ops-chat is disabled.")
    # Focus stays on the endpoint's button, which now enables it.
    await expect(page.get_by_role("button", name="Enable ops-chat")).to_be_focused()

    async with httpx.AsyncClient(
        base_url=site.base, headers={"authorization": f"Bearer {site.keys['read']}"}
    ) as c:
        shown = (await c.get("/api/endpoints/ops-chat")).json()
    assert (shown["state"], shown["changed_by"]) == ("disabled", "api:alice")
    by = await site.rt.pool.fetchval(
        "SELECT data->>'by' FROM events WHERE type = $1", ev.EndpointDisabled.TYPE
    )
    assert by == "api:alice"

    # A read token sees the state, and no button.
    reader = await _sign_in(browser, site, "read")
    await reader.get_by_role("link", name="Endpoints & rules", exact=True).click()
    tbl = reader.get_by_role("table", name="State and health of each endpoint (no secrets)")
    await expect(tbl.locator(".badge")).to_have_text("disabled")
    await expect(reader.get_by_role("button", name="Enable ops-chat")).to_have_count(0)
    await expect(
        reader.get_by_text(
            "Disabling or enabling an endpoint needs a token with the operate scope."
        )
    ).to_be_visible()
