-- The append-only event log, its outbox, and the first read models.

CREATE TABLE events (
    seq            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id             text        NOT NULL UNIQUE,
    type           text        NOT NULL,
    source         text        NOT NULL,
    subject        text,
    bus_subject    text        NOT NULL,
    tenant         text        NOT NULL,
    correlation_id text        NOT NULL,
    causation_id   text,
    time           timestamptz NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    -- An inbound delivery's identity (source + provider delivery id); recorded once.
    dedupe_key     text UNIQUE,
    -- json, not jsonb: kept as written and cheaper to insert; queries cast when needed.
    data           json        NOT NULL,
    -- The exact bytes of an inbound webhook body, for re-verification and replay.
    raw_body       bytea
);

CREATE INDEX events_correlation ON events (correlation_id, seq);
CREATE INDEX events_type ON events (type, seq);
CREATE INDEX events_time ON events (time);

CREATE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the event log is append-only: % on events is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER events_no_update_delete
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_append_only();
CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_append_only();

-- Committed events not yet known to be on the bus. A row is written in the same
-- transaction as its event and deleted once NATS acknowledged the publish; the relay
-- publishes whatever stays here (a process died between commit and publish).
CREATE TABLE outbox (
    seq        bigint PRIMARY KEY REFERENCES events (seq),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Read models, written in the same transaction as the events that change them and
-- rebuildable from the log (hookbus rebuild).
CREATE TABLE jobs (
    job_id         text PRIMARY KEY,
    kind           text        NOT NULL,
    rule           text        NOT NULL,
    correlation_id text        NOT NULL,
    status         text        NOT NULL,
    attempts       integer     NOT NULL DEFAULT 0,
    exit_code      integer,
    duration_ms    double precision,
    requested_at   timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    last_seq       bigint      NOT NULL
);

CREATE TABLE deliveries (
    delivery_id    text PRIMARY KEY,
    url            text        NOT NULL,
    rule           text        NOT NULL,
    tenant         text        NOT NULL,
    correlation_id text        NOT NULL,
    status         text        NOT NULL,
    attempts       integer     NOT NULL DEFAULT 0,
    last_status_code integer,
    last_error     text,
    requested_at   timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    last_seq       bigint      NOT NULL
);
