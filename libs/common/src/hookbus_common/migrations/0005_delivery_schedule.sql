-- Deliveries waiting for their next attempt, and when it is due. Operational state, like
-- job_leases: the due time is also on the attempt's `delivery.attempted` event
-- (`next_attempt_at`), and a dispatcher that finds a delivery's message again puts its
-- row back, so `hookbus rebuild` leaves this table alone.
--
-- A waiting delivery holds no consumer capacity: its message was acked when the attempt
-- failed. When the row falls due, a dispatcher publishes the delivery's request again
-- and deletes the row in one transaction.
CREATE TABLE delivery_schedule (
    delivery_id text PRIMARY KEY,
    -- The delivery.requested event that is published again when the row falls due.
    request_id  text        NOT NULL,
    -- The attempt that is due then.
    attempt     integer     NOT NULL,
    due_at      timestamptz NOT NULL
);

CREATE INDEX delivery_schedule_due ON delivery_schedule (due_at);
