-- Multi-event rules: a row per (rule, key) while a rule waits for the rest of its events
-- (the router's waits module). Operational state, like job_leases: an
-- open wait's events are in the log, its firing is recorded there (webhook.routed's
-- `joined`), and so is its expiry (rule.wait.expired); `hookbus rebuild` leaves it alone.
--
-- Each arrival is one INSERT … ON CONFLICT DO UPDATE under the primary key, so routers
-- running side by side serialise on the row: the arrival that completes the set closes
-- it and names itself in fired_by, and only that one fires.
CREATE TABLE rule_waits (
    rule           text        NOT NULL,
    wait_key       text        NOT NULL,
    -- How many events the rule waits for.
    parts          integer     NOT NULL,
    -- The events of the open wait so far: part index (as text) → event id.
    arrived        jsonb       NOT NULL DEFAULT '{}',
    -- The latest event ids that arrived here: a redelivered one changes nothing.
    seen           text[]      NOT NULL DEFAULT '{}',
    first_seen     timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL,
    -- Open while waiting; closed once fired or expired (a later event opens it again).
    open           boolean     NOT NULL DEFAULT true,
    -- The last firing: the event that completed it, and the events it joined.
    fired_by       text,
    fired_parts    jsonb,
    fired_at       timestamptz,
    tenant         text        NOT NULL DEFAULT 'default',
    -- The chain of the wait's first event, for its expiry record.
    correlation_id text        NOT NULL DEFAULT '',
    updated_at     timestamptz NOT NULL,
    PRIMARY KEY (rule, wait_key)
);

CREATE INDEX rule_waits_open_expiry ON rule_waits (expires_at) WHERE open;
