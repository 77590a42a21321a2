"""Reloading the rules under load loses and duplicates nothing.

Signed GitHub pushes arrive at a steady rate, each with its own delivery id, while the
router's rules file is rewritten several times: two valid rule sets in turn (their shell
actions append the delivery id and the rule's name to a file), once an invalid file that
must be refused with the rules in use kept, and once a change only SIGHUP tells the router
of. Every push matches at least one rule in both sets, so once the system has settled:

- every accepted webhook has exactly one routing record, made with one of the two valid
  versions (never the refused file's), naming the rules that version matches;
- every job it requested ran exactly once (one line in the file, one end in the log), and
  nothing else ran;
- the router logged and counted exactly one refused reload, and applied every other.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from hookbus_common.errors import ConfigError
from hookbus_router import config as router
from hookbus_router.rules import RuleSet

from ..conftest import Servers
from .conftest import System
from .load import JOB_ENDS, Load, Log, wait_settled
from .test_slice import SECRET, push

pytestmark = pytest.mark.e2e

RATE = 20  # pushes per second
COUNT = 200  # 10 s of load
SPACING = 1.5  # seconds between changes of the rules
SETTLE_SECONDS = 40

# A job's ends, skipped among them: a skipped job has ended (the log settles), and fails
# the check that every job succeeded.
JOB_ENDS_OR_SKIPPED = {**JOB_ENDS, "io.hookbus.job.skipped.v1": "skipped"}

APPLIED = "rules reloaded"
UNCHANGED = "rules reloaded, unchanged"
REFUSED = "rules reload refused; the rules in use stay"


def _rule(name: str, script: Path, extra: str = "") -> str:
    return (
        f'[[rules]]\nname = "{name}"\nsource = "github"\nevent = "push"\n{extra}'
        f'actions = [{{ kind = "shell", command = ["{script}", "{name}"], timeout = 30 }}]\n\n'
    )


def rule_sets(script: Path) -> tuple[bytes, bytes, bytes]:
    """Set A: one rule for every push. Set B: one for every push and one for main only.
    The invalid set: B's rules under other names, one with an unknown operator (so, were
    it ever applied, its names would show in the routing records). A and B are padded to
    the same size, so that a change between them may be invisible to the file poll."""
    a = _rule("a-push", script)
    b = _rule("b-push", script) + _rule("b-main", script, 'branch = "main"\n')
    bad = _rule("c-push", script) + _rule(
        "c-main", script, 'when = { path = "payload.ref", equal = "refs/heads/main" }\n'
    )
    size = max(len(a), len(b)) + 4
    a, b = (f"{t}# {'-' * (size - len(t) - 3)}\n" for t in (a, b))
    assert len(a) == len(b)
    return a.encode(), b.encode(), bad.encode()


def expected_rules(version_rules: dict[str, list[str]], version: str, branch: str) -> list[str]:
    return [r for r in version_rules[version] if r != "b-main" or branch == "main"]


def branch(delivery: str) -> str:
    """The branch push ``reload-<i>`` goes to: pushes alternate between main and dev."""
    return ("main", "dev")[int(delivery.removeprefix("reload-")) % 2]


def reload_push(i: int) -> tuple[str, bytes]:
    delivery = f"reload-{i}"
    return delivery, push(branch=branch(delivery), n=i)


def settled(log: Log, accepted: dict[str, str]) -> bool:
    """Every accepted webhook routed, every job requested ended, the outbox empty."""
    return (
        all(log.routed.get(i) for i in accepted.values())
        and all(j in log.job_ends for j in log.jobs)
        and log.outbox == 0
    )


def reloads(system: System) -> list[dict[str, Any]]:
    """The router's log records of reloads, in order."""
    path = system.logs / "router.log"
    found = []
    for line in path.read_text().splitlines() if path.exists() else []:
        if "reload" not in line:
            continue
        try:
            record = msgspec.json.decode(line)
        except msgspec.DecodeError:
            continue
        if isinstance(record, dict) and record.get("msg") in (APPLIED, UNCHANGED, REFUSED):
            found.append(record)
    return found


