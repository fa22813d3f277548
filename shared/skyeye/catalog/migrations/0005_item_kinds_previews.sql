-- Work item kinds (scene overviews, clip frames and clip captions) and preview PNGs.
-- Idempotent: columns are added if missing, constraints dropped (if there) and added again.
-- A work item is a model-sized tile of its asset, the whole scene read decimated (overview, for
-- scene-level captions), one sampled frame of a clip, or all of them (clip, for the clip
-- caption); each kind numbers its own items from 0.
ALTER TABLE work_items ADD COLUMN IF NOT EXISTS kind text NOT NULL DEFAULT 'tile';
ALTER TABLE work_items
    DROP CONSTRAINT IF EXISTS work_items_kind_check,
    ADD CONSTRAINT work_items_kind_check CHECK (kind IN ('tile', 'overview', 'frame', 'clip'));
ALTER TABLE work_items
    DROP CONSTRAINT IF EXISTS work_items_asset_id_tile_index_key,
    DROP CONSTRAINT IF EXISTS work_items_asset_id_kind_tile_index_key,
    ADD CONSTRAINT work_items_asset_id_kind_tile_index_key UNIQUE (asset_id, kind, tile_index);
-- Key of the asset's preview PNG (boxes drawn) in the derived bucket, once written.
ALTER TABLE assets ADD COLUMN IF NOT EXISTS preview_key text;
