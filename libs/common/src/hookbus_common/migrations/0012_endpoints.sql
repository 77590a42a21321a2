-- Endpoints managed at run time (`hookbus endpoints add`, …), next to the [endpoints.*]
-- of the config file. `endpoints` is a read model of the endpoint.created / .updated /
-- .paused / .resumed / .deleted events (written in the transaction that appends them,
-- rebuilt from the log); a deleted endpoint has no row, so its name can be used again.
CREATE TABLE endpoints (
    endpoint     text PRIMARY KEY,
    endpoint_id  text        NOT NULL UNIQUE,
    tenant       text        NOT NULL,
    url          text        NOT NULL,
    description  text        NOT NULL DEFAULT '',
    events       text[]      NOT NULL,
    paused       boolean     NOT NULL DEFAULT false,
    created_by   text,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    last_seq     bigint      NOT NULL
);

CREATE INDEX endpoints_tenant ON endpoints (tenant);

-- Their signing secrets (whsec_…), never in the event log: events name them by id. Not a
-- read model (like partner_tokens): written by the CLI in the transaction that appends
-- the event, read by the dispatcher only; `hookbus rebuild` leaves it alone. A secret
-- with `valid_until` in the past no longer signs; NULL: the current one.
CREATE TABLE endpoint_secrets (
    secret_id    text PRIMARY KEY,
    endpoint_id  text        NOT NULL,
    secret       text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    valid_until  timestamptz
);

CREATE INDEX endpoint_secrets_endpoint ON endpoint_secrets (endpoint_id, created_at);

-- A token scope for applications that send messages (POST /api/v1/messages) and see
-- nothing else.
ALTER TABLE api_tokens DROP CONSTRAINT api_tokens_scope_check;
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_scope_check
    CHECK (scope IN ('read', 'operate', 'admin', 'send'));
