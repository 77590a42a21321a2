-- Concurrency keys: which jobs of one key wait, run, or were superseded. Operational
-- state, like job_leases (the events say what happened: job.started, job.skipped,
-- job.interrupted "cancelled"); `hookbus rebuild` leaves it alone.
--
-- A job whose request carries a concurrency key (strategy queue, latest or
-- cancel-running) gets a row when an executor first sees it. Every decision on a key is
-- taken under a transaction-scoped advisory lock on the key, so executors on several
-- hosts agree; a waiting job's message is given back to NATS (deferred), holding no
-- consumer capacity. A running row counts until its job's terminal event is in the log.
CREATE TABLE job_concurrency (
    job_id        text PRIMARY KEY,
    key           text        NOT NULL,
    strategy      text        NOT NULL,
    -- The job.requested event, and the id its terminal event has (finished, skipped or
    -- interrupted for good): a running row whose terminal event is recorded is done.
    request_id    text        NOT NULL,
    terminal_id   text        NOT NULL,
    -- The request's place in the log: "in order" and "newest" mean this.
    seq           bigint      NOT NULL,
    -- waiting | running | done | superseded
    state         text        NOT NULL DEFAULT 'waiting',
    -- latest: the newer job that runs instead; cancel-running: the newer job that asked
    -- this one's run to stop.
    superseded_by text,
    cancelled_by  text,
    seen_at       timestamptz NOT NULL DEFAULT now(),
    changed_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX job_concurrency_open ON job_concurrency (key, seq)
    WHERE state IN ('waiting', 'running');
