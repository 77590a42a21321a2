-- Deliveries in order per key. A delivery.requested with an ordering_key goes only when
-- every earlier request (by log sequence) of the same tenant, destination and key has
-- ended (succeeded, failed or dead); this index finds those earlier requests.
CREATE INDEX events_ordering ON events ((data->>'ordering_key'), seq)
    WHERE type = 'io.hookbus.delivery.requested.v1' AND (data->>'ordering_key') IS NOT NULL;

-- Deliveries waiting for an earlier one of their key (operational state: their messages
-- were acked, and each also has a delivery_schedule row due later as a safety net).
-- When a delivery of the key ends, the next waiting one (lowest seq) is made due at once.
CREATE TABLE ordering_waits (
    delivery_id  text PRIMARY KEY,
    tenant       text   NOT NULL,
    destination  text   NOT NULL,
    ordering_key text   NOT NULL,
    seq          bigint NOT NULL
);

CREATE INDEX ordering_waits_key ON ordering_waits (tenant, destination, ordering_key, seq);

-- A tenant's backlog (deliveries not yet ended), which overflow = "block" bounds.
CREATE INDEX deliveries_open ON deliveries (tenant) WHERE status IN ('pending', 'retrying');
