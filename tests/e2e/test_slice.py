"""End to end: a signed GitHub push runs a script, through four separate processes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import msgspec
import pytest

from hookbus_common import eventlog
from hookbus_common.db import open_pool
from hookbus_common.eventlog import LoggedEvent
from hookbus_common.settings import DatabaseSettings
from hookbus_receiver.signatures import sign_github

from ..conftest import Servers
from .conftest import System

pytestmark = pytest.mark.e2e

SECRET = "e2e-secret"


def push(repo: str = "acme/app", branch: str = "main", n: int = 0) -> bytes:
    return json.dumps({
        "ref": f"refs/heads/{branch}", "after": f"{n:040x}",
        "repository": {"full_name": repo}, "sender": {"login": "octocat"},
    }).encode()  # fmt: skip


def headers(body: bytes, delivery: str, secret: str = SECRET) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "x-github-event": "push",
        "x-github-delivery": delivery,
        "x-hub-signature-256": sign_github(body, secret.encode()),
    }


def config(script: Path, extra: str = "") -> str:
    return f"""
[sources.github]
kind = "github"
secrets = [{{ value = "{SECRET}" }}]

[[rules]]
name = "deploy"
source = "github"
event = "push"
repository = "acme/*"
branch = "main"
actions = [{{ kind = "shell", command = ["{script}", "first arg; $(not run)"], timeout = 20 }}]
{extra}
"""


def chain(system: System, event_id: str) -> list[LoggedEvent]:
    async def run() -> list[LoggedEvent]:
        db = DatabaseSettings(
            url=system.env["HOOKBUS_DATABASE__URL"], schema=system.env["HOOKBUS_DATABASE__SCHEMA"]
        )
        async with open_pool(db, run_migrations=False) as pool, pool.acquire() as conn:
            return await eventlog.chain(conn, event_id)

    return asyncio.run(run())


def wait_for(check: Callable[[], bool], what: str, system: System, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {s}\n{system.log(s)}" for s in system.procs)
            raise AssertionError(f"timed out waiting for {what}\n{logs}")
        time.sleep(0.05)


def short_types(rows: list[LoggedEvent]) -> list[str]:
    return [r.event.type.removeprefix("io.hookbus.").rsplit(".", 1)[0] for r in rows]


@pytest.fixture
def script(tmp_path: Path) -> Path:
    out = tmp_path / "ran.log"
    s = tmp_path / "deploy.sh"
    s.write_text(
        "#!/bin/sh\n"
        f'printf "%s|%s|%s|%s|%s\\n" "$HOOKBUS_REPOSITORY" "$HOOKBUS_BRANCH" "$1" '
        f'"$(wc -c)" "$HOOKBUS_JOB_ID" >> {out}\n'
        'echo "deployed $HOOKBUS_REPOSITORY"\n'
    )
    s.chmod(0o755)
    return s


def test_signed_push_runs_the_script_and_the_chain_is_in_the_log(
    servers: Servers, make_system: Callable[..., System], script: Path
) -> None:
    system = make_system(config(script), servers)
    system.start()
    body = push()
    r = httpx.post(f"{system.url}/hooks/github", content=body, headers=headers(body, "e2e-1"))
    assert r.status_code == 202, r.text
    hook_id = r.json()["id"]

    wait_for(lambda: "job.succeeded" in short_types(chain(system, hook_id)), "the job", system)
    rows = chain(system, hook_id)
    assert short_types(rows) == [
        "webhook.received", "webhook.routed", "job.requested", "job.started", "job.succeeded",
    ]  # fmt: skip
    assert all(r.event.correlationid == hook_id for r in rows)
    assert [r.event.causationid for r in rows[1:3]] == [hook_id, hook_id]
    done = msgspec.json.decode(rows[-1].event.data)
    assert done["exit_code"] == 0
    assert "deployed acme/app" in done["output"]

    ran = (script.parent / "ran.log").read_text().splitlines()
    assert len(ran) == 1
    repo, branch, arg, size, job_id = ran[0].split("|")
    # argv reaches the script verbatim: no shell ever interprets it.
    assert (repo, branch, arg) == ("acme/app", "main", "first arg; $(not run)")
    assert int(size) == len(body)  # the payload on stdin, byte for byte
    assert job_id == done["job_id"]

    out = system.cli("events", "--chain", hook_id)
    assert out.returncode == 0, out.stderr
    for t in (
        "webhook.received",
        "webhook.routed",
        "job.requested",
        "job.started",
        "job.succeeded",
    ):
        assert t in out.stdout
    assert "matched: deploy" in out.stdout


def test_wrongly_signed_push_is_refused_and_runs_nothing(
    servers: Servers, make_system: Callable[..., System], script: Path
) -> None:
    system = make_system(config(script), servers)
    system.start()
    body = push()
    bad = httpx.post(
        f"{system.url}/hooks/github", content=body, headers=headers(body, "bad-1", secret="nope")
    )
    assert bad.status_code == 401
    # A good push after it: once its job has run, the bad one has had every chance to.
    good = httpx.post(f"{system.url}/hooks/github", content=body, headers=headers(body, "good-1"))
    assert good.status_code == 202
    good_id = good.json()["id"]
    wait_for(lambda: "job.succeeded" in short_types(chain(system, good_id)), "the job", system)
    assert len((script.parent / "ran.log").read_text().splitlines()) == 1
    listed = system.cli("events", "--json", "--limit", "100")
    types = [json.loads(line)["type"] for line in listed.stdout.splitlines()]
    assert types.count("io.hookbus.webhook.received.v1") == 1


def _router_metric(system: System, name: str) -> float:
    port = system.env["HOOKBUS_ROUTER__HEALTH_PORT"]
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    except httpx.HTTPError:  # not listening yet
        return 0.0
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")]
    return values[0] if values else 0.0


def test_an_unmatched_push_runs_nothing_and_records_nothing_but_itself(
    servers: Servers, make_system: Callable[..., System], script: Path
) -> None:
    system = make_system(config(script), servers)
    system.start("receiver", "router")
    system.wait_ready()
    body = push(branch="feature/x")
    r = httpx.post(f"{system.url}/hooks/github", content=body, headers=headers(body, "u-1"))
    hook_id = r.json()["id"]
    wait_for(
        lambda: _router_metric(system, "hookbus_router_unmatched_total") == 1, "routing", system
    )
    assert short_types(chain(system, hook_id)) == ["webhook.received"]
    assert not (script.parent / "ran.log").exists()


def test_an_unmatched_push_is_recorded_with_reasons_when_asked(
    servers: Servers, make_system: Callable[..., System], script: Path
) -> None:
    system = make_system(config(script, "[router]\nrecord_unmatched = true\n"), servers)
    system.start("receiver", "router")
    body = push(branch="feature/x")
    r = httpx.post(f"{system.url}/hooks/github", content=body, headers=headers(body, "u-1"))
    hook_id = r.json()["id"]
    wait_for(lambda: "webhook.routed" in short_types(chain(system, hook_id)), "routing", system)
    routed = msgspec.json.decode(chain(system, hook_id)[1].event.data)
    assert routed["matched"] == []
    assert routed["evaluations"][0]["reason"] == "branch: 'feature/x' does not match 'main'"


def test_webhook_action_is_delivered_by_the_dispatcher(
    servers: Servers, make_system: Callable[..., System], script: Path, tmp_path: Path
) -> None:
    from .httpsink import Sink

    with Sink() as sink:
        extra = f"""
