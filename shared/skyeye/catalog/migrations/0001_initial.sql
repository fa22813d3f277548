-- Assets, their planned work, the model's results and every recorded error.
-- Idempotent: each statement may run again on a database that already has it.

CREATE TABLE IF NOT EXISTS assets (
    asset_id       uuid PRIMARY KEY,
    bucket         text        NOT NULL,
    object_key     text        NOT NULL,
    -- S3 version id, else the eTag: one row per object version
    version        text        NOT NULL DEFAULT '',
    size_bytes     bigint,
    content_type   text,
    user_metadata  jsonb       NOT NULL DEFAULT '{}'::jsonb,
    event_name     text,
    event_time     timestamptz,
    media_format   text,
    width          integer,
    height         integer,
    status         text        NOT NULL DEFAULT 'registered'
                   CHECK (status IN ('registered', 'planned', 'done', 'error')),
    tiles_planned  integer,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (bucket, object_key, version)
);
CREATE INDEX IF NOT EXISTS assets_status_idx ON assets (status);
CREATE INDEX IF NOT EXISTS assets_created_idx ON assets (created_at);

CREATE TABLE IF NOT EXISTS work_items (
    work_item_id  uuid PRIMARY KEY,
    asset_id      uuid        NOT NULL REFERENCES assets ON DELETE CASCADE,
    tile_index    integer     NOT NULL,
    px_x          integer     NOT NULL,
    px_y          integer     NOT NULL,
    px_width      integer     NOT NULL,
    px_height     integer     NOT NULL,
    status        text        NOT NULL DEFAULT 'queued'
                  CHECK (status IN ('queued', 'done', 'error')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    completed_at  timestamptz,
    UNIQUE (asset_id, tile_index)
);

CREATE TABLE IF NOT EXISTS results (
    result_id     bigserial PRIMARY KEY,
    work_item_id  uuid        NOT NULL REFERENCES work_items ON DELETE CASCADE,
    asset_id      uuid        NOT NULL REFERENCES assets ON DELETE CASCADE,
    task_key      text        NOT NULL,
    task_kind     text        NOT NULL CHECK (task_kind IN ('caption', 'grounding', 'vqa')),
    task_text     text        NOT NULL,
    prompt        text        NOT NULL,
    raw_text      text        NOT NULL,
    parsed        boolean     NOT NULL,
    answer        jsonb,
    model         text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    search        tsvector GENERATED ALWAYS AS (to_tsvector('english', raw_text)) STORED,
    -- a redelivered work item writes nothing twice
    UNIQUE (work_item_id, task_key)
);
CREATE INDEX IF NOT EXISTS results_asset_idx ON results (asset_id);
CREATE INDEX IF NOT EXISTS results_search_idx ON results USING gin (search);

CREATE TABLE IF NOT EXISTS detections (
    detection_id  bigserial PRIMARY KEY,
    result_id     bigint           NOT NULL REFERENCES results ON DELETE CASCADE,
    asset_id      uuid             NOT NULL REFERENCES assets ON DELETE CASCADE,
    label         text             NOT NULL,
    ordinal       integer          NOT NULL,
    -- pixels of the original image
    x1            double precision NOT NULL,
    y1            double precision NOT NULL,
    x2            double precision NOT NULL,
    y2            double precision NOT NULL,
    pixel_box     box GENERATED ALWAYS AS (box(point(x1, y1), point(x2, y2))) STORED,
    UNIQUE (result_id, ordinal)
);
CREATE INDEX IF NOT EXISTS detections_asset_idx ON detections (asset_id);
CREATE INDEX IF NOT EXISTS detections_label_idx ON detections (label);
CREATE INDEX IF NOT EXISTS detections_pixel_box_idx ON detections USING gist (pixel_box);

CREATE TABLE IF NOT EXISTS errors (
    error_id      bigserial PRIMARY KEY,
    -- where the failing input came from, e.g. kafka:<topic>/<partition>/<offset>
    source        text        NOT NULL,
    stage         text        NOT NULL CHECK (stage IN ('ingest', 'planner', 'worker')),
    kind          text        NOT NULL,
    message       text        NOT NULL,
    asset_id      uuid        REFERENCES assets ON DELETE CASCADE,
    work_item_id  uuid        REFERENCES work_items ON DELETE CASCADE,
    detail        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    -- a redelivered bad message is recorded once
    UNIQUE (source, stage)
);
CREATE INDEX IF NOT EXISTS errors_asset_idx ON errors (asset_id);