def reload_metric(system: System, result: str) -> float:
    port = system.env["HOOKBUS_ROUTER__HEALTH_PORT"]
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    pattern = rf'^hookbus_router_reloads_total\{{result="{result}"\}} (\S+)$'
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def replace(path: Path, text: bytes) -> None:
    """Write the file whole and rename it into place (what editors and ConfigMaps do): the
    router never reads half of it."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(text)
    os.replace(tmp, path)


def rewrite_unseen(path: Path, text: bytes) -> None:
    """Overwrite the file in place with text of the same size and put its modification
    time back: the file poll sees no change, only SIGHUP tells the router."""
    st = path.stat()
    assert st.st_size == len(text)
    with open(path, "r+b") as f:
        f.write(text)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def until_stopped(pid: int) -> None:
    """Wait until the process has taken its SIGSTOP (the signal is sent, not waited for)."""
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert time.monotonic() < deadline, "the process did not stop"
        time.sleep(0.001)


def test_reloading_the_rules_under_load_loses_and_duplicates_nothing(
    servers: Servers, make_system: Callable[..., System], tmp_path: Path
) -> None:
    ran = tmp_path / "ran.log"
    script = tmp_path / "act.sh"
    script.write_text(
        f'#!/bin/sh\nprintf "%s %s %s\\n" "$HOOKBUS_DELIVERY_ID" "$1" "$HOOKBUS_JOB_ID" >> {ran}\n'
    )
    script.chmod(0o755)
    a, b, bad = rule_sets(script)
    rules = tmp_path / "rules.toml"
    rules.write_bytes(a)
    main = f"""
[sources.github]
kind = "github"
secrets = [{{ value = "{SECRET}" }}]

