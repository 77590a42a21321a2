-- The W3C trace context of each event (the CloudEvents distributed-tracing extension),
-- kept so that an event published again from the log (the outbox relay, a replay) still
-- belongs to its trace. Nullable, no default: adding them rewrites nothing.
ALTER TABLE events ADD COLUMN traceparent text, ADD COLUMN tracestate text;
