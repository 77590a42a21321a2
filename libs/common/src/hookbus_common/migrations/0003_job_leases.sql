-- Job leases: which executor runs which job right now. Operational state, like
-- partner_tokens, not a read model: it says who holds a run and where its processes are,
-- which no event records, so `hookbus rebuild` leaves it alone.
--
-- One row per job, kept after the job ends (it holds the count of runs). A run holds the
-- lease while `ended_at` is NULL and `expires_at` is ahead; its executor renews
-- `expires_at` while the run goes on. A lease that expired without ending belongs to a run
-- whose end is unknown (its executor died): the executor that next gets the job records it
-- as interrupted, or runs the job again if its rule says so. Times are the database's
-- (`now()`), so executors on several hosts agree on them.
CREATE TABLE job_leases (
    job_id           text PRIMARY KEY,
    -- The job.requested event: interrupted and finished events derive their ids from it.
    request_id       text        NOT NULL,
    -- Runs so far (1 for the first); each run's job.started carries it.
    attempt          integer     NOT NULL,
    -- The executor process holding (or that last held) the lease: its instance id, the
    -- host it runs on (boot id and pid namespace: where its pids mean something), a name
    -- for people, its pid and that pid's start time (so a reused pid is not taken for it).
    owner            text        NOT NULL,
    host             text        NOT NULL,
    hostname         text        NOT NULL,
    owner_pid        integer     NOT NULL,
    owner_started    bigint,
    -- The action's process group once spawned, and its leader's start time.
    pgid             integer,
    pgid_started     bigint,
    acquired_at      timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    -- Set when the run's end is recorded; `outcome` says how it ended.
    ended_at         timestamptz,
    outcome          text
);

-- An executor looks for the unended leases of its own host when it starts.
CREATE INDEX job_leases_host_open ON job_leases (host) WHERE ended_at IS NULL;