[router]
rules_file = "rules.toml"
"""

    # The versions the router should name: the same loader, the same files.
    version_rules: dict[str, list[str]] = {}
    check = tmp_path / "check"
    check.mkdir()
    (check / "hookbus.toml").write_text(main)
    for text in (a, b):
        (check / "rules.toml").write_bytes(text)
        loaded = router.load(check / "hookbus.toml", {})
        version_rules[RuleSet.build(loaded.rules).version] = [r.name for r in loaded.rules]
    version_a, version_b = version_rules
    (check / "rules.toml").write_bytes(bad)
    with pytest.raises(ConfigError, match="equal"):
        router.load(check / "hookbus.toml", {})

    system = make_system(main, servers)
    system.env["HOOKBUS_LOG__LEVEL"] = "INFO"
    system.start()
    # The router has read its rules before the first change.
    ready = f"http://127.0.0.1:{system.env['HOOKBUS_ROUTER__HEALTH_PORT']}/readyz"
    deadline = time.monotonic() + 30
    while not _answers(ready):
        assert time.monotonic() < deadline, f"router not ready: {system.log('router')}"
        time.sleep(0.05)

    # (what, text): each change waits until the router has acted on it (or the deadline).
    changes = [
        ("replace", b),
        ("replace", a),
        ("replace", bad),  # refused: A stays
        ("replace", b),
        ("sighup", a),  # the poll cannot see this one
        ("replace", b),
    ]
    # Senders that retry (same delivery id) on a 429/503 or a dropped connection, as real
    # senders do; a 200 (seen before) is not taken as accepted.
    load = Load(
        system.url, RATE, COUNT, webhook=reload_push, max_tries=20, senders=32, accepts=(202,)
    )
    load.start()
    began = load.began
    for k, (how, text) in enumerate(changes, start=1):
        time.sleep(max(0.0, began + k * SPACING - time.monotonic()))
        seen = len(reloads(system))
        if how == "replace":
            replace(rules, text)
        else:
            # Stopped while the file is rewritten and its time put back: a router that
            # looked between the two (its watch wakes at once) would see a change.
            router_proc = system.procs["router"]
            router_proc.send_signal(signal.SIGSTOP)
            until_stopped(router_proc.pid)
            try:
                rewrite_unseen(rules, text)
            finally:
                router_proc.send_signal(signal.SIGCONT)
            router_proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while len(reloads(system)) == seen and time.monotonic() < deadline:
            time.sleep(0.05)
        print(f"reload: {time.monotonic() - began:5.1f}s {how} -> {reloads(system)[-1:]}")
    load.finish(timeout=60)

    accepted = load.accepted()
    log, settle = wait_settled(
        system,
        lambda log: settled(log, accepted),
        SETTLE_SECONDS,
        poll=0.5,
        job_ends=JOB_ENDS_OR_SKIPPED,
    )
    done = reloads(system)
    refused_metric = reload_metric(system, "refused")
    applied_metric = reload_metric(system, "applied")

    lines = [tuple(line.split()) for line in ran.read_text().splitlines()] if ran.exists() else []
    ran_count: Counter[tuple[str, ...]] = Counter(lines)
    by_version = Counter(r["config_version"] for rs in log.routed.values() for r in rs)
    job_of = {(d["webhook_id"], d["rule"]): j for j, d in log.requests.items()}
    expected: Counter[tuple[str, ...]] = Counter()
    wrong_rules: dict[str, tuple[str, list[str], list[str]]] = {}
    for delivery, hook_id in accepted.items():
        for record in log.routed.get(hook_id, []):
            version = record["config_version"]
            if version not in version_rules:
                continue
            want = expected_rules(version_rules, version, branch(delivery))
            if record["matched"] != want:
                wrong_rules[delivery] = (version, record["matched"], want)
            for name in record["matched"]:
                expected[(delivery, name, job_of.get((hook_id, name), "?"))] += 1
    job_ends = log.job_end_counts()
    counts = (
        f"sent={COUNT} accepted={len(accepted)} answers={dict(load.answers)}"
        f" recorded={sum(len(v) for v in log.received.values())}"
        f" routed={sum(len(v) for v in log.routed.values())}"
        f" by_version={{A({version_a})={by_version[version_a]},"
        f" B({version_b})={by_version[version_b]}}}"
        f" jobs={len(log.jobs)} job_ends={dict(job_ends)} actions_run={len(lines)}"
        f" reloads={[(r['msg'], r.get('trigger'), r.get('version')) for r in done]}"
        f" metric_refused={refused_metric} metric_applied={applied_metric}"
        f" settle_seconds={settle:.1f}"
    )
    print(f"reload counts: {counts}")
    logs = f"--- router\n{system.log('router')[-2000:]}"

    assert settled(log, accepted), f"not settled in {SETTLE_SECONDS}s: {counts}\n{logs}"
    assert len(accepted) == COUNT, counts
    # Every accepted webhook recorded once, under the id it was answered with.
    answered = {d: [i] for d, i in accepted.items()}
    assert {d: ids for d, ids in log.received.items()} == answered, counts
    # One routing record per webhook, made with a valid version, naming what it matches.
    twice = {h: len(rs) for h, rs in log.routed.items() if len(rs) != 1}
    assert not twice, f"{counts} routed other than once: {twice}"
    assert set(by_version) <= {version_a, version_b}, f"{counts}: versions {by_version}"
    # The reloads happened while the pushes arrived: both versions routed some of them.
    assert by_version[version_a] > 0, counts
    assert by_version[version_b] > 0, counts
    assert not wrong_rules, f"{counts} matched other rules: {dict(list(wrong_rules.items())[:5])}"
    for hook_id, (record,) in log.routed.items():
        mine = {j for j, d in log.requests.items() if d["webhook_id"] == hook_id}
        assert len(mine) == len(record["matched"]) == len(record["requested"]), (counts, record)
    # Every job requested ran exactly once, and nothing else ran.
    assert len(log.jobs) == sum(len(rs[0]["matched"]) for rs in log.routed.values()), counts
    assert all(es == ["succeeded"] for es in log.job_ends.values()), f"{counts} {log.job_ends}"
    assert all(n == 1 for n in log.job_started.values()), counts
    assert set(log.job_started) == log.jobs, counts
    assert ran_count == expected, (
        f"{counts}: ran but not requested {dict(ran_count - expected)}, "
        f"requested but not run (or not once) {dict(expected - ran_count)}"
    )
    # The router's own account: the invalid file refused once (logged with its reason,
    # counted on its metrics port), every other change applied, one of them by SIGHUP.
    outcomes = [(r["msg"], r.get("trigger")) for r in done]
    assert outcomes == [
        (APPLIED, "file changed"),
        (APPLIED, "file changed"),
        (REFUSED, "file changed"),
        (APPLIED, "file changed"),
        (APPLIED, "SIGHUP"),
        (APPLIED, "file changed"),
    ], counts
    refused = done[2]
    assert "equal" in refused["reason"], refused
    assert refused["version"] == version_a  # the rules in use, which stayed
    assert [r["version"] for r in done if r["msg"] == APPLIED] == [
        version_b, version_a, version_b, version_a, version_b,
    ]  # fmt: skip
    assert refused_metric == 1.0, counts
    assert applied_metric == 5.0, counts
