-- Tokens of the operator API (`hookbus tokens create`): each shown once, only its SHA-256
-- kept. Like partner_tokens this is not a read model: a hash never goes into an event (the
-- log and the bus are readable by many), so `hookbus rebuild` leaves this table alone.
-- Creating and revoking a token are io.hookbus.apitoken.* events in the log all the same.
CREATE TABLE api_tokens (
    token_id     text PRIMARY KEY,
    name         text        NOT NULL,
    scope        text        NOT NULL CHECK (scope IN ('read', 'operate', 'admin')),
    token_sha256 bytea       NOT NULL UNIQUE,
    created_by   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    last_used_at timestamptz
);

-- A name is unique among tokens that are not revoked.
CREATE UNIQUE INDEX api_tokens_live_name ON api_tokens (name) WHERE revoked_at IS NULL;
