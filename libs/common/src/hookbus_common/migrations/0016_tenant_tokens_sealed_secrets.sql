-- Send tokens bound to tenants: a token with tenants sends messages for those tenants
-- only; an empty list (every token made before this, and an unbound one) sends for all.
ALTER TABLE api_tokens ADD COLUMN tenants text[] NOT NULL DEFAULT '{}';

-- Run-time endpoints' signing secrets encrypted at rest (AES-256-GCM under the key set by
-- HOOKBUS_SECRETS_KEY or HOOKBUS_SECRETS_KEY_FILE). `key_id` names the key a row is sealed
-- under and `secret` holds the nonce and ciphertext in base64; a row with no key_id is
-- still in plaintext (written before encryption) and is sealed on the next write or by
-- `hookbus endpoints reseal`.
ALTER TABLE endpoint_secrets ADD COLUMN key_id text;
