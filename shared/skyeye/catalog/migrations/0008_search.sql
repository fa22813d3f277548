-- The results API: indexes for every search shape, sentence embeddings for semantic search,
-- results of questions asked later (ask), and API tokens.
-- Idempotent: each statement may run again on a database that already has it.
CREATE EXTENSION IF NOT EXISTS vector;

-- What an asset is, for the asset-kind filter: a clip has a duration, a scene a CRS or a
-- GeoTIFF header, anything else is an image. Stored, so it is indexed and kept in step.
ALTER TABLE assets ADD COLUMN IF NOT EXISTS kind text GENERATED ALWAYS AS (
    CASE WHEN duration_s IS NOT NULL THEN 'clip'
         WHEN crs IS NOT NULL OR media_format = 'geotiff' THEN 'scene'
         ELSE 'image' END
) STORED;
-- The time an asset is searched by: its recorded start (clips), else the object-created
-- event, else registration; the same order a STAC Item's datetime follows (catalog/stac.py).
-- An expression index: the search filters and sorts by this very expression.
CREATE INDEX IF NOT EXISTS assets_seen_idx
    ON assets ((COALESCE(start_time, event_time, created_at)), asset_id);
-- Keyset pages of assets, newest first, in a stable order.
CREATE INDEX IF NOT EXISTS assets_created_id_idx ON assets (created_at, asset_id);
CREATE INDEX IF NOT EXISTS assets_kind_idx ON assets (kind, created_at, asset_id);

-- Results come from the pipeline's plan or from a question asked later through the API.
ALTER TABLE results ADD COLUMN IF NOT EXISTS origin text NOT NULL DEFAULT 'pipeline';
ALTER TABLE results
    DROP CONSTRAINT IF EXISTS results_origin_check,
    ADD CONSTRAINT results_origin_check CHECK (origin IN ('pipeline', 'ask'));
-- all-MiniLM-L6-v2 sentence embedding of raw_text, unit length, for cosine search; NULL when
-- the answer holds no text worth embedding.
ALTER TABLE results ADD COLUMN IF NOT EXISTS embedding vector(384);
CREATE INDEX IF NOT EXISTS results_embedding_idx
    ON results USING hnsw (embedding vector_cosine_ops);
CREATE INDEX IF NOT EXISTS results_created_id_idx ON results (created_at, result_id);
CREATE INDEX IF NOT EXISTS results_task_kind_idx ON results (task_kind, created_at, result_id);

-- Detections by phrase or class, whatever its case.
CREATE INDEX IF NOT EXISTS detections_label_lower_idx ON detections (lower(label), asset_id);
CREATE INDEX IF NOT EXISTS detections_result_idx ON detections (result_id);

-- API tokens: only the SHA-256 of a token is kept (tokens are 256-bit random, so a slow hash
-- adds nothing); the prefix lets `skyeye token list` show which token is which.
CREATE TABLE IF NOT EXISTS api_tokens (
    token_id     uuid PRIMARY KEY,
    name         text        NOT NULL,
    prefix       text        NOT NULL,
    token_hash   bytea       NOT NULL UNIQUE,
    scopes       text[]      NOT NULL CHECK (scopes <@ ARRAY['read', 'ask', 'admin']::text[]),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
