-- Partners (token-in-the-path webhooks) and the image-push URL secret.

-- Read model of the io.hookbus.partner.* events, written in the same transaction as them
-- and rebuilt from the log by `hookbus rebuild`. It holds no token and no token hash.
CREATE TABLE partners (
    partner_id  text PRIMARY KEY,
    name        text        NOT NULL,
    description text        NOT NULL DEFAULT '',
    tenant      text        NOT NULL,
    status      text        NOT NULL CHECK (status IN ('ACTIVE', 'INACTIVE', 'SUSPENDED')),
    validation  json        NOT NULL,
    token_id    text        NOT NULL,
    created_at  timestamptz NOT NULL,
    modified_at timestamptz NOT NULL,
    deleted_at  timestamptz,
    last_seq    bigint      NOT NULL
);

-- A name is unique among partners that are not deleted.
CREATE UNIQUE INDEX partners_live_name ON partners (name) WHERE deleted_at IS NULL;

-- Not a read model: token hashes are deliberately kept out of events (an event is readable
-- by anyone who can read the log or the bus), so this table is the only record of them and
-- `hookbus rebuild` leaves it alone. A partner's current token is the row whose token_id
-- the partner's events name; rotating or deleting a partner removes the rows it no longer
-- uses. SHA-256 is enough here: tokens are 32 random bytes, not passwords.
CREATE TABLE partner_tokens (
    token_id     text PRIMARY KEY,
    partner_id   text        NOT NULL,
    token_sha256 bytea       NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX partner_tokens_partner ON partner_tokens (partner_id);

-- The secret of the image-push URL (/api/webhook/<secret>): one row, made on first start
-- (INSERT … ON CONFLICT DO NOTHING, so receivers starting together agree on one) and
-- replaced by `hookbus webhook-url regenerate`.
CREATE TABLE webhook_url (
    id         integer PRIMARY KEY CHECK (id = 1),
    secret     text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
