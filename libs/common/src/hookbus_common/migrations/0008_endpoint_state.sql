-- Endpoint health. `endpoint_state` is a read model of the endpoint.disabled / .enabled
-- events (written in the transaction that appends them, rebuilt from the log); an
-- endpoint without a row is enabled. The dispatcher reads it before every attempt at an
-- endpoint, so a disabled endpoint is never sent to.
CREATE TABLE endpoint_state (
    endpoint    text PRIMARY KEY,
    disabled    boolean     NOT NULL,
    reason      text        NOT NULL DEFAULT '',
    changed_by  text,
    changed_at  timestamptz NOT NULL,
    last_seq    bigint      NOT NULL
);

-- Since when every attempt at an endpoint has failed: operational state, like
-- delivery_schedule (a success deletes the row; `hookbus rebuild` leaves it alone). An
-- endpoint failing for dispatcher.disable_after is disabled.
CREATE TABLE endpoint_failing (
    endpoint      text PRIMARY KEY,
    since         timestamptz NOT NULL,
    last_failure  timestamptz NOT NULL
);
