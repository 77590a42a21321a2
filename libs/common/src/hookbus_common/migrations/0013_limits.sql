-- Limits that hold across dispatcher replicas. Operational state, like delivery_schedule:
-- nothing here is rebuilt from the log, and losing it only forgets recent counts.
--
-- A GCRA token bucket per limited key (`endpoint:<name>`, `tenant:<name>`): `tat` is the
-- theoretical arrival time of the next request at the steady rate, in seconds since the
-- epoch by Postgres's clock. One INSERT … ON CONFLICT DO UPDATE … RETURNING per request.
CREATE TABLE rate_limits (
    key  text PRIMARY KEY,
    tat  double precision NOT NULL
);

-- Places in flight (an endpoint's max_in_flight across replicas): one row per request
-- being sent, deleted when it ends, or expiring if its dispatcher died mid-request.
CREATE TABLE limit_leases (
    key         text NOT NULL,
    holder      text NOT NULL,
    expires_at  double precision NOT NULL,
    PRIMARY KEY (key, holder)
);

-- A delivery put back on the schedule because a limit made it wait (not because an
-- attempt failed): it is published under a message id of its own each time, so the bus
-- never drops one as a duplicate of an earlier wait for the same attempt.
ALTER TABLE delivery_schedule ADD COLUMN waited boolean NOT NULL DEFAULT false;