[[rules]]
name = "notify"
event = "push"
actions = [{{ kind = "webhook", url = "{sink.url}/in", headers = {{ x-team = "ops" }} }}]
"""
        system = make_system(config(script, extra), servers)
        system.start()
        body = push()
        r = httpx.post(f"{system.url}/hooks/github", content=body, headers=headers(body, "n-1"))
        hook_id = r.json()["id"]
        wait_for(
            lambda: "delivery.succeeded" in short_types(chain(system, hook_id)), "delivery", system
        )
        got = sink.requests
    assert len(got) == 1
    assert got[0].body == body
    assert got[0].headers["x-team"] == "ops"
    assert got[0].headers["x-hookbus-delivery"].startswith("dlv_")


def test_services_without_an_http_api_serve_health_and_metrics(
    servers: Servers, make_system: Callable[..., System], script: Path
) -> None:
    system = make_system(config(script), servers)
    system.start()
    body = push()
    r = httpx.post(f"{system.url}/hooks/github", content=body, headers=headers(body, "h-1"))
    hook_id = r.json()["id"]
    wait_for(lambda: "job.succeeded" in short_types(chain(system, hook_id)), "the job", system)
    for service in ("router", "executor", "dispatcher"):
        base = f"http://127.0.0.1:{system.env[f'HOOKBUS_{service.upper()}__HEALTH_PORT']}"
        assert httpx.get(f"{base}/healthz").status_code == 200
        ready = httpx.get(f"{base}/readyz")
        assert ready.status_code == 200
        assert ready.text == "nats: ok\npostgres: ok\n"
        assert httpx.get(f"{base}/nothing").status_code == 404
    metrics = httpx.get(
        f"http://127.0.0.1:{system.env['HOOKBUS_ROUTER__HEALTH_PORT']}/metrics"
    ).text
    prefix = system.env["HOOKBUS_PREFIX"]
    # The webhook only: the end of a job outside a sequence never reaches the router.
    acked = f'hookbus_messages_handled_total{{consumer="{prefix}-router",outcome="ack"}} '
    assert acked + "1.0" in metrics.splitlines()


def test_every_accepted_payload_is_routed_however_deeply_it_nests(
    servers: Servers, make_system: Callable[..., System], script: Path
) -> None:
    """The receiver decodes a body under the interpreter's default recursion limit; the
    services that decode it again, deeper in their own stacks, must manage whatever the
    receiver accepted (or it would be accepted and never routed)."""
    system = make_system(config(script), servers)
    system.start()
    accepted: dict[int, str] = {}
    for depth in (100, 500, 900, 950, 970, 980, 985, 990, 995, 999, 1005, 1500, 5000):
        # Built as text: the test's own decoder would not take the deepest ones.
        body = push()[:-1] + b', "deep": ' + b"[" * depth + b"]" * depth + b"}"
        r = httpx.post(
            f"{system.url}/hooks/github", content=body, headers=headers(body, f"deep-{depth}")
        )
        assert r.status_code in (202, 400), (depth, r.status_code, r.text)
        if r.status_code == 202:
            accepted[depth] = r.json()["id"]
    assert 950 in accepted, sorted(accepted)
    for depth, hook_id in accepted.items():
        wait_for(
            lambda hook_id=hook_id: "job.succeeded" in short_types(chain(system, hook_id)),
            f"the job of the webhook nested {depth} deep",
            system,
        )
