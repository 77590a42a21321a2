"""The dashboard's dead-letter page in a real browser (Debian's Chromium, Playwright)
against the real API, Postgres and NATS: a dead delivery replayed from the page with the
keyboard (a new delivery, recorded naming the token; the webhook is not replayed), the
bulk replay's confirmation showing the dry run's count, and no buttons for a read token."""

from __future__ import annotations

import pytest
from playwright.async_api import Browser, expect

from hookbus_common import events as ev

from ..integration.api_support import failing_chain, record_chain, webhook
from . import test_dashboard as dashboard
from .test_dashboard import Site, _sign_in

# The dashboard tests' fixtures: a served API with tokens, and the browser.
site = dashboard.site
browser = dashboard.browser

pytestmark = pytest.mark.integration


async def _replayed(site: Site) -> list[tuple[str, str, str]]:
    rows = await site.rt.pool.fetch(
        "SELECT data->>'replay_of' AS of, data->>'delivery_id' AS id,"
        " data->>'requested_by' AS by FROM events WHERE type = $1 ORDER BY seq",
        ev.DeliveryReplayed.TYPE,
    )
    return [(r["of"], r["id"], r["by"]) for r in rows]


async def test_replay_a_dead_delivery_from_the_dlq_page(site: Site, browser: Browser) -> None:
    chains = [failing_chain(webhook("github", n)) for n in range(2)]
    for chain in chains:
        await record_chain(site.rt, chain)
    first, second = (c.delivery_id for c in chains)

    page = await _sign_in(browser, site, "operate")
    await page.get_by_role("link", name="Dead letters", exact=True).click()
    await expect(page.get_by_role("heading", name="Dead letters", level=1)).to_be_focused()
    rows = page.get_by_role("table", name="Most recently changed first").locator("tbody tr")
    await expect(rows).to_have_count(2)

    # With the keyboard: the row's button is reachable and says which delivery it sends.
    button = page.get_by_role("button", name=f"Replay delivery {first}")
    await button.focus()
    await page.keyboard.press("Enter")
    await expect(page.locator("#status")).to_contain_text(
        f"Delivery {first} requested again as dlv_"
    )
    await expect(page.get_by_role("button", name=f"Replay delivery {first}")).to_have_count(0)
    ((of, new_id, by),) = await _replayed(site)
    assert (of, by) == (first, "api:alice")
    # Only the delivery: no webhook replay was started.
    assert not await site.rt.pool.fetchval(
        "SELECT count(*) FROM events WHERE type = $1", ev.ReplayStarted.TYPE
    )
    new_status = await site.rt.pool.fetchval(
        "SELECT data->>'replay_of' FROM events WHERE type = $1 AND data->>'delivery_id' = $2",
        ev.DeliveryRequested.TYPE,
        new_id,
    )
    assert new_status == first

    # Bulk: the dry run's count comes first (the one left), then a confirmation; cancel.
    await page.get_by_role("button", name="Replay all shown").click()
    go = page.get_by_role("button", name="Replay 1 delivery")
    await expect(go).to_be_focused()
    await expect(page.get_by_text("Send 1 delivery again")).to_be_visible()
    await page.get_by_role("button", name="Cancel").click()
    await expect(go).to_have_count(0)
    assert len(await _replayed(site)) == 1
    await page.get_by_role("button", name="Replay all shown").click()
    await page.get_by_role("button", name="Replay 1 delivery").click()
    await expect(page.locator("#bulk-note")).to_have_text("1 delivery requested again.")
    assert [(of, by) for of, _, by in await _replayed(site)] == [
        (first, "api:alice"),
        (second, "api:alice"),
    ]

    # The delivery page of a dead delivery has both buttons for an operate token.
    await page.goto(f"{site.base}/#/deliveries/{second}")
    await expect(page.get_by_role("button", name="Replay this webhook")).to_be_visible()
    await expect(page.get_by_role("button", name="Replay this delivery")).to_be_visible()

    # A read token sees the dead letters, and no button.
    reader = await _sign_in(browser, site, "read")
    await reader.get_by_role("link", name="Dead letters", exact=True).click()
    await expect(
        reader.get_by_text("Replaying a delivery needs a token with the operate scope.")
    ).to_be_visible()
    await expect(reader.get_by_role("button", name=f"Replay delivery {second}")).to_have_count(0)
    await expect(reader.get_by_role("button", name="Replay all shown")).to_have_count(0)
