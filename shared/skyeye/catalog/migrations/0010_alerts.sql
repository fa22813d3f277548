-- Alerts: rules over place, time and content, the alerts they fire (once per rule and asset),
-- a transactional outbox to Kafka, webhook endpoints with their deliveries, and the event feed.
-- Idempotent: each statement may run again on a database that already has it.

-- A rule: where (a lon/lat box or a GeoJSON polygon; none = everywhere), when (a window over the
-- imagery's time), what kind of asset, and one condition (skyeye.alerts.rules.Condition, JSON):
-- a detection phrase with a minimum count, a full-text query, or a standing question with the
-- answer that fires. Deleting a rule keeps its alerts (rule_id is then NULL on them).
CREATE TABLE IF NOT EXISTS rules (
    rule_id     uuid PRIMARY KEY,
    name        text        NOT NULL,
    -- the area's bounds (west > east across the antimeridian) and its exact GeoJSON geometry
    bbox        double precision[],
    area        jsonb,
    start_time  timestamptz,
    end_time    timestamptz,
    asset_kind  text CHECK (asset_kind IN ('image', 'scene', 'clip')),
    condition   jsonb       NOT NULL,
    -- 'detection', 'text' or 'ask', the condition's kind, for indexes and listings
    kind        text        NOT NULL CHECK (kind IN ('detection', 'text', 'ask')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE INDEX IF NOT EXISTS rules_live_idx ON rules (kind) WHERE deleted_at IS NULL;
-- a name names one live rule; a deleted rule's name is free again
CREATE UNIQUE INDEX IF NOT EXISTS rules_live_name_idx ON rules (name) WHERE deleted_at IS NULL;

-- An alert: a rule fired for an asset, with the evidence (tiles, boxes, answers, lon/lat).
CREATE TABLE IF NOT EXISTS alerts (
    alert_id    uuid PRIMARY KEY,
    rule_id     uuid REFERENCES rules (rule_id) ON DELETE SET NULL,
    rule_name   text        NOT NULL,
    asset_id    uuid        NOT NULL REFERENCES assets (asset_id) ON DELETE CASCADE,
    evidence    jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (rule_id, asset_id)
);
CREATE INDEX IF NOT EXISTS alerts_created_idx ON alerts (created_at, alert_id);
CREATE INDEX IF NOT EXISTS alerts_asset_idx ON alerts (asset_id);

-- The transactional outbox: written in the transaction that writes what it announces; the relay
-- publishes each row to its topic (message id = the row's id) and then marks it sent.
CREATE TABLE IF NOT EXISTS outbox (
    outbox_id   bigserial PRIMARY KEY,
    message_id  uuid        NOT NULL UNIQUE,
    topic       text        NOT NULL,
    message_key text        NOT NULL,
    payload     jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz
);
CREATE INDEX IF NOT EXISTS outbox_unsent_idx ON outbox (outbox_id) WHERE sent_at IS NULL;

-- A rule's webhook endpoints; the secret signs deliveries (Standard Webhooks: whsec_...).
CREATE TABLE IF NOT EXISTS webhook_endpoints (
    endpoint_id   uuid PRIMARY KEY,
    rule_id       uuid        NOT NULL REFERENCES rules (rule_id) ON DELETE CASCADE,
    url           text        NOT NULL,
    secret        text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    -- consecutive failed deliveries; past settings.alerts.disable_after the endpoint is disabled
    failures      integer     NOT NULL DEFAULT 0,
    disabled_at   timestamptz,
    disabled_why  text
);
CREATE INDEX IF NOT EXISTS webhook_endpoints_rule_idx ON webhook_endpoints (rule_id);

-- One delivery of one alert to one endpoint, retried until it succeeds or its time runs out.
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    delivery_id     uuid PRIMARY KEY,
    endpoint_id     uuid        NOT NULL REFERENCES webhook_endpoints (endpoint_id) ON DELETE CASCADE,
    alert_id        uuid        NOT NULL REFERENCES alerts (alert_id) ON DELETE CASCADE,
    status          text        NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    UNIQUE (endpoint_id, alert_id)
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due_idx
    ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';

-- Every attempt, with what the endpoint answered (the delivery log).
CREATE TABLE IF NOT EXISTS webhook_attempts (
    attempt_id   bigserial PRIMARY KEY,
    delivery_id  uuid        NOT NULL REFERENCES webhook_deliveries (delivery_id) ON DELETE CASCADE,
    attempted_at timestamptz NOT NULL DEFAULT now(),
    status_code  integer,
    error        text,
    duration_ms  double precision
);
CREATE INDEX IF NOT EXISTS webhook_attempts_delivery_idx ON webhook_attempts (delivery_id);

-- The live feed (/api/events): new assets, finished assets, alerts. Written in the transaction
-- of what it reports; a client resumes after the last event it saw. Ids are taken at insert,
-- not at commit, so a reader shows only settled events (xid below the snapshot's xmin: every
-- transaction that could still add one has ended), in (xid, event_id) order, and resumes after
-- the (xid, event_id) of the last one: nothing it has passed can appear later.
CREATE TABLE IF NOT EXISTS events (
    event_id    bigserial PRIMARY KEY,
    xid         xid8        NOT NULL DEFAULT pg_current_xact_id(),
    kind        text        NOT NULL CHECK (kind IN ('asset.registered', 'asset.finished', 'alert')),
    asset_id    uuid,
    payload     jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS events_feed_idx ON events (xid, event_id);

-- The relay and the webhook deliverer record what they give up on (a disabled endpoint).
ALTER TABLE errors
    DROP CONSTRAINT IF EXISTS errors_stage_check,
    ADD CONSTRAINT errors_stage_check
        CHECK (stage IN ('ingest', 'planner', 'worker', 'reconciler', 'relay', 'webhooks'));
