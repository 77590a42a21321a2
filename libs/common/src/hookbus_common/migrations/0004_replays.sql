-- Replay jobs (`hookbus replay`): what each selects, how far it got, and how many events
-- it has done, so an interrupted replay resumes after its cursor without repeating work.
-- The log holds each replay's audit events (io.hookbus.replay.*); this table is the
-- working state of a replay beside them, like job_leases: `hookbus rebuild` leaves it alone.
CREATE TABLE replays (
    replay_id    text PRIMARY KEY,
    mode         text        NOT NULL CHECK (mode IN ('redrive', 'republish')),
    -- The selection as the replay.started event records it (ReplaySelection, JSON).
    selection    json        NOT NULL,
    requested_by text,
    reason       text,
    status       text        NOT NULL CHECK (status IN ('running', 'interrupted', 'finished')),
    -- The log's last sequence number when the replay started: the selection never takes
    -- events appended later (its own replay events among them).
    max_seq      bigint      NOT NULL,
    -- The log sequence number of the last selected event done; a resume goes on after it.
    -- Advanced in the transaction that records a batch's replay events (redrive), or once
    -- a batch is acknowledged by JetStream (republish).
    cursor_seq   bigint      NOT NULL DEFAULT 0,
    selected     integer     NOT NULL,
    done         integer     NOT NULL DEFAULT 0,
    rate         double precision NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);

CREATE INDEX replays_created ON replays (created_at);
