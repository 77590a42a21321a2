"""A job of a limiting concurrency key is registered with its request's commit."""

from __future__ import annotations

from hookbus_common import events as ev
from hookbus_common import readmodels
from hookbus_executor import outcomes


def _request(strategy: str | None) -> ev.Event[ev.JobRequestedV2]:
    concurrency = None if strategy is None else ev.Concurrency(key="k", strategy=strategy)  # type: ignore[arg-type]
    return ev.make_event(
        ev.JobRequestedV2(
            job_id="job_1", rule="r", webhook_id="w", spec=ev.ShellSpec(command=["x"]),
            concurrency=concurrency,
        ),
        source="/test",
    )  # fmt: skip


def test_the_terminal_step_is_the_executors() -> None:
    # The registration names the id of the job's end as the executor will record it.
    assert readmodels.JOB_TERMINAL_STEP == outcomes.TERMINAL_STEP


def test_only_limiting_strategies_are_registered_at_commit() -> None:
    for strategy in ("queue", "latest", "cancel-running"):
        parts = readmodels.fragments([_request(strategy)])
        assert parts is not None
        assert any(c.startswith("concurrency_new AS") for c in parts.ctes)
    for strategy in ("parallel", None):
        parts = readmodels.fragments([_request(strategy)])
        assert parts is not None
        assert not any(c.startswith("concurrency_new AS") for c in parts.ctes)
