-- Two things every event insert paid for that protected nothing:
--
-- * The outbox's foreign key to the log. An outbox row is only ever written in the same
--   statement as its event, and events are never deleted (the log refuses it), so the
--   check always passed; it cost a lookup per event and a row lock on the new event,
--   itself a write-ahead-log record.
-- * The unique index on dedupe_key held an entry for every event, NULLs included: only
--   inbound webhooks carry a key, and every derived event (routed, job, delivery) paid
--   for an entry that nothing reads. A partial unique index keeps the same rule (a key
--   is recorded once; inserts skip a duplicate with ON CONFLICT DO NOTHING as before)
--   for the rows that have one.
--
-- Building the new index reads the log once, with writes to it held meanwhile: on a log
-- of tens of millions of events, give this start-up a minute.
ALTER TABLE outbox DROP CONSTRAINT IF EXISTS outbox_seq_fkey;

CREATE UNIQUE INDEX events_dedupe_key ON events (dedupe_key) WHERE dedupe_key IS NOT NULL;
ALTER TABLE events DROP CONSTRAINT events_dedupe_key_key;
