"""The dashboard's projects page in a real browser (Debian's Chromium, Playwright) against
the real API, Postgres and NATS: each project with its stages, what each stage runs (its
last successful deploy) and its newest deploy job, from the job log and read models."""

from __future__ import annotations

from typing import Any

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


def _deploy_job(
    rule: str, n: int, end: type[ev.JobSucceeded] | type[ev.JobFailed], **deploy: Any
) -> list[ev.Event[Any]]:
    hook = ev.make_event(
        ev.WebhookReceived(source="image-push", kind="image-push", event_type="push"),
        source="/hookbus/receiver/image-push",
    )
    job_id = ev.derived_id(hook.id, f"job/{rule}/{n}", prefix="job")
    spec = ev.DockerSpec(operation="recreate", container=deploy.get("container"))
    req = ev.make_event(
        ev.JobRequestedV2(job_id=job_id, rule=rule, webhook_id=hook.id, spec=spec),
        source="/hookbus/router", cause=hook,
    )  # fmt: skip
    info = ev.DeployInfo(operation="recreate", **deploy) if deploy else None
    done = ev.make_event(
        end(job_id=job_id, kind="docker", rule=rule, deploy=info,
            **({"exit_code": 1, "error": "unhealthy"} if end is ev.JobFailed else {})),
        source="/hookbus/executor", cause=req,
    )  # fmt: skip
    return [hook, req, done]


async def test_the_projects_page_shows_what_each_stage_runs(site: Site, browser: Browser) -> None:
    made = ev.make_event(
        ev.ProjectCreated(
            project="web", repository="localhost/acme/web", image="localhost/acme/web:1.0",
            stages=[ev.ProjectStage(name="dev")], port=8080, host_port=18080,
        ),
        source="/hookbus/executor",
    )  # fmt: skip
    await site.rt.outbox.commit_and_publish([made])
    # shop (from the config file): prod runs 2.1; web dev ran 1.0, then a deploy failed.
    for events in (
        _deploy_job("project.shop.prod", 1, ev.JobSucceeded, container="shop-prod",
                    image_after="acme/shop:2.1", health="healthy"),
        _deploy_job("project.web.dev", 1, ev.JobSucceeded, container="web",
                    image_after="localhost/acme/web:1.0", health="running"),
        _deploy_job("project.web.dev", 2, ev.JobFailed, container="web",
                    image_after="localhost/acme/web:1.1", health="unhealthy", rolled_back=True),
    ):  # fmt: skip
        for e in events:
            await site.rt.outbox.commit_and_publish([e])

    async with httpx.AsyncClient(
        base_url=site.base, headers={"authorization": f"Bearer {site.keys['read']}"}
    ) as c:
        listed = (await c.get("/api/projects")).json()
    assert [p["project"] for p in listed["items"]] == ["shop", "web"]

    page = await _sign_in(browser, site, "read")
    await page.get_by_role("link", name="Projects", exact=True).click()
    await expect(page.get_by_role("heading", name="Projects", level=1)).to_be_focused()

    shop = page.get_by_role("table", name="Stages of shop: what each runs")
    await expect(shop.locator("tbody tr")).to_have_count(1)
    row = shop.locator("tbody tr").first
    await expect(row.get_by_role("cell").nth(0)).to_have_text("prod")
    await expect(row.get_by_role("cell").nth(1)).to_have_text("acme/shop:2.1")
    await expect(row.get_by_role("cell").nth(2)).to_have_text("shop-prod")
    await expect(row.get_by_role("cell").nth(3)).to_have_text("healthy")

    web = page.get_by_role("region", name="web")
    await expect(
        web.get_by_text("Made from localhost/acme/web:1.0 · port 8080 on 127.0.0.1:18080")
    ).to_be_visible()
    dev = web.get_by_role("table").locator("tbody tr").first
    # What runs is the last successful deploy; the newest job failed (and was rolled back).
    await expect(dev.get_by_role("cell").nth(1)).to_have_text("localhost/acme/web:1.0")
    await expect(dev.get_by_role("cell").nth(5)).to_contain_text("failed")
    await dev.get_by_role("cell").nth(5).get_by_role("link").click()
    await expect(page.get_by_role("heading", name="Job job_")).to_be_visible()
