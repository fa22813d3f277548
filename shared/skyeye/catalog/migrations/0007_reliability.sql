-- Reliability: an asset's last step as a recorded state, the messages consumers gave up on, the
-- reconciler's errors, and lon/lat boxes that may cross the antimeridian.
-- Idempotent: columns and tables are added if missing, constraints dropped (if there) and added.

-- 'finishing': every work item has ended; the duplicate flags and the preview are still to do.
-- A worker (or any worker's periodic sweep, after a crash) finishes it and sets done or error.
ALTER TABLE assets
    DROP CONSTRAINT IF EXISTS assets_status_check,
    ADD CONSTRAINT assets_status_check
        CHECK (status IN ('registered', 'planned', 'finishing', 'done', 'error'));
-- How the scene's tiles were read (bands, stretch, tile grid: skyeye.contracts.ScenePlan), so
-- that finishing can read its preview without a work item in hand.
ALTER TABLE assets ADD COLUMN IF NOT EXISTS scene_plan jsonb;
CREATE INDEX IF NOT EXISTS assets_finishing_idx ON assets (updated_at) WHERE status = 'finishing';

-- The true lon/lat bounds [west, south, east, north], west > east across the antimeridian (RFC
-- 7946, STAC). The `lon_lat_bbox` box beside it serves the GiST index; a box cannot cross, so
-- a crossing footprint's box spans every longitude between its latitudes.
ALTER TABLE assets ADD COLUMN IF NOT EXISTS bbox double precision[];
ALTER TABLE detections ADD COLUMN IF NOT EXISTS bbox double precision[];
ALTER TABLE clip_frames ADD COLUMN IF NOT EXISTS bbox double precision[];

ALTER TABLE errors
    DROP CONSTRAINT IF EXISTS errors_stage_check,
    ADD CONSTRAINT errors_stage_check
        CHECK (stage IN ('ingest', 'planner', 'worker', 'reconciler'));

-- A message a consumer gave up on: a copy went to the dead-letter topic; this row indexes it,
-- keeps what a replay re-publishes, and records the replays.
CREATE TABLE IF NOT EXISTS dead_letters (
    -- uuid5 of topic/partition/offset: a redelivered poison message is one dead letter
    dead_letter_id  uuid PRIMARY KEY,
    stage           text        NOT NULL,
    topic           text        NOT NULL,
    "partition"     integer     NOT NULL,
    "offset"        bigint      NOT NULL,
    message_key     bytea,
    payload         bytea       NOT NULL,
    -- the original headers as [[name, hex value], ...], in order
    headers         jsonb       NOT NULL DEFAULT '[]'::jsonb,
    kind            text        NOT NULL,
    message         text        NOT NULL,
    -- no foreign keys: the object may have no asset, and a dead letter outlives a deleted one
    asset_id        uuid,
    work_item_id    uuid,
    dlq_partition   integer,
    dlq_offset      bigint,
    created_at      timestamptz NOT NULL DEFAULT now(),
    replays         integer     NOT NULL DEFAULT 0,
    replayed_at     timestamptz,
    UNIQUE (topic, "partition", "offset")
);
CREATE INDEX IF NOT EXISTS dead_letters_asset_idx ON dead_letters (asset_id);
CREATE INDEX IF NOT EXISTS dead_letters_created_idx ON dead_letters (created_at);
